"""Losses: PPO's clipped surrogate, the value loss, loss aggregations (registered by their
config name, ``algorithm.loss_aggregation``), and log-probs and entropy from logits."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rayrm.core_algos.kl import LOG_RATIO_CLAMP
from rayrm.core_algos.stats import masked_mean

__all__ = [
    "AGGREGATIONS",
    "aggregate_tokens",
    "entropy_from_logits",
    "logp_and_entropy",
    "ppo_policy_loss",
    "register_aggregation",
    "value_loss",
]


Aggregation = Callable[..., torch.Tensor]
"""``fn(values, *, mask, seq_id, norm) -> scalar``: per-token losses (N,) to one number."""


AGGREGATIONS: dict[str, Aggregation] = {}
"""Loss aggregations by their config name (``algorithm.loss_aggregation``): see
:func:`register_aggregation`."""


def register_aggregation(name: str) -> Callable[[Aggregation], Aggregation]:
    """Registers a loss aggregation under its config name; a new one is a function."""

    def register(fn: Aggregation) -> Aggregation:
        AGGREGATIONS[name] = fn
        return fn

    return register


def _seq_sums(
    values: torch.Tensor, seq_id: torch.Tensor | None, mask: torch.Tensor | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per completion: the sum of its (unmasked) values and its token count, each (G,)."""
    if seq_id is None:
        raise ValueError(f"loss aggregation {mode!r} needs seq_id")
    weight = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    _, inverse = torch.unique(seq_id, return_inverse=True)  # (N,)
    num_seqs = int(inverse.max().item()) + 1
    sums = torch.zeros(num_seqs, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, inverse, values * weight)  # (G,)
    return sums, torch.zeros_like(sums).index_add(0, inverse, weight)


@register_aggregation("token_mean")
def _token_mean(
    values: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    seq_id: torch.Tensor | None,
    norm: float | None,
) -> torch.Tensor:
    """Mean over all tokens (long completions weigh more)."""
    return masked_mean(values, mask)


@register_aggregation("seq_mean_token_mean")
def _seq_mean_token_mean(
    values: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    seq_id: torch.Tensor | None,
    norm: float | None,
) -> torch.Tensor:
    """Mean over completions of each one's token mean (GRPO's ``1/|o_i|``, Shao et al. 2024,
    eq. 3)."""
    sums, counts = _seq_sums(values, seq_id, mask, "seq_mean_token_mean")
    return (sums / counts.clamp(min=1.0)).mean()


@register_aggregation("seq_mean_token_sum_norm")
def _seq_mean_token_sum_norm(
    values: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    seq_id: torch.Tensor | None,
    norm: float | None,
) -> torch.Tensor:
    """Mean over completions of each one's token SUM divided by the constant ``norm`` (e.g.
    ``max_new_tokens``): Dr. GRPO's length-unbiased loss (Liu et al. 2025, §3.2)."""
    if norm is None or norm <= 0:
        raise ValueError("loss aggregation 'seq_mean_token_sum_norm' needs norm > 0")
    sums, _ = _seq_sums(values, seq_id, mask, "seq_mean_token_sum_norm")
    return sums.mean() / norm


def aggregate_tokens(
    values: torch.Tensor,
    *,
    mode: str,
    seq_id: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    norm: float | None = None,
) -> torch.Tensor:
    """Per-token losses (N,) -> scalar, by the aggregation registered as ``mode``
    (:data:`AGGREGATIONS`: ``token_mean``, ``seq_mean_token_mean``,
    ``seq_mean_token_sum_norm``).

    Args:
        values: (N,) per-token losses.
        mode: a name in :data:`AGGREGATIONS`.
        seq_id: (N,) completion id of each token row (needed unless ``token_mean``).
        mask: optional (N,) bool; masked rows do not count.
        norm: the constant of ``seq_mean_token_sum_norm``.
    """
    fn = AGGREGATIONS.get(mode)
    if fn is None:
        raise ValueError(f"mode must be one of {tuple(AGGREGATIONS)}, got {mode!r}")
    return fn(values, mask=mask, seq_id=seq_id, norm=norm)


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
            (:func:`aggregate_tokens`, ``algorithm.loss_aggregation``); default: the masked mean.

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
