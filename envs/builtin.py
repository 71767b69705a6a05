"""Built-in task: a character tokenizer, a prompt set and a rule reward that need no downloads.

This module holds everything the default ``rayrm/TextGeneration-v0`` environment needs so that
tests, smoke runs and the learning test work offline with a tiny locally-built model:

* ``build_char_tokenizer`` -- one token per character, so any small LM config can use it
  (``rayrm.models.builtin_text``, with the prompts).
* ``BUILTIN_PROMPTS`` -- short lowercase prompts written only with ``BUILTIN_CHARS``.
* ``vowel_reward`` -- a dense, easily learnable rule reward (fraction of vowels), which gives a
  learning test a clear signal: a policy that learns emits more vowels.
"""

from __future__ import annotations

from rayrm.models.builtin_text import (
    BUILTIN_CHARS,
    BUILTIN_PROMPTS,
    SPECIAL_TOKENS,
    build_char_tokenizer,
)

__all__ = [
    "BUILTIN_CHARS",
    "BUILTIN_PROMPTS",
    "SPECIAL_TOKENS",
    "VOWELS",
    "build_char_tokenizer",
    "vowel_reward",
]

VOWELS = frozenset("aeiou")


def vowel_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Scores each completion by the fraction of its characters that are vowels.

    This is the built-in rule reward: dense in the sense that every generated character moves
    it, bounded in [0, 1], and reachable by a tiny character model, which makes it a good
    learning test. The signature is the one every rayrm reward function has (the
    ``"module:function"`` reward sources): batched lists in, one float per pair out.

    Args:
        prompts: Prompt texts, one per completion (unused by this rule, part of the signature).
        completions: Completion texts. Upper-case vowels count; every other character
            (spaces and punctuation included) counts as a non-vowel.

    Returns:
        One reward per completion, in order; 0.0 for an empty completion.

    Raises:
        ValueError: If ``prompts`` and ``completions`` differ in length.
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"vowel_reward got {len(prompts)} prompts but {len(completions)} completions; "
            "they must pair up one to one"
        )
    rewards = []
    for completion in completions:
        if not completion:
            rewards.append(0.0)
            continue
        num_vowels = sum(char in VOWELS for char in completion.lower())
        rewards.append(num_vowels / len(completion))
    return rewards
