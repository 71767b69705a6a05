"""The one run config: typed sections and their validation (YAML and files: ``config_io``).

Everything a run can be told lives here, documented once in the ``Attributes`` section of its
dataclass; one YAML file fills :class:`RunConfig`. The config is checked completely *before* Ray
starts, so this module must stay cheap to import: no ``ray``, no ``torch``.

Checks come in two layers:

* :meth:`RunConfig.validate` -- types, enum values, numeric ranges and cross-field relations.
  It never touches the filesystem, so Ray workers can rebuild a config with
  ``config_from_dict(d)`` anywhere.
* :func:`rayrm.config.io.validate_paths` -- model/tokenizer/critic/reward directories and the
  prompts file exist, and ``reward.function`` is importable. :func:`rayrm.config.io.load_config`
  runs it after making every path absolute, so the resolved config saved beside a checkpoint is
  self-contained. (Both are also reachable as ``rayrm.config.run.load_config`` etc.)

Every problem is raised as one :class:`ConfigError` whose one-line message names the dotted key
(``ppo.batch_size``) or the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

__all__ = [
    "PROMPT_SUFFIXES",
    "REQUIRED",
    "ConfigError",
    "DataConfig",
    "GenerationConfig",
    "ModelConfig",
    "PPOConfig",
    "ResourcesConfig",
    "RewardComponent",
    "RewardConfig",
    "RunConfig",
    "RunSettings",
    "config_from_dict",
]

_T = TypeVar("_T")

REQUIRED = "???"
"""A value that marks a required key as not filled in yet (as written in example configs)."""

PROMPT_SUFFIXES = (".parquet", ".jsonl", ".json")
"""File extensions that ``data.prompts`` may have."""

_FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_COMPONENT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(ValueError):
    """A problem with the run config, explained in one line.

    Attributes:
        key: Dotted key the problem is about (e.g. ``"ppo.batch_size"``), or None when the
            problem is with the file itself.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the cause said
        self.key = key


