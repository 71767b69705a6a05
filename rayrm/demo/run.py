"""``rayrm demo``: the three RLHF stages end to end, offline on a laptop CPU, with a gold judge.

What belongs here: the demo's pipeline — the order of the stages, caching their artifacts, and
the terminal summary. What each stage runs lives in :mod:`rayrm.demo.steps`, the task (corpus,
prompts, tokenizer) in :mod:`rayrm.demo.data`.

The task: write a *positive* review. The gold judge is VADER
(:func:`rayrm.rewards.judges.vader_positivity`), a lexicon-based sentiment analyser that knows nothing
of the models. It labels pairs of SFT samples; a reward model learns those preferences; PPO
optimises the reward model only. Whether the policy really got better is measured by the gold
judge on held-out prompts (subjects no training prompt mentions), so reward over-optimisation
(Gao et al. 2022, https://arxiv.org/abs/2210.10760) would show as the proxy and gold curves
parting in the report::

    data ─> tokenizer ─> sft ─> pairs (VADER labels) ─> reward_model ─> ppo ─> report.md

Caching: each stage writes into ``<workdir>/stages/<stage>-<hash12>/``, the hash taken over the
stage's settings (``STAGE_SETTINGS``) and the hashes of the stages it reads from, and writes a
``done`` marker (its summary as JSON) last. A folder without the marker is from a killed run:
it is deleted and the stage redone, never half-used. PPO's folder is its run folder,
``<workdir>/runs/ppo-<hash12>/``; a second ``rayrm demo`` with the same settings only prints
its report's headline again. Ray starts only when a stage that needs it is not cached.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rayrm.console import LOG_NAME, quiet, say, warn
from rayrm.demo.cache import quiet_single_threaded, run_stage
from rayrm.demo.pipeline import demo_stages
from rayrm.demo.steps import SIZES, STAGE_SETTINGS, gold_line
from rayrm.experiment.train import TrainingFailed
from rayrm.ray_init import owned_ray
from rayrm.stages.trainer import StageFailed

__all__ = ["DEFAULT_WORKDIR", "STAGES", "build_rl_inputs", "main", "run_demo", "run_stage"]

DEFAULT_WORKDIR = "rayrm-demo"
STAGES = tuple(STAGE_SETTINGS)
"""The stages, in the order they run."""


def build_rl_inputs(
    workdir: str | os.PathLike[str],
    *,
    size: Literal["full", "smoke"] = "full",
    log: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Runs (or finds cached) the demo's stages before RL: what an RL stage starts from.

    Returns:
        ``{"sft_model", "reward_model", "prompts", "heldout", "tokenizer"}``: directories of the
        SFT policy and the reward model, the training and held-out prompt files and the
        tokenizer directory.
    """
    quiet_single_threaded()
    work = Path(workdir).resolve()
    with owned_ray():
        results = demo_stages(SIZES[size], work, False, log or say, until="reward_model")
    by_name = {r.name: r for r in results}
    data = by_name["data"].dir
    return {
        "sft_model": by_name["sft"].info["model"],
        "reward_model": by_name["reward_model"].info["model"],
        "prompts": str(data / "prompts.jsonl"),
        "heldout": str(data / "heldout.jsonl"),
        "tokenizer": str(by_name["tokenizer"].dir),
    }


def run_demo(
    workdir: str | os.PathLike[str] = DEFAULT_WORKDIR,
    *,
    size: Literal["full", "smoke"] = "full",
    algo: Literal["ppo", "grpo"] = "ppo",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs (or finds cached) every stage of the demo; prints the headline and the report path.

    Args:
        workdir: Folder for every artifact (created).
        size: ``full`` (the demo) or ``smoke`` (toy sizes, for tests); see
            :data:`rayrm.demo.steps.SIZES`.
        algo: the RL stage's algorithm: ``ppo`` or ``grpo`` (:class:`DemoSizes`).
        progress: Progress bars for SFT, pair sampling and reward-model training.
        log: Receives the status lines (default: print, flushed).

    Returns:
        ``{"workdir", "size", "stages": {name: {"dir", "hash", "cached", "seconds", **summary}},
        "report", "rm_eval_accuracy", "gold", "seconds"}``; ``gold`` is
        :func:`rayrm.demo.steps.compare_gold`'s result.

    Raises:
        ConfigError: A stage's config or data is invalid.
        StageFailed, TrainingFailed: A Ray Train stage or the PPO run failed.
    """
    quiet_single_threaded()
    log = log or say
    start = time.perf_counter()
    work = Path(workdir).resolve()
    with owned_ray():
        results = demo_stages(dataclasses.replace(SIZES[size], algo=algo), work, progress, log)
    by_name = {r.name: r for r in results}
    ppo, rm = by_name["ppo"].info, by_name["reward_model"].info
    seconds = time.perf_counter() - start
    times = [f"{r.name} {'cached' if r.cached else f'{r.seconds:.0f}s'}" for r in results]
    for line in [
        *ppo["headline"],
        gold_line(ppo["gold"]),
        f"reward model held-out pairwise accuracy: {rm['eval_accuracy']:.3f} "
        f"({rm['eval_pairs']} held-out pairs)",
        f"wall time: {', '.join(times)}; total {seconds:.0f}s",
        f"report: {ppo['report']}",
    ]:
        log(line)
    return {
        "workdir": str(work),
        "size": size,
        "stages": {
            r.name: {"dir": str(r.dir), "hash": r.hash, "cached": r.cached, "seconds": r.seconds}
            | r.info
            for r in results
        },
        "report": ppo["report"],
        "rm_eval_accuracy": rm["eval_accuracy"],
        "gold": ppo["gold"],
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """``rayrm demo``. ConfigError propagates (the CLI turns it into exit code 2)."""

    progress = args.verbose and not args.no_progress and sys.stderr.isatty()
    try:
        with quiet(Path(args.dir) / LOG_NAME, verbose=args.verbose):
            if getattr(args, "task", "sentiment") == "overoptimise":
                from rayrm.demo.overoptimise import run_study

                run_study(
                    args.dir, seeds=range(args.seeds), size=args.size, algo=args.algo, log=say
                )
            elif getattr(args, "task", "sentiment") != "sentiment":
                from rayrm.demo.multi_turn import run_task_demo

                run_task_demo(args.task, args.dir, size=args.size, algo=args.algo, log=say)
            else:
                run_demo(args.dir, size=args.size, algo=args.algo, progress=progress, log=say)
    except (StageFailed, TrainingFailed) as exc:
        warn(f"rayrm: {exc}")
        return 1
    return 0
