"""Every job entry point under ``jobs/`` runs its ``rayrm`` command (submitted to a real local
head: tests/ray/jobs/test_jobs.py)."""

from __future__ import annotations

import sys

import pytest
from helpers import REPO

ENTRY_POINTS = {"train.py": "train", "tune.py": "tune", "sft.py": "sft", "train_rm.py": "train-rm"}
"""Each Ray Job entry point and the ``rayrm`` command it runs."""


@pytest.mark.parametrize(("script", "command"), ENTRY_POINTS.items())
def test_each_job_entry_point_runs_its_command(monkeypatch, script: str, command: str):
    """``python jobs/<script> ARGS`` is ``rayrm <command> ARGS`` with its exit code. (The
    test below submits two of them to a real head, an RL run through Tune and a Ray Train
    stage: the other two are the same wrapper around another command.)"""
    import runpy

    import rayrm.cli

    calls: list[list[str]] = []
    monkeypatch.setattr(rayrm.cli, "main", lambda argv: calls.append(argv) or 3)
    monkeypatch.setattr(sys, "argv", [script, "run.yaml", "--set", "seed=1"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / "jobs" / script), run_name="__main__")
    assert exited.value.code == 3 and calls == [[command, "run.yaml", "--set", "seed=1"]]
    assert set(ENTRY_POINTS) == {p.name for p in (REPO / "jobs").glob("*.py")} - {
        "benchmark.py",
        "make_reference_task.py",
        "make_tiny.py",
    }
