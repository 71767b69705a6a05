"""``rayrm demo --task overoptimise``: a task that over-optimises on CPU, measured over seeds,
and whether an ensemble of reward models or adversarial rounds hold the decline off.

What belongs here: the over-optimisation setting of the demo (:data:`OVEROPTIMISE`) and the
study that runs it: per seed, the demo's stages up to the reward model (data, tokenizer, SFT,
pairs labelled by the gold judge, one reward model), a k-member ensemble trained on the same
pairs (the same gold labels, bootstrap resamples), then RL against the single reward model and
against the ensemble combined by ``mean``, ``min`` and ``mean_minus_std``, and adversarial
rounds with as many gold labels (:mod:`rayrm.demo.rounds`). Each RL run
evaluates the held-out proxy and gold every ``eval_every`` updates; the study writes
``overoptimisation.md`` (gold at start, peak and end, mean ± standard error over seeds; when
each gold-free monitor fired against the gold peak) and ``gao.png`` (gold and proxy against KL).

The gold judge is :func:`rayrm.demo.judge.fluent_positivity` (VADER times fluency under the
reviews' grammar): the reward model learns from a few hundred of its labels which words please;
without a KL penalty PPO then finds texts the reward model rates higher and higher that are no
longer reviews, and the gold score falls (Gao et al. 2022, https://arxiv.org/abs/2210.10760).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from rayrm.analysis.gao import (
    MONITOR_RULES,
    curve_of,
    monitor_firing,
    plot_gao,
    study_table,
    summarise,
)
from rayrm.analysis.report import load_results
from rayrm.config import RLConfig, config_from_dict
from rayrm.config.stage import RMConfig, stage_config_from_dict
from rayrm.demo import steps as ds
from rayrm.demo.cache import quiet_single_threaded, run_stage
from rayrm.demo.pipeline import demo_stages
from rayrm.demo.rounds import ROUNDS, RoundSizes, run_rounds
from rayrm.experiment.train import TrainingFailed, run_train
from rayrm.ray_init import owned_ray

__all__ = ["GOLD", "OVEROPTIMISE", "VARIANTS", "build_ensemble", "rl_variant", "run_study"]

GOLD = "rayrm.demo.judge:fluent_positivity"
"""The gold judge of the task: labels the pairs, scores the held-out completions."""

OVEROPTIMISE: dict[str, ds.DemoSizes] = {
    "full": dataclasses.replace(
        ds.SIZES["full"],
        num_pairs=300,
        ppo_iterations=151,
        ppo_lr=3.0e-4,
        kl_coef=0.0,
        eval_every=10,
        judge=GOLD,
    ),
    "smoke": dataclasses.replace(ds.SIZES["smoke"], kl_coef=0.0, ppo_iterations=3, judge=GOLD),
}
"""The demo with fewer preference pairs (300 sampled, fewer after the margin filter), no KL
penalty (β = 0), a higher learning rate and 150 updates (the held-out evaluation of iteration
151 is of the policy after them): long and free enough for the policy to find what the reward
model gets wrong. ``smoke``: toy sizes (tests)."""

VARIANTS = ("single", "mean", "min", "mean_minus_std", "rounds")
"""``single``: one reward model; ``mean``, ``min``, ``mean_minus_std``: the ensemble combined
that way; ``rounds``: adversarial rounds (:mod:`rayrm.demo.rounds`), the same number of pairs
spread over reward-model refreshes."""

MEMBERS = 3
"""Reward models of the ensemble."""


def build_ensemble(
    d: Path, s: ds.DemoSizes, sft_model: str, pairs: str, members: int
) -> dict[str, Any]:
    """``rayrm train-rm --members k`` on the demo's pairs: k reward models from the SFT trunk,
    seeds ``seed + i``, each on a bootstrap resample of the same training pairs."""
    from rayrm.stages.ensemble import run_reward_models

    raw = ds.stage_common(d, Path(sft_model), s.seed, s.rm_epochs, s.rm_lr, s.rm_batch_size)
    raw |= {
        "name": "reward-ensemble",
        "data": {"path": pairs, "max_length": 64},
        "ensemble": {"members": members, "bootstrap": True},
    }
    summary = run_reward_models(stage_config_from_dict(RMConfig, raw, check_paths=True))
    return {"model": summary["output_dir"], "accuracy": summary["accuracy"]}


def rl_variant(
    name: str,
    storage: Path,
    s: ds.DemoSizes,
    sft_model: str,
    reward_model: str,
    ensemble: str,
    data: Path,
    variant: str,
) -> RLConfig:
    """The demo's RL config (:func:`rayrm.demo.steps.ppo_config`) rewarded by the single
    reward model or by the ensemble combined as ``variant``."""
    raw = ds.ppo_config(name, storage, s, sft_model, reward_model, data).to_dict()
    if variant != "single":
        raw["reward"] = {
            "source": "ensemble",
            "path": ensemble,
            "combine": variant,
            "num_cpus_per_actor": raw["reward"]["num_cpus_per_actor"] / 2,
        }
    return config_from_dict(raw, check_paths=True)


def _run_variant(cfg: RLConfig) -> dict[str, Any]:
    exp_dir, last = run_train(cfg)
    if int(last.get("training_iteration", 0)) < cfg.run.num_iterations:
        raise TrainingFailed(
            f"{cfg.name} stopped early: {last.get('training_iteration')} iterations"
        )
    results = load_results(exp_dir)
    return {"exp_dir": str(exp_dir), "curve": curve_of(results), "firing": monitor_firing(results)}


def _one_seed(
    s: ds.DemoSizes,
    work: Path,
    variants: Sequence[str],
    members: int,
    rounds: RoundSizes,
    log: Callable[[str], None],
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """One seed's stages and RL runs (each cached): the reward models' held-out accuracy and
    each variant's ``{"exp_dir", "curve", "firing"}``."""
    done = {r.name: r for r in demo_stages(s, work, False, log, until="reward_model")}
    sft_model, pairs = done["sft"].info["model"], done["pairs"].info["path"]
    rm_key = {k: getattr(s, k) for k in ds.STAGE_SETTINGS["reward_model"]}
    ens = run_stage(
        work / "stages",
        "ensemble",
        {"members": members, **rm_key, **{k: done[k].hash for k in ("pairs", "sft")}},
        lambda d: build_ensemble(d, s, sft_model, pairs, members),
        log,
    )
    accuracy = {"single": done["reward_model"].info["eval_accuracy"], **ens.info["accuracy"]}
    runs = {}
    for variant in variants:
        if variant == "rounds":
            runs[variant] = run_rounds(work, s, rounds, done, log)
            continue
        cfg_of = partial(
            rl_variant, s=s, sft_model=sft_model, variant=variant, data=done["data"].dir,
            reward_model=done["reward_model"].info["model"], ensemble=ens.info["model"],
        )  # fmt: skip
        key = {k: getattr(s, k) for k in ds.STAGE_SETTINGS["ppo"]}
        key |= {"variant": variant, "ensemble": ens.hash}
        key |= {k: done[k].hash for k in ("data", "sft", "reward_model")}
        stage = run_stage(
            work / "runs",
            f"overoptimise_{variant}",
            key,
            lambda d, cfg_of=cfg_of: _run_variant(cfg_of(name=d.name, storage=d.parent)),
            log,
        )
        runs[variant] = stage.info
    return accuracy, runs


