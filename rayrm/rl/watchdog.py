"""A per-iteration watchdog: an iteration that runs past ``run.iteration_timeout_s`` fails.

Every hang with a timeout of its own (sampling, scoring) ends within it; the watchdog bounds
the rest -- a learner whose process or GPU wedged, a collective that never completes, a
held-out evaluation that stalls -- so that the trial fails with one line naming the phase and
``run.max_failures`` restores it from its checkpoint (:class:`~rayrm.errors.TimedOut` is a
machine failure to ``rayrm.experiment.failures``).

How: a timer thread signals the main thread (``SIGUSR2``, whose handler raises the
``KeyboardInterrupt`` that Ctrl-C would), every second until the iteration unwinds; sleeps
and system calls wake on it, and a blocked ``ray.get`` too (Ray checks for signals while it
waits, and answers an interrupt as a cancelled task). If the main thread is stuck
where Python never runs (inside a C call) the process exits after a grace period, which Ray
reports as a dead trial process: the same restore.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rayrm.errors import TimedOut

__all__ = ["GRACE_S", "iteration_watchdog"]

GRACE_S = 60.0
"""Seconds past the timeout after which a main thread that never unwound ends the process."""

_SIGNAL = signal.SIGUSR2
"""Sent to the main thread when the limit passes; its handler (installed once, kept) acts only
while an iteration it watches is over time."""

_watching: list[_Watch] = []  # the watch of the running iteration, if any


def _handler(signum: int, frame: object) -> None:
    if _watching and _watching[-1].fired and not _watching[-1].done.is_set():
        raise KeyboardInterrupt  # what a blocked ray.get answers to (as a cancelled task)


class _Watch:
    def __init__(self, timeout_s: float, describe: Callable[[], str]) -> None:
        self.timeout_s, self.describe = timeout_s, describe
        self.fired = False
        self.done = threading.Event()
        self.lock = threading.Lock()  # no signal is sent once the body has ended
        self.main = threading.main_thread().ident

    def message(self) -> str:
        return (
            f"{self.describe()} ran past run.iteration_timeout_s={self.timeout_s:g}s "
            "(a hung learner, runner or reward actor)"
        )

    def run(self) -> None:
        if self.done.wait(self.timeout_s):
            return
        self.fired = True
        waited = 0.0
        while True:
            with self.lock:
                if self.done.is_set():
                    return
                signal.pthread_kill(self.main or 0, _SIGNAL)  # wakes sleeps and ray.get
            if self.done.wait(1.0):
                return
            waited += 1.0
            if waited > GRACE_S:
                print(f"rayrm: {self.message()}; ending the process", file=sys.stderr, flush=True)
                os._exit(70)


@contextmanager
def iteration_watchdog(timeout_s: float | None, describe: Callable[[], str]) -> Iterator[None]:
    """Bounds the body to ``timeout_s`` seconds (None: unbounded).

    Args:
        timeout_s: the limit.
        describe: what is running, for the error (called when the limit passes, so it can
            name the current phase).

    Raises:
        TimedOut: the body ran past ``timeout_s``.
    """
    if timeout_s is None or threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    if signal.getsignal(_SIGNAL) is not _handler:
        signal.signal(_SIGNAL, _handler)
    watch = _Watch(timeout_s, describe)
    _watching.append(watch)
    timer = threading.Thread(target=watch.run, name="rayrm-iteration-watchdog", daemon=True)
    timer.start()
    try:
        yield
    except BaseException:
        if watch.fired:  # the interrupt, or what it turned into (a cancelled ray.get, ...)
            raise TimedOut(watch.message()) from None
        raise
    else:
        if watch.fired:  # the interrupt was swallowed on the way (a broad except)
            raise TimedOut(watch.message())
    finally:
        with watch.lock:
            watch.done.set()
        _watching.remove(watch)
        timer.join()  # it returns at once: no watch thread outlives its iteration
