"""Which failures a retry can fix, and how a failed run reads: one line.

A trial restart (``run.max_failures``) helps when a process or node died or Ray itself failed:
the run continues from its last checkpoint. It cannot help when the user's code or data is
wrong -- a reward function that raises, a prompt the tokenizer cannot take, NaN scores -- which
fail the same way every time. :func:`is_retriable` tells the two apart by the exception (and the
exceptions it wraps: errors of remote tasks arrive wrapped in ``RayTaskError``);
:func:`failure_summary` turns an error into the one line the CLI prints, with the file that
holds the full traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayrm.errors import TimedOut

__all__ = ["SYSTEM_ERRORS", "failure_summary", "is_retriable", "root_cause"]


def _system_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as e

    return (
        e.RayActorError,  # an actor's process died (ActorDiedError, ActorUnavailableError)
        e.WorkerCrashedError,
        e.NodeDiedError,
        e.LocalRayletDiedError,
        e.ObjectLostError,  # OwnerDiedError, ObjectReconstructionFailedError, ...
        e.ObjectStoreFullError,
        e.OutOfMemoryError,
        e.OutOfDiskError,
        e.RaySystemError,
        e.ObjectFetchTimedOutError,
    )


SYSTEM_ERRORS = _system_errors()
"""Ray exceptions that mean a process, node or Ray itself failed: worth a restart."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the causes of remote errors it wraps, and its ``__cause__`` chain."""
    from ray.exceptions import RayTaskError

    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is seen for seen in out) or len(out) > 20:
            continue
        out.append(e)
        if isinstance(e, RayTaskError):
            try:
                todo.append(e.as_instanceof_cause())
            except Exception:  # a cause that cannot be rebuilt: keep what we have
                pass
            todo.append(getattr(e, "cause", None))
        todo.append(e.__cause__)
    return out


def is_retriable(exc: BaseException) -> bool:
    """Whether a restart from the last checkpoint can fix ``exc``: a Ray system failure
    somewhere in its chain (a died process or node, a lost object, OOM) or a hang
    (:class:`~rayrm.errors.TimedOut`)."""
    return any(isinstance(e, (*SYSTEM_ERRORS, TimedOut)) for e in _chain(exc))


def root_cause(exc: BaseException) -> BaseException:
    """The innermost error: what the user's code or data raised, not Ray's wrappers."""
    from ray.exceptions import RayTaskError

    chain = [e for e in _chain(exc) if not isinstance(e, RayTaskError)]
    return chain[-1] if chain else exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if type(exc).__module__.startswith("rayrm."):  # our own errors are written to be read
        return lines[-1]
    # Ray puts the remote traceback first and the error last.
    last = lines[-1]
    return last if last.startswith(type(exc).__name__) else f"{type(exc).__name__}: {last}"


def failure_summary(exc: BaseException, trial_dir: Path | None) -> str:
    """``failed: <cause, one line> (full traceback: <file>)``."""
    cause = root_cause(exc)
    where = ""
    if trial_dir is not None and (trial_dir / "error.txt").is_file():
        where = f" (full traceback: {trial_dir / 'error.txt'})"
    return f"training failed: {_one_line(cause)}{where}"


def trial_dir_of(result: Any) -> Path | None:
    """The trial folder of a Tune result, if it has one on local disk."""
    path = getattr(result, "path", None)
    return Path(path) if path and Path(path).is_dir() else None
