"""Over-optimisation monitors that need no gold judge, published every iteration.

A policy optimised against a proxy reward finds what the proxy gets wrong; the gold score then
peaks and falls while the proxy rises (Gao et al. 2022, https://arxiv.org/abs/2210.10760).
Without a gold judge, these drift measures say when that may be happening, from the batch
alone (``monitor/...``, :mod:`rayrm.metrics`): repetition (distinct bigrams), length drift
against the first iteration, and how much reward each nat of KL still buys. The ensemble's
disagreement (``reward/disagreement``) and the held-out evaluation are the others.
``run.stop_when`` stops a run on any published metric (``rayrm.experiment.stopping``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rayrm import metrics as M

__all__ = ["MIN_KL", "DriftMonitors", "distinct_n"]

MIN_KL = 1.0
"""Nats of KL per sequence before ``monitor/reward_gain_per_kl`` is published (below, the
ratio of two small numbers is noise)."""


def distinct_n(sequences: Iterable[Sequence[Any]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of ``sequences`` (each sequence's own n-grams,
    pooled); 1.0 when there are none."""
    seen: set[tuple[Any, ...]] = set()
    total = 0
    for seq in sequences:
        items = list(seq)
        grams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 1.0


class DriftMonitors:
    """The ``monitor/...`` metrics of one run; the first trained iteration is the baseline
    (kept in the checkpoint: :meth:`get_state`)."""

    def __init__(self) -> None:
        self.first_reward: float | None = None
        self.first_length: float | None = None

    def update(self, published: dict[str, Any], completions: Sequence[Sequence[Any]]) -> dict:
        """The monitors for this iteration's ``published`` metrics and completion tokens."""
        reward, length = published[M.REWARD_MEAN], published.get(M.ROLLOUT_LENGTH)
        if self.first_reward is None:
            self.first_reward, self.first_length = reward, length
        out = {M.MONITOR_DISTINCT_2: distinct_n(completions, 2)}
        if length is not None and self.first_length:
            out[M.MONITOR_LENGTH_RATIO] = length / self.first_length
        kl = published.get(M.KL_SEQUENCE)
        if kl is not None and kl >= MIN_KL:
            out[M.MONITOR_REWARD_GAIN_PER_KL] = (reward - self.first_reward) / kl
        return out

    def get_state(self) -> dict[str, float | None]:
        return {"first_reward": self.first_reward, "first_length": self.first_length}

    def set_state(self, state: dict[str, float | None]) -> None:
        self.first_reward = state.get("first_reward")
        self.first_length = state.get("first_length")
