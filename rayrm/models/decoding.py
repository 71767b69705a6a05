"""The one decoding loop: batched, KV-cached sampling from a causal LM.

The env runner (which steps one Gymnasium env per row and token) and the tools that sample
from a policy (held-out evaluation, ``rayrm generate``, ``rayrm data pairs``, the report) all
decode through :func:`decode_batch`. Prompts are LEFT-padded so every row's next token sits in
the last column; each step feeds one new token per row through the cache, so the cost per token
does not grow with the length of the completion.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rayrm.core_algos import sample_tokens
from rayrm.models.tokenization import Prompt, PromptCodec

__all__ = [
    "decode_batch",
    "decode_block",
    "decode_start",
    "decode_step",
    "left_pad",
    "sample_completions",
    "sample_sequences",
]

Sampler = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(B, V) logits -> ((B,) tokens, (B,) log-probs)."""

OnTokens = Callable[[np.ndarray, np.ndarray], Sequence[bool]]
"""Called with the (B,) tokens and log-probs of a step; returns which rows go on."""

Inserts = Callable[[], Mapping[int, Sequence[int]]]
"""Called after each step's ``OnTokens``: row -> ids to feed after the row's sampled token
(an environment's reply in a multi-turn episode), before the next token is sampled."""


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks variable-length prompts into LEFT-padded (B, P) ids and mask."""
    P = max(len(p) for p in prompts)
    ids = np.full((len(prompts), P), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), P), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = p
        mask[i, P - len(p) :] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


@torch.no_grad()
def decode_start(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Runs the prompts through ``model`` and returns next-token logits plus the KV cache.

    Args:
        model: a Hugging Face causal LM.
        input_ids: (B, P) LEFT-padded prompt ids.
        attention_mask: (B, P) 1 for real tokens.

    Returns:
        ``(logits, cache)``: (B, V) float32 logits at the last position, and the cache.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    # Only the last position's logits: (B, P, V) would be gigabytes at real vocabularies.
    keep = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **keep,
    )
    return out.logits[:, -1].float(), _cache_of(out)


@torch.no_grad()
def decode_step(
    model: nn.Module, tokens: torch.Tensor, cache: Any, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Feeds one token per row through the cache: cost per token independent of length.

    Args:
        model: the model that built ``cache``.
        tokens: (B,) the tokens just sampled.
        cache: the cache from the previous call.
        attention_mask: (B, P + t) mask INCLUDING the new tokens.

    Returns:
        ``(logits, cache)``: (B, V) next-token logits and the grown cache.
    """
    position_ids = attention_mask.sum(-1, keepdim=True) - 1  # (B, 1)
    out = model(
        input_ids=tokens[:, None],
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **{_cache_kwarg(model): cache},
    )
    return out.logits[:, -1].float(), _cache_of(out)


