"""The RLHF-PPO algorithm on RLlib's PPO (new API stack) and its AlgorithmConfig.

``training_step`` is a short list of named, timed phases:

    sample   every EnvRunner decodes one whole completion per env (rayrm.rl.env_runner)
    score    the RewardPool scores all finished completions in parallel batches
    update   learners: reference log-probs, KL-penalised rewards, GAE, clipped PPO
    sync     new weights go back to the EnvRunners

The algorithm owns the state that must survive restores besides the weights: the KL
controller (β) and the running reward statistics.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)
from ray.tune.execution.placement_groups import PlacementGroupFactory

from envs.tokenization import Prompt
from rayrm import metrics as M
from rayrm.config import RunConfig, config_from_dict
from rayrm.core_algos import AdaptiveKLController, FixedKLController, RunningMoments
from rayrm.models.decoding import sample_sequences
from rayrm.models.loading import load_tokenizer, prompt_codec, stop_token_ids
from rayrm.rewards.pool import pool_from_config
from rayrm.rl.env_runner import RLHFEnvRunner
from rayrm.rl.learner import RLHFPPOLearner
from rayrm.rl.module import LMPolicyModule

RAYRM_STATE = "rayrm_state"
RESOLVED_CONFIG_FILE = "rayrm_config.yaml"
TOKENIZER_DIR = "tokenizer"
HF_CONFIG_DIR = "hf_config"
POLICY_STATE_FILE = "learner_group/learner/rl_module/default_policy/module_state.pkl"


class RLHFConfig(PPOConfig):
    """PPOConfig derived entirely from a rayrm run config (``self.rayrm``, a plain dict).

    The run config is the single source of truth: :meth:`apply_run_config` sets every RLlib
    field from it, and ``update_from_dict({"rayrm": {...}})`` does the same. That is how Tune
    builds each trial: the param space is ``{"rayrm": <run config with search samplers>}``,
    Tune resolves the samplers, and RLlib turns the dict into a full config through
    ``update_from_dict``.
    """

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or RLHFPPO)
        self.rayrm: dict[str, Any] = {}

    @property
    def run_config(self) -> RunConfig:
        return config_from_dict(self.rayrm, check_paths=False)

    def update_from_dict(self, config_dict: dict[str, Any]) -> RLHFConfig:
        rest = {k: v for k, v in config_dict.items() if k != "rayrm"}
        super().update_from_dict(rest)
        if "rayrm" in config_dict:
            self.apply_run_config(config_from_dict(config_dict["rayrm"], check_paths=False))
        return self

    def apply_run_config(self, cfg: RunConfig) -> RLHFConfig:
        """Sets every RLlib field from ``cfg`` (see the class docstring)."""
        from transformers import AutoConfig

        vocab_size = int(AutoConfig.from_pretrained(cfg.model.path).get_text_config().vocab_size)
        ppo, res = cfg.ppo, cfg.resources
        tokens_per_learner = max(
            1, ppo.batch_size * cfg.generation.max_new_tokens // max(1, res.num_learners)
        )
        self.environment(
            "rayrm/TextGeneration-v0",
            env_config={
                "tokenizer": cfg.model.resolved_tokenizer_path,
                "prompts": cfg.data.prompts,
                "prompt_column": cfg.data.prompt_column,
                "reference_column": cfg.data.reference_column,
                "messages_column": cfg.data.messages_column,
                "chat_template": cfg.data.chat_template,
                "reward_fn": None,  # deferred: the RewardPool scores in batches
                "max_prompt_tokens": cfg.data.max_prompt_tokens,
                "max_new_tokens": cfg.generation.max_new_tokens,
                "stop_token_ids": stop_token_ids(cfg),
                "stop_strings": list(cfg.generation.stop_strings),
                "vocab_size": vocab_size,
            },
        )
        self.env_runners(
            env_runner_cls=RLHFEnvRunner,
            num_env_runners=res.num_env_runners,
            num_envs_per_env_runner=cfg.envs_per_env_runner,
            num_cpus_per_env_runner=res.num_cpus_per_env_runner,
            num_gpus_per_env_runner=res.num_gpus_per_env_runner,
            custom_resources_per_env_runner=dict(res.custom_resources_per_env_runner),
            gym_env_vectorize_mode="sync",
        )
        self.resources(placement_strategy=res.placement_strategy)
        self.fault_tolerance(restart_failed_env_runners=True)
        self.learners(
            learner_class=RLHFPPOLearner,
            num_learners=res.num_learners,
            num_cpus_per_learner=res.num_cpus_per_learner,
            num_gpus_per_learner=res.num_gpus_per_learner,
            custom_resources_per_learner=dict(res.custom_resources_per_learner),
        )
        self.training(
            lr=ppo.lr,
            gamma=ppo.gamma,
            lambda_=ppo.gae_lambda,
            num_epochs=ppo.num_epochs,
            train_batch_size_per_learner=tokens_per_learner,
            minibatch_size=max(1, tokens_per_learner // ppo.num_minibatches),
            grad_clip=None,  # the optimizer clips, after float16 unscaling (rayrm.rl.learner)
            use_kl_loss=False,
            use_critic=True,
            entropy_coeff=ppo.entropy_coef,
        )
        self.rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=LMPolicyModule,
                model_config={
                    "path": cfg.model.path,
                    "dtype": cfg.model.dtype,
                    "gradient_checkpointing": cfg.model.gradient_checkpointing,
                    "forward_batch_size": cfg.forward_batch_size,
                    "critic": cfg.model.critic,
                    "critic_path": cfg.model.resolved_critic_path,
                    "temperature": cfg.generation.temperature,
                    "top_k": cfg.generation.top_k,
                    "top_p": cfg.generation.top_p,
                },
            )
        )
        self.reporting(
            min_time_s_per_iteration=0,
            min_sample_timesteps_per_iteration=0,
            min_train_timesteps_per_iteration=0,
        )
        self.debugging(seed=cfg.seed, log_level="WARN")
        self.rayrm = cfg.to_dict()
        return self


def build_algo_config(cfg: RunConfig) -> RLHFConfig:
    """The RLlib AlgorithmConfig of a validated rayrm RunConfig."""
    return RLHFConfig().apply_run_config(cfg)


def make_kl_controller(cfg: RunConfig) -> FixedKLController | AdaptiveKLController:
    """β controller from the config: fixed, or Ziegler et al.'s adaptive controller."""
    if cfg.ppo.adaptive_kl:
        return AdaptiveKLController(cfg.ppo.kl_coef, cfg.ppo.target_kl, cfg.ppo.kl_horizon)
    return FixedKLController(cfg.ppo.kl_coef)


