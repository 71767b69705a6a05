"""Built-in task: a character tokenizer, a prompt set and a rule reward that need no downloads.

This module holds everything the default ``rayrm/TextGeneration-v0`` environment needs so that
tests, smoke runs and the learning test work offline with a tiny locally-built model:

* ``build_char_tokenizer`` -- one token per character, so any small LM config can use it.
* ``BUILTIN_PROMPTS`` -- short lowercase prompts written only with ``BUILTIN_CHARS``.
* ``vowel_reward`` -- a dense, easily learnable rule reward (fraction of vowels), which gives a
  learning test a clear signal: a policy that learns emits more vowels.

``transformers`` and ``tokenizers`` are imported inside ``build_char_tokenizer`` so that
``import envs`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BUILTIN_CHARS = "abcdefghijklmnopqrstuvwxyz .,!?':"
"""The characters the built-in tokenizer knows, after its lower-case normalizer."""

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
"""Special tokens of the built-in tokenizer; their ids are 0, 1, 2 in this order."""

VOWELS = frozenset("aeiou")

BUILTIN_PROMPTS: list[str] = [
    "the cat said",
    "once upon a time",
    "my review:",
    "hello, my name is",
    "the weather today is",
    "i think that",
    "in the morning we",
    "the best food is",
    "a dog ran to the",
    "she looked at the sky and",
    "what is the meaning of",
    "tell me a story about",
    "the old man said",
    "we went to the park",
    "why is the sea",
    "my favourite song is",
    "the robot answered",
    "long ago, in a town",
    "the book was about",
    "he opened the door and",
    "the answer is",
    "let me tell you",
    "the little bird sang",
    "on a cold night",
    "the king and the queen",
    "my friend says",
    "the river runs to",
    "can you believe it?",
    "the movie was",
    "in my garden there is",
    "the teacher asked",
    "it was a dark night",
    "the moon is",
    "all i want is",
    "the train left at",
    "a poem about rain:",
    "the city at night",
    "my dream is to",
    "the fox jumped over",
    "today i learned",
    "the secret of life is",
    "a letter to you:",
    "the children played",
    "under the old tree",
    "the shop sold",
    "we should never",
    "the wind blew and",
    "if i could fly",
    "the best day was",
    "the small boat",
    "i am so happy that",
    "the mountain was",
    "the cook made",
    "a note for later:",
    "the game ended when",
    "she wrote that",
    "the light in the window",
    "every day we",
    "the story ends with",
    "my plan is",
    "the horse ran",
    "the door was open, so",
    "wow! look at",
    "it's time to",
]
"""Sixty-four short prompts; deterministic so that seeded runs see the same prompt stream."""


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Builds the character-level tokenizer of the built-in task.

    One token per character keeps the vocabulary tiny (36 ids), so test models are small and a
    policy can learn the vowel reward in a few hundred updates. Ids: ``<pad>`` 0, ``<eos>`` 1,
    ``<unk>`` 2, then ``BUILTIN_CHARS`` in order. A lower-case normalizer maps upper-case input
    onto known characters; any other unknown character becomes ``<unk>``.

    The ``Fuse`` decoder joins tokens with "" (the default decoder would put a space between
    characters), and ``clean_up_tokenization_spaces=False`` is stored in the config so that
    ``decode`` never rewrites " ," or " 's" -- decode is the exact inverse of encode on
    lower-case text in ``BUILTIN_CHARS``. Both survive ``save_pretrained`` /
    ``AutoTokenizer.from_pretrained``.

    Returns:
        A ``PreTrainedTokenizerFast`` with pad, eos and unk tokens set.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in BUILTIN_CHARS:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    # An empty pattern splits between every pair of characters (newlines included), so each
    # character is its own word for the WordLevel model.
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


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
