"""House style gates: ruff on the whole tree, mypy --strict on pure math, the config package and metric keys."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_ruff_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "rayrm", "envs", "jobs", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_modules():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "rayrm/core_algos",
            "rayrm/config",
            "rayrm/metrics.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
