"""``reward.source: env``: the environment's own rewards are the whole reward.

A multi-turn environment (``envs.protocol``) pays each turn's reward at the turn's last token;
with this source nothing is added at the end of the episode, and no reward actor is started.
Penalties (``reward.length_penalty``, ``reward.missing_eos_penalty``) still apply on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rayrm.rewards.base import Completion

__all__ = ["EnvironmentRewards"]


class EnvironmentRewards:
    """The :class:`~rayrm.rewards.base.Scorer` of ``reward.source: env``: 0 for every
    completion (the episode's rewards come from its environment, turn by turn). It also
    submits and collects like a pool, so a composed reward adds its penalties on top."""

    num_resubmitted = 0

    def submit(self, records: Sequence[Completion]) -> int:
        return len(records)

    def collect(self, handle: int) -> np.ndarray:
        return np.zeros(handle, np.float32)

    def score(self, records: Sequence[Completion]) -> np.ndarray:
        return self.collect(self.submit(records))

    def score_detailed(
        self, records: Sequence[Completion]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.score(records), {}

    def stats(self) -> dict[str, Any]:
        return {}

    def shutdown(self) -> None:
        return None