@torch.no_grad()
def decode_block(
    model: nn.Module, block: torch.Tensor, cache: Any, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Feeds a few tokens per row through the cache (an environment's reply after a turn).

    Rows feed different numbers of tokens: each row's tokens are right-aligned in ``block`` and
    the columns before them are masked out (holes in the cache that no later token attends
    to), so every row's newest token is in the last column. Positions count real tokens only,
    so a row's tokens get the positions a forward over its unpadded sequence gives them.

    Args:
        model: the model that built ``cache``.
        block: (B, K) ids, each row's tokens right-aligned, masked columns any id.
        cache: the cache from the previous call.
        attention_mask: (B, C + K) mask INCLUDING the block's columns.

    Returns:
        ``(logits, cache)``: (B, V) next-token logits after each row's last token, and the cache.
    """
    width = block.shape[1]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]  # (B, K)
    keep = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    out = model(
        input_ids=block,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **{_cache_kwarg(model): cache},
        **keep,
    )
    return out.logits[:, -1].float(), _cache_of(out)


def compact_cache(cache: Any, attention_mask: torch.Tensor) -> torch.Tensor:
    """Drops the masked columns of a cache in place, when they are many; returns the new mask.

    Replies fed to some rows leave masked columns (holes) in the others (:func:`decode_block`);
    every later token would attend over them. Each row's cached keys and values are moved, in
    order, to the right end of a cache as long as the row with the most real tokens, the rest
    masked (left padding, as the prompts start): nothing is recomputed, and the positions stay
    those the keys were made with (rotary or learned, from the real-token count). Done when the
    holes shared by every row are at least an eighth of the cache (and 8 columns), and only on
    caches whose layers all keep every position (a sliding-window layer keeps the last W).

    Args:
        cache: a ``transformers`` ``DynamicCache`` (other caches are left as they are).
        attention_mask: (B, C) the mask of the cache's columns.

    Returns:
        The (B, C') mask of the cache after compaction (``attention_mask`` when not compacted).
    """
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return attention_mask
    counts = attention_mask.sum(-1)  # (B,)
    width, length = int(counts.max()), attention_mask.shape[1]
    if length - width < max(8, width // 8):
        return attention_mask
    if any(layer.keys.shape[-2] != length for layer in layers):
        return attention_mask
    B = attention_mask.shape[0]
    # Right-align each row's real columns: the k-th from the end goes to width - 1 - k.
    real = attention_mask.bool()
    rank = real.flip(-1).long().cumsum(-1).flip(-1)  # (B, C) real columns at or after each
    target = width - rank  # (B, C) destination of each real column
    index = torch.zeros(B, width, dtype=torch.long, device=attention_mask.device)
    rows, cols = real.nonzero(as_tuple=True)
    index[rows, target[rows, cols]] = cols
    new_mask = torch.arange(width, device=attention_mask.device)[None, :] >= (
        width - counts[:, None]
    )
    for layer in layers:
        gather = index[:, None, :, None].expand(B, layer.keys.shape[1], width, layer.keys.shape[-1])
        layer.keys = layer.keys.gather(2, gather)
        layer.values = layer.values.gather(2, gather)
    return new_mask.to(attention_mask.dtype)


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.2x renamed ``past_key_values`` to ``cache``; accept both."""
    return "cache" if _accepts(model, "cache") else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def decode_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    sample: Sampler,
    on_tokens: OnTokens,
    inserts: Inserts | None = None,
) -> None:
    """Decodes all prompts together until ``on_tokens`` says no row goes on.

    Args:
        model: a Hugging Face causal LM (its device is used).
        prompts: B prompt id lists.
        pad_id: id to pad prompts with (masked out).
        sample: turns a step's logits into tokens and their log-probs.
        on_tokens: consumes each step's tokens; returns per row whether it continues. A
            finished row keeps being fed (its tokens are ignored) until all are finished.
        inserts: after each step, the ids to feed after some rows' tokens (multi-turn
            environments' replies): the cache is extended with them (:func:`decode_block`),
            never rebuilt, so a turn costs its own tokens, not the history's.
    """
    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    logits, cache = decode_start(model, ids, mask)
    while True:
        tokens, logp = sample(logits)
        active = on_tokens(tokens.cpu().numpy(), logp.float().cpu().numpy())
        if not any(active):
            return
        extra = inserts() if inserts is not None else {}
        if not extra:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = decode_step(model, tokens, cache, mask)
            continue
        width = 1 + max(len(ids) for ids in extra.values())
        block = torch.full((len(prompts), width), pad_id, dtype=torch.int64)
        block_mask = torch.zeros((len(prompts), width), dtype=mask.dtype)
        for row, token in enumerate(tokens.tolist()):
            fed = [int(token), *(int(i) for i in extra.get(row, ()))]
            block[row, width - len(fed) :] = torch.tensor(fed)
            block_mask[row, width - len(fed) :] = 1
        mask = torch.cat([mask, block_mask.to(device)], dim=1)
        logits, cache = decode_block(model, block.to(device), cache, mask)
        mask = compact_cache(cache, mask)


def sampler(
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Sampler:
    """A :data:`Sampler` with fixed sampling settings (see ``core_algos.sample_tokens``)."""

    def sample(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_tokens(
            logits,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            generator=generator,
        )

    return sample


def sample_sequences(
    model: nn.Module,
    codec: PromptCodec,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, generated_ids)`` per prompt; a row ends at a stop token or stop string
    (the stop token included, as in the environment) or after ``max_new_tokens``."""
    encoded = [codec.encode(p) for p in prompts]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)

    def on_tokens(tokens: np.ndarray, logp: np.ndarray) -> list[bool]:
        for i, token in enumerate(tokens.tolist()):
            if done[i]:
                continue
            generated[i].append(int(token))
            done[i] = (
                token in codec.stop_token_ids
                or len(generated[i]) >= max_new_tokens
                or (
                    bool(codec.stop_strings)
                    and codec.stop_string_end(codec.texts(encoded[i], generated[i])[1]) is not None
                )
            )
        return [not d for d in done]

    sample = sampler(
        temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, generator=generator
    )
    decode_batch(model, encoded, pad_id=codec.pad_token_id, sample=sample, on_tokens=on_tokens)
    return list(zip(encoded, generated, strict=True))


def sample_completions(
    model: nn.Module, codec: PromptCodec, prompts: Sequence[Prompt], **kwargs: Any
) -> list[str]:
    """One completion text per prompt (exact text: see ``rayrm.models.tokenization``)."""
    return [codec.texts(p, g)[1] for p, g in sample_sequences(model, codec, prompts, **kwargs)]