def _bounded(
    default: _T, *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> _T:
    """A dataclass field with a numeric range that :meth:`RunConfig.validate` checks."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le})


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ModelConfig:
    """The policy (and critic) to fine-tune.

    Attributes:
        path: Local Hugging Face causal-LM directory (must contain ``config.json``). Required.
        tokenizer_path: Tokenizer directory; None means ``path``.
        critic: ``shared`` puts the value head on the policy trunk; ``separate`` trains a
            separate critic model.
        critic_path: Hugging Face model directory the separate critic starts from; None means
            ``path``. Only allowed with ``critic=separate``.
        dtype: Dtype of the policy, critic and reference weights and of their forward and
            backward passes (``bfloat16`` on GPUs that have it, as most checkpoints are
            published). Updates go through float32 master weights and float32 Adam state
            (``rayrm.models.precision``); ``float16`` adds dynamic loss scaling. Weight syncs,
            checkpoints and ``rayrm export`` keep this dtype.
        gradient_checkpointing: Recompute the policy's (and critic's) activations in backward
            instead of storing them (Hugging Face's gradient checkpointing): less memory,
            about a third more update time.
    """

    path: str
    tokenizer_path: str | None = None
    critic: Literal["shared", "separate"] = "shared"
    critic_path: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False

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


@dataclass(kw_only=True)
class DataConfig:
    """The prompts sampled each iteration.

    Attributes:
        prompts: Prompts file (``.parquet``, ``.jsonl`` or ``.json``). Required. Each row holds
            a prompt string (``prompt_column``) or, when the file has no such column, a
            conversation (``messages_column``: a list of ``{role, content}`` messages, rendered
            with the policy tokenizer's chat template and its generation prompt).
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

    prompts: str
    prompt_column: str = "prompt"
    messages_column: str = "messages"
    chat_template: bool = False
    max_prompt_tokens: int = _bounded(32, ge=1)
    reference_column: str = "reference"


@dataclass(kw_only=True)
class GenerationConfig:
    """How completions are sampled from the policy.

    Attributes:
        max_new_tokens: Completion length limit in tokens.
        temperature: Softmax temperature; the logprobs PPO uses are computed at it too.
        top_k: Keep only the k most likely tokens; 0 turns it off.
        top_p: Nucleus sampling mass; 1.0 turns it off.
        stop_token_ids: Token ids that end a completion besides the tokenizer's EOS and every
            id of the model's ``generation_config.eos_token_id`` (which always do; chat models
            list several, e.g. Qwen2.5's ``<|im_end|>`` and ``<|endoftext|>``). The stop token
            is the completion's last action and receives the score; it is not in the text.
        stop_strings: Texts that end a completion once it contains one; the text the reward
            reads keeps the stop string and drops what the last token added after it.
    """

    max_new_tokens: int = _bounded(16, ge=1)
    temperature: float = _bounded(1.0, gt=0)
    top_k: int = _bounded(0, ge=0)
    top_p: float = _bounded(1.0, gt=0, le=1)
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class RewardConfig:
    """Where scores come from and how they are shaped.

    Attributes:
        source: ``model`` scores with a reward model at ``path``; ``function`` calls
            ``function`` on the decoded texts; ``metric`` compares each completion with its
            prompt's reference (``data.reference_column``) by ``metric``; ``ensemble`` scores
            with every reward model in ``members`` and combines them by ``combine``;
            ``composite`` is the weighted sum of ``components``.
        path: Reward-model directory. Required with ``source=model``; ignored otherwise.
            Reward models read prompt + completion as text through *their own* tokenizer (and,
            for conversations, their own chat template), so they need not share the policy's.
        tokenizer_path: Tokenizer directory for reward models whose directory has none
            (ensemble members too); None uses each model's own directory.
        function: ``"module:function"`` scoring callable. Required with ``source=function``;
            ignored otherwise. A function with a ``references`` parameter also receives the
            prompts' reference texts.
        metric: ``chrf`` or ``bleu`` (sacrebleu, sentence level, scaled to [0, 1]; see
            ``rayrm.rewards.text_metrics``). Used with ``source=metric``. Metrics score in the
            trial process (a few ms per batch), not in actors.
        members: Reward-model directories of an ensemble (at least two; each in its own
            ``num_actors`` actors, all scored in parallel). Only with ``source=ensemble``.
        combine: How an ensemble's member scores become one: ``mean``, ``min`` (the most
            pessimistic member) or ``mean_minus_std`` (mean − ``uncertainty_coef`` · std over
            members, the population std; penalises disagreement, Coste et al. 2023,
            https://arxiv.org/abs/2310.02743). Each member's mean and the std are logged
            (``reward/member/<i>``, ``reward/disagreement``).
        uncertainty_coef: k in mean − k·std.
        components: Terms of a composite reward, each a mapping with ``name`` (unique;
            logged as ``reward/component/<name>``, the unweighted score), ``weight`` (default
            1.0), ``source`` (``model``, ``function``, ``metric`` or ``ensemble``) and that
            source's keys (``path``, ``function``, ``metric``, ``members``, ``combine``,
            ``uncertainty_coef``); see :class:`RewardComponent`. Actor settings
            (``num_actors`` ...) apply to every model/function component and ensemble member.
            Only with ``source=composite``.
        num_actors: Reward actors that score in parallel.
        batch_size: Texts per reward-model forward pass.
        num_cpus_per_actor: CPUs reserved for each reward actor.
        num_gpus_per_actor: GPUs (fractions allowed) reserved for each reward actor.
        custom_resources_per_actor: Custom Ray resources each reward actor needs (e.g.
            ``{rayrm_reward: 1}`` to place it on the reward node type of cluster.yaml).
        pool_name: Score through the SHARED pool of this name (detached named actors in the
            ``rayrm`` Ray namespace, created on first use) instead of private actors; e.g. a
            ``rayrm serve-rm`` reward service started from the same reward section. Ensemble
            members and composite components get sub-pools ``<pool_name>.<component>``.
        shared_in_sweeps: ``rayrm tune`` runs one shared pool for all its trials (N
            concurrent trials do not load N copies of a reward model).
        max_length: Prompt plus completion are truncated to this many reward-model tokens.
        clip: If set, scores are clipped to ``[-clip, clip]`` after normalisation.
        normalize: Whiten scores with a running mean and standard deviation.
        length_penalty: Subtracted per completion token beyond ``target_length``:
            ``length_penalty · max(0, n − target_length)``, n = generated tokens without EOS.
            Applies to any source, before normalisation; logged as ``reward/penalty/length``.
        target_length: Completion tokens allowed before ``length_penalty`` starts.
        missing_eos_penalty: If set, subtracted from every completion that ended at
            ``generation.max_new_tokens`` instead of with EOS (the episode was truncated, not
            terminated); logged as ``reward/penalty/missing_eos``. Not applied to held-out
            evaluation samples, whose ending is not recorded.
    """

    source: Literal["model", "function", "metric", "ensemble", "composite"] = "function"
    path: str | None = None
    tokenizer_path: str | None = None
    function: str | None = "envs.builtin:vowel_reward"
    metric: Literal["chrf", "bleu"] = "chrf"
    members: list[str] = field(default_factory=list)
    combine: Literal["mean", "min", "mean_minus_std"] = "mean"
    uncertainty_coef: float = _bounded(1.0, ge=0)
    components: list[dict[str, Any]] = field(default_factory=list)
    num_actors: int = _bounded(1, ge=1)
    batch_size: int = _bounded(32, ge=1)
    num_cpus_per_actor: float = _bounded(1.0, ge=0)
    num_gpus_per_actor: float = _bounded(0.0, ge=0)
    custom_resources_per_actor: dict[str, Any] = field(default_factory=dict)
    pool_name: str | None = None
    shared_in_sweeps: bool = True
    max_length: int = _bounded(512, ge=1)
    clip: float | None = _bounded(None, gt=0)
    normalize: bool = False
    length_penalty: float = _bounded(0.0, ge=0)
    target_length: int = _bounded(0, ge=0)
    missing_eos_penalty: float | None = _bounded(None, ge=0)

    @property
    def component_configs(self) -> list[RewardComponent]:
        """``components`` as typed entries (each checked like a section of its own)."""
        return [
            _build(RewardComponent, c, f"reward.components[{i}]")
            for i, c in enumerate(self.components)
        ]

    @property
    def needs_references(self) -> bool:
        """Whether a metric source (top-level or component) compares with references."""
        if self.source == "composite":
            return any(c.get("source") == "metric" for c in self.components)
        return self.source == "metric"

    @property
    def num_actor_pools(self) -> int:
        """Groups of ``num_actors`` reward actors this reward runs (metrics need none)."""

        def pools(source: Any, members: Any) -> int:
            if source == "ensemble":
                return len(members or [])
            return 1 if source in ("model", "function") else 0

        if self.source == "composite":
            return sum(pools(c.get("source"), c.get("members")) for c in self.components)
        return pools(self.source, self.members)


@dataclass(kw_only=True)
class RewardComponent:
    """One term of a composite reward: an entry of ``reward.components``.

    Attributes:
        name: Unique within the composite; letters, digits, ``_`` and ``-``. The component's
            unweighted score is logged as ``reward/component/<name>``.
        weight: Its coefficient in the weighted sum (negative weights penalise).
        source: ``model``, ``function``, ``metric`` or ``ensemble`` (composites do not nest).
        path: As ``reward.path``, for ``source=model``.
        tokenizer_path: As ``reward.tokenizer_path``, for this component's reward models.
        function: As ``reward.function``, for ``source=function``.
        metric: As ``reward.metric``, for ``source=metric``.
        members: As ``reward.members``, for ``source=ensemble``.
        combine: As ``reward.combine``, for ``source=ensemble``.
        uncertainty_coef: As ``reward.uncertainty_coef``, for ``source=ensemble``.
    """

    name: str
    weight: float = 1.0
    source: Literal["model", "function", "metric", "ensemble"]
    path: str | None = None
    tokenizer_path: str | None = None
    function: str | None = None
    metric: Literal["chrf", "bleu"] = "chrf"
    members: list[str] = field(default_factory=list)
    combine: Literal["mean", "min", "mean_minus_std"] = "mean"
    uncertainty_coef: float = _bounded(1.0, ge=0)


@dataclass(kw_only=True)
class PPOConfig:
    """PPO with a per-token KL penalty against the frozen reference policy.

    Attributes:
        batch_size: Completions (one per prompt) sampled per iteration.
        num_minibatches: Optimizer steps per epoch over the batch.
        num_epochs: Passes over each batch.
        lr: Adam learning rate.
        gamma: Discount factor over completion tokens.
        gae_lambda: GAE lambda (https://arxiv.org/abs/1506.02438).
        clip_ratio: PPO policy-ratio clip epsilon.
        value_clip: Value-prediction clip around the old values; None disables value clipping.
        vf_coef: Weight of the value loss.
        entropy_coef: Weight of the entropy bonus.
        max_grad_norm: Global gradient-norm clip; None disables it.
        kl_coef: Initial KL-penalty coefficient beta.
        adaptive_kl: Adapt beta towards ``target_kl`` with the controller of Ziegler et al.
            2019 (https://arxiv.org/abs/1909.08593).
        target_kl: Per-sequence KL the adaptive controller aims for.
        kl_horizon: Horizon (in completions) of the adaptive controller.
        forward_batch_size: Completions per no-grad forward pass in the learner (reference
            log-probs, values, recomputed log-probs); None uses the completions of one
            learner's training minibatch, which fit in memory with gradients already.
        recompute_logp: Recompute the sampled tokens' log-probs (PPO's "old" log-probs and the
            KL penalty's) with the learner's forward instead of using the sampler's. None:
            only when ``model.dtype`` is not float32, where KV-cached decoding and a full
            forward round differently and the first ratio would not be exactly 1.
    """

    batch_size: int = _bounded(16, ge=1)
    num_minibatches: int = _bounded(2, ge=1)
    num_epochs: int = _bounded(2, ge=1)
    lr: float = _bounded(1.0e-5, gt=0)
    gamma: float = _bounded(1.0, ge=0, le=1)
    gae_lambda: float = _bounded(0.95, ge=0, le=1)
    clip_ratio: float = _bounded(0.2, gt=0)
    value_clip: float | None = _bounded(0.2, gt=0)
    vf_coef: float = _bounded(0.1, ge=0)
    entropy_coef: float = _bounded(0.0, ge=0)
    max_grad_norm: float | None = _bounded(1.0, gt=0)
    kl_coef: float = _bounded(0.05, ge=0)
    adaptive_kl: bool = False
    target_kl: float = _bounded(6.0, gt=0)
    kl_horizon: int = _bounded(10000, gt=0)
    forward_batch_size: int | None = _bounded(None, ge=1)
    recompute_logp: bool | None = None

    @property
    def completions_per_minibatch(self) -> int:
        """Completions per optimizer step, summed over all learners."""
        return self.batch_size // self.num_minibatches


@dataclass(kw_only=True)
class ResourcesConfig:
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
    """

    num_env_runners: int = _bounded(0, ge=0)
    num_cpus_per_env_runner: float = _bounded(1.0, ge=0)
    num_gpus_per_env_runner: float = _bounded(0.0, ge=0)
    num_learners: int = _bounded(0, ge=0)
    num_cpus_per_learner: float = _bounded(1.0, ge=0)
    num_gpus_per_learner: float = _bounded(0.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    custom_resources_per_env_runner: dict[str, Any] = field(default_factory=dict)
    custom_resources_per_learner: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class RunSettings:
    """Length, checkpointing and storage of the run.

    Attributes:
        num_iterations: Training iterations (sample, score, update) to run.
        checkpoint_every: Save a checkpoint every this many iterations (and at the end).
        storage_path: Directory under which the run's folder (``name``) is created.
        num_cpus: CPUs for a local Ray started in-process; None uses all of them.
        max_failures: Times a failed trial (its process died or raised) is restarted from its
            last checkpoint before the run gives up.
    """

    num_iterations: int = _bounded(20, ge=1)
    checkpoint_every: int = _bounded(5, ge=1)
    storage_path: str = "./rayrm_runs"
    num_cpus: int | None = _bounded(None, ge=1)
    max_failures: int = _bounded(2, ge=0)


@dataclass(kw_only=True)
class EvalSettings:
    """Held-out evaluation: proxy reward next to an independent gold scorer, and the report.

    Reward models can be over-optimised (Gao et al. 2022, https://arxiv.org/abs/2210.10760):
    the proxy keeps rising while the true quality falls. Every ``every`` iterations the policy
    samples one completion per held-out prompt; both the proxy (the run's reward source) and the
    gold scorer score them, so the two curves parting shows over-optimisation.

    Attributes:
        prompts: Held-out prompts file (.parquet/.jsonl/.json); None uses ``data.prompts``.
        num_prompts: Held-out prompts used per evaluation (the first ones of the file).
        every: Evaluate every this many iterations (0 = never).
        gold_function: ``"module:function"`` gold scorer with the reward-function signature,
            run in the trial process; None reports the proxy alone.
        report: Write ``report.md`` and plots into the run folder at the end of ``rayrm train``.
        report_samples: Prompts in the report's before/after completion table.
    """

    prompts: str | None = None
    num_prompts: int = _bounded(32, ge=1)
    every: int = _bounded(5, ge=0)
    gold_function: str | None = None
    report: bool = True
    report_samples: int = _bounded(6, ge=0)


SAMPLERS = ("grid", "choice", "uniform", "loguniform", "randint")
"""Search-space kinds for ``tune.search_space`` entries (Ray Tune's samplers of those names)."""


@dataclass(kw_only=True)
class TuneSettings:
    """Hyperparameter sweep settings, used by ``rayrm tune`` (ignored by ``rayrm train``).

    Attributes:
        search_space: Dotted config key -> one sampler, written as a one-key mapping:
            ``{grid: [a, b]}``, ``{choice: [a, b]}``, ``{uniform: [low, high]}``,
            ``{loguniform: [low, high]}`` or ``{randint: [low, high]}``. Any key of this config
            may be searched (e.g. ``ppo.lr``, ``ppo.kl_coef``, ``seed``).
        num_samples: Trials to sample (each grid point is repeated this many times).
        scheduler: ``fifo`` (run every trial to the end), ``asha`` (stop weak trials early)
            or ``pbt`` (population-based training: mutates ``ppo.lr`` and ``ppo.kl_coef``).
        metric: Result key under ``rlhf`` to optimise, e.g. ``reward/mean`` or
            ``objective/reward_minus_kl`` (reward minus β·KL per sequence).
        mode: ``max`` or ``min``.
        max_concurrent_trials: Trials run at once; None lets Tune fit as many as resources allow.
        grace_period: ASHA: iterations every trial runs before it may be stopped.
        reduction_factor: ASHA: keep the top 1/reduction_factor at each rung.
        perturbation_interval: PBT: iterations between exploit/explore steps.
    """

    search_space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = _bounded(1, ge=1)
    scheduler: Literal["fifo", "asha", "pbt"] = "asha"
    metric: str = "reward/mean"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int | None = _bounded(None, ge=1)
    grace_period: int = _bounded(5, ge=1)
    reduction_factor: float = _bounded(2.0, gt=1)
    perturbation_interval: int = _bounded(5, ge=1)


@dataclass(kw_only=True)
class RunConfig:
    """Everything one run is told; one YAML file fills it.

    Attributes:
        name: Experiment name: the run's folder under ``run.storage_path``.
        seed: Seed for prompt order, sampling and initialisation.
        model: See :class:`ModelConfig`.
        data: See :class:`DataConfig`.
        generation: See :class:`GenerationConfig`.
        reward: See :class:`RewardConfig`.
        ppo: See :class:`PPOConfig`.
        resources: See :class:`ResourcesConfig`.
        run: See :class:`RunSettings`.
        tune: See :class:`TuneSettings`.
        eval: See :class:`EvalSettings`.
    """

    name: str = "rayrm"
    seed: int = _bounded(0, ge=0)
    model: ModelConfig
    data: DataConfig
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    run: RunSettings = field(default_factory=RunSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    @property
    def envs_per_env_runner(self) -> int:
        """Completions each env runner samples per iteration (the trial process if none)."""
        return self.ppo.batch_size // max(1, self.resources.num_env_runners)

    @property
    def max_seq_len(self) -> int:
        """Longest prompt-plus-completion sequence, in tokens."""
        return self.data.max_prompt_tokens + self.generation.max_new_tokens

    @property
    def completions_per_learner_minibatch(self) -> int:
        """Completions in one learner's share of one optimizer step."""
        return self.ppo.completions_per_minibatch // max(1, self.resources.num_learners)

    @property
    def forward_batch_size(self) -> int:
        """Completions per no-grad learner forward (``ppo.forward_batch_size`` resolved)."""
        return self.ppo.forward_batch_size or max(1, self.completions_per_learner_minibatch)

    @property
    def recompute_logp(self) -> bool:
        """Whether the learner recomputes the old log-probs (``ppo.recompute_logp`` resolved)."""
        if self.ppo.recompute_logp is not None:
            return self.ppo.recompute_logp
        return self.model.dtype != "float32"

    def validate(self) -> None:
        """Checks every field's type, enum value and range, then the relations between fields.

        Raises:
            ConfigError: On the first problem found, naming its dotted key.
        """
        _check_fields(self, "")
        _check_relations(self)
        _check_search_space(self)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts; ``config_from_dict(c.to_dict()) == c``."""
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        """Writes the config as YAML that :func:`load_config` reads back.

        Args:
            path: Destination file; missing parent directories are created.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Field checks shared by all sections
# ---------------------------------------------------------------------------------------------


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _check_value(key: str, value: Any, tp: Any) -> None:
    """Raises ConfigError unless ``value`` fits the annotation ``tp``."""
    tp, optional = _split_optional(tp)
    if value is None and optional:
        return
    or_null = " or null" if optional else ""
    got = f"got {type(value).__name__} {value!r}"
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value not in choices or not isinstance(value, str):
            raise ConfigError(
                f"{key} must be one of {', '.join(choices)}{or_null} ({got})", key=key
            )
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false{or_null} ({got})", key=key)
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer{or_null} ({got})", key=key)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number{or_null} ({got})", key=key)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite ({got})", key=key)
    elif typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key} must be a mapping with string keys ({got})", key=key)
    elif tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a non-empty string{or_null} ({got})", key=key)
    elif typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list{or_null} ({got})", key=key)
        (item_tp,) = typing.get_args(tp)
        for i, item in enumerate(value):
            _check_value(f"{key}[{i}]", item, item_tp)
    else:  # pragma: no cover - guards against a new field type nobody taught this function
        raise TypeError(f"{key}: unsupported config field type {tp!r}")


def _check_bounds(key: str, value: Any, bounds: Mapping[str, Any], optional: bool) -> None:
    """Raises ConfigError unless ``value`` lies in the field's ``ge``/``gt``/``le`` range."""
    ge, gt, le = bounds.get("ge"), bounds.get("gt"), bounds.get("le")
    if value is None:
        return
    low_ok = (ge is None or value >= ge) and (gt is None or value > gt)
    if low_ok and (le is None or value <= le):
        return
    low = gt if gt is not None else ge
    if low is not None and le is not None:
        rule = f"in {'(' if gt is not None else '['}{low:g}, {le:g}]"
    elif le is not None:
        rule = f"<= {le:g}"
    else:
        rule = f"{'>' if gt is not None else '>='} {low:g}"
    or_null = " or null" if optional else ""
    raise ConfigError(f"{key} must be {rule}{or_null} (got {value!r})", key=key)


def _check_fields(obj: Any, prefix: str) -> None:
    """Checks the type and range of every field of the dataclass ``obj``, sections included."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        key, value = _join(prefix, f.name), getattr(obj, f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{key} must be a {tp.__name__} (got {value!r})", key=key)
            _check_fields(value, key)
            continue
        _check_value(key, value, tp)
        _check_bounds(key, value, f.metadata, optional=_split_optional(tp)[1])


def _check_relations(cfg: RunConfig) -> None:
    """Cross-field checks; each message says why the fields must agree."""
    if "/" in cfg.name or "\\" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(
            f"name {cfg.name!r} must be a plain folder name: it becomes the run's folder "
            f"under run.storage_path",
            key="name",
        )
    model, reward, ppo, res = cfg.model, cfg.reward, cfg.ppo, cfg.resources
    if model.critic_path is not None and model.critic != "separate":
        raise ConfigError(
            f"model.critic_path is only used with model.critic=separate (critic is "
            f"{model.critic!r}): a shared critic is a value head on the policy trunk, so "
            f"remove critic_path or set model.critic=separate",
            key="model.critic_path",
        )
    if not cfg.data.prompts.endswith(PROMPT_SUFFIXES):
        raise ConfigError(
            f"data.prompts {cfg.data.prompts!r} must end with one of {', '.join(PROMPT_SUFFIXES)}",
            key="data.prompts",
        )
    _check_reward(reward)
    gold = cfg.eval.gold_function
    if gold is not None and not _FUNCTION_RE.match(gold):
        raise ConfigError(
            f"eval.gold_function must look like 'module:function' (got {gold!r})",
            key="eval.gold_function",
        )
    if cfg.eval.prompts is not None and not cfg.eval.prompts.endswith(PROMPT_SUFFIXES):
        raise ConfigError(
            f"eval.prompts {cfg.eval.prompts!r} must end with one of {', '.join(PROMPT_SUFFIXES)}",
            key="eval.prompts",
        )
    if ppo.batch_size % max(1, res.num_env_runners):
        raise ConfigError(
            f"ppo.batch_size ({ppo.batch_size}) must be divisible by "
            f"resources.num_env_runners ({res.num_env_runners}): each env runner samples "
            f"the same number of completions",
            key="ppo.batch_size",
        )
    learners = max(1, res.num_learners)
    if ppo.batch_size % (ppo.num_minibatches * learners):
        raise ConfigError(
            f"ppo.batch_size ({ppo.batch_size}) must be divisible by ppo.num_minibatches "
            f"({ppo.num_minibatches}) * max(1, resources.num_learners) ({learners}) = "
            f"{ppo.num_minibatches * learners}: each learner takes an equal share of the "
            f"batch and splits it into ppo.num_minibatches minibatches of whole completions",
            key="ppo.batch_size",
        )


def _check_source(prefix: str, source: str, path: Any, function: Any, members: list[str]) -> None:
    """The keys one reward source needs (top-level ``reward`` or a component) are there."""
    if source == "model" and path is None:
        raise ConfigError(
            f"{prefix}.path is required when {prefix}.source=model (the reward-model directory)",
            key=f"{prefix}.path",
        )
    if source == "function" and function is None:
        raise ConfigError(
            f"{prefix}.function is required when {prefix}.source=function "
            "(a 'module:function' callable, e.g. 'envs.builtin:vowel_reward')",
            key=f"{prefix}.function",
        )
    if function is not None and not _FUNCTION_RE.match(function):
        raise ConfigError(
            f"{prefix}.function must look like 'module:function', e.g. "
            f"'envs.builtin:vowel_reward' (got {function!r})",
            key=f"{prefix}.function",
        )
    if source == "ensemble" and len(members) < 2:
        raise ConfigError(
            f"{prefix}.members needs at least two reward-model directories when "
            f"{prefix}.source=ensemble (got {len(members)})",
            key=f"{prefix}.members",
        )
    if source != "ensemble" and members:
        raise ConfigError(
            f"{prefix}.members is only used with {prefix}.source=ensemble (source is "
            f"{source!r}): set the source or remove members",
            key=f"{prefix}.members",
        )


def _check_reward(reward: RewardConfig) -> None:
    """Each reward source has what it needs; composite components are checked one by one."""
    _check_source("reward", reward.source, reward.path, reward.function, reward.members)
    if reward.source != "composite":
        if reward.components:
            raise ConfigError(
                f"reward.components is only used with reward.source=composite (source is "
                f"{reward.source!r}): set the source or remove components",
                key="reward.components",
            )
        return
    if not reward.components:
        raise ConfigError(
            "reward.components needs at least one entry when reward.source=composite",
            key="reward.components",
        )
    names: set[str] = set()
    for i, comp in enumerate(reward.component_configs):
        prefix = f"reward.components[{i}]"
        _check_fields(comp, prefix)
        if not _COMPONENT_NAME_RE.match(comp.name):
            raise ConfigError(
                f"{prefix}.name {comp.name!r} may hold only letters, digits, '_' and '-' "
                f"(it names a metric and the component's actors)",
                key=f"{prefix}.name",
            )
        if comp.name in names:
            raise ConfigError(
                f"{prefix}.name {comp.name!r} is used by an earlier component; names must be "
                f"unique (each one is logged as reward/component/<name>)",
                key=f"{prefix}.name",
            )
        names.add(comp.name)
        _check_source(prefix, comp.source, comp.path, comp.function, comp.members)


def _check_search_space(cfg: RunConfig) -> None:
    """Every ``tune.search_space`` entry names a real scalar key and a well-formed sampler."""
    plain = dataclasses.asdict(cfg)
    for key, spec in cfg.tune.search_space.items():
        where = f"tune.search_space.{key}"
        node: Any = plain
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{where}: {key} is not a config key", key=where)
            node = node[part]
        if isinstance(node, dict) or key.startswith("tune."):
            raise ConfigError(f"{where}: only single values can be searched", key=where)
        if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
            raise ConfigError(
                f"{where} must be one of {{{': [...]}, {'.join(SAMPLERS)}: [...]}} (got {spec!r})",
                key=where,
            )
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}.{kind} needs a non-empty list (got {args!r})", key=where)
        if kind in ("uniform", "loguniform", "randint"):
            numeric = all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
            if len(args) != 2 or not numeric or not args[0] < args[1]:
                raise ConfigError(f"{where}.{kind} needs [low, high] with low < high", key=where)
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(f"{where}.loguniform needs low > 0", key=where)
    if cfg.tune.scheduler == "pbt":
        for key in ("ppo.lr", "ppo.kl_coef"):
            spec = cfg.tune.search_space.get(key)
            if spec is not None and next(iter(spec)) not in ("uniform", "loguniform"):
                raise ConfigError(
                    f"tune.search_space.{key}: with tune.scheduler=pbt it is mutated, so it "
                    f"needs a continuous range (uniform or loguniform)",
                    key=f"tune.search_space.{key}",
                )


# ---------------------------------------------------------------------------------------------
# Building from plain data
# ---------------------------------------------------------------------------------------------


def _unknown_key(key: str, name: str, valid: Sequence[str], where: str = "") -> ConfigError:
    """The error for ``key`` (last part ``name``), suggesting the closest of ``valid``."""
    close = difflib.get_close_matches(name, valid, n=1)
    prefix = key[: len(key) - len(name)]
    hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key {key}{where} ({hint})", key=key)


def _coerce(value: Any, tp: Any) -> Any:
    """Widens what YAML and callers naturally write: ints for floats, Paths for strings."""
    tp, _ = _split_optional(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _build(cls: type[_T], data: Any, prefix: str) -> _T:
    """Builds dataclass ``cls`` from a mapping, rejecting unknown keys and missing required ones."""
    if data is None:  # a YAML section with every key commented out
        data = {}
    if not isinstance(data, Mapping):
        what = f"section {prefix}" if prefix else "the config"
        raise ConfigError(
            f"{what} must be a mapping of keys to values (got {type(data).__name__} {data!r})",
            key=prefix or None,
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in data:
        if name not in fields:
            raise _unknown_key(_join(prefix, str(name)), str(name), list(fields))
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key, tp = _join(prefix, name), hints[name]
        value = data.get(name, dataclasses.MISSING)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, None if value is dataclasses.MISSING else value, key)
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and (value is dataclasses.MISSING or value is None or value == REQUIRED):
            raise ConfigError(f"{key} is required", key=key)
        if value is not dataclasses.MISSING:
            kwargs[name] = _coerce(value, tp)
    return cls(**kwargs)


def config_from_dict(d: Mapping[str, Any], *, check_paths: bool = False) -> RunConfig:
    """Builds and validates a :class:`RunConfig` from plain nested mappings.

    Args:
        d: Sections and values, as in the YAML file (e.g. from :meth:`RunConfig.to_dict`).
        check_paths: Also make paths absolute and check them with :func:`validate_paths`.
            Leave False where the filesystem is not the user's (e.g. in Ray workers).

    Returns:
        The validated config.

    Raises:
        ConfigError: On the first problem found.
    """
    cfg = _build(RunConfig, d, "")
    cfg.validate()
    if check_paths:
        from rayrm.config.io import resolve_paths, validate_paths

        cfg = resolve_paths(cfg)
        validate_paths(cfg)
    return cfg


_IO_NAMES = frozenset(
    {"apply_override", "load_config", "resolve_paths", "validate_paths", "validate_reward_paths"}
)


def __getattr__(name: str) -> Any:
    """Lazy re-exports of :mod:`rayrm.config.io` (YAML, overrides, filesystem checks)."""
    if name in _IO_NAMES:
        from rayrm.config import io as config_io

        return getattr(config_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
