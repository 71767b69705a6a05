"""Which prompts a run trains on, and in what order: shuffled passes without replacement.

Each pass (epoch) over the training prompts is a fresh seeded permutation; an iteration takes
the next ``algorithm.batch_size / generation.samples_per_prompt`` of them, crossing into the next
pass when one ends, so every training prompt is used once per pass whatever the number of env
runners (the algorithm deals each iteration's prompts to them). The position travels with
checkpoints: a resumed run continues the pass where it stopped. The held-out prompts of the
evaluation and report, when they come from ``data.prompts`` itself (``eval.prompts`` unset),
are its first ``eval.num_prompts`` rows (at most half the file) and are never trained on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.multi_turn import load_rows
from rayrm.config import ConfigError, RLConfig
from rayrm.data.prompts import load_prompt_rows, other_columns
from rayrm.models.tokenization import Prompt
from rayrm.rl.episodes import PROMPT_INDEX, group_key

__all__ = [
    "PromptOrder",
    "deal_prompts",
    "held_out_count",
    "held_out_prompts",
    "held_out_rows",
    "planned_iterations",
    "take_planned",
    "training_rows",
    "with_planned_iterations",
]


def held_out_count(cfg: RLConfig, num_rows: int) -> int:
    """How many leading rows of ``data.prompts`` (``num_rows`` of them) are held out of
    training: when the evaluation or the report is on and reads ``data.prompts`` itself
    (``eval.prompts`` unset), ``eval.num_prompts`` of them, at most half the file."""
    e = cfg.eval
    if e.prompts is not None or not (e.every > 0 or e.report):
        return 0
    return min(e.num_prompts, num_rows // 2)


def held_out_prompts(cfg: RLConfig, *, references: bool) -> tuple[list[Prompt], list[str] | None]:
    """The prompts (and, with ``references``, their references) that the held-out
    evaluation and the report sample: the first ``eval.num_prompts`` of ``eval.prompts``, or
    the held-out rows of ``data.prompts`` (:func:`held_out_count`); none for a multi-turn
    run (whose held-out episodes start from :func:`held_out_rows`)."""
    d = cfg.data
    if cfg.env is not None:
        return [], None
    prompts, refs = load_prompt_rows(
        cfg.eval.prompts or d.prompts,
        d.prompt_column,
        d.reference_column if references else None,
        d.messages_column,
    )
    count = cfg.eval.num_prompts if cfg.eval.prompts else held_out_count(cfg, len(prompts))
    return prompts[:count], None if refs is None else refs[:count]


def held_out_rows(cfg: RLConfig) -> list[dict[str, Any]]:
    """The held-out rows of a multi-turn run, every column (``envs.multi_turn.load_rows``):
    the first ``eval.num_prompts`` of ``eval.prompts``, or the held-out rows of
    ``data.prompts`` (:func:`held_out_count`)."""
    if cfg.eval.prompts is not None:
        return load_rows(cfg.eval.prompts)[: cfg.eval.num_prompts]
    rows = load_rows(cfg.data.prompts)
    return rows[: held_out_count(cfg, len(rows))]


def held_out_columns(cfg: RLConfig, count: int) -> list[dict[str, Any]] | None:
    """The other columns of the first ``count`` held-out rows (:func:`held_out_prompts`), for
    reward and gold functions that name them; None when the file has none."""
    if cfg.env is not None:
        return None
    d = cfg.data
    used = (d.prompt_column, d.reference_column, d.messages_column)
    columns = other_columns(cfg.eval.prompts or d.prompts, used)
    return None if columns is None else columns[:count]


def training_rows(cfg: RLConfig, num_rows: int | None = None) -> list[int]:
    """The rows of ``data.prompts`` the run trains on (all but the held-out ones).

    Args:
        cfg: the run config.
        num_rows: the file's row count, if known (else the file is read).

    Raises:
        ConfigError: the evaluation or report needs held-out rows of a one-prompt file.
    """
    d = cfg.data
    if num_rows is None and cfg.env is not None:  # rows of a multi-turn task: any columns
        num_rows = len(load_rows(d.prompts))
    if num_rows is None:
        prompts, _ = load_prompt_rows(d.prompts, d.prompt_column, None, d.messages_column)
        num_rows = len(prompts)
    held = held_out_count(cfg, num_rows)
    e = cfg.eval
    if not held and e.prompts is None and (e.every > 0 or e.report):
        raise ConfigError(
            f"data.prompts has {num_rows} prompt: none can be held out for the evaluation "
            f"and report (eval.prompts unset): give eval.prompts, or turn both off "
            f"(eval.every: 0, eval.report: false)",
            key="eval.prompts",
        )
    return list(range(held, num_rows))


def planned_iterations(cfg: RLConfig, num_training_rows: int) -> int:
    """The run's length in iterations: ``run.num_iterations``, or with ``run.num_epochs``
    the iterations that make that many passes over ``num_training_rows`` prompts."""
    epochs = cfg.run.num_epochs
    if epochs is None:
        return cfg.run.num_iterations
    per_iteration = cfg.algorithm.batch_size // cfg.generation.samples_per_prompt
    return max(1, math.ceil(epochs * num_training_rows / per_iteration - 1e-9))


class PromptOrder:
    """Shuffled passes over ``rows`` without replacement, resumable.

    Pass ``e`` is the permutation ``default_rng([seed, e])`` gives, so the state is just
    ``(epoch, position)``.

    Args:
        rows: the prompt rows to cycle over (indices into the env's prompts).
        seed: the run's seed.
    """

    def __init__(self, rows: Sequence[int], seed: int) -> None:
        if not rows:
            raise ValueError("PromptOrder needs at least one row")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return self.rows[rng.permutation(len(self.rows))]

    def take(self, count: int) -> list[int]:
        """The next ``count`` prompt rows, starting the next pass when this one ends."""
        out: list[int] = []
        while len(out) < count:
            if self.position == len(self.rows):
                self.epoch, self.position = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            step = min(count - len(out), len(self.rows) - self.position)
            out.extend(int(r) for r in self._perm[self.position : self.position + step])
            self.position += step
        return out

    def epochs_done(self, state: dict[str, int] | None = None) -> float:
        """Passes completed at ``state`` (default: now), fractional (1.5: one pass and half
        of the next)."""
        state = state or self.get_state()
        return state["epoch"] + state["position"] / len(self.rows)

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        """Continues at a saved position (a pass of a grown or shrunk prompt file restarts
        at the next pass's start when the position no longer fits)."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)
        self.position = min(self.position, len(self.rows))


def deal_prompts(
    rows: list[int], runner_ids: list[int], groups_per_runner: int
) -> dict[int, list[int]]:
    """Each runner's prompt rows for one sampling call: ``rows`` in order, ``groups_per_runner``
    each; when the runners hold more groups than ``rows`` (some runners were lost and the
    others sample their share), the rest repeat ``rows`` and :func:`take_planned` drops them."""
    if not rows:
        raise ValueError("no prompts to deal")
    slots = len(runner_ids) * groups_per_runner
    padded = [rows[i % len(rows)] for i in range(max(slots, len(rows)))]
    return {
        runner: padded[k * groups_per_runner : (k + 1) * groups_per_runner]
        for k, runner in enumerate(runner_ids)
    }


def take_planned(episodes: list[Any], needed: Counter[int]) -> list[Any]:
    """The episodes of ``needed``'s prompt rows, one group (or completion) per row and count,
    in the order sampled; ``needed`` loses what was taken. Groups of rows no longer needed (a
    repeat dealt to fill a runner) are left out."""
    units: dict[Any, list[Any]] = {}
    for i, episode in enumerate(episodes):
        units.setdefault(group_key(episode, i), []).append(episode)
    taken: list[Any] = []
    for unit in units.values():
        row = int(unit[0].get_infos(0)[PROMPT_INDEX])
        if needed[row] > 0:
            needed[row] -= 1
            taken.extend(unit)
    needed += Counter()  # drops rows at zero
    return taken


def with_planned_iterations(cfg: RLConfig) -> RLConfig:
    """``cfg`` with ``run.num_iterations`` set to the iterations ``run.num_epochs`` plans
    (unchanged without it): the live line, the checkpoint at the end and the report count
    with it."""
    if cfg.run.num_epochs is None:
        return cfg
    planned = planned_iterations(cfg, len(training_rows(cfg)))
    run = cfg.run.model_copy(update={"num_iterations": planned})
    return cfg.model_copy(update={"run": run})
