"""``run.stop_when``: end a run when a published metric crosses a threshold.

An over-optimisation monitor (``monitor/...``, ``reward/disagreement``) or any other metric of
``result["rlhf"]`` may stop a run, e.g. ``run.stop_when: {monitor/distinct_2: {below: 0.3}}``.
The rule is checked here (pure, so the Tune stopper and the report agree on when it fired);
the stopper is ``rayrm.experiment.stopping``. Cheap to import: no ``ray``, no ``torch``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from rayrm import metrics as M
from rayrm.config.base import ConfigError, Section

__all__ = ["StopRule", "check_stop_when", "fired"]


class StopRule(Section):
    """When one metric stops the run.

    Attributes:
        above: Stop when the metric is above this value.
        below: Stop when the metric is below this value.
        after: The first training iteration whose value counts (earlier iterations, while
            the run finds its feet, never stop it).
    """

    above: float | None = None
    below: float | None = None
    after: int = Field(1, ge=1)


def fired(rule: StopRule, iteration: int, value: Any) -> bool:
    """Whether ``rule`` stops the run at ``iteration`` with the metric at ``value`` (a
    missing or NaN value never does)."""
    if iteration < rule.after or not isinstance(value, int | float) or math.isnan(value):
        return False
    if rule.above is not None and value > rule.above:
        return True
    return rule.below is not None and value < rule.below


def check_stop_when(stop_when: Mapping[str, StopRule]) -> None:
    """Every rule has a threshold and names a metric by its current name.

    Raises:
        ConfigError: Naming ``run.stop_when.<metric>``.
    """
    for metric, rule in stop_when.items():
        key = f"run.stop_when.{metric}"
        if metric in M.RENAMED:
            raise ConfigError(f"{key}: {metric!r} was renamed to {M.RENAMED[metric]!r}", key=key)
        if "/" not in metric:
            raise ConfigError(
                f"{key}: name a published metric, group/name (e.g. monitor/distinct_2)", key=key
            )
        if rule.above is None and rule.below is None:
            raise ConfigError(f"{key} needs above or below (a threshold)", key=key)
