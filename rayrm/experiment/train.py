"""Training as a Ray Tune experiment (one trial for ``rayrm train``), resume, live reporting.

What belongs here: starting/connecting Ray, building the Tuner around ``RLHFPPO``, the
compact per-iteration terminal line, and finding checkpoints of finished runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rayrm import metrics as M
from rayrm.analysis.report import write_report
from rayrm.config import ConfigError, RLConfig, load_config
from rayrm.console import LOG_NAME, holds_run, quiet, say, warn
from rayrm.experiment.failures import failure_summary, is_retriable, trial_dir_of
from rayrm.experiment.leftovers import claim_run_folder, record_driver, release
from rayrm.experiment.preflight import check_storage, preflight
from rayrm.experiment.resources import claim_local_cores, wait_for_resources
from rayrm.experiment.stopping import trial_stop
from rayrm.ray_init import init_ray, owned_ray
from rayrm.rl.algorithm import RLHFPPO
from rayrm.rl.prompt_order import with_planned_iterations
from rayrm.rl.rllib_compat import count_callbacks_by_name, local_session_dir
from rayrm.tracking import log_artifacts, logger_callbacks

SNAPSHOT_PERIOD_S = 2
"""Seconds between Tune's experiment snapshots (and result copies) in ``rayrm train``."""


class TrainingFailed(RuntimeError):
    """The Tune trial ended in an error (its traceback is in the trial folder).

    The message is one line: the root cause and where the full traceback is.

    Attributes:
        retriable: A restart could have fixed it (a process, node or Ray failure), but the
            run's ``run.max_failures`` restarts were used up.
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


def format_line(result: dict[str, Any], total: int | None = None, runners: int = 0) -> str:
    """One compact terminal line per iteration."""
    r = result.get(M.RLHF_RESULTS, {})

    def g(key: str) -> float:
        return float(r.get(key, float("nan")))

    healthy = int(r.get(M.ROLLOUT_HEALTHY_RUNNERS, runners))
    degraded = f" | DEGRADED: {healthy}/{runners} env runners" if healthy < runners else ""
    it = result.get("training_iteration", 0)
    head = f"iter {it:>3}" + (f"/{total}" if total else "")
    vf = f" vf {g(M.LOSS_VALUE):.3f}" if M.LOSS_VALUE in r else ""  # critic-free: none
    groups = (
        f" | group std {g(M.ROLLOUT_GROUP_STD):.3f} uniform {g(M.ROLLOUT_UNIFORM_GROUPS):.2f}"
        if M.ROLLOUT_GROUP_STD in r
        else ""
    )
    return (
        f"{head} | reward {g(M.REWARD_MEAN):+.3f}±{g(M.REWARD_STD):.3f}{groups}"
        f" | kl/tok {g(M.KL_TOKEN):.4f} seq {g(M.KL_SEQUENCE):.3f} β {g(M.KL_COEF):.4f}"
        f" | ent {g(M.LOSS_ENTROPY):.2f} len {g(M.ROLLOUT_LENGTH):.1f}"
        f" | pg {g(M.LOSS_POLICY):+.3f}{vf} clip {g(M.LOSS_CLIP_FRACTION):.2f}"
        f" | {g(M.THROUGHPUT_TOKENS_PER_S):.0f} tok/s"
        f" | sample {g(M.TIMER_SAMPLE):.2f}s score {g(M.TIMER_SCORE):.2f}s"
        f" update {g(M.TIMER_UPDATE):.2f}s sync {g(M.TIMER_SYNC):.2f}s" + degraded
    )


def live_line_callback(total: int, runners: int = 0) -> Any:
    from ray.tune import Callback

    class LiveLine(Callback):
        """Prints ``format_line`` for every result of every trial."""

        def on_trial_result(self, iteration: int, trials: Any, trial: Any, result: dict, **kw: Any):
            prefix = f"[{trial.trial_id}] " if len(trials) > 1 else ""
            say(prefix + format_line(result, total, runners))

    return LiveLine()


def experiment_dir(cfg: RLConfig) -> Path:
    return Path(cfg.run.storage_path) / cfg.name


def check_experiment_dir(cfg: RLConfig, resume: bool) -> Path:
    """The run folder, refusing to overwrite a run or to resume a missing one (no data lost)."""
    exp_dir = experiment_dir(cfg)
    if resume and not holds_run(exp_dir):
        raise ConfigError(f"nothing to resume: no run folder at {exp_dir}", key="run.storage_path")
    if not resume and holds_run(exp_dir):
        raise ConfigError(
            f"run folder {exp_dir} already holds a run: pass --resume to continue it, "
            "or choose another name",
            key="name",
        )
    return exp_dir


def make_tuner(
    cfg: RLConfig,
    exp_dir: Path,
    *,
    resume: bool,
    param_space: dict[str, Any],
    tune_config: Any = None,
    callbacks: list[Any] | None = None,
    max_failures: int | None = None,
) -> Any:
    """A Tuner over ``RLHFPPO`` (restored from ``exp_dir`` when resuming).

    ``max_failures`` is Tune's own restart budget per trial (default ``run.max_failures``;
    ``rayrm train`` passes 0 and restarts only what a restart can fix, see :func:`run_train`).
    """
    from ray import tune

    count_callbacks_by_name()  # Tune's usage tag without importing mlflow and wandb
    if resume:
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise ConfigError(f"nothing to resume in {exp_dir} (no Tune experiment state)")
        return tune.Tuner.restore(
            str(exp_dir), trainable=RLHFPPO, resume_unfinished=True, resume_errored=True
        )
    return tune.Tuner(
        RLHFPPO,
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=cfg.run.storage_path,
            # With run.num_epochs each trial ends itself once its passes are done (result
            # "done"): their iterations depend on a trial's batch size.
            stop=trial_stop(cfg),
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=cfg.run.checkpoint_every, checkpoint_at_end=True
            ),
            callbacks=[
                live_line_callback(cfg.run.num_iterations, cfg.resources.num_env_runners),
                *logger_callbacks(cfg, exp_dir),
                *(callbacks or []),
            ],
            failure_config=tune.FailureConfig(
                max_failures=cfg.run.max_failures if max_failures is None else max_failures
            ),
            verbose=0,
        ),
    )


def start_ray_for(cfg: RLConfig, **ray_kwargs: Any) -> RLConfig:
    """Joins the cluster, or starts the local Ray, that a run of ``cfg`` runs on
    (``init_ray(run.num_cpus)``; ``ray_kwargs`` go to it) and returns ``cfg`` as its trial
    reserves there: a local Ray started here is the trial's alone, so its local learner takes
    the cores the other bundles leave (``claim_local_cores``). ``rayrm bench`` starts its
    trials' Ray with this too."""
    if init_ray(cfg.run.num_cpus, **ray_kwargs):
        import ray

        return claim_local_cores(cfg, ray.cluster_resources().get("CPU", 0.0))
    return cfg


