"""Reference-based reward metrics: sentence-level chrF and BLEU (sacrebleu), scaled to [0, 1].

What belongs here: scorers that compare each completion with its prompt's reference text
(``data.reference_column`` of the prompts file, carried by the env into ``info["reference"]``).

Both metrics are sacrebleu's own implementations at the sentence level, divided by 100 so that a
reward lies in [0, 1] like the other built-in rewards (and mixes with them in a composite at
comparable weights):

* chrF (Popović 2015, https://aclanthology.org/W15-3049): character n-gram F-score, n = 1..6,
  β = 2 (recall weighted twice), sacrebleu's ``CHRF()`` defaults. Dense: every correct
  character moves it, so it is a good RL signal even for short or partly right completions.
* BLEU (Papineni et al. 2002): sacrebleu's ``BLEU(effective_order=True)``, the setting sacrebleu
  recommends for single sentences (n-gram orders the sentence cannot have are left out), with
  its default ``exp`` smoothing and ``13a`` tokenisation. Sparse on short texts.

A completion identical to its reference scores 1.0 under both, the empty string included
(sacrebleu scores empty-vs-empty as 0; an exact match is defined here as the maximum).

Each metric is also usable as a ``"module:function"`` reward function that takes references:
``reward: {source: function, function: "rayrm.rewards.text_metrics:chrf"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rayrm.rewards.base import Completion, RewardActor, unpack

METRICS = ("chrf", "bleu")
"""Names accepted by ``reward.metric`` and by components with ``source: metric``."""


def _sacrebleu_metric(metric: str) -> Any:
    """A sacrebleu metric object (built once per scorer: construction parses options)."""
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF

    if metric == "chrf":
        return CHRF()
    if metric == "bleu":
        return BLEU(effective_order=True)
    raise ValueError(f"unknown reward metric {metric!r}; choose one of {', '.join(METRICS)}")


def _check_references(
    metric: str, completions: Sequence[str], references: Sequence[str | None] | None
) -> Sequence[str]:
    if references is None:
        raise ValueError(
            f"reward metric {metric!r} needs references: give the prompts file a reference "
            f"column (data.reference_column)"
        )
    if len(references) != len(completions):
        raise ValueError(
            f"reward metric {metric!r} got {len(completions)} completions but "
            f"{len(references)} references"
        )
    missing = [i for i, r in enumerate(references) if r is None]
    if missing:
        raise ValueError(
            f"reward metric {metric!r}: item {missing[0]} has no reference "
            f"({len(missing)} of {len(references)} missing)"
        )
    return references  # type: ignore[return-value]  # no None left


def sentence_scores(
    metric: str,
    completions: Sequence[str],
    references: Sequence[str | None] | None,
    *,
    scorer: Any = None,
) -> np.ndarray:
    """Scores each completion against its own reference.

    Args:
        metric: ``"chrf"`` or ``"bleu"``.
        completions: N completion texts.
        references: N reference texts, same order.
        scorer: a sacrebleu metric object to reuse (built from ``metric`` when None).

    Returns:
        ``float32`` array of shape (N,), each in [0, 1] (sacrebleu's score / 100).

    Raises:
        ValueError: unknown metric, or references missing or of the wrong length.
    """
    refs = _check_references(metric, completions, references)
    scorer = scorer if scorer is not None else _sacrebleu_metric(metric)
    out = np.empty(len(completions), dtype=np.float32)
    for i, (hyp, ref) in enumerate(zip(completions, refs, strict=True)):
        out[i] = 1.0 if hyp == ref else scorer.sentence_score(hyp, [ref]).score / 100.0
    return out


def chrf(
    prompts: list[str], completions: list[str], references: list[str] | None = None
) -> list[float]:
    """chrF of each completion against its reference, in [0, 1] (reward-function signature)."""
    return [float(s) for s in sentence_scores("chrf", completions, references)]


def bleu(
    prompts: list[str], completions: list[str], references: list[str] | None = None
) -> list[float]:
    """Sentence BLEU of each completion against its reference, in [0, 1]."""
    return [float(s) for s in sentence_scores("bleu", completions, references)]


class RewardMetricActor(RewardActor):
    """Scores with a reference-based metric; same interface as the other reward actors."""

    def __init__(self, metric: str) -> None:
        """Builds the sacrebleu scorer.

        Raises:
            ValueError: unknown metric name.
        """
        self.metric = metric
        self.scorer = _sacrebleu_metric(metric)
        super().__init__("metric", metric)

    def score(
        self, records: Sequence[Completion], present: frozenset[str] | None = None
    ) -> np.ndarray:
        """``float32`` (N,) in [0, 1]: each record's completion against its reference; see
        :func:`sentence_scores` (``present``: as for reward functions)."""
        self.num_calls += 1
        completions = [r.completion for r in records]
        references = unpack(records, "references", present)
        scores = sentence_scores(self.metric, completions, references, scorer=self.scorer)
        self.num_scored += len(scores)
        return scores
