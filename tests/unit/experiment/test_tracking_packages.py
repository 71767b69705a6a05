"""A logger whose package is missing (``run.loggers``) is a one-line error (the trackers in use:
tests/ray/experiment/test_tracking.py)."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import write_tracking_config as _write

pytestmark = pytest.mark.tracking
pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def test_missing_tracking_package_is_one_line(
    tiny_policy_dir, prompts_file, tmp_path, capsys, monkeypatch
):
    from rayrm.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else find_spec(name, *a),
    )
    path = _write(tiny_policy_dir, prompts_file, tmp_path, {"loggers": ["wandb"]})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.loggers" in err[0] and "pip install 'rayrm[wandb]'" in err[0], err
