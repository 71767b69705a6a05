"""The reward path, top to bottom: finished completions -> scores -> shaped scores.

1. **Score** (:meth:`RewardPipeline.score`): the run's scorer (``pool_from_config``: a reward
   model, a function, a metric, an ensemble or a weighted composite) reads each completion's
   exact text (``Completion``), its reference and its conversation; composed rewards subtract
   the length and missing-EOS penalties (``rayrm.rewards.compose``).
2. **Check**: a NaN or infinite score ends the run with one line naming the source and the
   completion (``reward.on_nan: error``), or marks the completion as skipped (``skip``: left
   out of the update and counted).
3. **Shape**: optionally whiten with running moments across iterations (Ziegler et al. 2019's
   reward normalisation; the moments travel with checkpoints), then clip to ``[-clip, clip]``.
4. **Pay**: the algorithm adds each shaped score to the reward of the completion's last token
   (``rayrm.rl.algorithm``); the learner then adds the per-token KL penalty
   ``−β·(log π − log π_ref)`` to every token (``rayrm.core_algos.token_advantages``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rayrm.core_algos import RunningMoments
from rayrm.rewards.base import Completion, RewardSourceError, ScoredBatch, Scorer

__all__ = ["RewardPipeline", "describe_reward"]


def describe_reward(reward: Any) -> str:
    """The reward source of a ``RewardSettings``, as messages name it."""
    if reward.source == "function":
        return f"reward.function {reward.function!r}"
    if reward.source == "model":
        return f"the reward model {reward.path!r}"
    if reward.source == "metric":
        return f"the {reward.metric} metric"
    return f"the {reward.source} reward"


class RewardPipeline:
    """Scores finished completions through a scorer and shapes the scores.

    Args:
        scorer: What scores (see :class:`~rayrm.rewards.base.Scorer`).
        normalize: Whiten scores with running mean and std (``reward.normalize``).
        clip: Clip shaped scores to ``[-clip, clip]`` (``reward.clip``), or None.
        on_nan: ``error`` or ``skip`` (``reward.on_nan``).
        what: The source, as error messages name it.
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        normalize: bool = False,
        clip: float | None = None,
        on_nan: str = "error",
        what: str = "the reward",
    ):
        self.scorer = scorer
        self.normalize = normalize
        self.clip = clip
        self.on_nan = on_nan
        self.what = what
        self.moments = RunningMoments()

    def score(self, completions: Sequence[Completion]) -> ScoredBatch:
        """Scores and shapes a batch (updating the running moments when normalising)."""
        raw, breakdown = self.scorer.score_detailed(completions)
        raw = np.asarray(raw, dtype=np.float64)
        skipped = ~np.isfinite(raw)  # (N,)
        if skipped.any():
            if self.on_nan != "skip":
                i = int(np.flatnonzero(skipped)[0])
                raise RewardSourceError(
                    f"{self.what} gave a non-finite score ({raw[i]}) for completion {i} of the "
                    f"batch (completion {completions[i].completion[:60]!r}); fix the source, or "
                    "set reward.on_nan: skip to leave such completions out"
                )
            raw = np.where(skipped, 0.0, raw)
        scores = raw
        if self.normalize:
            self.moments.update(raw[~skipped])
            scores = (raw - self.moments.mean) / self.moments.std
        if self.clip is not None:
            scores = np.clip(scores, -self.clip, self.clip)
        scores = np.where(skipped, 0.0, scores)
        return ScoredBatch(raw=raw, scores=scores, breakdown=breakdown, skipped=skipped)

    def get_state(self) -> dict[str, Any]:
        return {"moments": self.moments.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.moments.set_state(state["moments"])

    def shutdown(self) -> None:
        self.scorer.shutdown()
