"""Gold judges: scorers that are independent of any reward model rayrm trains.

What belongs here: ``fn(prompts, completions) -> list[float]`` functions (the reward-function
signature) that serve as ``eval.gold_function`` in a run config or as the ``judge`` that labels
preference pairs (:func:`rayrm.stages.preference_data.build_preference_pairs`). A gold judge measures what
the policy is *meant* to get better at; the learned reward model is only a proxy for it, so
the gold score on held-out prompts is the honest measure of whether RLHF worked (Gao et al.
2022, https://arxiv.org/abs/2210.10760).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["vader_positivity"]


@lru_cache(maxsize=1)
def _vader() -> Any:
    """One VADER analyser per process (building it parses the lexicon file)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_positivity(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """VADER's compound sentiment of each completion, in [-1, 1]; higher is more positive.

    VADER (Hutto & Gilbert 2014, https://ojs.aaai.org/index.php/ICWSM/article/view/14550) is a
    lexicon- and rule-based sentiment analyser: word valences from human raters, adjusted for
    negation ("not good"), intensifiers ("very"), contrast ("but") and punctuation. Only the
    completion is scored, so the prompt's own words neither help nor hurt.

    Args:
        prompts: One per completion (unused; part of the reward-function signature).
        completions: The texts to score.

    Returns:
        One compound score per completion.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    analyser = _vader()
    return [float(analyser.polarity_scores(c)["compound"]) for c in completions]
