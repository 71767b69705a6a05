"""Training as a Ray Tune experiment (one trial for ``rayrm train``), resume, live reporting.

What belongs here: starting/connecting Ray, building the Tuner around ``RLHFPPO``, the
compact per-iteration terminal line, and finding checkpoints of finished runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rayrm import metrics as M
from rayrm.analysis.report import write_report
from rayrm.config import ConfigError, RunConfig, load_config
from rayrm.ray_init import init_ray
from rayrm.rl.algorithm import RLHFPPO


class TrainingFailed(RuntimeError):
    """The Tune trial ended in an error (its traceback is in the trial folder)."""


def format_line(result: dict[str, Any], total: int | None = None) -> str:
    """One compact terminal line per iteration."""
    r = result.get(M.RLHF_RESULTS, {})

    def g(key: str) -> float:
        return float(r.get(key, float("nan")))

    it = result.get("training_iteration", 0)
    head = f"iter {it:>3}" + (f"/{total}" if total else "")
    return (
        f"{head} | reward {g(M.REWARD_MEAN):+.3f}±{g(M.REWARD_STD):.3f}"
        f" | kl/tok {g(M.KL_TOKEN):.4f} seq {g(M.KL_SEQUENCE):.3f} β {g(M.KL_COEF):.4f}"
        f" | ent {g(M.ROLLOUT_ENTROPY):.2f} len {g(M.ROLLOUT_LENGTH):.1f}"
        f" | pg {g(M.LOSS_POLICY):+.3f} vf {g(M.LOSS_VALUE):.3f} clip {g(M.LOSS_CLIP_FRACTION):.2f}"
        f" | {g(M.THROUGHPUT_TOKENS_PER_S):.0f} tok/s"
        f" | sample {g(M.TIMER_SAMPLE):.2f}s score {g(M.TIMER_SCORE):.2f}s"
        f" update {g(M.TIMER_UPDATE):.2f}s sync {g(M.TIMER_SYNC):.2f}s"
    )


def live_line_callback(total: int) -> Any:
    from ray.tune import Callback

    class LiveLine(Callback):
        """Prints ``format_line`` for every result of every trial."""

        def on_trial_result(self, iteration: int, trials: Any, trial: Any, result: dict, **kw: Any):
            prefix = f"[{trial.trial_id}] " if len(trials) > 1 else ""
            print(prefix + format_line(result, total), flush=True)

    return LiveLine()


def experiment_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run.storage_path) / cfg.name


def check_experiment_dir(cfg: RunConfig, resume: bool) -> Path:
    """The run folder, refusing to overwrite a run or to resume a missing one (no data lost)."""
    exp_dir = experiment_dir(cfg)
    if resume and not exp_dir.exists():
        raise ConfigError(f"nothing to resume: no run folder at {exp_dir}", key="run.storage_path")
    if not resume and exp_dir.exists() and any(exp_dir.iterdir()):
        raise ConfigError(
            f"run folder {exp_dir} already holds a run: pass --resume to continue it, "
            "or choose another name",
            key="name",
        )
    return exp_dir


def make_tuner(
    cfg: RunConfig,
    exp_dir: Path,
    *,
    resume: bool,
    param_space: dict[str, Any],
    tune_config: Any = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """A Tuner over ``RLHFPPO`` (restored from ``exp_dir`` when resuming)."""
    from ray import tune

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
            stop={"training_iteration": cfg.run.num_iterations},
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=cfg.run.checkpoint_every, checkpoint_at_end=True
            ),
            callbacks=[live_line_callback(cfg.run.num_iterations), *(callbacks or [])],
            failure_config=tune.FailureConfig(max_failures=cfg.run.max_failures),
            verbose=0,
        ),
    )


def run_train(
    cfg: RunConfig, *, resume: bool = False, callbacks: list[Any] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Runs (or resumes) ``cfg`` as a one-trial Tune experiment.

    Returns:
        ``(experiment_dir, last_result)``.

    Raises:
        ConfigError: the run folder exists without ``resume``, or is missing with it.
        TrainingFailed: the trial errored.
    """
    exp_dir = check_experiment_dir(cfg, resume)
    init_ray(cfg.run.num_cpus)
    # RLHFConfig.update_from_dict derives the whole RLlib config from the run config.
    tuner = make_tuner(
        cfg, exp_dir, resume=resume, param_space={"rayrm": cfg.to_dict()}, callbacks=callbacks
    )
    results = tuner.fit()
    if results.errors:
        raise TrainingFailed(f"training failed: {results.errors[0]!s:.2000}")
    return exp_dir, dict(results[0].metrics or {})


def main_train(config_path: str, overrides: list[str], resume: bool) -> int:
    """``rayrm train``: returns the process exit code."""

    cfg = load_config(config_path, overrides)
    exp_dir, last = run_train(cfg, resume=resume)
    r = last.get(M.RLHF_RESULTS, {})
    iterations = int(last.get("training_iteration", 0))
    if iterations < cfg.run.num_iterations:
        print(
            f"interrupted after {iterations}/{cfg.run.num_iterations} iterations; continue with: "
            f"rayrm train {config_path} --resume",
            file=sys.stderr,
        )
        return 130
    print(
        f"done: {iterations} iterations, final reward "
        f"{r.get(M.REWARD_MEAN, float('nan')):+.3f}; run folder {exp_dir}",
        file=sys.stdout,
    )
    if cfg.eval.report:
        report, headline = write_report(cfg, exp_dir)
        print("\n".join(headline) + f"\nreport: {report}", flush=True)
    return 0
