"""Pure RL math for RLHF-PPO: advantages, PPO losses, KL penalties, KL control, sampling.

Everything here is a keyword-only function (or a tiny stateful controller) over torch tensors
or numpy arrays. Nothing imports Ray, RLlib or transformers, so each piece is unit-testable
against hand-computed values (see tests/test_core_algos.py).

Shapes: ``B`` completions, ``T`` generated tokens of one completion, ``N`` token rows of a
flattened batch (all completions' tokens concatenated), ``V`` vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "entropy_from_logits",
    "gae_advantages",
    "kl_penalty_rewards",
    "logp_and_entropy",
    "masked_mean",
    "ppo_policy_loss",
    "sample_tokens",
    "value_loss",
    "whiten",
]


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


def kl_penalty_rewards(
    *,
    rewards: np.ndarray,
    logp: np.ndarray,
    ref_logp: np.ndarray,
    kl_coef: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token rewards of one completion: the env's rewards minus β·KL on every token.

    The env pays the sequence-level score R(prompt, completion) at the last token (zeros
    before). The KL estimate per token is ``log π(a_t|s_t) − log π_ref(a_t|s_t)`` (the "k1"
    estimator of Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, eq. 2; InstructGPT
    eq. 2); its sum over the completion is an unbiased estimate of KL(π‖π_ref) for the sequence.

    Args:
        rewards: (T,) env rewards of the completion (the score at the last token).
        logp: (T,) log-probs of the sampled tokens under the sampling policy.
        ref_logp: (T,) log-probs of the same tokens under the frozen reference model.
        kl_coef: β.

    Returns:
        ``(token_rewards, kl)``: both (T,); ``token_rewards = rewards − β·kl``.
    """
    kl = np.asarray(logp, dtype=np.float64) - np.asarray(ref_logp, dtype=np.float64)  # (T,)
    token_rewards = np.asarray(rewards, dtype=np.float64) - kl_coef * kl
    return token_rewards.astype(np.float32), kl.astype(np.float32)


def gae_advantages(
    *,
    rewards: np.ndarray,
    values: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over the tokens of ONE completion.

    The completion's end is always terminal: ``V(s_T) = 0``. That holds for EOS and for the
    ``max_new_tokens`` limit alike, because the sequence-level reward is paid in full at the
    last token, so nothing is left to bootstrap (Schulman et al. 2016,
    https://arxiv.org/abs/1506.02438, eq. 16).

    Args:
        rewards: (T,) per-token rewards (KL penalty plus the final score).
        values: (T,) value estimates V(s_t) at each generated position.
        gamma: discount γ.
        gae_lambda: λ.

    Returns:
        ``(advantages, returns)``, both (T,), with ``returns = advantages + values`` (the value
        targets).
    """
    T = len(rewards)
    advantages = np.zeros(T, dtype=np.float64)
    last = 0.0
    for t in reversed(range(T)):
        next_value = values[t + 1] if t + 1 < T else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * gae_lambda * last
        advantages[t] = last
    returns = advantages + np.asarray(values, dtype=np.float64)
    return advantages.astype(np.float32), returns.astype(np.float32)


def ppo_policy_loss(
    *,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_ratio: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, https://arxiv.org/abs/1707.06347, eq. 7).

    Args:
        logp: (N,) log-probs of the taken tokens under the current policy (with grad).
        old_logp: (N,) log-probs recorded at sampling time.
        advantages: (N,) advantage estimates.
        clip_ratio: ε.
        mask: optional (N,) bool; masked-out rows do not count.

    Returns:
        ``(loss, stats)``: the scalar loss to minimise and detached statistics
        ``clip_fraction`` and ``approx_kl`` (the k3 estimator of KL(old‖new)).
    """
    log_ratio = logp - old_logp  # (N,)
    ratio = torch.exp(log_ratio)
    unclipped = advantages * ratio
    clipped = advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = -masked_mean(torch.min(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_ratio).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, {"clip_fraction": clip_fraction, "approx_kl": approx_kl}


def value_loss(
    *,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    value_clip: float | None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared-error value loss, optionally clipped around the sampling-time values.

    With ``value_clip`` set this is PPO2's clipped value loss: the new value may move at most
    ``value_clip`` from the old one before the gradient stops (the max of the clipped and
    unclipped errors), as in OpenAI baselines and Ziegler et al.'s lm-human-preferences.

    Args:
        values: (N,) current value predictions (with grad).
        old_values: (N,) value predictions used for the advantages.
        returns: (N,) value targets.
        value_clip: clip range, or None for the plain squared error.
        mask: optional (N,) bool.

    Returns:
        Scalar ``0.5 * E[max(err², err_clipped²)]``.
    """
    err = (values - returns) ** 2  # (N,)
    if value_clip is not None:
        clipped_values = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
        err = torch.max(err, (clipped_values - returns) ** 2)
    return 0.5 * masked_mean(err, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution per row. (..., V) -> (...)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def logp_and_entropy(
    logits: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of the chosen token and entropy of each row's categorical distribution.

    One log-sum-exp serves both, and no (N, V) log-softmax copy is kept:
    ``log p(a) = z_a − lse(z)`` and ``H = lse(z) − Σ_v softmax(z)_v · z_v``.

    Args:
        logits: (N, V) float logits (already divided by the temperature).
        actions: (N,) int64 token ids.

    Returns:
        ``(logp, entropy)``, both (N,).
    """
    lse = torch.logsumexp(logits, dim=-1)  # (N,)
    logp = logits.gather(-1, actions[:, None]).squeeze(-1) - lse  # (N,)
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)  # (N,)
    return logp, entropy


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples next tokens and returns them with their log-probs under the policy.

    The policy is ``softmax(logits / temperature)`` over the full vocabulary: that is the
    distribution whose log-probs PPO's ratio uses in the learner. ``top_k``/``top_p`` only
    narrow which tokens may be drawn (as in TRL); the returned log-prob is still the tempered
    full-vocabulary one, so with the defaults (0, 1.0) sampling is exactly on-policy.

    Args:
        logits: (B, V) next-token logits.
        temperature: > 0.
        top_k: keep the k most likely tokens (0 = off).
        top_p: nucleus sampling mass (1.0 = off).
        greedy: take the arg-max instead of sampling.
        generator: optional torch RNG for reproducible sampling.

    Returns:
        ``(tokens, logp)``: (B,) int64 token ids and (B,) float32 log-probs.
    """
    scaled = logits.float() / temperature  # (B, V)
    logp_all = torch.log_softmax(scaled, dim=-1)
    if greedy:
        tokens = scaled.argmax(dim=-1)
    else:
        filtered = scaled
        if top_k > 0 and top_k < scaled.shape[-1]:
            kth = torch.topk(filtered, top_k, dim=-1).values[:, -1:]
            filtered = filtered.masked_fill(filtered < kth, -math.inf)
        if top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(filtered, descending=True, dim=-1)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the first token
            sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
            filtered = torch.full_like(filtered, -math.inf).scatter(-1, sorted_idx, sorted_logits)
        probs = torch.softmax(filtered, dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    logp = logp_all.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, logp


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
