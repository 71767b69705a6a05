"""Statistics the RL math shares: masked means, whitening, running moments."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RunningMoments", "masked_mean", "whiten"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` over entries where ``mask`` is true (all entries when None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def whiten(values: np.ndarray, *, eps: float = 1e-8) -> np.ndarray:
    """Zero-mean, unit-std normalisation (used for advantages, as in PPO implementations)."""
    out: np.ndarray = (values - values.mean()) / (values.std() + eps)
    return out


@dataclass
class RunningMoments:
    """Running mean/variance over a stream of batches (Chan et al. parallel update).

    Used to normalise reward-model scores across iterations, as in Ziegler et al.'s reward
    normalisation; the state travels with checkpoints.
    """

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    def update(self, xs: np.ndarray) -> None:
        """Folds a batch of values into the running statistics."""
        xs = np.asarray(xs, dtype=np.float64)
        if xs.size == 0:
            return
        b_mean, b_var, b_count = float(xs.mean()), float(xs.var()), float(xs.size)
        total = self.count + b_count
        delta = b_mean - self.mean
        new_mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.mean, self.var, self.count = new_mean, m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-12))

    def get_state(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def set_state(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
