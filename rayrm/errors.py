"""Errors that say a machine failed, not the user: a restart from the last checkpoint can fix
them (``rayrm.experiment.failures.is_retriable``)."""

from __future__ import annotations

__all__ = ["TimedOut"]


class TimedOut(RuntimeError):
    """Something that should have answered did not within its timeout (a hung reward actor,
    env runner or iteration) and recovering in place did not help."""
