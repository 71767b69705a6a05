"""The demo's task: a generated review corpus, its prompts and a tokenizer trained on it.

What belongs here: everything ``rayrm demo`` needs to exist before any model does, built
offline and deterministically from a seed — short product and restaurant reviews made from
templates and word lists, the training and held-out prompts, and a byte-level BPE tokenizer
(``tokenizers``) saved as a Hugging Face tokenizer.

The corpus mixes positive, negative and neutral reviews, so the SFT policy writes all three and
the gold judge (VADER, :func:`rayrm.rewards.judges.vader_positivity`) sees a spread of scores: the
preference pairs carry signal, and PPO has somewhere to go. The words are ordinary English that
VADER's lexicon rates (``great``, ``rude``, ``never again``) plus neutral filler it does not
(``served at noon``); a few reviews negate (``not good``) or turn (``good but slow``), which
VADER's rules handle and the reward model has to learn from the labels.

Held-out prompts use subjects (``NOUNS_HELD_OUT``) that appear in the corpus but never in a
training prompt, so the held-out gold score measures behaviour on prompts PPO did not train on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NOUNS_HELD_OUT",
    "NOUNS_TRAIN",
    "PROMPT_TEMPLATES",
    "SPECIAL_TOKENS",
    "train_tokenizer",
    "heldout_prompts",
    "review_corpus",
    "train_prompts",
]

NOUNS_TRAIN = (
    "food", "service", "pasta", "pizza", "soup", "coffee", "dessert", "waiter", "staff",
    "room", "bed", "price", "phone", "battery", "laptop", "delivery", "menu", "steak",
)  # fmt: skip
NOUNS_HELD_OUT = ("salad", "hotel", "camera", "music", "burger", "screen")
PROMPT_TEMPLATES = ("the {} was", "review: the {} was", "honestly, the {} was", "our {} was")
"""Every review starts with one of these; a prompt is one of them with a subject filled in."""

POSITIVE = (
    "great", "excellent", "amazing", "wonderful", "good", "delicious", "friendly", "perfect",
    "lovely", "nice", "fantastic", "awesome", "pleasant", "superb", "brilliant", "beautiful",
    "impressive", "enjoyable",
)  # fmt: skip
NEGATIVE = (
    "terrible", "awful", "bad", "horrible", "rude", "disappointing", "poor", "dirty", "boring",
    "disgusting", "unpleasant", "annoying", "nasty", "ugly", "useless", "weak", "pathetic",
    "sad",
)  # fmt: skip
NEUTRAL = (
    "average", "small", "large", "quiet", "warm", "new", "old", "ready", "typical", "blue",
    "square", "standard", "expected", "included", "available", "served at noon",
    "on the table", "in a box",
)  # fmt: skip
INTENSIFIERS = ("very", "really", "quite", "so", "extremely", "incredibly")
CLAUSES = {
    "pos": (
        "we will come back", "i would recommend it", "i loved it", "worth every penny",
        "thank you", "best in town", "we had fun",
    ),
    "neg": (
        "never again", "i want a refund", "what a waste", "i hated it", "avoid this place",
        "worst in town", "we left angry",
    ),
    "neu": (
        "we paid at the counter", "it came on a tuesday", "the table was by the window",
        "we ordered two", "it took ten minutes", "we sat outside",
    ),
}  # fmt: skip
WORDS = {"pos": POSITIVE, "neg": NEGATIVE, "neu": NEUTRAL}

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
"""Special tokens of the demo tokenizer; ids 0, 1, 2."""


# ---------------------------------------------------------------------------------------------
# Corpus and prompts
# ---------------------------------------------------------------------------------------------


def _review(rng: random.Random) -> str:
    """One review: a prompt template with a subject, then an opinion of one sentiment."""
    mood = rng.choices(("pos", "neg", "neu"), weights=(0.35, 0.35, 0.30))[0]
    noun = rng.choice(NOUNS_TRAIN + NOUNS_HELD_OUT)
    head = rng.choice(PROMPT_TEMPLATES).format(noun)
    word = rng.choice(WORDS[mood])
    shape = rng.random()
    if shape < 0.30:
        opinion = word
    elif shape < 0.55 and mood != "neu":
        opinion = f"{rng.choice(INTENSIFIERS)} {word}"
    elif shape < 0.75:
        opinion = f"{word} and {rng.choice(WORDS[mood])}"
    elif shape < 0.85:  # a turn: VADER weighs what follows "but" more
        other = rng.choice(WORDS["neg" if mood == "pos" else "pos"])
        opinion = f"{word} but {other}"
    elif shape < 0.92 and mood != "neu":  # a negation: "not good" reads as negative
        opinion = f"not {word}"
    else:
        opinion = f"{word} , {rng.choice(CLAUSES[mood])}"
    if rng.random() < 0.3:
        opinion += f" . {rng.choice(CLAUSES[mood])}"
    return f"{head} {opinion}"


def review_corpus(num_lines: int, seed: int = 0) -> list[str]:
    """``num_lines`` generated reviews (lower case, one sentence or two), deterministic in
    ``seed``."""
    rng = random.Random(seed)
    return [_review(rng) for _ in range(num_lines)]


def _prompts(nouns: Sequence[str], repeats: int) -> list[str]:
    return [t.format(n) for _ in range(repeats) for n in nouns for t in PROMPT_TEMPLATES]


def train_prompts() -> list[str]:
    """PPO's and the preference pairs' prompts: every template with every training subject."""
    return _prompts(NOUNS_TRAIN, 1)


def heldout_prompts(repeats: int = 1) -> list[str]:
    """Held-out prompts: every template with every held-out subject, ``repeats`` times over.

    Repeating a prompt gives it several sampled completions in one evaluation, so the gold
    score's mean and spread rest on more samples.
    """
    return _prompts(NOUNS_HELD_OUT, repeats)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def train_tokenizer(corpus: Sequence[str], vocab_size: int, out_dir: str | Path) -> Any:
    """Trains a byte-level BPE tokenizer on ``corpus`` and saves it as a Hugging Face tokenizer.

    Byte-level BPE (GPT-2's scheme) keeps the space before a word inside its token (``Ġgreat``),
    so a completion decodes to ``" great and friendly"`` and ``prompt + completion`` reads as the
    sentence it is — which matters because VADER and the reward model read words. Decoding is
    the exact inverse of encoding.

    Args:
        corpus: Training texts.
        vocab_size: Vocabulary size including the 256 byte tokens and ``SPECIAL_TOKENS``.
        out_dir: Directory to ``save_pretrained`` into (created).

    Returns:
        The ``PreTrainedTokenizerFast`` (pad ``<pad>``, eos ``<eos>``, unk ``<unk>``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
