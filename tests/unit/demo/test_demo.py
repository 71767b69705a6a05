"""The demo: the gold judge on known sentences, the generated task, its tokenizer and the stage
cache (a smoke-size run of every stage: tests/ray/demo/test_demo_smoke.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayrm.demo.cache import run_stage, stage_hash
from rayrm.demo.data import (
    NOUNS_HELD_OUT,
    heldout_prompts,
    review_corpus,
    train_prompts,
    train_tokenizer,
)
from rayrm.demo.judge import fluency, fluent_positivity
from rayrm.rewards.judges import vader_positivity


def test_vader_positivity_orders_known_sentences() -> None:
    prompts = ["the food was"] * 4
    completions = [
        " great and friendly , we will come back",
        " served at noon",
        " terrible and rude , never again",
        " not good",
    ]
    pos, neutral, neg, negated = vader_positivity(prompts, completions)
    assert pos > 0.5 and neutral == 0.0 and neg < -0.5 and negated < 0
    assert all(-1.0 <= x <= 1.0 for x in (pos, neutral, neg, negated))
    with pytest.raises(ValueError):
        vader_positivity(["a"], [])


def test_fluent_positivity_is_not_fooled_by_a_degenerate_text() -> None:
    """The over-optimisation task's gold: what a policy optimised without a KL penalty wrote
    (VADER +0.97) scores below a plain positive review; the grammar's own reviews are fluent."""
    prompts = ["the salad was"] * 4
    hacked, review, negative, empty = fluent_positivity(
        prompts,
        [" amazing , thank amazing fun fun fun", " amazing and great . we had fun", " terrible", ""],
    )
    assert vader_positivity(prompts[:1], [" amazing , thank amazing fun fun fun"])[0] > 0.95
    assert review > 0.9 and hacked < 0.6 and negative < -0.4 and empty == 0.0
    assert fluency("the salad was", " amazing , thank amazing fun fun fun") == pytest.approx(4 / 8)
    corpus = review_corpus(300, seed=11)  # another draw of the grammar: every pair known
    assert all(fluency(line.split(" was ")[0] + " was", " " + line.split(" was ", 1)[1]) == 1.0
               for line in corpus)  # fmt: skip


def test_corpus_is_deterministic_and_mixes_sentiments() -> None:
    corpus = review_corpus(600, seed=3)
    assert corpus == review_corpus(600, seed=3) and corpus != review_corpus(600, seed=4)
    scores = vader_positivity(corpus, corpus)
    share = {
        "pos": sum(s > 0.05 for s in scores) / len(scores),
        "neg": sum(s < -0.05 for s in scores) / len(scores),
        "neutral": sum(abs(s) <= 0.05 for s in scores) / len(scores),
    }
    assert all(v > 0.15 for v in share.values()), share
    # Held-out subjects appear in the corpus but in no training prompt.
    assert not any(n in p for n in NOUNS_HELD_OUT for p in train_prompts())
    assert all(any(n in line for line in corpus) for n in NOUNS_HELD_OUT)
    assert len(heldout_prompts(3)) == 3 * len(heldout_prompts(1))


def test_tokenizer_decodes_completions_as_words(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    train_tokenizer(review_corpus(500), 400, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    prompt, text = "the salad was", "the salad was great , we will come back"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    completion = tok.decode(ids[n:], skip_special_tokens=True)
    assert completion == " great , we will come back" and prompt + completion == text


def test_stage_cache_redoes_a_killed_stage(tmp_path: Path) -> None:
    calls = []

    def build(d: Path) -> dict:
        calls.append(d)
        d.mkdir()
        (d / "artifact").write_text("x")
        return {"value": 1}

    key = {"a": 1}
    d = tmp_path / f"s-{stage_hash('s', key)}"
    d.mkdir()
    (d / "half-written").write_text("from a killed run")
    first = run_stage(tmp_path, "s", key, build, log=lambda _: None)
    assert not first.cached and first.dir == d and not (d / "half-written").exists()
    lines: list[str] = []
    second = run_stage(tmp_path, "s", key, build, log=lines.append)
    assert second.cached and second.info["value"] == 1 and len(calls) == 1
    assert lines == [f"cached: s ({d})"]
    assert stage_hash("s", {"a": 2}) != stage_hash("s", key)
