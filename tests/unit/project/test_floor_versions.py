"""The declared floor of ``transformers`` is the one the floor-version test installs, and the
virtual environment it builds sees a virtualenv's packages (the model tests run at the floor:
tests/ray/project/test_floor_transformers.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import FLOOR, REPO
from venvs import purelib


def test_declared_floor_matches():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"transformers>=4\.56"', text)
    assert FLOOR.startswith("4.56.")


def test_the_floor_venv_sees_a_virtualenvs_packages(tmp_path: Path):
    """Run from inside a virtualenv (as a user who installed rayrm into one), the floor venv
    sees that virtualenv's packages, not its base interpreter's: here a module found only in
    the outer virtualenv."""
    outer = tmp_path / "outer"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(outer)], check=True)
    (purelib(outer / "bin" / "python") / "rayrm_outer_marker.py").write_text("WHERE = 'outer'\n")
    code = (
        "from pathlib import Path; import subprocess, sys; from venvs import "
        "venv_seeing_this_interpreter as make; python = make(Path(sys.argv[1]), with_pip=False); "
        "subprocess.run([str(python), '-c', 'import rayrm_outer_marker'], check=True)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    out = subprocess.run(
        [str(outer / "bin" / "python"), "-c", code, str(tmp_path / "floor")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