def run_train(
    cfg: RLConfig, *, resume: bool = False, callbacks: list[Any] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Runs (or resumes) ``cfg`` as a one-trial Tune experiment.

    Returns:
        ``(experiment_dir, last_result)``.

    Raises:
        ConfigError: the run folder exists without ``resume``, or is missing with it.
        TrainingFailed: the trial errored.
    """
    exp_dir = check_experiment_dir(cfg, resume)
    cfg = with_planned_iterations(cfg)  # run.num_epochs, in iterations
    claim_run_folder(exp_dir)  # a killed driver's Ray: ended before this one starts
    cfg = start_ray_for(cfg)
    exp_dir.mkdir(parents=True, exist_ok=True)
    record_driver(exp_dir, local_session_dir())
    try:
        return _fit(cfg, exp_dir, resume, callbacks)
    finally:
        release(exp_dir)


def _fit(
    cfg: RLConfig, exp_dir: Path, resume: bool, callbacks: list[Any] | None
) -> tuple[Path, dict[str, Any]]:
    from ray import tune

    wait_for_resources(cfg)
    # Tune keeps result.json and its experiment snapshot in a staging folder and copies them to
    # the run folder with each snapshot (by default every 10 s or more): a killed driver loses
    # what came after the last one. One trial's snapshot is small; take it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_PERIOD_S))
    # RLHFConfig.update_from_dict derives the whole RLlib config from the run config. Tune
    # itself restarts nothing: a user-code or data error would fail the same way again.
    tuner = make_tuner(
        cfg,
        exp_dir,
        resume=resume,
        param_space={"rayrm": cfg.to_dict()},
        callbacks=callbacks,
        max_failures=0,
    )
    restarts = 0
    while True:
        results = tuner.fit()
        if not results.errors:
            return exp_dir, dict(results[0].metrics or {})
        error = results.errors[0]
        retriable = is_retriable(error)
        summary = failure_summary(error, trial_dir_of(results[0]))
        if not retriable or restarts >= cfg.run.max_failures:
            raise TrainingFailed(summary, retriable=retriable)
        restarts += 1
        warn(
            f"rayrm: {summary}; restarting from the last checkpoint "
            f"({restarts}/{cfg.run.max_failures}, run.max_failures)"
        )
        tuner = tune.Tuner.restore(str(exp_dir), trainable=RLHFPPO, resume_errored=True)


def main_train(config_path: str, overrides: list[str], resume: bool, verbose: bool = False) -> int:
    """``rayrm train``: returns the process exit code.

    The terminal shows the preflight summary, the live lines and the result; everything else
    goes to the run folder's log (``verbose`` shows it instead).
    """
    cfg = load_config(config_path, overrides)
    check_storage(cfg.run.storage_path)
    log = check_experiment_dir(cfg, resume) / LOG_NAME
    try:
        with quiet(log, verbose=verbose), owned_ray():
            say(preflight(cfg))
            cfg = with_planned_iterations(cfg)  # run.num_epochs, in iterations
            exp_dir, last = run_train(cfg, resume=resume)
            return _report(cfg, config_path, exp_dir, last)
    except TrainingFailed as exc:
        hint = "continue" if exc.retriable else "fix the cause, then continue"
        warn(f"rayrm: {exc}; {hint} with: rayrm train {config_path} --resume")
        return 1


def _report(cfg: RLConfig, config_path: str, exp_dir: Path, last: dict[str, Any]) -> int:
    """The result lines (and the report) of a finished or interrupted run; the exit code."""
    r = last.get(M.RLHF_RESULTS, {})
    iterations = int(last.get("training_iteration", 0))
    if iterations < cfg.run.num_iterations:
        warn(
            f"interrupted after {iterations}/{cfg.run.num_iterations} iterations; continue with: "
            f"rayrm train {config_path} --resume"
        )
        return 130
    say(
        f"done: {iterations} iterations, final reward "
        f"{r.get(M.REWARD_MEAN, float('nan')):+.3f}; run folder {exp_dir}"
    )
    if cfg.eval.report:
        report, headline = write_report(cfg, exp_dir)
        say("\n".join(headline) + f"\nreport: {report}")
        plots = sorted(exp_dir.glob("*.png"))
        log_artifacts(cfg, exp_dir, str(last.get("trial_id", "")), [report, *plots])
    return 0
