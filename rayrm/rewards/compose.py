"""Rewards made of several sources: ensembles, weighted composites, length and EOS penalties.

What belongs here: combining the scores of :class:`~rayrm.rewards.pool.RewardPool` s into one
reward per completion, with a per-source breakdown for logging. The pools do the scoring; every
pool's chunks are submitted before any is collected, so ensemble members and composite
components score concurrently, each in its own actors.

* :class:`EnsembleReward` -- several reward models combined by ``mean``, ``min`` or
  ``mean_minus_std`` (mean − k·std over members; Coste et al. 2023,
  https://arxiv.org/abs/2310.02743; Eisenstein et al. 2023, https://arxiv.org/abs/2312.09244).
* :class:`ComposedReward` -- ``Σ_i weight_i · score_i − length penalty − missing-EOS penalty``.
* :func:`build_reward` -- the scorer a ``RewardSettings`` describes (``rayrm.rewards.pool_from_config``).

Breakdown keys are the published metric keys of ``rayrm.metrics`` (``reward/component/<name>``,
``reward/member/<i>``, ``reward/disagreement``, ``reward/penalty/...``), each mapped to the
per-completion values, shape (N,).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from rayrm import metrics as M
from rayrm.rewards.base import Completion
from rayrm.rewards.environment import EnvironmentRewards
from rayrm.rewards.pool import POOL_NAMESPACE, RewardPool

COMBINE_MODES = ("mean", "min", "mean_minus_std")

_PREFIX = "reward/"


def combine_scores(
    member_scores: np.ndarray, *, combine: str, uncertainty_coef: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Combines ensemble members' scores into one score per completion.

    Args:
        member_scores: (M, N) scores of M members for N completions.
        combine: ``"mean"``, ``"min"`` or ``"mean_minus_std"`` (mean − k·std).
        uncertainty_coef: k.

    Returns:
        ``(scores, std)``, each (N,): the combined score and the members' population std
        (ddof=0), the disagreement.
    """
    scores = np.asarray(member_scores, dtype=np.float64)  # (M, N)
    mean, std = scores.mean(axis=0), scores.std(axis=0)  # (N,), (N,)
    if combine == "mean":
        out = mean
    elif combine == "min":
        out = scores.min(axis=0)
    elif combine == "mean_minus_std":
        out = mean - uncertainty_coef * std
    else:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    return out, std


def length_penalties(lengths: Sequence[int], *, coef: float, target: int) -> np.ndarray:
    """``coef · max(0, n − target)`` per completion of n tokens; (N,) float64."""
    n = np.asarray(lengths, dtype=np.float64)
    return coef * np.maximum(0.0, n - target)


def missing_eos_penalties(finished: Sequence[bool], *, penalty: float) -> np.ndarray:
    """``penalty`` for each completion that did not end with EOS (truncated), else 0."""
    return penalty * (1.0 - np.asarray(finished, dtype=np.float64))


