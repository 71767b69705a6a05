"""The over-optimisation task's gold judge: positive *and* well-formed, which a degenerate text
cannot fake.

What belongs here: :func:`fluent_positivity`, the gold judge of ``rayrm demo --task
overoptimise``, and what it is made of. VADER alone is hacked along with a reward model that
learned it: a policy optimised without a KL penalty ends writing ``amazing , thank amazing fun
fun fun``, which VADER scores +0.97 of 1. A judge that also knows the grammar the demo's reviews
come from (:mod:`rayrm.demo.data`) is stronger than any reward model trained on a few hundred
of its labels, the way Gao et al. (2022, https://arxiv.org/abs/2210.10760) use a larger gold
model: the proxy learns the words that please, the gold judge also asks whether they make a
review. Over-optimisation then shows as the gold score peaking and falling while the proxy
keeps rising.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from rayrm.demo.data import review_corpus
from rayrm.rewards.judges import vader_positivity

__all__ = ["GRAMMAR_SAMPLE", "fluency", "fluent_positivity", "review_bigrams"]

GRAMMAR_SAMPLE = 50_000
"""Reviews drawn from the demo's grammar to list the word pairs it can produce (every pair the
grammar makes appears in a sample this large: the rarest, 19 times; 200,000 more reviews
add no new pair)."""


@lru_cache(maxsize=1)
def review_bigrams() -> frozenset[tuple[str, str]]:
    """Every adjacent pair of words in the demo's reviews, with ``</s>`` after the last."""
    pairs: set[tuple[str, str]] = set()
    for line in review_corpus(GRAMMAR_SAMPLE, seed=7919):
        words = [*line.split(), "</s>"]
        pairs.update(zip(words, words[1:], strict=False))
    return frozenset(pairs)


def fluency(prompt: str, completion: str) -> float:
    """The fraction of the completion's word pairs (the prompt's last word before its first,
    ``</s>`` after its last) that the review grammar produces: 1.0 for a review the grammar
    could have written, lower for each pair it could not (``fun fun``, ``thank amazing``).
    An empty completion scores 0."""
    words = completion.split()
    if not words:
        return 0.0
    seq = [*prompt.split()[-1:], *words, "</s>"]
    known = review_bigrams()
    pairs = list(zip(seq, seq[1:], strict=False))
    return sum(pair in known for pair in pairs) / len(pairs)


def fluent_positivity(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """VADER's compound sentiment times :func:`fluency`: in [-1, 1], the highest for a
    well-formed positive review. The reward-function signature (``eval.gold_function``, the
    ``judge`` of ``rayrm data pairs``)."""
    sentiment = vader_positivity(prompts, completions)
    return [s * fluency(p, c) for s, p, c in zip(sentiment, prompts, completions, strict=True)]
