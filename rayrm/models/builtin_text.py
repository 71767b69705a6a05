"""The built-in text: a character tokenizer and the prompts written in its characters.

What the default ``rayrm/TextGeneration-v0`` task (``envs.builtin``) and the tiny local models
(``rayrm.models.tiny``) are built from, offline: ``build_char_tokenizer`` (one token per
character, so any small LM config can use it) and ``BUILTIN_PROMPTS`` (short lowercase prompts
written only with ``BUILTIN_CHARS``). ``transformers`` and ``tokenizers`` are imported inside
``build_char_tokenizer``, so importing this module stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["BUILTIN_CHARS", "BUILTIN_PROMPTS", "SPECIAL_TOKENS", "build_char_tokenizer"]

BUILTIN_CHARS = "abcdefghijklmnopqrstuvwxyz .,!?':"
"""The characters the built-in tokenizer knows, after its lower-case normalizer."""

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
"""Special tokens of the built-in tokenizer; their ids are 0, 1, 2 in this order."""

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
