"""The ``tune`` section: a sweep's search space, scheduler and metric (``rayrm tune``).

A typed section and the check of its search space against the run config's keys; the sweep
itself is ``rayrm.experiment.sweep``. Cheap to import: no ``ray``, no ``torch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from rayrm import metrics as M
from rayrm.config.base import ConfigError, NonEmptyStr, Section

__all__ = ["SAMPLERS", "TuneSettings", "check_search_space"]

SAMPLERS = ("grid", "choice", "uniform", "loguniform", "randint")
"""Search-space kinds for ``tune.search_space`` entries (Ray Tune's samplers of those names)."""


class TuneSettings(Section):
    """Hyperparameter sweep settings, used by ``rayrm tune`` (ignored by ``rayrm train``).

    Attributes:
        search_space: Dotted config key -> one sampler, written as a one-key mapping:
            ``{grid: [a, b]}``, ``{choice: [a, b]}``, ``{uniform: [low, high]}``,
            ``{loguniform: [low, high]}`` or ``{randint: [low, high]}``. Any key of this config
            may be searched (e.g. ``algorithm.lr``, ``algorithm.kl_coef``, ``seed``).
        num_samples: Trials to sample (each grid point is repeated this many times).
        scheduler: ``fifo`` (run every trial to the end), ``asha`` (stop weak trials early)
            or ``pbt`` (population-based training: mutates ``algorithm.lr`` and ``algorithm.kl_coef``).
        metric: Result key under ``rlhf`` to optimise, e.g. ``reward/mean`` or
            ``objective/reward_minus_kl`` (reward minus β·KL per sequence).
        mode: ``max`` or ``min``.
        max_concurrent_trials: Trials run at once; None lets Tune fit as many as resources allow.
        grace_period: ASHA: iterations every trial runs before it may be stopped.
        reduction_factor: ASHA: keep the top 1/reduction_factor at each rung.
        perturbation_interval: PBT: iterations between exploit/explore steps.
        pbt_synch: PBT: take each exploit/explore step once every trial has reached it (Ray's
            synchronous PBT): slower trials hold the others up, but every step compares all
            trials and exploits for sure; false: each trial steps on its own, and a step whose
            better peer has not saved at a perturbation point yet is skipped.
    """

    search_space: dict[str, Any] = Field(default_factory=dict)
    num_samples: int = Field(1, ge=1)
    scheduler: Literal["fifo", "asha", "pbt"] = "asha"
    metric: NonEmptyStr = "reward/mean"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int | None = Field(None, ge=1)
    grace_period: int = Field(5, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    perturbation_interval: int = Field(5, ge=1)
    pbt_synch: bool = False


def check_search_space(
    plain: dict[str, Any], tune: TuneSettings, renamed: Mapping[str, str] | None = None
) -> None:
    """Every ``tune.search_space`` entry names a real scalar key of the run config
    ``plain`` (as a dict) and a well-formed sampler; ``tune.metric`` is not a renamed metric,
    and a key under a ``renamed`` section (old -> new) is refused naming the new key.

    Raises:
        ConfigError: On the first problem, naming the ``tune.search_space`` key.
    """
    if tune.metric in M.RENAMED:
        raise ConfigError(
            f"tune.metric: {tune.metric!r} was renamed to {M.RENAMED[tune.metric]!r}",
            key="tune.metric",
        )
    for key, spec in tune.search_space.items():
        where = f"tune.search_space.{key}"
        node: Any = plain
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                first, _, rest = key.partition(".")
                if node is plain and first in (renamed or {}):
                    new = ".".join(filter(None, (renamed[first], rest)))  # type: ignore[index]
                    raise ConfigError(f"{where}: {first} was renamed to {new}", key=where)
                raise ConfigError(f"{where}: {key} is not a config key", key=where)
            node = node[part]
        if isinstance(node, dict) or key.startswith("tune."):
            raise ConfigError(f"{where}: only single values can be searched", key=where)
        if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
            raise ConfigError(
                f"{where} must be one of {{{': [...]}, {'.join(SAMPLERS)}: [...]}} (got {spec!r})",
                key=where,
            )
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}.{kind} needs a non-empty list (got {args!r})", key=where)
        if kind in ("uniform", "loguniform", "randint"):
            numeric = all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
            if len(args) != 2 or not numeric or not args[0] < args[1]:
                raise ConfigError(f"{where}.{kind} needs [low, high] with low < high", key=where)
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(f"{where}.loguniform needs low > 0", key=where)
    if tune.scheduler == "pbt":
        for key in ("algorithm.lr", "algorithm.kl_coef"):
            spec = tune.search_space.get(key)
            if spec is not None and next(iter(spec)) not in ("uniform", "loguniform"):
                raise ConfigError(
                    f"tune.search_space.{key}: with tune.scheduler=pbt it is mutated, so it "
                    f"needs a continuous range (uniform or loguniform)",
                    key=f"tune.search_space.{key}",
                )