def run_study(
    workdir: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    size: Literal["full", "smoke"] = "full",
    algo: Literal["ppo", "grpo"] = "ppo",
    variants: Sequence[str] = VARIANTS,
    members: int = MEMBERS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or finds cached) every stage of every seed, then writes the study.

    Returns:
        ``{"report", "plot", "summary", "runs", "seconds"}``: ``summary`` is
        :func:`rayrm.analysis.gao.summarise`'s, ``runs`` ``{variant: [run, ...]}``.
    """

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; use {list(VARIANTS)}")
    quiet_single_threaded()
    start = time.perf_counter()
    work = Path(workdir).resolve()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    accuracy: dict[int, dict[str, float]] = {}
    with owned_ray():
        for seed in seeds:
            s = dataclasses.replace(OVEROPTIMISE[size], seed=seed, algo=algo)
            accuracy[seed], by_variant = _one_seed(s, work, variants, members, ROUNDS[size], log)
            for variant, run in by_variant.items():
                runs[variant].append({"seed": seed, **run})
    summary = summarise(runs)
    s = dataclasses.replace(OVEROPTIMISE[size], algo=algo)
    report = write_study(work / "overoptimisation.md", summary, runs, accuracy, s)
    seconds = time.perf_counter() - start
    for line in study_table(summary):
        log(line)
    log(f"report: {report}; total {seconds:.0f}s")
    return {
        "report": str(report),
        "plot": str(report.with_name("gao.png")),
        "summary": summary,
        "runs": runs,
        "accuracy": accuracy,
        "seconds": seconds,
    }


def write_study(
    path: Path,
    summary: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    accuracy: dict[int, dict[str, float]],
    s: ds.DemoSizes,
) -> Path:
    """``overoptimisation.md`` and ``gao.png`` beside it; ``summary.json`` holds the numbers."""
    plot = plot_gao(path.with_name("gao.png"), runs)
    lines = [
        "# Over-optimisation: one reward model, an ensemble, adversarial rounds",
        "",
        f"The demo's review task, gold judge `{s.judge}`; {s.num_pairs} preference pairs sampled "
        f"from the SFT policy (margin filter {s.pair_min_margin}); {s.algo.upper()} for {s.ppo_iterations} "
        f"iterations of {s.ppo_batch_size} prompts, lr {s.ppo_lr:g}, β = {s.kl_coef:g}; held-out "
        f"proxy and gold every {s.eval_every} updates. Gold: mean ± standard error over seeds.",
        "",
        *study_table(summary),
        "",
        "Held-out pairwise accuracy of the reward models (per seed): "
        + "; ".join(
            f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
            for seed, acc in accuracy.items()
        ),
        "",
        "## When the gold-free monitors fired, against the gold peak",
        "",
        "Updates from the gold peak to the first iteration the monitor fired (negative: before "
        "the peak; a dash: never). Rules, relative to the run's own values: "
        + ", ".join(
            f"`{m}` {kind.replace('_', ' ')} {x:g}" for m, (kind, x) in MONITOR_RULES.items()
        )
        + ".",
        "",
        "| reward | monitor | per seed |",
        "| --- | --- | --- |",
    ]
    for variant, stats in summary.items():
        for metric, diffs in stats["firing_minus_peak"].items():
            cells = ", ".join("-" if d is None else f"{d:+d}" for d in diffs)
            lines.append(f"| {variant} | `{metric}` | {cells} |")
    if "rounds" in runs:
        lines += [
            "",
            "## Adversarial rounds",
            "",
            "Each round's reward model (pairs and gold labels so far, held-out accuracy) and the "
            "held-out gold and proxy at the round's last evaluation.",
            "",
            "| seed | round | pairs | gold labels | RM accuracy | updates | gold | proxy |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run in runs["rounds"]:
            lines += [
                f"| {run['seed']} | {x['round']} | {x['pairs']} | {x['labels']} | "
                f"{x['rm_accuracy']:.3f} | {x['updates']} | {x['gold_end']:+.3f} | "
                f"{x['proxy_end']:+.3f} |"
                for x in run["rounds"]
            ]
    lines += ["", f"![gold and proxy against KL]({plot.name})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    path.with_name("summary.json").write_text(
        json.dumps({"summary": summary, "runs": runs, "accuracy": accuracy}, indent=1),
        encoding="utf-8",
    )
    return path