class EnsembleReward:
    """Reward models scored in parallel (one :class:`RewardPool` each) and combined."""

    def __init__(
        self, members: list[RewardPool], *, combine: str = "mean", uncertainty_coef: float = 1.0
    ) -> None:
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        self.members = members
        self.combine = combine
        self.uncertainty_coef = uncertainty_coef

    def submit(self, records: Sequence[Completion]) -> list[list[Any]]:
        """Sends every member's chunks out (see :meth:`RewardPool.submit`)."""
        return [m.submit(records) for m in self.members]

    def collect(self, handles: list[list[Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(combined (N,), {reward/member/<i>: (N,), reward/disagreement: (N,)})``."""
        member_scores = np.stack(
            [m.collect(h) for m, h in zip(self.members, handles, strict=True)]
        )  # (M, N)
        scores, std = combine_scores(
            member_scores, combine=self.combine, uncertainty_coef=self.uncertainty_coef
        )
        breakdown = {M.REWARD_MEMBER.format(index=i): s for i, s in enumerate(member_scores)}
        breakdown[M.REWARD_DISAGREEMENT] = std
        return scores, breakdown

    def stats(self) -> dict[str, Any]:
        return {"members": [m.stats() for m in self.members]}

    @property
    def num_resubmitted(self) -> int:
        """Chunks sent again after a crash, hang or retried exception (all members)."""
        return sum(m.num_resubmitted for m in self.members)

    def shutdown(self) -> None:
        for m in self.members:
            m.shutdown()


Scorer = RewardPool | EnsembleReward


class ComposedReward:
    """A weighted sum of reward sources, minus optional length and missing-EOS penalties.

    ``score = Σ_i weight_i · score_i − length_penalty · max(0, n − target_length)
    − missing_eos_penalty · [completion ended at the length limit]``

    With one unnamed part of weight 1 (``name=""``) it is a single source (e.g. an ensemble,
    or a model with penalties) whose breakdown keys are not nested under a component.
    """

    def __init__(
        self,
        parts: list[tuple[str, float, Scorer]],
        *,
        length_penalty: float = 0.0,
        target_length: int = 0,
        missing_eos_penalty: float | None = None,
        tokenizer: Any = None,
    ) -> None:
        """Takes ownership of the scorers (``shutdown`` shuts them down).

        Args:
            parts: ``(name, weight, scorer)``; names unique, ``""`` only for a lone part.
            length_penalty, target_length, missing_eos_penalty: see ``RewardSettings``.
            tokenizer: tokenizer or directory to count completion tokens when records carry
                no ``num_tokens`` (loaded on first use).
        """
        names = [name for name, _, _ in parts]
        if not parts or len(set(names)) != len(names) or ("" in names and len(parts) > 1):
            raise ValueError(f"parts need unique names ('' only alone), got {names}")
        self.parts = parts
        self.length_penalty = length_penalty
        self.target_length = target_length
        self.missing_eos_penalty = missing_eos_penalty
        self._tokenizer = tokenizer
        self.num_scored = 0

    def score(self, records: Sequence[Completion]) -> np.ndarray:
        """The combined reward, ``float32`` (N,); see :meth:`score_detailed`."""
        return self.score_detailed(records)[0]

    def score_detailed(
        self, records: Sequence[Completion]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scores all parts concurrently, then combines them.

        The length penalty reads each record's ``num_tokens`` (generated tokens, EOS
        excluded); when a record has none, the completions are tokenized to count them. The
        missing-EOS penalty applies when every record says how it ended (``finished``: the
        episode terminated rather than being truncated at ``max_new_tokens``).

        Returns:
            ``(scores, breakdown)``: ``float32`` (N,), and metric key -> (N,) values: each
            component's unweighted score, ensemble members and disagreement, penalties.
        """
        n = len(records)
        pending = [
            (name, weight, scorer, scorer.submit(records)) for name, weight, scorer in self.parts
        ]
        total = np.zeros(n, dtype=np.float64)
        breakdown: dict[str, np.ndarray] = {}
        for name, weight, scorer, handles in pending:
            if isinstance(scorer, EnsembleReward):
                scores, inner = scorer.collect(handles)
            else:
                scores, inner = scorer.collect(handles).astype(np.float64), {}
            total += weight * scores
            if name:
                key = M.REWARD_COMPONENT.format(name=name)
                breakdown[key] = scores
                inner = {f"{key}/{k.removeprefix(_PREFIX)}": v for k, v in inner.items()}
            breakdown.update(inner)
        if self.length_penalty:
            lengths = [r.num_tokens for r in records if r.num_tokens is not None]
            if len(lengths) < n:  # not counted (held-out samples): count them here
                lengths = self._count_tokens([r.completion for r in records])
            pen = length_penalties(lengths, coef=self.length_penalty, target=self.target_length)
            total -= pen
            breakdown[M.REWARD_PENALTY_LENGTH] = pen
        finished = [r.finished for r in records if r.finished is not None]
        if self.missing_eos_penalty is not None and len(finished) == n:  # endings known
            pen = missing_eos_penalties(finished, penalty=self.missing_eos_penalty)
            total -= pen
            breakdown[M.REWARD_PENALTY_MISSING_EOS] = pen
        self.num_scored += n
        return total.astype(np.float32), breakdown

    def _count_tokens(self, completions: Sequence[str]) -> list[int]:
        if self._tokenizer is None:
            raise ValueError(
                "reward.length_penalty needs the completions' token counts: give the records "
                "num_tokens or build the reward with the policy's tokenizer"
            )
        if isinstance(self._tokenizer, str):
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer)
        ids = self._tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        return [len(i) for i in ids]

    def stats(self) -> dict[str, Any]:
        """``num_scored`` completions, and each part's pool counters."""
        return {
            "num_scored": self.num_scored,
            "parts": {name or "main": scorer.stats() for name, _, scorer in self.parts},
        }

    @property
    def num_resubmitted(self) -> int:
        """Chunks sent again after a crash, hang or retried exception (all parts)."""
        return sum(scorer.num_resubmitted for _, _, scorer in self.parts)

    def shutdown(self) -> None:
        for _, _, scorer in self.parts:
            scorer.shutdown()

    def __enter__(self) -> ComposedReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def build_reward(
    reward: Any,
    *,
    name: str | None = None,
    local: bool = False,
    tokenizer: Any = None,
    namespace: str = POOL_NAMESPACE,
) -> RewardPool | ComposedReward:
    """See :func:`rayrm.rewards.pool_from_config` (the public entry point)."""
    built: list[Scorer] = []

    def pool(part: Any, sub: str | None) -> RewardPool:
        # Metrics score in-process and are never shared (see RewardPool).
        p = RewardPool(reward, part, name=sub, namespace=namespace, local=local)
        built.append(p)
        return p

    def scorer(src: Any, sub: str | None) -> Scorer:
        def child(part: str) -> str | None:
            return None if sub is None else f"{sub}.{part}"

        if src.source == "env":
            return EnvironmentRewards()
        if src.source == "ensemble":
            members = [
                pool(src.model_copy(update={"source": "model", "path": path}), child(f"member{j}"))
                for j, path in enumerate(src.members)
            ]
            return EnsembleReward(
                members, combine=src.combine, uncertainty_coef=src.uncertainty_coef
            )
        return pool(src, sub)

    penalties = dict(
        length_penalty=reward.length_penalty,
        target_length=reward.target_length,
        missing_eos_penalty=reward.missing_eos_penalty,
        tokenizer=tokenizer,
    )
    try:
        if reward.source == "composite":
            parts = [
                (c.name, c.weight, scorer(c, None if name is None else f"{name}.{c.name}"))
                for c in reward.components
            ]
            return ComposedReward(parts, **penalties)
        if reward.source == "ensemble":
            return ComposedReward([("", 1.0, scorer(reward, name))], **penalties)
        single = scorer(reward, name)
        if reward.length_penalty or reward.missing_eos_penalty is not None:
            return ComposedReward([("", 1.0, single)], **penalties)
        return single
    except BaseException:
        for p in built:
            p.shutdown()
        raise


def shared_actor_names(name: str, namespace: str = POOL_NAMESPACE) -> list[str]:
    """Names of the running actors of the shared reward ``name``, sub-pools included.

    A shared single source has actors ``{name}-{i}``; composites and ensembles put each
    component or member in its own sub-pool ``{name}.{part}`` (``.`` is reserved for that).
    """
    pattern = re.compile(rf"^{re.escape(name)}(\.[\w.-]+)?-\d+$")
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and pattern.match(a["name"])
    )


def kill_shared_pools(name: str, namespace: str = POOL_NAMESPACE) -> int:
    """Stops every actor of the shared reward ``name`` (all sub-pools); returns how many."""
    killed = 0
    for actor_name in shared_actor_names(name, namespace):
        try:
            ray.kill(ray.get_actor(actor_name, namespace=namespace))
        except ValueError:  # gone meanwhile
            continue
        killed += 1
    return killed
