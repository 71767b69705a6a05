"""Virtual environments the tests build (standard library only: a test runs this module in a
bare virtualenv too)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path


def venv_seeing_this_interpreter(path: Path, *, with_pip: bool = True) -> Path:
    """A virtual environment at ``path`` that sees the packages of the interpreter running
    this (a virtualenv's own included: ``--system-site-packages`` would give its base
    interpreter's instead), after its own; returns its python."""
    args = [sys.executable, "-m", "venv", str(path)]
    subprocess.run(args if with_pip else [*args, "--without-pip"], check=True)
    python = path / "bin" / "python"
    parents = [*site.getsitepackages(), site.getusersitepackages()]
    lines = [f"import site; site.addsitedir({d!r})" for d in parents if os.path.isdir(d)]
    (purelib(python) / "rayrm_parent_site.pth").write_text("\n".join(lines) + "\n")
    return python


def purelib(python: Path) -> Path:
    """The site-packages folder of the environment of ``python``."""
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())
