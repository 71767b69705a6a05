"""Hyperparameter sweeps: ``rayrm tune CONFIG`` runs many RLHF trials as one Tune experiment.

What belongs here: turning the YAML's ``tune`` section into Tune's param space, scheduler
(ASHA or PBT) and TuneConfig; the results table; exporting the best trial's policy. Each trial
is the same ``RLHFPPO`` that ``rayrm train`` runs alone.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from rayrm import metrics as M
from rayrm.config import RLConfig, load_config
from rayrm.console import LOG_NAME, quiet, say, warn
from rayrm.experiment.preflight import check_storage, preflight
from rayrm.experiment.resources import wait_for_resources
from rayrm.experiment.train import check_experiment_dir, make_tuner
from rayrm.ray_init import init_ray, owned_ray
from rayrm.rewards import pool_from_config
from rayrm.rewards.compose import kill_shared_pools
from rayrm.rl.checkpoint import export_policy
from rayrm.rl.prompt_order import with_planned_iterations

BEST_POLICY_DIR = "best_policy"


def _sampler(kind: str, args: list[Any]) -> Any:
    from ray import tune

    if kind == "grid":
        return tune.grid_search(args)
    if kind == "choice":
        return tune.choice(args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    return tune.randint(*args)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def shared_pool_name(cfg: RLConfig) -> str | None:
    """The sweep's shared reward pool (one per experiment), or None when trials keep their own."""
    if cfg.reward.pool_name is not None:
        return cfg.reward.pool_name
    return f"rayrm-reward-{cfg.name}" if cfg.reward.shared_in_sweeps else None


def pbt_checkpoints_to_keep(cfg: RLConfig) -> int | None:
    """``run.keep_checkpoints`` of a PBT trial: at least the checkpoints a trial writes in one
    perturbation interval, plus two (PBT's own save at the perturbation point, and the end).

    PBT's exploit step restores a peer's checkpoint saved at that peer's latest perturbation
    point; the peer goes on saving until its next one. Pruned sooner, that checkpoint is gone
    when a slower trial exploits it, and the trial fails ("does not exist on storage")."""
    keep = cfg.run.keep_checkpoints
    if keep is None:
        return None
    window = math.ceil(cfg.tune.perturbation_interval / cfg.run.checkpoint_every) + 2
    return max(keep, window)


def param_space(cfg: RLConfig) -> dict[str, Any]:
    """``{"rayrm": run config}`` with each searched key replaced by its Tune sampler (and,
    under PBT, enough checkpoints kept for its exploit step: :func:`pbt_checkpoints_to_keep`)."""
    base = copy.deepcopy(cfg.to_dict())
    base["reward"]["pool_name"] = shared_pool_name(cfg)
    if cfg.tune.scheduler == "pbt":
        base["run"]["keep_checkpoints"] = pbt_checkpoints_to_keep(cfg)
    for key, spec in cfg.tune.search_space.items():
        ((kind, args),) = spec.items()
        _set(base, key, _sampler(kind, args))
    return {"rayrm": base}


def _pbt_mutations(cfg: RLConfig) -> dict[str, Any]:
    """PBT mutates the learning rate and β; ranges from the search space, else ×/÷10."""
    from ray import tune

    mutations: dict[str, Any] = {}
    for key, base in (
        ("algorithm.lr", cfg.algorithm.lr),
        ("algorithm.kl_coef", cfg.algorithm.kl_coef),
    ):
        spec = cfg.tune.search_space.get(key)
        if spec is not None:
            ((kind, args),) = spec.items()
            mutations[key.split(".")[1]] = _sampler(kind, args)
        elif base > 0:
            mutations[key.split(".")[1]] = tune.loguniform(base / 10, base * 10)
    return {"rayrm": {"algorithm": mutations}}


