"""Decoding across turns: the cost per token at each turn of a multi-turn episode.

A multi-turn episode's sampler extends the KV cache with the environment's replies instead of
starting over (``rayrm.models.decoding.decode_batch``'s ``inserts``), so a token at turn 4
should cost about what one at turn 1 does: only attention over the longer cache grows. This
section decodes a batch of episodes with the benchmark's policy (GPT-2 of the workload's size)
through the same loop the env runner uses, with scripted replies after every turn, and times
each decoding step:

* ``aligned``: every row ends its turns at the same step (replies fed together, no holes);
* ``staggered``: rows end their turns at different steps, so replies are fed while other rows
  decode (the block's masked columns, ``decode_block``).

One ``turn_decoding`` line per variant: the median seconds per generated token at each turn,
over ``repeats`` runs (variants alternated), the ratio of the last turn to the first with its
spread, and the seconds per reply token fed. Target (issue 29): ratio <= 1.3.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayrm.models.decoding import decode_batch

__all__ = ["measure_turn_decoding"]

TARGET = 1.3
"""Cost per token at the last turn over the first, at most (issue 29)."""


def _one_run(
    model: Any,
    *,
    batch: int,
    prompt_tokens: int,
    turns: int,
    turn_tokens: int,
    reply_tokens: int,
    staggered: bool,
    vocab: int,
) -> tuple[list[float], float]:
    """Per-turn seconds per token (turn of row 0's clock) and seconds per reply token."""
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(5, vocab, prompt_tokens)) for _ in range(batch)]
    offsets = [(row * turn_tokens) // (2 * batch) if staggered else 0 for row in range(batch)]
    steps_of = [0] * batch
    turn_of = [0] * batch
    pending: dict[int, list[int]] = {}
    stamps: list[tuple[float, int, bool]] = []  # (time, turn of row 0, replies fed after)

    def sample(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.argmax(-1), torch.zeros(logits.shape[0])

    def on_tokens(tokens: np.ndarray, logp: np.ndarray) -> list[bool]:
        for row in range(batch):
            if turn_of[row] >= turns:
                continue
            steps_of[row] += 1
            first = turn_tokens - offsets[row] if turn_of[row] == 0 else turn_tokens
            if steps_of[row] >= first:
                steps_of[row] = 0
                turn_of[row] += 1
                if turn_of[row] < turns:
                    pending[row] = list(rng.integers(5, vocab, reply_tokens))
        stamps.append((time.perf_counter(), turn_of[0], bool(pending)))
        return [t < turns for t in turn_of]

    def inserts() -> dict[int, list[int]]:
        out = dict(pending)
        pending.clear()
        return out

    decode_batch(model, prompts, pad_id=0, sample=sample, on_tokens=on_tokens, inserts=inserts)
    per_turn: dict[int, list[float]] = {}
    reply: list[float] = []
    for (t0, turn, fed), (t1, _, _) in zip(stamps, stamps[1:], strict=False):
        if fed:  # this interval's forward also fed the replies
            reply.append((t1 - t0) / reply_tokens)
        elif turn < turns:
            per_turn.setdefault(turn, []).append(t1 - t0)
    return [statistics.median(per_turn[t]) for t in range(turns)], statistics.median(reply)


def measure_turn_decoding(
    model_dir: str | Path,
    *,
    batch: int = 16,
    prompt_tokens: int = 24,
    turns: int = 4,
    turn_tokens: int = 24,
    reply_tokens: int = 16,
    repeats: int = 5,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """The ``turn_decoding`` lines (see the module docstring) for the policy at ``model_dir``."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    vocab = int(model.config.vocab_size)
    needed = prompt_tokens + turns * (turn_tokens + reply_tokens) + turn_tokens
    limit = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    if needed > limit:
        raise ValueError(f"the episodes need {needed} positions; the model has {limit}")
    runs: dict[str, list[tuple[list[float], float]]] = {"aligned": [], "staggered": []}
    settings = dict(
        batch=batch,
        prompt_tokens=prompt_tokens,
        turns=turns,
        turn_tokens=turn_tokens,
        reply_tokens=reply_tokens,
        vocab=vocab,
    )
    _one_run(model, staggered=False, **settings)  # warm-up
    for r in range(repeats):
        order = ["aligned", "staggered"] if r % 2 == 0 else ["staggered", "aligned"]
        for variant in order:
            runs[variant].append(_one_run(model, staggered=variant == "staggered", **settings))
    lines = []
    for variant, results in runs.items():
        ratios = [costs[-1] / costs[0] for costs, _ in results]
        lines.append(
            {
                "bench": "turn_decoding",
                "variant": variant,
                "batch": batch,
                "prompt_tokens": prompt_tokens,
                "turns": turns,
                "tokens_per_turn": turn_tokens,
                "reply_tokens": reply_tokens,
                "threads": threads,
                "repeats": repeats,
                "s_per_token_by_turn": [
                    round(statistics.median(costs[t] for costs, _ in results), 7)
                    for t in range(turns)
                ],
                "last_over_first": {
                    "median": round(statistics.median(ratios), 3),
                    "min": round(min(ratios), 3),
                    "max": round(max(ratios), 3),
                },
                "s_per_reply_token": round(statistics.median(r for _, r in results), 7),
                "target": TARGET,
                "met": statistics.median(ratios) <= TARGET,
            }
        )
    return lines
