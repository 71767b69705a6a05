"""Sampling the next token from the policy's logits."""

from __future__ import annotations

import math

import torch

__all__ = ["sample_tokens"]


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
