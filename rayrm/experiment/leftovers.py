"""What a killed driver leaves behind, found and ended when its run is resumed.

``rayrm train`` on a machine without a cluster starts Ray in its own process. Killed with
SIGKILL (an OOM kill, a lost SSH session under ``nohup``, ``kill -9``), the driver cannot stop
that Ray: its GCS, raylet, agents and workers -- holding CPUs, memory and, on GPU machines,
device memory -- outlive it. The driver therefore records, in its run folder, its pid and its
Ray's session folder (:data:`DRIVER_FILE`); ``--resume`` first ends the processes of that
session (every Ray system process names the session folder on its command line, workers are
their descendants) and refuses to start while the recorded driver is still running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from rayrm.config import ConfigError

__all__ = ["DRIVER_FILE", "claim_run_folder", "end_session", "record_driver", "release"]

DRIVER_FILE = "rayrm_driver.json"
"""In the run folder while a driver runs: ``{"pid", "args", "session_dir"}``."""


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (``ps``: Linux and macOS; ``-ww``:
    whole command lines, whatever the terminal width)."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True
    ).stdout
    table = {}
    for line in out.splitlines():
        fields = line.split(None, 2)
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            table[int(fields[0])] = (int(fields[1]), fields[2] if len(fields) > 2 else "")
    return table


def session_processes(session_dir: str) -> list[int]:
    """Pids of a Ray session's processes: those naming ``session_dir``, and their descendants."""
    table = _processes()
    found = {pid for pid, (_, args) in table.items() if session_dir in args}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        grew = bool(more)
        found |= more
    found.discard(os.getpid())
    return sorted(found)


def end_session(session_dir: str, grace_s: float = 5.0) -> list[int]:
    """SIGTERM to a session's processes, SIGKILL to those left after ``grace_s``; returns
    the pids it signalled."""
    pids = session_processes(session_dir)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and _alive_of(pids):
            time.sleep(0.1)
    return pids


def _alive_of(pids: list[int]) -> list[int]:
    table = _processes()
    return [pid for pid in pids if pid in table]


def _args_of(pid: int) -> str | None:
    return _processes().get(pid, (0, None))[1]


def record_driver(exp_dir: Path, session_dir: str | None) -> None:
    """Writes :data:`DRIVER_FILE` for this process (see the module docstring)."""
    record = {"pid": os.getpid(), "args": _args_of(os.getpid()), "session_dir": session_dir}
    (exp_dir / DRIVER_FILE).write_text(json.dumps(record), encoding="utf-8")


def release(exp_dir: Path) -> None:
    """Removes this process's :data:`DRIVER_FILE` (a clean end: its Ray was shut down)."""
    record = exp_dir / DRIVER_FILE
    try:
        if json.loads(record.read_text(encoding="utf-8")).get("pid") == os.getpid():
            record.unlink()
    except (OSError, ValueError):
        pass


def claim_run_folder(exp_dir: Path) -> list[int]:
    """Before a driver starts on ``exp_dir``: ends the Ray a killed earlier driver left.

    Returns:
        The pids of the leftover processes it ended.

    Raises:
        ConfigError: the recorded driver is still running (two drivers would write the same
            checkpoints).
    """
    record = exp_dir / DRIVER_FILE
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    pid = previous.get("pid")
    if pid == os.getpid():  # this process's own record (a run called twice in one process)
        return []
    if isinstance(pid, int) and _args_of(pid) == previous.get("args"):
        raise ConfigError(
            f"{exp_dir}: this run is still running (driver pid {pid}); stop it before resuming"
        )
    ended = end_session(previous["session_dir"]) if previous.get("session_dir") else []
    record.unlink(missing_ok=True)
    return ended
