"""The multi-turn demos (``rayrm demo --task tools|game``) end to end: a smoke-size run of each
task (their pieces: tests/unit/demo/test_multi_turn_demo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import check_quiet_output


@pytest.mark.slow
@pytest.mark.parametrize("task", ["tools"])
def test_smoke_task_demo_runs_every_stage(ray_local, tmp_path: Path, capfd, task) -> None:
    """``rayrm demo --task tools --size smoke``: data, tokenizer, SFT (Ray Train), RL (Tune)
    and the held-out success line, quiet; the stages' artifacts where they belong. (The game
    runs the same pipeline on other rows and traces, tested above without Ray.)"""
    from rayrm.cli import main
    from rayrm.demo.multi_turn import TASK_STAGES

    work = tmp_path / "demo"
    assert main(["demo", "--task", task, "--dir", str(work), "--size", "smoke"]) == 0
    out, err = capfd.readouterr()
    counts = check_quiet_output(out, err)
    assert counts["stage"] == counts["done"] == len(TASK_STAGES) and counts["iter"] == 2
    assert f"held-out success ({task}), 16 episodes each" in out
    assert out.splitlines()[-1].startswith("wall time: ")
    (data,) = (work / "stages").glob(f"{task}-data-*")
    sft = json.loads((data / "sft.jsonl").read_text().splitlines()[0])
    assert sft["messages"][0]["role"] == "user" and (sft["tools"] is None) == (task == "game")
    (run,) = (work / "runs").glob(f"{task}-rl-*")
    done = json.loads((run / "done").read_text())
    assert done["sft"]["n"] == done["rl"]["n"] == 16 and 0 <= done["rl"]["success"] <= 1
    assert 0 <= done["train_success"] <= 1  # the last iteration's env/success
