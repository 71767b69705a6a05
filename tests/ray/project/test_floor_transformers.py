"""The declared floor of ``transformers`` (pyproject: ``transformers>=4.56``) is real.

A virtual environment that sees the test interpreter's packages gets ``transformers`` 4.56.2
(and the ``tokenizers``/``huggingface-hub`` it pins) from PyPI, and the model-facing tests run
in it (skipped, saying so, where no package registry can be reached):
loading, tokenizers of each kind, chat templates, KV-cached decoding, the chunked LM head,
mixed precision, SFT and reward-model encodings. (4.55 lacks ``from_pretrained(dtype=...)``.)
It starts no Ray; it is here, in the slow tier, for the download and the second test run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import FLOOR, REPO
from venvs import venv_seeing_this_interpreter

MODEL_TESTS = [
    "tests/unit/models/test_models.py",
    "tests/unit/rl/test_policy.py",
    "tests/unit/stages/test_chat_stages.py",
    "tests/unit/envs/test_env.py",
]


def _unreachable(pip_stderr: str) -> bool:
    """Whether pip failed for want of a package registry (offline), not for the package."""
    signs = ("from versions: none", "NewConnectionError", "Failed to establish", "ConnectTimeout",
             "Temporary failure in name resolution", "Network is unreachable", "ProxyError")  # fmt: skip
    return any(sign in pip_stderr for sign in signs)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_model_tests_pass_on_the_floor_transformers(tmp_path: Path):
    python = venv_seeing_this_interpreter(tmp_path / "floor")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--timeout", "20", "--retries", "1",
         f"transformers=={FLOOR}"],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    if install.returncode != 0 and _unreachable(install.stderr):
        pytest.skip(f"transformers {FLOOR} cannot be downloaded: no package registry reachable")
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
