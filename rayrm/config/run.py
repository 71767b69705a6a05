"""The run config: everything one ``rayrm train``/``rayrm tune`` run is told.

Typed sections, each documented once in the ``Attributes`` of its class; one YAML file fills
:class:`RLConfig`. Types, enum values and ranges are checked when the config is built
(``rayrm.config.base.build``); :meth:`RLConfig.check` adds the relations between fields. Paths
and imports are checked by ``rayrm.config.checks``, YAML and ``--set`` by ``rayrm.config.io``.
This module must stay cheap to import: no ``ray``, no ``torch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field

from rayrm.config.algorithm import AlgorithmSettings
from rayrm.config.base import ConfigError, NonEmptyStr, Section
from rayrm.config.environment import EnvSettings
from rayrm.config.lora import LoraSettings
from rayrm.config.reward import FUNCTION_RE, RewardSettings, check_reward
from rayrm.config.stopping import StopRule, check_stop_when
from rayrm.config.tracking import TrackingSettings
from rayrm.config.tune import SAMPLERS, TuneSettings, check_search_space

__all__ = [
    "PROMPT_SUFFIXES",
    "SAMPLERS",
    "DataSettings",
    "EnvSettings",
    "EvalSettings",
    "GenerationSettings",
    "ModelSettings",
    "AlgorithmSettings",
    "ResourcesSettings",
    "RLConfig",
    "RunSettings",
    "TuneSettings",
]

PROMPT_SUFFIXES = (".parquet", ".jsonl", ".json")
"""File extensions that ``data.prompts`` may have."""


class ModelSettings(Section):
    """The policy (and critic) to fine-tune.

    Attributes:
        path: Local Hugging Face causal-LM directory (must contain ``config.json``). Required.
        tokenizer_path: Tokenizer directory; None means ``path``.
        critic: ``shared`` puts the value head on the policy trunk; ``separate`` trains a
            separate critic model.
        critic_path: Hugging Face model directory the separate critic starts from; None means
            ``path``. A reward model (``*ForSequenceClassification``, one label) gives its
            trunk and its score head, so the critic starts out predicting the reward (as
            InstructGPT and TRL do); other models give their trunk and a fresh head. Only
            allowed with ``critic=separate``.
        reference_path: Causal-LM directory of the frozen reference the KL is taken to; None
            means ``path``. Set it to go on from a trained policy (``rayrm export``) with the
            KL still to the model it all started from (rounds of iterated RLHF). Same
            tokenizer as ``path``; not with ``lora`` (its reference is the base model).
        dtype: Dtype of the policy, critic and reference weights and of their forward and
            backward passes (``bfloat16`` on GPUs that have it, as most checkpoints are
            published). Updates go through float32 master weights and float32 Adam state
            (``rayrm.models.precision``); ``float16`` adds dynamic loss scaling. Weight syncs,
            checkpoints and ``rayrm export`` keep this dtype.
        gradient_checkpointing: Recompute the policy's (and critic's) activations in backward
            instead of storing them (Hugging Face's gradient checkpointing): less memory,
            about a third more update time.
        lora: Train LoRA adapters on the policy instead of all its weights
            (:class:`~rayrm.config.lora.LoraSettings`; the extra ``rayrm[lora]``); None: full
            fine-tuning.
    """

    path: NonEmptyStr
    tokenizer_path: NonEmptyStr | None = None
    critic: Literal["shared", "separate"] = "shared"
    critic_path: NonEmptyStr | None = None
    reference_path: NonEmptyStr | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None

    @property
    def resolved_tokenizer_path(self) -> str:
        """Directory the tokenizer is loaded from."""
        return self.tokenizer_path if self.tokenizer_path is not None else self.path

    @property
    def resolved_critic_path(self) -> str:
        """Directory the critic's weights start from.

        With ``critic=shared`` this is ``path``: the value head sits on the policy trunk.
        """
        return self.critic_path if self.critic_path is not None else self.path


class DataSettings(Section):
    """The prompts sampled each iteration.

    Attributes:
        prompts: Prompts file (``.parquet``, ``.jsonl`` or ``.json``). Required. Each row holds
            a prompt string (``prompt_column``) or, when the file has no such column, a
            conversation (``messages_column``: a list of ``{role, content}`` messages, rendered
            with the policy tokenizer's chat template and its generation prompt). The row's
            other columns go to reward functions that name them (docs: Rewards).
        prompt_column: Column (or JSON field) that holds the prompt text.
        messages_column: Column that holds conversations (read when ``prompt_column`` is
            absent from the file).
        chat_template: Also render plain prompts with the chat template, as one user message.
        max_prompt_tokens: Prompts are truncated (left) to this many tokens; a leading BOS is
            kept. Prompts are encoded with the special tokens the tokenizer adds by default
            (BOS for Llama, Mistral, Gemma), or by the chat template.
        reference_column: Column holding one reference text per prompt, for reference-based
            rewards (``reward.source: metric``, metric components, reward functions with a
            ``references`` parameter). Read when the file has it; required only when the
            reward needs references.
    """

    prompts: NonEmptyStr
    prompt_column: NonEmptyStr = "prompt"
    messages_column: NonEmptyStr = "messages"
    chat_template: bool = False
    max_prompt_tokens: int = Field(32, ge=1)
    reference_column: NonEmptyStr = "reference"


class GenerationSettings(Section):
    """How completions are sampled from the policy.

    Attributes:
        max_new_tokens: Completion length limit in tokens (with an ``env`` section: the limit
            of one assistant turn).
        temperature: Softmax temperature; the logprobs PPO uses are computed at it too.
        top_k: Keep only the k most likely tokens; 0 turns it off.
        top_p: Nucleus sampling mass; 1.0 turns it off.
        stop_token_ids: Token ids that end a completion besides the tokenizer's EOS and every
            id of the model's ``generation_config.eos_token_id`` (which always do; chat models
            list several, e.g. Qwen2.5's ``<|im_end|>`` and ``<|endoftext|>``). The stop token
            is the completion's last action and receives the score; it is not in the text.
        stop_strings: Texts that end a completion once it contains one; the text the reward
            reads keeps the stop string and drops what the last token added after it.
        samples_per_prompt: Completions sampled per prompt per iteration (a group; GRPO,
            RLOO). ``algorithm.batch_size`` counts completions; a group is sampled by one env runner.
    """

    max_new_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop_token_ids: list[int] = Field(default_factory=list)
    stop_strings: list[NonEmptyStr] = Field(default_factory=list)
    samples_per_prompt: int = Field(1, ge=1)


class ResourcesSettings(Section):
    """Ray resources for sampling and learning.

    Attributes:
        num_env_runners: Remote env runners; 0 samples in the trial process.
        num_cpus_per_env_runner: CPUs reserved for each env runner.
        num_gpus_per_env_runner: GPUs (fractions allowed) reserved for each env runner.
        num_learners: Remote learners; 0 learns in the trial process, 2 or more use DDP.
        num_cpus_per_learner: CPUs reserved for each learner.
        num_gpus_per_learner: GPUs (fractions allowed) reserved for each learner.
        placement_strategy: How a trial's bundles (trial process, learners, env runners, reward
            actors) are placed on nodes: ``PACK`` (fill few nodes), ``SPREAD`` (spread over
            nodes, e.g. rollouts across machines), or the ``STRICT_`` variants.
        custom_resources_per_env_runner: Custom Ray resources each env runner needs, e.g.
            ``{rayrm_rollout: 1}`` to pin rollouts to the rollout node type of cluster.yaml.
        custom_resources_per_learner: Likewise for learners (e.g. ``{rayrm_learner: 1}``).
        sample_timeout_s: Seconds an env runner may take to answer one sampling call. A
            runner that does not answer in time (hung) is restarted, one that died is restored
            by RLlib, and the healthy ones sample the missing share meanwhile. Sampling that
            gets no new completion for this long fails the trial (restored from its
            checkpoint, ``run.max_failures``). None waits forever.
        env_runner_max_restarts: Restarts of each env runner after a crash, hang or lost
            node (Ray restarts the process, RLlib re-syncs it); -1: no limit. Past it the
            runner stays lost and the others sample its share.
    """

    num_env_runners: int = Field(0, ge=0)
    num_cpus_per_env_runner: float = Field(1.0, ge=0)
    num_gpus_per_env_runner: float = Field(0.0, ge=0)
    num_learners: int = Field(0, ge=0)
    num_cpus_per_learner: float = Field(1.0, ge=0)
    num_gpus_per_learner: float = Field(0.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    custom_resources_per_env_runner: dict[str, Any] = Field(default_factory=dict)
    custom_resources_per_learner: dict[str, Any] = Field(default_factory=dict)
    sample_timeout_s: float | None = Field(300.0, gt=0)
    env_runner_max_restarts: int = Field(-1, ge=-1)


class RunSettings(TrackingSettings):
    """Length, checkpointing and storage of the run.

    Attributes:
        num_iterations: Training iterations (sample, score, update) to run; ignored when
            ``num_epochs`` is set.
        num_epochs: Passes over the training prompts to run instead (fractions allowed): the
            run lasts ``ceil(num_epochs * prompts / (algorithm.batch_size /
            generation.samples_per_prompt))`` iterations. Prompts are drawn in shuffled passes
            without replacement either way (``rayrm.rl.prompt_order``); held-out rows of
            ``data.prompts`` (``eval``) are never trained on.
        checkpoint_every: Save a checkpoint every this many iterations (and at the end).
        storage_path: Directory under which the run's folder (``name``) is created.
        num_cpus: CPUs for a local Ray started in-process; None uses all of them.
        max_failures: Times a trial whose process or node died (or Ray failed) is restarted
            from its last checkpoint before the run gives up. Errors of user code or data (a
            reward function that raises, a prompt the tokenizer cannot take) end the run at
            once: a restart would fail the same way.
        keep_checkpoints: Newest checkpoints kept per trial; older ones are deleted, except
            the best by ``tune.metric`` (``tune.mode``). None keeps every checkpoint. A PBT
            sweep keeps at least those of one perturbation interval plus two, which a peer's
            exploit step may still restore.
        pending_timeout_s: Seconds to wait for the cluster to be able to hold a trial's
            resources (an autoscaling cluster adds nodes) before the run ends with what was
            asked and what the cluster has.
        stop_when: Metric (a key of ``result["rlhf"]``, e.g. ``monitor/distinct_2``) -> a
            :class:`~rayrm.config.stopping.StopRule` (``above``/``below``, ``after``): the run
            ends at the first iteration where any rule holds (``rayrm.rl.monitors``).
        iteration_timeout_s: Seconds one training iteration may take (sample, score, update,
            sync, evaluation); past it the trial fails with a line naming the phase and is
            restored from its checkpoint (``max_failures``): a hung learner or a collective
            that never completes cannot stall the run. None: no limit.
        loggers, mlflow, wandb: Where each iteration's ``result["rlhf"]`` metrics also go
            (:class:`~rayrm.config.tracking.TrackingSettings`).
    """

    num_iterations: int = Field(20, ge=1)
    num_epochs: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(5, ge=1)
    storage_path: NonEmptyStr = "./rayrm_runs"
    num_cpus: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)
    pending_timeout_s: float = Field(120.0, ge=0)
    keep_checkpoints: int | None = Field(3, ge=1)
    iteration_timeout_s: float | None = Field(3600.0, gt=0)
    stop_when: dict[str, StopRule] = Field(default_factory=dict)


class EvalSettings(Section):
    """Held-out evaluation: proxy reward next to an independent gold scorer, and the report.

    Reward models can be over-optimised (Gao et al. 2022, https://arxiv.org/abs/2210.10760):
    the proxy keeps rising while the true quality falls. Every ``every`` iterations the policy
    samples one completion per held-out prompt; both the proxy (the run's reward source) and the
    gold scorer score them, so the two curves parting shows over-optimisation. A multi-turn run
    (an ``env`` section) plays one whole episode per held-out row instead: ``eval/success``
    (with its standard error), ``eval/return`` and ``eval/turns`` besides proxy and gold.

    Attributes:
        prompts: Held-out prompts file (.parquet/.jsonl/.json); None uses ``data.prompts``.
        num_prompts: Held-out prompts used per evaluation (the first ones of the file).
        every: Evaluate every this many iterations (0 = never).
        gold_function: ``"module:function"`` gold scorer with the reward-function signature
            (references and the rows' other columns passed as to reward functions), run in
            the trial process; None reports the proxy alone.
        report: Write ``report.md`` and plots into the run folder at the end of ``rayrm train``.
        report_samples: Prompts in the report's before/after completion table (multi-turn:
            held-out rows whose conversations it shows).
    """

    prompts: NonEmptyStr | None = None
    num_prompts: int = Field(32, ge=1)
    every: int = Field(5, ge=0)
    gold_function: NonEmptyStr | None = None
    report: bool = True
    report_samples: int = Field(6, ge=0)


class RLConfig(Section):
    """Everything one run is told; one YAML file fills it.

    Attributes:
        name: Experiment name: the run's folder under ``run.storage_path``.
        seed: Seed for prompt order, sampling and initialisation.
        model: See :class:`ModelSettings`.
        data: See :class:`DataSettings`.
        generation: See :class:`GenerationSettings`.
        reward: See :class:`RewardSettings`.
        algorithm: See :class:`AlgorithmSettings` (was ``ppo``).
        resources: See :class:`ResourcesSettings`.
        run: See :class:`RunSettings`.
        tune: See :class:`TuneSettings`.
        eval: See :class:`EvalSettings`.
        env: See :class:`~rayrm.config.environment.EnvSettings` (multi-turn episodes).
    """

    name: NonEmptyStr = "rayrm"
    seed: int = Field(0, ge=0)
    model: ModelSettings
    data: DataSettings
    generation: GenerationSettings = GenerationSettings()
    reward: RewardSettings = RewardSettings()
    algorithm: AlgorithmSettings = AlgorithmSettings()
    resources: ResourcesSettings = ResourcesSettings()
    run: RunSettings = RunSettings()
    tune: TuneSettings = TuneSettings()
    eval: EvalSettings = EvalSettings()
    env: EnvSettings | None = None

    renamed: ClassVar[dict[str, str]] = {"ppo": "algorithm"}

    @property
    def envs_per_env_runner(self) -> int:
        """Completions each env runner samples per iteration (the trial process if none)."""
        return self.algorithm.batch_size // max(1, self.resources.num_env_runners)

    @property
    def max_seq_len(self) -> int:
        """Longest prompt-plus-completion sequence (a whole multi-turn episode), in tokens."""
        if self.env is not None:
            return self.env.max_total_tokens
        return self.data.max_prompt_tokens + self.generation.max_new_tokens

    @property
    def max_policy_tokens(self) -> int:
        """Most tokens the policy samples in one episode (every turn of a multi-turn one)."""
        if self.env is not None:
            return min(
                self.env.max_turns * self.generation.max_new_tokens,
                self.env.max_total_tokens - 1,
            )
        return self.generation.max_new_tokens

    @property
    def completions_per_learner_minibatch(self) -> int:
        """Completions in one learner's share of one optimizer step."""
        return self.algorithm.completions_per_minibatch // max(1, self.resources.num_learners)

    @property
    def forward_batch_size(self) -> int:
        """Completions per no-grad learner forward (``algorithm.forward_batch_size`` resolved)."""
        return self.algorithm.forward_batch_size or max(1, self.completions_per_learner_minibatch)

    @property
    def recompute_logp(self) -> bool:
        """Whether the learner recomputes the old log-probs (``algorithm.recompute_logp`` resolved)."""
        if self.algorithm.recompute_logp is not None:
            return self.algorithm.recompute_logp
        return self.model.dtype != "float32" and not self.algorithm.async_rollouts

    def check(self) -> None:
        """Checks the relations between fields (types and ranges are checked on building).

        Raises:
            ConfigError: On the first problem found, naming its dotted key.
        """
        _check_relations(self)
        check_search_space(self.to_dict(), self.tune, self.renamed)
        check_stop_when(self.run.stop_when)

    def save_yaml(self, path: str | Path) -> None:
        """Writes the config as YAML that :func:`load_config` reads back.

        Args:
            path: Destination file; missing parent directories are created.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Relations between fields
# ---------------------------------------------------------------------------------------------


def _check_relations(cfg: RLConfig) -> None:
    """Cross-field checks; each message says why the fields must agree."""
    if "/" in cfg.name or "\\" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(
            f"name {cfg.name!r} must be a plain folder name: it becomes the run's folder "
            f"under run.storage_path",
            key="name",
        )
    model, reward, algorithm, res = cfg.model, cfg.reward, cfg.algorithm, cfg.resources
    if model.critic_path is not None and model.critic != "separate":
        raise ConfigError(
            f"model.critic_path is only used with model.critic=separate (critic is "
            f"{model.critic!r}): a shared critic is a value head on the policy trunk, so "
            f"remove critic_path or set model.critic=separate",
            key="model.critic_path",
        )
    if model.lora is not None and model.reference_path is not None:
        raise ConfigError(
            "model.reference_path is not used with model.lora: the reference is the base "
            "model (model.path) with the adapters off; remove one of them",
            key="model.reference_path",
        )
    if model.lora is not None and model.lora.dropout > 0:
        raise ConfigError(
            f"model.lora.dropout={model.lora.dropout:g} in RL training would make PPO's ratio "
            f"and the KL to the reference noisy before any update (every other dropout of "
            f"the policy is switched off for that reason): set it to 0 (dropout is for "
            f"rayrm sft and rayrm train-rm)",
            key="model.lora.dropout",
        )
    if not cfg.data.prompts.endswith(PROMPT_SUFFIXES):
        raise ConfigError(
            f"data.prompts {cfg.data.prompts!r} must end with one of {', '.join(PROMPT_SUFFIXES)}",
            key="data.prompts",
        )
    check_reward(reward)
    _check_env(cfg)
    gold = cfg.eval.gold_function
    if gold is not None and not FUNCTION_RE.match(gold):
        raise ConfigError(
            f"eval.gold_function must look like 'module:function' (got {gold!r})",
            key="eval.gold_function",
        )
    if cfg.eval.prompts is not None and not cfg.eval.prompts.endswith(PROMPT_SUFFIXES):
        raise ConfigError(
            f"eval.prompts {cfg.eval.prompts!r} must end with one of {', '.join(PROMPT_SUFFIXES)}",
            key="eval.prompts",
        )
    if algorithm.batch_size % max(1, res.num_env_runners):
        raise ConfigError(
            f"algorithm.batch_size ({algorithm.batch_size}) must be divisible by "
            f"resources.num_env_runners ({res.num_env_runners}): each env runner samples "
            f"the same number of completions",
            key="algorithm.batch_size",
        )
    if algorithm.async_rollouts and algorithm.recompute_logp:
        raise ConfigError(
            "algorithm.recompute_logp would replace the sampler's log-probs with the updated "
            "policy's, and under algorithm.async_rollouts the ratio must correct for the one update "
            "between sampling and learning: leave recompute_logp unset or false",
            key="algorithm.recompute_logp",
        )
    if algorithm.kl_mode == "loss" and algorithm.kl_estimator == "k1":
        raise ConfigError(
            "algorithm.kl_estimator=k1 as a loss (algorithm.kl_mode=loss) puts no KL pressure on the "
            "policy: its expected gradient is zero. Use k3 (the gradient of KL(ref||policy), "
            "GRPO's; the default) or k2 (of KL(policy||ref))",
            key="algorithm.kl_estimator",
        )
    learners = max(1, res.num_learners)
    _check_groups(cfg, learners)
    if algorithm.batch_size % (algorithm.num_minibatches * learners):
        raise ConfigError(
            f"algorithm.batch_size ({algorithm.batch_size}) must be divisible by algorithm.num_minibatches "
            f"({algorithm.num_minibatches}) * max(1, resources.num_learners) ({learners}) = "
            f"{algorithm.num_minibatches * learners}: each learner takes an equal share of the "
            f"batch and splits it into algorithm.num_minibatches minibatches of whole completions",
            key="algorithm.batch_size",
        )


def _check_groups(cfg: RLConfig, learners: int) -> None:
    """Group sampling and the critic-free estimators."""
    algorithm, n = cfg.algorithm, cfg.generation.samples_per_prompt
    if algorithm.uses_groups and n < 2:
        raise ConfigError(
            f"algorithm.advantage_estimator={algorithm.advantage_estimator} compares the samples of a "
            f"prompt: set generation.samples_per_prompt >= 2 (it is {n})",
            key="generation.samples_per_prompt",
        )
    if not algorithm.uses_critic and cfg.model.critic == "separate":
        raise ConfigError(
            f"model.critic=separate has no use with algorithm.advantage_estimator="
            f"{algorithm.advantage_estimator}, which needs no value model: remove it",
            key="model.critic",
        )
    per_runner = cfg.envs_per_env_runner
    if n > 1 and (per_runner % n or (algorithm.batch_size // n) % learners):
        raise ConfigError(
            f"algorithm.batch_size ({algorithm.batch_size}) must hold whole groups of "
            f"generation.samples_per_prompt ({n}) per env runner ({per_runner} completions "
            f"each) and per learner ({learners}): a group is sampled and trained together",
            key="algorithm.batch_size",
        )


def _check_env(cfg: RLConfig) -> None:
    """The ``env`` section (multi-turn episodes) and what it needs of the others."""
    if cfg.reward.source == "env" and cfg.env is None:
        raise ConfigError(
            "reward.source=env pays the environment's own rewards, but the run has no env "
            "section (env.environment: 'module:Class')",
            key="reward.source",
        )
    if cfg.env is not None and cfg.env.max_total_tokens <= cfg.data.max_prompt_tokens:
        raise ConfigError(
            f"env.max_total_tokens ({cfg.env.max_total_tokens}) must exceed "
            f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}): the longest opening would "
            "leave no room for a turn",
            key="env.max_total_tokens",
        )
    if cfg.reward.source == "env" and cfg.reward.normalize:
        raise ConfigError(
            "reward.normalize whitens the reward source's scores; with reward.source=env there "
            "are none (the environment's rewards are paid as they are)",
            key="reward.normalize",
        )
