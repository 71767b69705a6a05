"""KL to the reference policy: per-token estimators, the reward penalty, β controllers."""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import numpy as np
import torch

__all__ = [
    "K3_CLAMP",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "AdaptiveKLController",
    "FixedKLController",
    "kl_estimate",
    "kl_penalty_rewards",
]


ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


KL_ESTIMATORS = ("k1", "k2", "k3")
"""Per-token estimators of KL(π‖π_ref) from samples of π (see :func:`kl_estimate`)."""


LOG_RATIO_CLAMP = 20.0
"""Log-ratios are clamped to ±this before ``exp`` (PPO's ratio, k3), as verl does: e^20 is
finite in float32 and far beyond any ratio a clipped update can use."""


K3_CLAMP = 10.0
"""k3 is clamped to at most this (verl's ``low_var_kl``): its gradient ``1 − π_ref/π`` in
``log π`` grows without bound as a token is pushed below the reference, and one such token
would otherwise dominate the loss; past the clamp it adds no gradient."""


def kl_estimate(
    *, logp: ArrayT, ref_logp: ArrayT, kind: Literal["k1", "k2", "k3"] = "k1"
) -> ArrayT:
    """Per-token estimate of KL(π‖π_ref) at tokens sampled from π, (T,) -> (T,).

    With ``r = π_ref(a)/π(a)`` (Schulman 2020, "Approximating KL Divergence",
    http://joschu.net/blog/kl-approx.html): ``k1 = −log r`` (unbiased, can be negative),
    ``k2 = (log r)²/2`` (biased, low variance), ``k3 = (r − 1) − log r`` (unbiased and
    non-negative; GRPO's KL term, Shao et al. 2024, https://arxiv.org/abs/2402.03300, eq. 4;
    ``log r`` clamped to ±:data:`LOG_RATIO_CLAMP`, the result to :data:`K3_CLAMP`).

    As a LOSS (the gradient flowing through ``log π`` of the sampled tokens) they differ:
    k1's expected gradient is ``E_π[∇ log π] = 0`` (no pressure at all), k2's is the gradient
    of KL(π‖π_ref), k3's that of KL(π_ref‖π) (``tests/unit/core_algos/test_core_algos.py``
    checks each by an exact expectation). As a REWARD penalty the value matters, and k1 summed
    over a completion is unbiased for the sequence's KL.

    Numpy arrays (computed in float64) or torch tensors (differentiable, in their dtype).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kind must be one of {KL_ESTIMATORS}, got {kind!r}")
    if isinstance(logp, torch.Tensor) and isinstance(ref_logp, torch.Tensor):
        log_r_t = ref_logp - logp
        if kind == "k3":
            log_r_t = log_r_t.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            return (torch.expm1(log_r_t) - log_r_t).clamp(max=K3_CLAMP)
        return -log_r_t if kind == "k1" else 0.5 * log_r_t**2
    log_r = np.asarray(ref_logp, dtype=np.float64) - np.asarray(logp, dtype=np.float64)
    if kind == "k3":
        log_r = np.clip(log_r, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return np.minimum(np.expm1(log_r) - log_r, K3_CLAMP)
    return -log_r if kind == "k1" else 0.5 * log_r**2


def kl_penalty_rewards(*, rewards: np.ndarray, kl: np.ndarray, kl_coef: float) -> np.ndarray:
    """Per-token rewards of one completion: the env's rewards minus β·KL on every token.

    The env pays the sequence-level score R(prompt, completion) at the last token (zeros
    before); ``kl`` is a per-token estimate (:func:`kl_estimate`; with ``k1``, ``log π − log
    π_ref`` as in Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, eq. 2, and InstructGPT
    eq. 2, whose sum over the completion is unbiased for the sequence's KL(π‖π_ref)).
    :func:`token_advantages` shapes the ``gae``, ``reinforce_pp`` and (summed) ``grpo`` /
    ``rloo`` rewards with it.

    Args:
        rewards: (T,) env rewards of the completion (the score at the last token).
        kl: (T,) per-token KL estimates.
        kl_coef: β (0 when the KL is a loss term instead).

    Returns:
        (T,) float64 ``rewards − β·kl``.
    """
    out: np.ndarray = np.asarray(rewards, np.float64) - kl_coef * np.asarray(kl, np.float64)
    return out


class FixedKLController:
    """Constant β."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: β stays fixed."""

    def get_state(self) -> dict[str, float]:
        return {"value": self.value}

    def set_state(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive β with a target KL (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, §2.2).

    ``e = clip(KL / target − 1, −0.2, 0.2)``; ``β ← β·(1 + e·n_steps / horizon)``, where KL is the
    mean per-sequence KL of the last batch and ``n_steps`` the number of sequences in it.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        self.value = float(kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Moves β toward the target KL after a batch of ``n_steps`` sequences."""
        if not math.isfinite(current_kl):
            return
        proportional_error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def get_state(self) -> dict[str, float]:
        return {"value": self.value}

    def set_state(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