def shard_whole_episodes(episodes: list[Any], num_shards: int) -> list[list[Any]]:
    """Deals completions to learners whole and in equal numbers, balancing token counts.

    RLlib's own sharding cuts episodes to balance timesteps; a cut completion would lose its
    end (and its score) on one learner.
    """
    order = sorted(range(len(episodes)), key=lambda i: -len(episodes[i]))
    shards: list[list[Any]] = [[] for _ in range(num_shards)]
    for rank, i in enumerate(order):
        lap, pos = divmod(rank, num_shards)
        shards[pos if lap % 2 == 0 else num_shards - 1 - pos].append(episodes[i])
    return shards


class RLHFPPO(PPO):
    """RLlib PPO specialised for token-level RLHF against a reward pool (see module docstring)."""

    @classmethod
    def get_default_config(cls) -> RLHFConfig:
        return RLHFConfig(algo_class=cls)

    @classmethod
    def default_resource_request(cls, config: Any) -> PlacementGroupFactory:
        """PPO's bundles plus one bundle per reward actor, so the trial reserves them too."""
        pgf = super().default_resource_request(config)
        rayrm = config["rayrm"] if isinstance(config, dict) else config.rayrm
        reward = config_from_dict(rayrm, check_paths=False).reward
        bundle = {
            "CPU": reward.num_cpus_per_actor,
            "GPU": reward.num_gpus_per_actor,
            **reward.custom_resources_per_actor,
        }
        bundle = {k: float(v) for k, v in bundle.items() if v > 0}
        private = reward.pool_name is None  # a shared pool reserves its own resources
        num_actors = reward.num_actors * reward.num_actor_pools  # ensembles/composites: several
        extra = [dict(bundle) for _ in range(num_actors)] if bundle and private else []
        return PlacementGroupFactory(bundles=pgf.bundles + extra, strategy=pgf.strategy)

    def setup(self, config: Any) -> None:
        super().setup(config)
        self.rlhf: RunConfig = config_from_dict(self.config.rayrm, check_paths=False)
        self.kl_ctl = make_kl_controller(self.rlhf)
        self.reward_moments = RunningMoments()
        r = self.rlhf.reward
        self.reward_pool = pool_from_config(
            r, name=r.pool_name, tokenizer=self.rlhf.model.resolved_tokenizer_path
        )
        self.rollout_node_ids: list[str] = []
        self._setup_eval()

    def cleanup(self) -> None:
        pool = getattr(self, "reward_pool", None)
        if pool is not None:
            pool.shutdown()
        super().cleanup()

    # ------------------------------------------------------------------ evaluation
    def _setup_eval(self) -> None:
        from envs.prompts import load_prompt_rows
        from rayrm.rewards.pool import resolve_function

        e = self.rlhf.eval
        self.tokenizer = load_tokenizer(self.rlhf.model.resolved_tokenizer_path)
        self.codec = prompt_codec(self.rlhf, self.tokenizer)
        path = e.prompts or self.rlhf.data.prompts
        data = self.rlhf.data
        prompts, refs = load_prompt_rows(
            path, data.prompt_column, data.reference_column, data.messages_column
        )
        self.eval_prompts = prompts[: e.num_prompts]
        self.eval_references = None if refs is None else refs[: e.num_prompts]
        self.gold_fn = resolve_function(e.gold_function) if e.gold_function else None

    def sample_texts(
        self, prompts: list[Prompt], *, greedy: bool = False, seed: int = 0
    ) -> tuple[list[str], list[str]]:
        """``(prompt_texts, completions)``: one completion per prompt from the current policy
        (the synced local copy), and the texts as rewards read them."""
        g = self.rlhf.generation
        sequences = sample_sequences(
            self.env_runner.module.lm,
            self.codec,
            prompts,
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            greedy=greedy,
            seed=seed,
        )
        texts = [self.codec.texts(p, c) for p, c in sequences]
        return [t[0] for t in texts], [t[1] for t in texts]

    def evaluate(self) -> dict[str, float]:
        """Proxy (the run's reward source) and gold scores on the held-out prompts."""
        prompts, completions = self.sample_texts(self.eval_prompts, seed=self.rlhf.seed)
        proxy = self.reward_pool.score(
            prompts,
            completions,
            references=self.eval_references,
            messages=[self.codec.conversation(p) for p in self.eval_prompts],
        )
        out = {
            M.EVAL_UPDATES: float(self.iteration),
            M.EVAL_PROXY_MEAN: float(proxy.mean()),
            M.EVAL_PROXY_STD: float(proxy.std()),
        }
        if self.gold_fn is not None:
            gold = np.asarray(self.gold_fn(prompts, completions), dtype=np.float64)
            out[M.EVAL_GOLD_MEAN], out[M.EVAL_GOLD_STD] = float(gold.mean()), float(gold.std())
        return out

    # ------------------------------------------------------------------ training step
    def training_step(self) -> None:
        every = self.rlhf.eval.every
        if every and self.iteration % every == 0:
            # The policy after `self.iteration` updates, before this iteration's.
            for key, value in self.evaluate().items():
                self.metrics.log_value((M.RLHF_RESULTS, key), value, window=1)
        t_start = time.perf_counter()
        episodes, env_runner_results = synchronous_parallel_sample(
            worker_set=self.env_runner_group,
            _uses_new_env_runners=True,
            _return_metrics=True,
        )
        self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        t_sampled = time.perf_counter()

        raw_scores = self._score(episodes)
        t_scored = time.perf_counter()

        learner_stats = self._update(episodes)
        t_updated = time.perf_counter()

        self.env_runner_group.sync_weights(
            from_worker_or_learner_group=self.learner_group, inference_only=True
        )
        t_end = time.perf_counter()

        if self.env_runner_group.num_remote_env_runners() > 0:
            self.rollout_node_ids = sorted(
                set(
                    self.env_runner_group.foreach_env_runner(
                        lambda er: ray.get_runtime_context().get_node_id(),
                        local_env_runner=False,
                    )
                )
            )
        num_tokens = sum(len(e) for e in episodes)
        scores = np.array([float(e.get_rewards()[-1]) for e in episodes])
        published = {
            M.REWARD_MEAN: float(scores.mean()),
            M.REWARD_STD: float(scores.std()),
            M.REWARD_RAW_MEAN: float(raw_scores.mean()),
            M.KL_BETA: learner_stats.pop("beta"),
            M.ROLLOUT_COMPLETIONS: len(episodes),
            M.ROLLOUT_NUM_NODES: max(1, len(self.rollout_node_ids)),
            M.THROUGHPUT_TOKENS_PER_S: num_tokens / max(t_end - t_start, 1e-9),
            M.TIMER_SAMPLE: t_sampled - t_start,
            M.TIMER_SCORE: t_scored - t_sampled,
            M.TIMER_UPDATE: t_updated - t_scored,
            M.TIMER_SYNC: t_end - t_updated,
            M.TIMER_ITERATION: t_end - t_start,
            **learner_stats,
        }
        published[M.OBJECTIVE_REWARD_MINUS_KL] = (
            published[M.REWARD_MEAN] - published[M.KL_BETA] * published[M.KL_SEQUENCE]
        )
        for key, value in published.items():
            self.metrics.log_value((M.RLHF_RESULTS, key), value, window=1)

    def _score(self, episodes: list[Any]) -> np.ndarray:
        """Scores every finished completion through the pool and pays it at the last token."""
        infos = [e.get_infos(-1) for e in episodes]
        references = [i.get("reference") for i in infos]
        messages = [i.get("messages") for i in infos]
        raw, breakdown = self.reward_pool.score_detailed(
            [i["prompt_text"] for i in infos],  # what the tokens decode to (envs.tokenization)
            [i["completion"] for i in infos],
            references=None if all(ref is None for ref in references) else references,
            messages=None if all(m is None for m in messages) else messages,
            finished=[bool(e.is_terminated) for e in episodes],  # EOS, not the length limit
            lengths=[len(e) - int(e.is_terminated) for e in episodes],  # tokens without EOS
        )
        raw = raw.astype(np.float64)
        for key, values in breakdown.items():  # components, ensemble members, penalties
            self.metrics.log_value((M.RLHF_RESULTS, key), float(np.mean(values)), window=1)
        scores = raw
        r = self.rlhf.reward
        if r.normalize:
            self.reward_moments.update(raw)
            scores = (raw - self.reward_moments.mean) / self.reward_moments.std
        if r.clip is not None:
            scores = np.clip(scores, -r.clip, r.clip)
        for episode, score in zip(episodes, scores, strict=True):
            buffer = episode.rewards
            if isinstance(buffer.data, np.ndarray) and not buffer.data.flags.writeable:
                buffer.data = buffer.data.copy()  # episodes from remote runners are read-only
            rewards = episode.get_rewards()
            episode.set_rewards(new_data=np.asarray(rewards[-1] + score, np.float32), at_indices=-1)
        return raw

    def _update(self, episodes: list[Any]) -> dict[str, float]:
        """Pushes β, runs the PPO update on whole completions, then steps the KL controller."""
        beta = self.kl_ctl.value
        self.learner_group.foreach_learner(lambda learner: learner.set_kl_coef(beta))
        kwargs = dict(
            timesteps={
                NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                    (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
                )
            },
            num_epochs=self.rlhf.ppo.num_epochs,
        )
        num_learners = self.rlhf.resources.num_learners
        if num_learners >= 2:
            shards = shard_whole_episodes(episodes, num_learners)
            results = self.learner_group.update(
                episodes_refs=[ray.put(s) for s in shards], **kwargs
            )
        else:
            results = self.learner_group.update(episodes=episodes, **kwargs)
        self.metrics.aggregate(results, key=LEARNER_RESULTS)

        def peek(name: str) -> float:
            value = self.metrics.peek((LEARNER_RESULTS, DEFAULT_MODULE_ID, name), default=math.nan)
            return float(value)

        stats = {key: peek(name) for key, name in M.FROM_LEARNER.items()}
        self.kl_ctl.update(stats[M.KL_SEQUENCE], n_steps=len(episodes))
        stats["beta"] = beta
        return stats

    # ------------------------------------------------------------------ state
    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state[RAYRM_STATE] = {
            "kl_ctl": self.kl_ctl.get_state(),
            "reward_moments": self.reward_moments.get_state(),
            "config_kl_coef": self.rlhf.ppo.kl_coef,
        }
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if RAYRM_STATE in state:
            saved = state[RAYRM_STATE]
            self.reward_moments.set_state(saved["reward_moments"])
            # The adaptive β travels with the checkpoint, unless this trial's config changed
            # the coefficient (PBT's explore step): then the new value is the perturbed β.
            if saved.get("config_kl_coef", self.rlhf.ppo.kl_coef) == self.rlhf.ppo.kl_coef:
                self.kl_ctl.set_state(saved["kl_ctl"])
        # The config's learning rate wins over the one stored with the optimizer state (PBT).
        lr = self.rlhf.ppo.lr
        self.learner_group.foreach_learner(lambda learner: learner.set_lr(lr))

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """RLlib's checkpoint plus the resolved config and the tokenizer, for export/generate."""
        super().save_checkpoint(checkpoint_dir)
        from transformers import AutoConfig, GenerationConfig

        self.rlhf.save_yaml(Path(checkpoint_dir) / RESOLVED_CONFIG_FILE)
        self.tokenizer.save_pretrained(str(Path(checkpoint_dir) / TOKENIZER_DIR))
        # The architecture (original config, dropout included) and the generation config (its
        # EOS ids) so export needs no model.path.
        hf_dir = str(Path(checkpoint_dir) / HF_CONFIG_DIR)
        AutoConfig.from_pretrained(self.rlhf.model.path).save_pretrained(hf_dir)
        if (Path(self.rlhf.model.path) / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(self.rlhf.model.path).save_pretrained(hf_dir)
