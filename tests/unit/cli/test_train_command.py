"""``rayrm train``'s command line without Ray: config errors exit 2 naming the key, a missing
config file exits 2, and the shipped example round-trips through YAML (training runs:
tests/ray/rl/test_training.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import write_config as _write_config


def _rayrm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rayrm.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.lrr=1", "algorithm.lrr"),
        ("model.path=/nonexistent/model", "model.path"),
        ("algorithm.batch_size=15", "algorithm.batch_size"),
        ("reward.function=no_such_module:score", "reward.function"),
        ("data.prompts=missing.jsonl", "data.prompts"),
    ],
)
def test_config_errors_exit_2_and_name_the_key(
    tiny_policy_dir, prompts_file, tmp_path, override, key
):
    path = _write_config(tiny_policy_dir, prompts_file, tmp_path)
    proc = _rayrm("train", str(path), "--set", override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file_exits_2(tmp_path):
    proc = _rayrm("train", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr


def test_yaml_round_trip_of_shipped_example(tmp_path):
    from rayrm.demo.quickstart import write_quickstart

    path = write_quickstart(tmp_path / "qs", num_iterations=2)
    assert yaml.safe_load(path.read_text())["run"]["num_iterations"] == 2
