"""Failures inside the trial, through the real CLI on the tests' local Ray: resources the
cluster cannot meet end in one line; a transient reward error is retried, a user-code error is
not; NaN scores fail the run in one line or are skipped (malformed inputs found before Ray
starts: tests/unit/cli/test_failures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from rayrm import metrics as M


@pytest.mark.parametrize(
    ("resources", "needle"),
    [
        ({"num_learners": 1, "num_gpus_per_learner": 1}, "GPU"),
        ({"num_env_runners": 1, "custom_resources_per_env_runner": {"rollout_node": 1}},
         "rollout_node"),
        ({"num_env_runners": 2, "num_cpus_per_env_runner": 3}, "CPU"),
    ],
    ids=["gpu-on-cpu-machine", "unknown-custom-resource", "more-cpus-than-exist"],
)  # fmt: skip
def test_unmeetable_resources_end_in_one_line(ray_local, ws, capfd, resources, needle):
    ws.cfg["resources"] = resources
    ws.cfg["run"]["pending_timeout_s"] = 1
    code, err = run_cli(ws, capfd)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert needle in lines[0] and "run.pending_timeout_s=1s" in lines[0], lines[0]
    assert "autoscaling" in lines[0] and "the cluster's 1 node(s) have CPU 4" in lines[0]


def test_transient_reward_error_in_trial_is_retried(ray_local, ws, capfd):
    ws.cfg["reward"].update(function="scorers:flaky_judge", retry_exceptions=["OSError"])
    code, err = run_cli(ws, capfd)
    assert code == 0, err
    trial = next((Path(ws.cfg["run"]["storage_path"]) / "broken").glob("RLHFPPO_*"))
    results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    assert [r[M.RLHF_RESULTS][M.REWARD_RESUBMITTED] for r in results] == [1, 1]


def _failures(run: Path) -> int:
    (trial,) = run.glob("RLHFPPO_*")
    error = trial / "error.txt"
    return error.read_text().count("Failure #") if error.exists() else 0


def test_user_code_error_in_trial_is_not_retried(ray_local, ws, capfd):
    ws.cfg["reward"]["function"] = "scorers:raises_on_text"
    ws.cfg["run"]["max_failures"] = 2
    code, err = run_cli(ws, capfd)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "reward function 'scorers:raises_on_text' raised ValueError" in lines[0]
    assert "error.txt" in lines[0] and "--resume" in lines[0]
    run = Path(ws.cfg["run"]["storage_path"]) / "broken"
    assert _failures(run) == 1  # one failure, no restart
    assert (run / "rayrm.log").stat().st_size > 0  # Ray's output went to the log


def test_nan_scores_in_trial(ray_local, ws, capfd):
    ws.cfg["reward"]["function"] = "scorers:nan_on_text"
    code, err = run_cli(ws, capfd)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "non-finite score (nan)" in err and "reward.on_nan: skip" in err

    ws.cfg.update(name="skip", reward={**ws.cfg["reward"], "on_nan": "skip"})
    ws.cfg["algorithm"]["batch_size"] = 8
    (ws.root / "run.yaml").unlink()
    code, err = run_cli(ws, capfd)
    assert code == 0, err
    trial = next((Path(ws.cfg["run"]["storage_path"]) / "skip").glob("RLHFPPO_*"))
    results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    skipped = [r[M.RLHF_RESULTS][M.REWARD_SKIPPED] for r in results]
    completions = [r[M.RLHF_RESULTS][M.ROLLOUT_COMPLETIONS] for r in results]
    assert all(s > 0 for s in skipped), skipped
    assert [c + s for c, s in zip(completions, skipped, strict=True)] == [8, 8]
