"""Checkpoint retention keeps the newest and the best, and the processes a killed session left
behind are ended (a killed driver resuming: tests/ray/experiment/test_resume.py)."""

from __future__ import annotations

import subprocess
import sys
import time

from rayrm.experiment.leftovers import end_session, session_processes


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    """``run.keep_checkpoints``: the newest N complete checkpoints and the best scored one stay;
    a torn one (no marker) is left alone."""
    from rayrm.rl.checkpoint import NeverLoseCheckpoints, mark_complete

    scores = [0.1, 0.9, 0.3, None, 0.2, 0.4]
    for i, score in enumerate(scores):
        ckpt = tmp_path / f"checkpoint_{i:06d}"
        ckpt.mkdir()
        mark_complete(ckpt, {"training_iteration": i + 1, "score": score})
    (tmp_path / "checkpoint_000006").mkdir()  # torn

    class KeepTwo(NeverLoseCheckpoints):
        def checkpoints_to_keep(self) -> int:
            return 2

    KeepTwo()._prune(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["checkpoint_000001", "checkpoint_000004", "checkpoint_000005",
                    "checkpoint_000006"]  # fmt: skip


def test_leftover_session_processes_are_ended(tmp_path):
    """What ``--resume`` ends: processes naming the killed driver's Ray session folder, and
    their descendants (Ray's workers rename themselves), nothing else."""
    session = str(tmp_path / "session_2026-12-01_00-00-00_000000_1")
    parent = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "time.sleep(600)"
    )
    leftover = subprocess.Popen([sys.executable, "-c", parent, f"--session-dir={session}"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        deadline = time.monotonic() + 30
        while len(session_processes(session)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        found = session_processes(session)
        assert leftover.pid in found and len(found) == 2 and bystander.pid not in found
        assert end_session(session, grace_s=1) == found
        assert leftover.wait(timeout=10) is not None
        assert session_processes(session) == [] and bystander.poll() is None
    finally:
        for p in (leftover, bystander):
            p.kill()
            p.wait()
