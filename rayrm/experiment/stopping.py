"""When Tune stops a trial: its iterations (``run.num_iterations``), or a ``run.stop_when``
rule on a published metric (``rayrm.config.stopping``), whichever comes first."""

from __future__ import annotations

from typing import Any

from ray import tune

from rayrm import metrics as M
from rayrm.config import RLConfig
from rayrm.config.stopping import StopRule, fired

__all__ = ["StopWhen", "trial_stop"]


class StopWhen(tune.Stopper):
    """Stops a trial at its last iteration (None: the trial ends itself, ``run.num_epochs``)
    or at the first iteration where a rule holds; other trials of a sweep go on."""

    def __init__(self, rules: dict[str, StopRule], iterations: int | None) -> None:
        self.rules = dict(rules)
        self.iterations = iterations

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        iteration = int(result.get("training_iteration", 0))
        if self.iterations is not None and iteration >= self.iterations:
            return True
        values = result.get(M.RLHF_RESULTS, {})
        return any(fired(rule, iteration, values.get(m)) for m, rule in self.rules.items())

    def stop_all(self) -> bool:
        return False


def trial_stop(cfg: RLConfig) -> Any:
    """Tune's ``stop`` for ``cfg``: a dict of the iteration limit (None with
    ``run.num_epochs``, the trials end themselves), or :class:`StopWhen` with rules."""
    iterations = None if cfg.run.num_epochs else cfg.run.num_iterations
    if cfg.run.stop_when:
        return StopWhen(cfg.run.stop_when, iterations)
    return None if iterations is None else {"training_iteration": iterations}
