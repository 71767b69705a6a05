"""The demo end to end: a smoke-size run of every stage (SFT, pairs, reward model, PPO, report)
followed by a fully cached second run (its pieces: tests/unit/demo/test_demo.py)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from helpers import check_quiet_output

from rayrm.console import LOG_NAME
from rayrm.demo.cache import stage_hash
from rayrm.demo.run import STAGES, run_demo
from rayrm.demo.steps import SIZES, STAGE_SETTINGS, ppo_config


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
    # prompt. (GRPO's training itself: tests/ray/rl/test_critic_free_training.py.)
    assert [name for name, keys in STAGE_SETTINGS.items() if "algo" in keys] == ["ppo"]
    grpo = dataclasses.replace(SIZES["smoke"], algo="grpo")
    ppo_key = {k: getattr(SIZES["smoke"], k) for k in STAGE_SETTINGS["ppo"]}
    grpo_key = {k: getattr(grpo, k) for k in STAGE_SETTINGS["ppo"]}
    assert stage_hash("ppo", grpo_key) != stage_hash("ppo", ppo_key)
    used = ppo_config("grpo", tmp_path, grpo, stages["sft"]["model"], str(rm), data)
    assert used.algorithm.advantage_estimator == "grpo" and used.generation.samples_per_prompt == 4
    assert not used.algorithm.uses_critic