def make_scheduler(cfg: RLConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    t = cfg.tune
    if t.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=cfg.run.num_iterations,
            grace_period=min(t.grace_period, cfg.run.num_iterations),
            reduction_factor=t.reduction_factor,
        )
    if t.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=t.perturbation_interval,
            synch=t.pbt_synch,
            hyperparam_mutations=_pbt_mutations(cfg),
        )
    return None


def metric_key(cfg: RLConfig) -> str:
    """Tune's flattened result key of ``tune.metric``."""
    return f"{M.RLHF_RESULTS}/{cfg.tune.metric}"


def run_tune(cfg: RLConfig, *, resume: bool = False) -> tuple[Path, Any]:
    """Runs (or resumes) the sweep; returns ``(experiment_dir, ResultGrid)``."""
    from ray import tune

    exp_dir = check_experiment_dir(cfg, resume)
    cfg = with_planned_iterations(cfg)  # run.num_epochs: ASHA's max_t, the live line
    init_ray(cfg.run.num_cpus)
    wait_for_resources(cfg)
    pool = _start_shared_pool(cfg)
    try:
        tuner = make_tuner(
            cfg,
            exp_dir,
            resume=resume,
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                metric=metric_key(cfg),
                mode=cfg.tune.mode,
                scheduler=make_scheduler(cfg),
                num_samples=cfg.tune.num_samples,
                max_concurrent_trials=cfg.tune.max_concurrent_trials,
            ),
        )
        return exp_dir, tuner.fit()
    finally:
        # The sweep's own pool goes with it; a reward.pool_name (e.g. a `rayrm serve-rm`
        # service other jobs use) belongs to whoever started it.
        if pool is not None and cfg.reward.pool_name is None:
            kill_shared_pools(pool)


def _start_shared_pool(cfg: RLConfig) -> str | None:
    """Starts (or finds) the sweep's shared reward actors before any trial needs them."""
    name = shared_pool_name(cfg)
    if name is None:
        return None

    pool_from_config(cfg.reward, name=name)  # trials join its actors by name
    return name


def results_table(cfg: RLConfig, results: Any) -> list[dict[str, Any]]:
    """One row per trial: id, searched values, iterations, last metric value, status."""
    rows = []
    for result in results:
        rayrm_cfg = (result.config or {}).get("rayrm", {})
        metrics = result.metrics or {}
        value = metrics.get(M.RLHF_RESULTS, {}).get(cfg.tune.metric, math.nan)
        rows.append(
            {
                "trial": metrics.get("trial_id", "?"),
                **{key: _get(rayrm_cfg, key) for key in cfg.tune.search_space},
                "iterations": metrics.get("training_iteration", 0),
                cfg.tune.metric: value,
                "status": "ERROR" if result.error else "OK",
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(fmt(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def main_tune(config_path: str, overrides: list[str], resume: bool, verbose: bool = False) -> int:
    """``rayrm tune``: sweep, print the table, export the best trial's policy."""

    cfg = load_config(config_path, overrides)
    check_storage(cfg.run.storage_path)
    log = check_experiment_dir(cfg, resume) / LOG_NAME
    with quiet(log, verbose=verbose), owned_ray():
        say(preflight(cfg))
        exp_dir, results = run_tune(cfg, resume=resume)
        say(format_table(results_table(cfg, results)))
        try:
            best = results.get_best_result(metric=metric_key(cfg), mode=cfg.tune.mode, scope="last")
        except RuntimeError as exc:
            warn(f"rayrm: no trial reported {metric_key(cfg)}: {exc}")
            return 1
        if best.checkpoint is None:
            warn("rayrm: the best trial has no checkpoint to export")
            return 1
        out = export_policy(best.checkpoint.path, exp_dir / BEST_POLICY_DIR)
        value = best.metrics[M.RLHF_RESULTS][cfg.tune.metric]
        say(
            f"best trial: {Path(best.path).name} ({cfg.tune.metric} {value:.4g}); "
            f"policy exported to {out}"
        )
    for error in results.errors:
        warn(f"rayrm: a trial failed: {error!s:.300}")
    return 0 if not results.errors else 1
