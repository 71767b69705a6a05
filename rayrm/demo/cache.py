"""The demos' stage cache: a stage's folder named by the hash of its settings, reused once done.

Each stage writes into ``<folder>/<stage>-<hash12>/``, the hash taken over the stage's settings
and the hashes of the stages it reads from, and writes a ``done`` marker (its summary as JSON)
last. A folder without the marker is from a killed run: it is deleted and the stage redone,
never half-used. Used by ``rayrm demo`` (:mod:`rayrm.demo.run`) and its multi-turn tasks
(:mod:`rayrm.demo.multi_turn`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_VERSION",
    "DONE",
    "StageResult",
    "quiet_single_threaded",
    "run_stage",
    "stage_hash",
]

DEMO_VERSION = 1
"""Part of every stage's hash: bump it when a code change changes what a stage produces."""
DONE = "done"
"""The marker file a finished stage writes last (its summary, JSON)."""


def stage_hash(name: str, key: dict[str, Any]) -> str:
    """12 hex digits of SHA-256 over the stage's name, the demo version and ``key`` (JSON)."""
    text = json.dumps({"stage": name, "version": DEMO_VERSION, **key}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass
class StageResult:
    """One stage of one demo run.

    Attributes:
        name: Stage name.
        hash: :func:`stage_hash` of its settings and inputs.
        dir: Its folder.
        info: Its summary (the ``done`` marker's content).
        cached: Whether it was found done instead of run.
        seconds: Wall time in this call (the cache look-up when cached).
    """

    name: str
    hash: str
    dir: Path
    info: dict[str, Any]
    cached: bool
    seconds: float


def run_stage(
    folder: Path,
    name: str,
    key: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    log: Callable[[str], None],
) -> StageResult:
    """Runs ``build(stage_dir)`` unless the stage's folder already holds a ``done`` marker.

    Args:
        folder: Parent folder; the stage's folder is ``folder / f"{name}-{hash}"`` (``_`` in
            the name written as ``-``).
        name: Stage name.
        key: Everything the stage's output depends on (settings, upstream hashes), JSON-able.
        build: Writes the stage's artifacts into its folder (which does not exist yet) and
            returns a JSON-able summary.
        log: Receives the ``stage:``/``cached:``/``done:`` lines.
    """
    start = time.perf_counter()
    digest = stage_hash(name, key)
    d = folder / f"{name.replace('_', '-')}-{digest}"
    marker = d / DONE
    if marker.is_file():
        info = json.loads(marker.read_text(encoding="utf-8"))
        log(f"cached: {name} ({d})")
        return StageResult(name, digest, d, info, True, time.perf_counter() - start)
    if d.exists():  # a killed run left it: redo the stage rather than trust part of it
        shutil.rmtree(d)
    log(f"stage: {name} -> {d}")
    info = build(d)
    seconds = time.perf_counter() - start
    info = {**info, "seconds": seconds}
    tmp = d / f".{DONE}.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, marker)  # atomic: the marker is complete or absent
    log(f"done: {name} in {seconds:.1f}s")
    return StageResult(name, digest, d, info, False, seconds)


def quiet_single_threaded() -> None:
    """One torch thread per process (2-core laptops run several), no Hugging Face load bars."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Read by every Ray worker started after this, as well as here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
