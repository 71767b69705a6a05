"""The RLlib settings of a run, from its rayrm config: the environment, env runners, learners,
RLModule and training fields (``RLHFConfig.apply_run_config``), and the KL controller.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs import MULTI_TURN_ENV_ID, TEXT_GENERATION_ENV_ID
from rayrm.config import RLConfig
from rayrm.core_algos import AdaptiveKLController, FixedKLController
from rayrm.rl.codec import run_stop_token_ids
from rayrm.rl.env_runner import RLHFEnvRunner
from rayrm.rl.learner import RLHFPPOLearner
from rayrm.rl.module import LMPolicyModule

__all__ = [
    "configure",
    "environment_of",
    "make_kl_controller",
    "module_config",
    "policy_vocab_size",
]


def policy_vocab_size(cfg: RLConfig) -> int:
    """The policy's vocabulary size (its config's text config): the env's action space."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(cfg.model.path).get_text_config().vocab_size)


def configure(config: AlgorithmConfig, cfg: RLConfig) -> None:
    """Sets every RLlib field of ``config`` (a PPO config) from the run config ``cfg``."""
    vocab_size = policy_vocab_size(cfg)
    algorithm, res = cfg.algorithm, cfg.resources
    tokens_per_learner = max(
        1, algorithm.batch_size * cfg.max_policy_tokens // max(1, res.num_learners)
    )
    env_id, env_config = environment_of(cfg, vocab_size)
    config.environment(env_id, env_config=env_config)
    config.env_runners(
        env_runner_cls=RLHFEnvRunner,
        num_env_runners=res.num_env_runners,
        num_envs_per_env_runner=cfg.envs_per_env_runner,
        num_cpus_per_env_runner=res.num_cpus_per_env_runner,
        num_gpus_per_env_runner=res.num_gpus_per_env_runner,
        custom_resources_per_env_runner=dict(res.custom_resources_per_env_runner),
        gym_env_vectorize_mode="sync",
    )
    config.resources(placement_strategy=res.placement_strategy)
    restarts = res.env_runner_max_restarts
    config.fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=restarts)
    config.learners(
        learner_class=RLHFPPOLearner,
        num_learners=res.num_learners,
        num_cpus_per_learner=res.num_cpus_per_learner,
        num_gpus_per_learner=res.num_gpus_per_learner,
        custom_resources_per_learner=dict(res.custom_resources_per_learner),
    )
    config.training(
        lr=algorithm.lr,
        gamma=algorithm.gamma,
        lambda_=algorithm.gae_lambda,
        num_epochs=algorithm.num_epochs,
        train_batch_size_per_learner=tokens_per_learner,
        minibatch_size=max(1, tokens_per_learner // algorithm.num_minibatches),
        grad_clip=None,  # the optimizer clips, after float16 unscaling (rayrm.rl.learner)
        use_kl_loss=False,
        use_critic=algorithm.uses_critic,
        entropy_coeff=algorithm.entropy_coef,
    )
    config.rl_module(
        rl_module_spec=RLModuleSpec(
            module_class=LMPolicyModule,
            model_config=module_config(cfg),
        )
    )
    config.reporting(
        min_time_s_per_iteration=0,
        min_sample_timesteps_per_iteration=0,
        min_train_timesteps_per_iteration=0,
    )
    config.debugging(seed=cfg.seed, log_level="WARN")


def environment_of(cfg: RLConfig, vocab_size: int | None) -> tuple[str, dict[str, Any]]:
    """The Gymnasium env id and ``env_config`` a run samples from: one completion per prompt,
    or, with an ``env`` section, multi-turn episodes (``envs.multi_turn``)."""
    shared = {
        "tokenizer": cfg.model.resolved_tokenizer_path,
        "prompts": cfg.data.prompts,
        "max_prompt_tokens": cfg.data.max_prompt_tokens,
        "max_new_tokens": cfg.generation.max_new_tokens,
        "stop_token_ids": run_stop_token_ids(cfg),
        "stop_strings": list(cfg.generation.stop_strings),
        "vocab_size": vocab_size,
    }
    if cfg.env is not None:
        return MULTI_TURN_ENV_ID, {
            **shared,
            "environment": cfg.env.environment,
            "max_turns": cfg.env.max_turns,
            "max_total_tokens": cfg.env.max_total_tokens,
            "tool_parser": cfg.env.tool_parser,
            "tool_timeout_s": cfg.env.tool_timeout_s,
        }
    return TEXT_GENERATION_ENV_ID, {
        **shared,
        "prompt_column": cfg.data.prompt_column,
        "reference_column": cfg.data.reference_column,
        "messages_column": cfg.data.messages_column,
        "chat_template": cfg.data.chat_template,
        "reward_fn": None,  # deferred: the RewardPool scores in batches
    }


def module_config(cfg: RLConfig) -> dict[str, Any]:
    """The ``model_config`` of the policy RLModule (``LMPolicyModule``)."""
    return {
        "path": cfg.model.path,
        "dtype": cfg.model.dtype,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "forward_batch_size": cfg.forward_batch_size,
        "critic": cfg.model.critic if cfg.algorithm.uses_critic else "none",
        "critic_path": cfg.model.resolved_critic_path,
        "reference_path": cfg.model.reference_path or cfg.model.path,
        "temperature": cfg.generation.temperature,
        "top_k": cfg.generation.top_k,
        "top_p": cfg.generation.top_p,
        "lora": cfg.model.lora.to_dict() if cfg.model.lora else None,
    }


def make_kl_controller(cfg: RLConfig) -> FixedKLController | AdaptiveKLController:
    """β controller from the config: fixed, or Ziegler et al.'s adaptive controller."""
    if cfg.algorithm.adaptive_kl:
        return AdaptiveKLController(
            cfg.algorithm.kl_coef, cfg.algorithm.target_kl, cfg.algorithm.kl_horizon
        )
    return FixedKLController(cfg.algorithm.kl_coef)
