"""What the user reads in the terminal, and the log file that takes everything else.

A training prints its live lines, stage headlines and results; Ray, Ray Train, RLlib, Tune and
transformers print a good deal more (placement-group notices, deprecation warnings, load
reports, progress bars, core-worker errors), from this process and from Ray's workers, whose
output Ray forwards to this process's ``sys.stdout``/``sys.stderr``. :func:`quiet` sends all
of it -- at the file-descriptor level, so C++ and subprocess output too -- to a log file in the
run folder, and keeps the terminal for :func:`say` (this process's lines), :func:`warn`
(errors) and the lines workers print with :func:`live` (``rayrm sft`` epochs): Ray forwards
those with its ``(pid=...)`` prefix, and the mark they carry routes them to the terminal
without it. ``--verbose`` (``quiet(..., verbose=True)``) leaves both streams as they are.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

__all__ = ["LOG_NAME", "holds_run", "live", "quiet", "say", "warn"]

LOG_NAME = "rayrm.log"
"""The run folder's log: everything the terminal did not show."""

LIVE_MARK = "\u200b"
"""Starts a worker's live line (a zero-width space: invisible where it is shown as is)."""

_terminal: TextIO | None = None
_terminal_err: TextIO | None = None


def say(text: str) -> None:
    """A line for the user (stdout), shown also while :func:`quiet` is on."""
    stream = _terminal or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def warn(text: str) -> None:
    """An error or warning line for the user (stderr), shown also while :func:`quiet` is on."""
    stream = _terminal_err or sys.stderr
    stream.write(text + "\n")
    stream.flush()


def live(text: str) -> None:
    """A live line printed in a Ray worker that the driver's terminal shows while quiet."""
    print(LIVE_MARK + text, flush=True)


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides the log :func:`quiet` writes there."""
    return folder.is_dir() and any(p.name != LOG_NAME for p in folder.iterdir())


class _Router(io.TextIOBase):
    """``sys.stdout`` while quiet: marked lines (from :func:`live`) to the terminal, without
    Ray's prefix; every other line to the log."""

    def __init__(self, log: TextIO, terminal: TextIO) -> None:
        self.log, self.terminal, self.pending = log, terminal, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if LIVE_MARK in line:
                self.terminal.write(line.split(LIVE_MARK, 1)[1] + "\n")
                self.terminal.flush()
            else:
                self.log.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def _stream_handlers() -> list[logging.StreamHandler]:  # type: ignore[type-arg]
    """Every console handler of every logger (Ray's hold the stderr of when they were made).

    Handlers that always write to the current ``sys.stderr`` (``logging.lastResort``'s kind,
    which dill attaches to its logger: ``stream`` is a read-only property) need no redirecting.
    """
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [h for lg in loggers for h in getattr(lg, "handlers", [])]
    return [
        h
        for h in handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and not isinstance(getattr(type(h), "stream", None), property)
    ]


@contextmanager
def quiet(log_path: Path, *, verbose: bool = False) -> Iterator[None]:
    """Within the block, the terminal shows :func:`say`, :func:`warn` and :func:`live` lines
    only; everything else written to stdout or stderr is appended to ``log_path``.

    Nested use, ``verbose=True`` and a log that cannot be written change nothing.
    """
    global _terminal, _terminal_err
    if verbose or _terminal is not None:
        yield
        return
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:  # an unwritable run folder is reported by the checks that own it
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    old_stdout, old_stderr = sys.stdout, sys.stderr
    _terminal = open(saved_out, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    _terminal_err = open(saved_err, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = _Router(log, _terminal)
    sys.stderr = log
    # Assigned, not setStream(): that flushes the old stream, which may be closed.
    handlers = [(h, h.stream) for h in _stream_handlers()]
    for handler, _ in handlers:
        handler.stream = log
    try:
        yield
    finally:
        sys.stdout.flush()
        for handler, stream in handlers:
            handler.stream = stream
        for handler in _stream_handlers():  # made in the block, e.g. on Ray's first import
            if handler.stream is log:
                handler.stream = old_stderr
        sys.stdout, sys.stderr = old_stdout, old_stderr
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        _terminal.close()
        _terminal_err.close()
        _terminal = _terminal_err = None
        os.close(saved_out)
        os.close(saved_err)
        log.close()
