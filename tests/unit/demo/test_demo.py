"""The demo: the gold judge on known sentences, the generated task, and a smoke-size run of
every stage (SFT, pairs, reward model, PPO, report) followed by a fully cached second run."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from helpers import check_quiet_output

from rayrm.console import LOG_NAME
from rayrm.demo.cache import run_stage, stage_hash
from rayrm.demo.data import (
    NOUNS_HELD_OUT,
    heldout_prompts,
    review_corpus,
    train_prompts,
    train_tokenizer,
)
from rayrm.demo.run import STAGES, run_demo
from rayrm.demo.steps import SIZES, STAGE_SETTINGS, ppo_config
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


@pytest.mark.slow
def test_smoke_demo_runs_every_stage_then_is_cached(ray_local, tmp_path: Path, capfd) -> None:
    from rayrm.cli import main

    assert main(["demo", "--dir", str(tmp_path / "demo"), "--size", "smoke"]) == 0
    out, err = capfd.readouterr()
    counts = check_quiet_output(out, err)
    assert counts["stage"] == counts["done"] == len(STAGES) and counts["iter"] == 2
    assert counts["epoch"] == 2 and sum(counts.values()) == len(out.splitlines()) == 25
    lines: list[str] = []
    start = time.perf_counter()
    result = run_demo(tmp_path / "demo", size="smoke", progress=False, log=lines.append)
    assert time.perf_counter() - start < 30  # a second run finds every stage cached
    assert [line.split(" ")[1] for line in lines if line.startswith("cached:")] == list(STAGES)
    assert out.splitlines()[-1] == f"report: {result['report']}"
    assert (tmp_path / "demo" / LOG_NAME).stat().st_size > 0  # the rest went to the log
    stages = result["stages"]
    assert list(stages) == list(STAGES) and all(s["cached"] for s in stages.values())
    for s in stages.values():
        assert json.loads((Path(s["dir"]) / "done").read_text())["seconds"] >= 0
    data = Path(stages["data"]["dir"])
    assert all((data / f).is_file() for f in ("corpus.txt", "prompts.jsonl", "heldout.jsonl"))
    assert (Path(stages["tokenizer"]["dir"]) / "tokenizer.json").is_file()
    assert (Path(stages["sft"]["model"]) / "config.json").is_file()
    assert Path(stages["pairs"]["path"]).is_file() and stages["pairs"]["num_pairs"] > 0
    rm = Path(stages["reward_model"]["model"])
    assert json.loads((rm / "config.json").read_text())["architectures"] == [
        "GPT2ForSequenceClassification"
    ]
    assert 0.0 <= result["rm_eval_accuracy"] <= 1.0

    report = Path(result["report"])
    assert report.is_file() and report.parent == Path(stages["ppo"]["dir"])
    text = report.read_text()
    assert "held-out GOLD" in text and "## The demo pipeline" in text
    assert (report.parent / "heldout.png").is_file()
    assert lines[-1] == f"report: {report}"
    gold = result["gold"]
    assert gold["sft"]["n"] == gold["ppo"]["n"] > 0 and gold["sft"]["std"] >= 0

    # --algo grpo: only the RL stage's key names the algorithm (the earlier stages are reused),
    # so its run gets a folder of its own, and its config is critic-free with 4 samples per
    # prompt. (GRPO's training itself: tests/test_critic_free.py.)
    assert [name for name, keys in STAGE_SETTINGS.items() if "algo" in keys] == ["ppo"]
    grpo = dataclasses.replace(SIZES["smoke"], algo="grpo")
    ppo_key = {k: getattr(SIZES["smoke"], k) for k in STAGE_SETTINGS["ppo"]}
    grpo_key = {k: getattr(grpo, k) for k in STAGE_SETTINGS["ppo"]}
    assert stage_hash("ppo", grpo_key) != stage_hash("ppo", ppo_key)
    used = ppo_config("grpo", tmp_path, grpo, stages["sft"]["model"], str(rm), data)
    assert used.ppo.advantage_estimator == "grpo" and used.generation.samples_per_prompt == 4
    assert not used.ppo.uses_critic
