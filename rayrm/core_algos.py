"""Pure RL math for RLHF-PPO: advantages, PPO losses, KL penalties, KL control, sampling.

Everything here is a keyword-only function (or a tiny stateful controller) over torch tensors
or numpy arrays. Nothing imports Ray, RLlib or transformers, so each piece is unit-testable
against hand-computed values (see tests/test_core_algos.py).

Shapes: ``B`` completions, ``T`` generated tokens of one completion, ``N`` token rows of a
flattened batch (all completions' tokens concatenated), ``V`` vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch

__all__ = [
    "ESTIMATORS",
    "K3_CLAMP",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "LOSS_AGGREGATIONS",
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "aggregate_tokens",
    "entropy_from_logits",
    "gae_advantages",
    "group_advantages",
    "kl_estimate",
    "kl_penalty_rewards",
    "reinforce_returns",
    "token_advantages",
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


ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

ESTIMATORS = ("gae", "grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
"""Advantage estimators: GAE with a critic, or critic-free ones (see :func:`group_advantages`
and :func:`reinforce_returns`)."""

KL_ESTIMATORS = ("k1", "k2", "k3")
"""Per-token estimators of KL(π‖π_ref) from samples of π (see :func:`kl_estimate`)."""

LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
"""How per-token losses become one number (see :func:`aggregate_tokens`)."""


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
    of KL(π‖π_ref), k3's that of KL(π_ref‖π) (``tests/test_core_algos.py`` checks each by an
    exact expectation). As a REWARD penalty the value matters, and k1 summed over a
    completion is unbiased for the sequence's KL.

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


def group_advantages(
    *,
    scores: np.ndarray,
    groups: np.ndarray,
    estimator: Literal["grpo", "rloo"],
    std_normalize: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """One advantage per completion from the rewards of the other samples of its prompt.

    * ``grpo`` (Shao et al. 2024, https://arxiv.org/abs/2402.03300, §4.1.2): the reward minus
      its group's mean, divided by the group's standard deviation (sample std, ddof=1, as TRL
      and verl compute it, plus ``eps``); ``std_normalize=False`` is Dr. GRPO's unnormalised
      variant (Liu et al. 2025, https://arxiv.org/abs/2503.20783, §3.2).
    * ``rloo`` (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740, eq. 6): the reward
      minus the mean of the OTHER ``n − 1`` rewards of its group, ``n/(n−1)·(r_i − mean)``.

    A group of one sample has no baseline: its advantage is 0.

    Args:
        scores: (B,) sequence rewards.
        groups: (B,) group key of each completion (samples of one prompt share it).
        estimator: ``"grpo"`` or ``"rloo"``.
        std_normalize: GRPO only: divide by the group std.
        eps: GRPO only: added to the std.

    Returns:
        (B,) float64 advantages.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    out = np.zeros_like(scores)
    for key in np.unique(groups):
        idx = np.flatnonzero(groups == key)
        r = scores[idx]
        n = len(r)
        if n < 2:
            continue
        if estimator == "grpo":
            a = r - r.mean()
            out[idx] = a / (r.std(ddof=1) + eps) if std_normalize else a
        elif estimator == "rloo":
            out[idx] = r - (r.sum() - r) / (n - 1)
        else:
            raise ValueError(f"estimator must be 'grpo' or 'rloo', got {estimator!r}")
    return out


def reinforce_returns(rewards: np.ndarray, *, gamma: float = 1.0) -> np.ndarray:
    """Reward-to-go ``G_t = Σ_{s≥t} γ^(s−t) r_s`` over ONE completion, (T,) -> (T,).

    REINFORCE++ (Hu 2025, https://arxiv.org/abs/2501.03262, §3): the per-token rewards hold the
    KL penalty on every token and the score at the last; the advantages are these returns
    normalised over the whole batch (:func:`whiten` of all tokens). ``γ`` is ``ppo.gamma``
    (1 by default, as in the paper).
    """
    r = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(r)
    running = 0.0
    for t in reversed(range(len(r))):
        running = r[t] + gamma * running
        out[t] = running
    return out


def aggregate_tokens(
    values: torch.Tensor,
    *,
    mode: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"],
    seq_id: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    norm: float | None = None,
) -> torch.Tensor:
    """Per-token losses (N,) -> scalar.

    * ``token_mean``: mean over all tokens (long completions weigh more).
    * ``seq_mean_token_mean``: mean over completions of each one's token mean (GRPO's
      ``1/|o_i|`` normalisation, Shao et al. 2024, eq. 3).
    * ``seq_mean_token_sum_norm``: mean over completions of each one's token SUM divided by
      the constant ``norm`` (e.g. ``max_new_tokens``): Dr. GRPO's length-unbiased loss (Liu
      et al. 2025, §3.2).

    Args:
        values: (N,) per-token losses.
        mode: one of :data:`LOSS_AGGREGATIONS`.
        seq_id: (N,) completion id of each token row (needed unless ``token_mean``).
        mask: optional (N,) bool; masked rows do not count.
        norm: the constant of ``seq_mean_token_sum_norm``.
    """
    if mode == "token_mean":
        return masked_mean(values, mask)
    if seq_id is None:
        raise ValueError(f"loss aggregation {mode!r} needs seq_id")
    weight = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    _, inverse = torch.unique(seq_id, return_inverse=True)  # (N,)
    num_seqs = int(inverse.max().item()) + 1
    sums = torch.zeros(num_seqs, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, inverse, values * weight)  # (G,)
    if mode == "seq_mean_token_mean":
        counts = torch.zeros_like(sums).index_add(0, inverse, weight)
        return (sums / counts.clamp(min=1.0)).mean()
    if mode == "seq_mean_token_sum_norm":
        if norm is None or norm <= 0:
            raise ValueError("loss aggregation 'seq_mean_token_sum_norm' needs norm > 0")
        return sums.mean() / norm
    raise ValueError(f"mode must be one of {LOSS_AGGREGATIONS}, got {mode!r}")


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


def token_advantages(
    *,
    estimator: str,
    rewards: list[np.ndarray],
    kls: list[np.ndarray],
    kl_coef: float,
    groups: Sequence[object] | None = None,
    values: list[np.ndarray] | None = None,
    gamma: float = 1.0,
    gae_lambda: float = 1.0,
    std_normalize: bool = True,
    whiten_with: Callable[[np.ndarray], np.ndarray] = whiten,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-token advantages and returns (value targets) of a batch, by estimator.

    * ``gae``: rewards minus β·KL per token, :func:`gae_advantages` with ``values``, then
      whitened over the batch's tokens.
    * ``reinforce_pp``: rewards minus β·KL per token, :func:`reinforce_returns`, whitened over
      the batch's tokens (Hu 2025); ``reinforce_pp_baseline`` first subtracts from each
      completion's score the mean score of its group.
    * ``grpo`` / ``rloo``: one advantage per completion, given to every token of it:
      :func:`group_advantages` of the scores, minus β times the completion's ΣKL centred in
      its group (the group mean for ``grpo``, the other samples' mean for ``rloo``). For RLOO
      and Dr. GRPO, linear in the reward, that is the advantage of the KL-regularised return
      score − β·ΣKL (Ahmadian et al. 2024, §3); for GRPO the std is the scores' alone, so
      the penalty keeps β's scale: were it inside, a group of equal scores would get
      unit-scale advantages made of KL noise whatever β is.

    Args:
        estimator: one of :data:`ESTIMATORS`.
        rewards: per completion, (T_i,) env rewards (the score at the last token).
        kls: per completion, (T_i,) per-token KL estimates (for the reward penalty).
        kl_coef: β of the reward penalty (0 when the KL is a loss term instead).
        groups: (B,) group keys (the group estimators).
        values: per completion, (T_i,) value estimates (``gae``).
        gamma, gae_lambda: GAE's γ and λ; REINFORCE++'s γ.
        std_normalize: GRPO's std normalisation.
        whiten_with: the whitening of ``gae`` and ``reinforce_pp`` advantages (all tokens,
            flat, float64): :func:`whiten` over this batch, or one with the moments of every
            learner's shard (``rayrm.rl.learner.whiten_across_learners``).

    Returns:
        ``(advantages, returns)``: per completion, (T_i,) float32 arrays.
    """
    shaped = [
        kl_penalty_rewards(rewards=r, kl=k, kl_coef=kl_coef)
        for r, k in zip(rewards, kls, strict=True)
    ]
    lens = [len(r) for r in rewards]
    keys = np.asarray(groups if groups is not None else range(len(rewards)))
    if estimator in ("grpo", "rloo"):
        kind: Literal["grpo", "rloo"] = "grpo" if estimator == "grpo" else "rloo"
        scores = np.array([float(np.sum(r)) for r in rewards])
        penalties = kl_coef * np.array([float(np.sum(k)) for k in kls])
        adv = group_advantages(
            scores=scores, groups=keys, estimator=kind, std_normalize=std_normalize
        ) - group_advantages(scores=penalties, groups=keys, estimator=kind, std_normalize=False)
        out = [np.full(n, a, dtype=np.float32) for n, a in zip(lens, adv, strict=True)]
        return out, out
    if estimator == "gae":
        if values is None:
            raise ValueError("the gae estimator needs values")
        pairs = [
            gae_advantages(rewards=r, values=v, gamma=gamma, gae_lambda=gae_lambda)
            for r, v in zip(shaped, values, strict=True)
        ]
        advs, rets = [a for a, _ in pairs], [r for _, r in pairs]
    elif estimator in ("reinforce_pp", "reinforce_pp_baseline"):
        if estimator == "reinforce_pp_baseline":
            scores = np.array([float(np.sum(r)) for r in rewards])
            means = {key: scores[keys == key].mean() for key in np.unique(keys)}
            for r, key in zip(shaped, keys, strict=True):
                r[-1] -= means[key]
        rets = [reinforce_returns(r, gamma=gamma).astype(np.float32) for r in shaped]
        advs = rets
    else:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    flat = whiten_with(np.concatenate(advs).astype(np.float64)).astype(np.float32)
    bounds = np.cumsum([0, *lens])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], rets


def ppo_policy_loss(
    *,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_ratio: float,
    mask: torch.Tensor | None = None,
    clip_ratio_high: float | None = None,
    aggregate: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, https://arxiv.org/abs/1707.06347, eq. 7).

    Args:
        logp: (N,) log-probs of the taken tokens under the current policy (with grad).
        old_logp: (N,) log-probs recorded at sampling time.
        advantages: (N,) advantage estimates.
        clip_ratio: ε (the lower bound ``1 − ε``, and the upper one unless ``clip_ratio_high``).
        mask: optional (N,) bool; masked-out rows do not count.
        clip_ratio_high: ε_high of DAPO's clip-higher, ratio clipped to ``[1 − ε, 1 + ε_high]``
            (Yu et al. 2025, https://arxiv.org/abs/2503.14476, §3.1); None: ε.
        aggregate: per-token objective (N,) -> scalar (:func:`aggregate_tokens`); default: the
            masked token mean.

    The log-ratio is clamped to ±:data:`LOG_RATIO_CLAMP` before ``exp``.

    Returns:
        ``(loss, stats)``: the scalar loss to minimise and detached statistics
        ``clip_fraction`` (the share of tokens where clipping is active, ``A·clip(r) < A·r``:
        their gradient is cut, as verl and TRL count it) and ``approx_kl`` (the k3 estimator
        of KL(old‖new)).
    """
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (N,)
    ratio = torch.exp(log_ratio)
    unclipped = advantages * ratio
    clipped = advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + high)
    objective = torch.min(unclipped, clipped)  # (N,)
    loss = -(masked_mean(objective, mask) if aggregate is None else aggregate(objective))
    with torch.no_grad():
        active = clipped < unclipped  # min took the clipped term: no gradient there
        clip_fraction = masked_mean(active.float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, {"clip_fraction": clip_fraction, "approx_kl": approx_kl}


def value_loss(
    *,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    value_clip: float | None,
    mask: torch.Tensor | None = None,
    aggregate: Callable[[torch.Tensor], torch.Tensor] | None = None,
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
        mask: optional (N,) bool (with the default aggregation).
        aggregate: per-token errors (N,) -> scalar, the policy loss's
            (:func:`aggregate_tokens`, ``ppo.loss_aggregation``); default: the masked mean.

    Returns:
        Scalar ``0.5 * aggregate(max(err², err_clipped²))``.
    """
    err = (values - returns) ** 2  # (N,)
    if value_clip is not None:
        clipped_values = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
        err = torch.max(err, (clipped_values - returns) ** 2)
    return 0.5 * (masked_mean(err, mask) if aggregate is None else aggregate(err))


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
