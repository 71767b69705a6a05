"""Splitting, sharding and padding of a stage's rows (pure: numpy only).

The SFT and reward-model stages (``rayrm.stages.trainer``) split the rows into train and
held-out once, then deal each epoch's shuffled training rows out to the workers in equal shards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["epoch_shard", "iter_batches", "pad_right", "split_indices"]


def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/eval split of ``n`` rows.

    Returns:
        ``(train_idx, eval_idx)``; ``eval_idx`` has ``round(n * eval_fraction)`` rows (at least
        one when ``eval_fraction > 0`` and ``n >= 2``).
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def epoch_shard(num_rows: int, *, epoch: int, seed: int, rank: int, world_size: int) -> np.ndarray:
    """This worker's rows for one epoch: a shared shuffle, cut to equal shards.

    The ``num_rows % world_size`` rows left over change every epoch with the shuffle.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
    usable = num_rows - num_rows % world_size
    return perm[:usable][rank::world_size]


def iter_batches(indices: Sequence[int], batch_size: int) -> Iterator[Sequence[int]]:
    """Consecutive chunks of ``batch_size`` (the last may be shorter)."""
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


def pad_right(rows: Sequence[Sequence[int]], pad_value: int) -> np.ndarray:
    """Stacks variable-length rows into a right-padded ``(B, T)`` int64 array."""
    T = max(len(r) for r in rows)
    out = np.full((len(rows), T), pad_value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
