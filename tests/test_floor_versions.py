"""The declared floor of ``transformers`` (pyproject: ``transformers>=4.56``) is real.

A virtual environment that sees this machine's packages gets ``transformers`` 4.56.2 (and the
``tokenizers``/``huggingface-hub`` it pins) from PyPI, and the model-facing tests run in it:
loading, tokenizers of each kind, chat templates, KV-cached decoding, the chunked LM head,
mixed precision, SFT and reward-model encodings. (4.55 lacks ``from_pretrained(dtype=...)``.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

FLOOR = "4.56.2"
MODEL_TESTS = [
    "tests/test_models.py",
    "tests/test_policy.py",
    "tests/test_chat_stages.py",
    "tests/test_env.py",
]


def test_declared_floor_matches():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"transformers>=4\.56"', text)
    assert FLOOR.startswith("4.56.")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_model_tests_pass_on_the_floor_transformers(tmp_path: Path):
    venv = tmp_path / "floor"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"transformers=={FLOOR}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    version = subprocess.run(
        [str(python), "-c", "import transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == FLOOR
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODEL_TESTS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-3000:]
