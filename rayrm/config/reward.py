"""The ``reward`` section of a run: where scores come from and how they are shaped.

Typed sections (:class:`RewardSettings`, one :class:`RewardComponent` per composite term) and the
checks between their fields (:func:`check_reward`). No filesystem access here: directories and
imports are checked by ``rayrm.config.checks``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from rayrm.config.base import ConfigError, NonEmptyStr, Section

__all__ = ["FUNCTION_RE", "RewardComponent", "RewardSettings", "check_reward"]

FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
"""What a ``"module:function"`` reference looks like."""

_COMPONENT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class RewardComponent(Section):
    """One term of a composite reward: an entry of ``reward.components``.

    Attributes:
        name: Unique within the composite; letters, digits, ``_`` and ``-``. The component's
            unweighted score is logged as ``reward/component/<name>``.
        weight: Its coefficient in the weighted sum (negative weights penalise).
        source: ``model``, ``function``, ``metric`` or ``ensemble`` (composites do not nest).
        path: As ``reward.path``, for ``source=model`` (or an ensemble's directory).
        tokenizer_path: As ``reward.tokenizer_path``, for this component's reward models.
        function: As ``reward.function``, for ``source=function``.
        metric: As ``reward.metric``, for ``source=metric``.
        members: As ``reward.members``, for ``source=ensemble``.
        combine: As ``reward.combine``, for ``source=ensemble``.
        uncertainty_coef: As ``reward.uncertainty_coef``, for ``source=ensemble``.
    """

    name: NonEmptyStr
    weight: float = 1.0
    source: Literal["model", "function", "metric", "ensemble"]
    path: NonEmptyStr | None = None
    tokenizer_path: NonEmptyStr | None = None
    function: NonEmptyStr | None = None
    metric: Literal["chrf", "bleu"] = "chrf"
    members: list[NonEmptyStr] = Field(default_factory=list)
    combine: Literal["mean", "min", "mean_minus_std"] = "mean"
    uncertainty_coef: float = Field(1.0, ge=0)


class RewardSettings(Section):
    """Where scores come from and how they are shaped.

    Attributes:
        source: ``model`` scores with a reward model at ``path``; ``function`` calls
            ``function`` on the decoded texts; ``metric`` compares each completion with its
            prompt's reference (``data.reference_column``) by ``metric``; ``ensemble`` scores
            with every reward model in ``members`` and combines them by ``combine``;
            ``composite`` is the weighted sum of ``components``; ``env`` adds nothing: the
            rewards are the environment's own, turn by turn (``env`` section, multi-turn
            episodes).
        path: Reward-model directory. Required with ``source=model``; with
            ``source=ensemble`` and no ``members``, an ensemble's directory (``rayrm train-rm
            --members k`` writes its ``ensemble.json``): its members. Reward models read prompt + completion as text through *their own* tokenizer (and,
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
        on_nan: What a NaN or infinite score does: ``error`` ends the run with one line naming
            the source and the first bad completion; ``skip`` leaves those completions out
            of the update (counted as ``reward/skipped``).
        timeout_s: Seconds a reward actor may take for one chunk of ``batch_size`` texts. A
            chunk that takes longer (a stuck judge, a wedged GPU) restarts its actor and is
            scored again on the next one; after ``max_restarts`` such resubmissions the trial
            fails (and is restored from its checkpoint, ``run.max_failures``). None waits
            forever.
        max_restarts: Restarts of a reward actor after a crash or a timeout, and
            resubmissions of one chunk (after a crash, a timeout or a ``retry_exceptions``
            error; each waits 0.5 s, doubling up to 30 s, except after a timeout). Scoring is
            at-least-once: a resubmitted chunk may have run before; reward functions with an
            ``ids`` parameter get stable completion ids to deduplicate by. -1: no limit;
            unset: no limit for a shared pool (``pool_name``, a ``serve-rm`` service), else 2.
        retry_exceptions: Errors raised by the scoring code that resubmit the chunk instead of
            ending the run (transient ones: a CUDA OOM, a judge's connection reset): ``true``
            for any, or a list of exception names, bare or qualified, matched against the
            raised type and its bases (``[OutOfMemoryError, ConnectionError]``). Default: none.
        missing_eos_penalty: If set, subtracted from every completion that ended at
            ``generation.max_new_tokens`` instead of with EOS (the episode was truncated, not
            terminated); logged as ``reward/penalty/missing_eos``. Not applied to held-out
            evaluation samples, whose ending is not recorded.
    """

    source: Literal["model", "function", "metric", "ensemble", "composite", "env"] = "function"
    path: NonEmptyStr | None = None
    tokenizer_path: NonEmptyStr | None = None
    function: NonEmptyStr | None = "envs.builtin:vowel_reward"
    metric: Literal["chrf", "bleu"] = "chrf"
    members: list[NonEmptyStr] = Field(default_factory=list)
    combine: Literal["mean", "min", "mean_minus_std"] = "mean"
    uncertainty_coef: float = Field(1.0, ge=0)
    components: list[RewardComponent] = Field(default_factory=list)
    num_actors: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    num_cpus_per_actor: float = Field(1.0, ge=0)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    custom_resources_per_actor: dict[str, Any] = Field(default_factory=dict)
    pool_name: NonEmptyStr | None = None
    shared_in_sweeps: bool = True
    max_length: int = Field(512, ge=1)
    clip: float | None = Field(None, gt=0)
    normalize: bool = False
    length_penalty: float = Field(0.0, ge=0)
    target_length: int = Field(0, ge=0)
    missing_eos_penalty: float | None = Field(None, ge=0)
    on_nan: Literal["error", "skip"] = "error"
    timeout_s: float | None = Field(600.0, gt=0)
    max_restarts: int | None = Field(None, ge=-1)
    retry_exceptions: bool | list[NonEmptyStr] = False

    @property
    def needs_references(self) -> bool:
        """Whether a metric source (top-level or component) compares with references."""
        if self.source == "composite":
            return any(c.source == "metric" for c in self.components)
        return self.source == "metric"

    @property
    def num_actor_pools(self) -> int:
        """Groups of ``num_actors`` reward actors this reward runs (metrics need none)."""

        def pools(source: str, members: list[str]) -> int:
            if source == "ensemble":
                return len(members)
            return 1 if source in ("model", "function") else 0

        if self.source == "composite":
            return sum(pools(c.source, c.members) for c in self.components)
        return pools(self.source, self.members)


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
    if function is not None and not FUNCTION_RE.match(function):
        raise ConfigError(
            f"{prefix}.function must look like 'module:function', e.g. "
            f"'envs.builtin:vowel_reward' (got {function!r})",
            key=f"{prefix}.function",
        )
    if source == "ensemble" and len(members) < 2 and not (path is not None and not members):
        raise ConfigError(
            f"{prefix}.members needs at least two reward-model directories when "
            f"{prefix}.source=ensemble (got {len(members)}), or {prefix}.path an ensemble "
            f"directory (rayrm train-rm --members k)",
            key=f"{prefix}.members",
        )
    if source != "ensemble" and members:
        raise ConfigError(
            f"{prefix}.members is only used with {prefix}.source=ensemble (source is "
            f"{source!r}): set the source or remove members",
            key=f"{prefix}.members",
        )


def check_reward(reward: RewardSettings) -> None:
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
    for i, comp in enumerate(reward.components):
        prefix = f"reward.components[{i}]"
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
