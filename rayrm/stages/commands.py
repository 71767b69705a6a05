"""``rayrm sft`` and ``rayrm train-rm``: one command driver for both Ray Train stages."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from rayrm.config.stage import RMConfig, SFTConfig, StageConfig, load_stage_config
from rayrm.console import LOG_NAME, quiet, say, warn
from rayrm.ray_init import owned_ray
from rayrm.stages import ensemble, reward_model, sft
from rayrm.stages.trainer import StageFailed, run_dir

__all__ = ["STAGES", "stage_main"]

STAGES: dict[
    str, tuple[type[StageConfig], Callable[..., dict[str, Any]], Callable[..., str], str]
] = {
    "sft": (SFTConfig, sft.run_sft, sft.describe, "model"),
    "train-rm": (RMConfig, ensemble.run_reward_models, reward_model.describe, "reward model"),
}
"""Command -> (config class, run function, metrics line, what the output directory holds)."""


def stage_main(
    command: str,
    config: str,
    overrides: Sequence[str],
    resume: bool,
    no_progress: bool,
    verbose: bool = False,
) -> int:
    """Loads the stage config, runs the stage, prints the result.

    The terminal shows the epoch lines and the result (progress bars with ``verbose`` only);
    the rest goes to the run folder's log. ConfigError propagates (the CLI turns it into exit
    code 2); a failed run exits 1.
    """
    cls, run, describe, label = STAGES[command]
    cfg = load_stage_config(cls, config, overrides)
    progress = verbose and not no_progress and sys.stderr.isatty()
    try:
        with quiet(run_dir(cfg) / LOG_NAME, verbose=verbose), owned_ray():
            summary = run(cfg, resume=resume, progress=progress)
    except StageFailed as exc:
        warn(f"rayrm: {exc}")
        return 1
    say(f"done: {describe(summary['metrics'])}")
    if "accuracy" in summary:  # an ensemble: every member's and every combination's
        held_out = ", ".join(f"{k} {v:.3f}" for k, v in summary["accuracy"].items())
        say(f"held-out pairwise accuracy: {held_out}")
    say(f"{label}: {summary['output_dir']} (run folder: {summary['run_dir']})")
    return 0
