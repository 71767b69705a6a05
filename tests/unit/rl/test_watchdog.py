"""The iteration watchdog (``rayrm.rl.watchdog``): it interrupts a stalled body, fails one that
swallowed the interrupt, and leaves a fast one alone (hangs in a training run:
tests/ray/rl/test_hangs.py)."""

from __future__ import annotations

import threading
import time

import pytest

from rayrm.errors import TimedOut
from rayrm.rl.watchdog import iteration_watchdog


def test_watchdog_interrupts_a_stalled_body():
    start = time.monotonic()
    with pytest.raises(TimedOut, match=r"^step 3 ran past run.iteration_timeout_s=0.5s"):
        with iteration_watchdog(0.5, lambda: "step 3"):
            time.sleep(30)
    assert time.monotonic() - start < 5


def test_watchdog_fails_a_body_that_swallowed_the_interrupt():
    with pytest.raises(TimedOut):
        with iteration_watchdog(0.5, lambda: "step"):
            try:
                time.sleep(30)
            except BaseException:  # noqa: BLE001  (what a broad handler in user code does)
                pass


def test_watchdog_leaves_a_fast_body_alone():
    """A body done in time runs to its end, and nothing fires after it (its watch thread is
    gone before the limit would have passed)."""
    ran = []
    with iteration_watchdog(0.5, lambda: "step"):
        time.sleep(0.1)
        ran.append("bounded")
    assert not any(t.name == "rayrm-iteration-watchdog" for t in threading.enumerate())
    time.sleep(1.0)  # past the limit: no interrupt arrives
    with iteration_watchdog(None, lambda: "step"):
        ran.append("unbounded")
    assert ran == ["bounded", "unbounded"]
