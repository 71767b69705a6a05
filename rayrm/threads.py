"""torch threads of every rayrm process: as many as the CPUs Ray reserved for it.

Processes that share cores must not each start a full torch thread pool, and a process should
use the CPUs it reserves: :func:`use_reserved_cpus` sets the count from the reservation (or
``RAYRM_TORCH_THREADS``); :class:`ThreadLoan` shares a trial's reservation between its update
and a sampler thread.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["THREADS_ENV", "ThreadLoan", "reserved_cpus", "use_reserved_cpus"]

THREADS_ENV = "RAYRM_TORCH_THREADS"
"""Environment variable: torch intra-op threads for every rayrm process (an integer >= 1),
instead of the CPUs each reserves."""


def reserved_cpus() -> float | None:
    """The CPUs Ray reserved for this process when it is an actor (a trial, env runner,
    learner, reward actor or Ray Train worker; in a placement group too); None in a driver."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    return float(context.get_assigned_resources().get("CPU", 0.0))


def use_reserved_cpus(exclude: float = 0.0) -> int | None:
    """Sets torch's intra-op threads to the CPUs this process reserves (at least one).

    Processes that share cores must not each start a full thread pool, and a process should
    use the CPUs it reserves: a trial with a local learner reserves ``num_cpus_per_learner``,
    a remote env runner ``num_cpus_per_env_runner``, a reward actor ``num_cpus_per_actor``
    (fractions round down, to at least 1). ``RAYRM_TORCH_THREADS`` overrides the count
    everywhere, drivers included.

    Args:
        exclude: CPUs of the reservation that a second busy thread of this process uses
            (a trial sampling in a thread alongside its update: this thread gets the rest;
            see :class:`ThreadLoan`).

    A process that has not imported torch (a reward-function actor whose function does not
    use it) is left without it: ``OMP_NUM_THREADS`` is set instead, which torch reads when it
    is imported later.

    Returns:
        The thread count set; None where nothing was set (a driver without the override).

    Raises:
        ValueError: ``RAYRM_TORCH_THREADS`` is not an integer >= 1 (named in the message).
    """
    override = os.environ.get(THREADS_ENV, "").strip()
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"{THREADS_ENV} must be an integer >= 1, got {override!r}")
        threads = int(override)
    else:
        cpus = reserved_cpus()
        if cpus is None:
            return None
        threads = max(1, int(cpus - exclude))
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        torch.set_num_threads(threads)
    return threads


class ThreadLoan:
    """torch threads of a trial that samples in a second thread alongside its update.

    torch's intra-op thread count is per OS thread (OpenMP and MKL keep it per thread), so the
    update's thread has ``own`` threads and the sampler thread ``lent``. While the sampler
    idles (its batch is ready, or none was asked for) its CPUs idle too: the update's thread
    borrows them at the points that call :meth:`apply` (the learner, before its forwards, each
    minibatch and each backward) and gives them back when the sampler starts again
    (:meth:`submit`).

    Args:
        own: threads of the update's thread (its share of the reservation).
        lent: threads of the sampler thread, borrowed while it idles.
    """

    def __init__(self, own: int, lent: int) -> None:
        self.own, self.lent = own, lent
        self._sampling: Future[Any] | None = None
        self.applied: Counter[int] = Counter()  # thread counts apply() gave, how often

    def submit(self, sampler: Executor, fn: Callable[[], T]) -> Future[T]:
        """Starts ``fn`` in the ``sampler`` thread at that thread's count; the calling
        (update's) thread goes back to its own count, until ``fn`` is done."""
        import torch

        torch.set_num_threads(self.own)
        self._sampling = sampler.submit(self._in_sampler, fn)
        return self._sampling

    def _in_sampler(self, fn: Callable[[], T]) -> T:
        import torch

        torch.set_num_threads(self.lent)
        return fn()

    def apply(self) -> int:
        """Sets the calling (update's) thread's count: ``own + lent`` if the sampler idles,
        else ``own``; returns it."""
        import torch

        idle = self._sampling is None or self._sampling.done()
        threads = self.own + self.lent if idle else self.own
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self.applied[threads] += 1
        return threads
