"""The learner connector's no-grad forwards of a batch, run before its update needs them.

The reference's log-probs, the values (with a critic) and, with ``recompute_logp``, the
policy's log-probs need no rewards: in synchronous iterations with a local learner the
algorithm runs them while the reward actors score the batch (:func:`score_alongside`), and
the update's connector takes them (:class:`PrecomputedForwards`) instead of running them again.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from ray.rllib.core.columns import Columns

from rayrm.rl.episodes import (
    PROMPT_IDS,
    content_key,
    inserts_of,
    row_slices,
    seq_ids,
    token_rows,
)
from rayrm.rl.module import SEQ_ID

__all__ = ["PrecomputedForwards", "score_alongside"]

T = TypeVar("T")


class Precomputing(Protocol):
    """A learner that computes its forwards ahead (``RLHFPPOLearner.precompute_forwards``)."""

    def precompute_forwards(self, episodes: list[Any]) -> None: ...


class PrecomputedForwards:
    """Forwards of completions computed ahead, by content (prompt and tokens: the learner gets
    copies of the episodes, and equal completions have equal forwards), until the update
    takes them; any weight change (an optimizer step, a restored state) drops them."""

    def __init__(self) -> None:
        self._by_content: dict[tuple[bytes, bytes], dict[str, torch.Tensor]] | None = None

    def compute(self, module: Any, episodes: list[Any], *, logp: bool, values: bool) -> None:
        """Runs ``module.rollout_outputs`` over ``episodes`` now, with its current weights."""
        device = next(module.parameters()).device
        lens = [len(e) for e in episodes]
        actions = np.concatenate([np.asarray(e.get_actions(), np.int64) for e in episodes])
        actions_t = torch.from_numpy(actions).to(device)
        batch = {
            Columns.OBS: token_rows(
                [e.get_infos(0)[PROMPT_IDS] for e in episodes],
                actions_t,
                lens,
                [inserts_of(e) for e in episodes],
            ),
            Columns.ACTIONS: actions_t,
            SEQ_ID: seq_ids(lens, device),
        }
        with torch.no_grad():
            out = module.rollout_outputs(batch, logp=logp, values=values)
        self._by_content = {
            content_key(e): {key: value[sl] for key, value in out.items()}
            for e, sl in zip(episodes, row_slices(lens), strict=True)
        }

    def take(self, episodes: list[Any], device: Any) -> dict[str, Any] | None:
        """The forwards of ``episodes`` in their order (rows concatenated), or None when any
        is missing; used up either way."""
        computed, self._by_content = self._by_content, None
        if computed is None or not episodes:
            return None
        parts = [computed.get(content_key(e)) for e in episodes]
        if any(p is None for p in parts):
            return None
        return {key: torch.cat([p[key] for p in parts]).to(device) for key in parts[0]}

    def drop(self) -> None:
        """Forgets them (the weights changed)."""
        self._by_content = None


def score_alongside(
    score: Callable[[list[Any]], T], episodes: list[Any], learner: Precomputing | None
) -> T:
    """``score(episodes)`` in a helper thread (it waits on the reward actors) while this
    thread runs ``learner``'s no-grad forwards over the same episodes
    (``RLHFPPOLearner.precompute_forwards``); just ``score(episodes)`` without a learner."""
    if learner is None:
        return score(episodes)
    pool = ThreadPoolExecutor(1, "rayrm-score")
    try:
        scoring = pool.submit(score, episodes)
        try:
            learner.precompute_forwards(episodes)
        finally:
            result = scoring.result()  # the scores (or their error) whatever happened here
        return result
    finally:
        pool.shutdown(wait=False)  # an interrupted wait (the watchdog) does not wait again
