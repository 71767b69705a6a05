"""A driver killed with SIGKILL resumes from the newest complete checkpoint on disk and loses
nothing (issue 13): Tune's experiment snapshot lags the checkpoints by seconds, so without
rayrm's own resume the run restarted from an older checkpoint or from scratch and wrote its
next checkpoints over the newer ones."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import REPO, make_config

from rayrm.config import ConfigError
from rayrm.experiment.leftovers import (
    DRIVER_FILE,
    claim_run_folder,
    session_processes,
)
from rayrm.rl.checkpoint import COMPLETE_FILE, find_checkpoint, trial_checkpoints

ITERATIONS = 16  # the kill lands after iteration 6 (the third checkpoint)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _results(trial: Path) -> list[dict]:
    results = trial / "result.json"
    lines = results.read_text().splitlines() if results.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _end_session(pid: int, ray_tmp: str) -> None:
    """Ends what the killed driver started: its process group, and the Ray processes of its
    session (found by the session folder only this test uses)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if ray_tmp in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def multi_turn_sections(tmp_path: Path) -> dict[str, dict]:
    """A tiny Qwen2 playing the number-guessing game (episodes of several turns)."""
    from envs.tasks import guess
    from rayrm.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "qwen2", arch="qwen2", hidden=32, heads=4, positions=256)
    rows = str(guess.write_rows(tmp_path / "games.jsonl", 32, high=8))
    return {
        "model": {"path": model},
        "data": {"prompts": rows, "max_prompt_tokens": 64},
        "generation": {"max_new_tokens": 4},
        "env": {"environment": "envs.tasks.guess:GuessTheNumber", "max_total_tokens": 160},
        "reward": {"source": "env"},
    }


@pytest.mark.slow
def test_killed_driver_resumes_from_newest_complete_checkpoint(
    tiny_policy_dir, prompts_file, tmp_path
):
    """On a multi-turn run (episodes of several turns, the newest format the checkpoints and
    the resumed sampler carry); the kill and resume path is the same for single-turn runs,
    whose save/restore is tested in test_training.py and test_runs.py."""
    sections = multi_turn_sections(tmp_path)
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 8},
        run={"num_iterations": ITERATIONS, "checkpoint_every": 2, "keep_checkpoints": None},
        **sections,
    )
    config = tmp_path / "config.yaml"
    cfg.save_yaml(config)
    ray_tmp = tempfile.mkdtemp(prefix="rayrm-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "rayrm.cli", "train", str(config)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    exp_dir = tmp_path / "test"
    try:
        deadline = time.monotonic() + 120
        while not list(exp_dir.glob(f"*/checkpoint_000002/{COMPLETE_FILE}")):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no third checkpoint within 120 s"
            time.sleep(0.05)
        # A second driver on the same run folder would write the same checkpoints: refused.
        proc.send_signal(signal.SIGSTOP)  # (paused, so that it cannot finish meanwhile)
        with pytest.raises(ConfigError, match=f"still running \\(driver pid {proc.pid}\\)"):
            claim_run_folder(exp_dir)  # what `rayrm train --resume` does first
        proc.send_signal(signal.SIGKILL)  # the driver alone, as the OOM killer would
        proc.wait(timeout=30)
        session = json.loads((exp_dir / DRIVER_FILE).read_text())["session_dir"]
        leftovers = session_processes(session)  # on Linux, Ray 2.60's die with the driver
        _resume_and_check(cmd, env, exp_dir)
        assert not set(session_processes(session)) & set(leftovers)  # ended by --resume
        assert not (exp_dir / DRIVER_FILE).exists()  # a clean end removes the record
    finally:
        _end_session(proc.pid, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _resume_and_check(cmd: list[str], env: dict[str, str], exp_dir: Path) -> None:
    (trial,) = exp_dir.glob("RLHFPPO_*")
    highest, complete = trial_checkpoints(trial)
    newest_iteration = complete[-1][2]["training_iteration"]
    before = {path.name: _digest(path) for _, path, _ in complete}
    # A checkpoint torn by the kill: a folder past the newest, without its marker.
    torn = trial / f"checkpoint_{highest + 1:06d}"
    shutil.copytree(complete[-1][1], torn)
    (torn / COMPLETE_FILE).unlink()
    (torn / "torn-by-the-test").write_text("x")
    assert find_checkpoint(exp_dir) == complete[-1][1]  # export/generate skip it too

    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Continued after the newest complete checkpoint (not from scratch, not from an older one):
    # the resumed process's results count iterations since its restore from 1, and training
    # iterations from newest + 1. (Tune may rewrite result.json from its own snapshot on
    # resume, so the killed run's lines need not all be there.)
    results = _results(trial)
    resumed = [r for r in results if r["pid"] == results[-1]["pid"]]
    assert [r["training_iteration"] for r in resumed] == list(
        range(newest_iteration + 1, ITERATIONS + 1)
    )
    assert [r["iterations_since_restore"] for r in resumed] == list(
        range(1, ITERATIONS + 1 - newest_iteration)
    )
    # Nothing lost: every checkpoint from before the kill is byte-identical, the torn one is
    # untouched, and the new ones were written past both.
    assert {name: _digest(trial / name) for name in before} == before
    assert (torn / "torn-by-the-test").exists() and not (torn / COMPLETE_FILE).exists()
    highest_after, complete_after = trial_checkpoints(trial)
    new = [index for index, _, _ in complete_after if f"checkpoint_{index:06d}" not in before]
    assert new and min(new) > highest + 1 and highest_after == max(new)
    assert complete_after[-1][2]["training_iteration"] == ITERATIONS
