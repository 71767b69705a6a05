"""Run metrics into TensorBoard, CSV, MLflow and Weights & Biases (``run.loggers``).

Every RL experiment (``rayrm train`` and ``rayrm tune``) gets Tune's logger callbacks for exactly
the loggers the config names, plus Tune's JSON logger, whose ``result.json`` rayrm reads
itself. MLflow and W&B go through Ray's own integrations (``MLflowLoggerCallback``,
``WandbLoggerCallback``), given the metrics of ``result["rlhf"]`` under their own names
(``reward/mean``, ``kl/per_sequence``, ...) at step ``training_iteration``, and the resolved
config as parameters. After a run, :func:`log_artifacts` adds its report and plots to the
same MLflow and W&B runs. The SFT and reward-model stages log from Ray Train's controller
(``rayrm.stages.stage_tracker``) with the helpers here. A logger whose package is missing is a
one-line :class:`~rayrm.config.ConfigError` naming the extra to install, before Ray starts.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from rayrm import metrics as M
from rayrm.config import ConfigError, RLConfig
from rayrm.config.tracking import TrackingSettings

__all__ = [
    "EXTRAS",
    "check_tracking",
    "log_artifacts",
    "logger_callbacks",
    "mlflow_uri",
    "published",
    "wandb_project",
]

EXTRAS = {"mlflow": ("mlflow", "rayrm[mlflow]"), "wandb": ("wandb", "rayrm[wandb]")}
"""Logger -> (module it needs, the pip extra that installs it)."""

RUN_TAG = "rayrm_run"
"""MLflow tag of every run an experiment logs: its run folder (how artifacts find the run)."""


def check_tracking(run: TrackingSettings) -> None:
    """Raises a one-line :class:`ConfigError` for a logger whose package is not installed
    (and for W&B online without an API key)."""
    for name in run.loggers:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            module, extra = EXTRAS[name]
            raise ConfigError(
                f"run.loggers names {name}, but the {module} package is not installed: "
                f"pip install '{extra}'",
                key="run.loggers",
            )
    _check_wandb_key(run)


def _check_wandb_key(run: TrackingSettings) -> None:
    """W&B online needs an API key (``WANDB_API_KEY`` or ``wandb login``): say so before Ray
    starts rather than in a trial's traceback."""
    if "wandb" not in run.loggers or run.wandb.mode != "online":
        return
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return
    import wandb

    try:
        wandb.ensure_configured()
        logged_in = bool(wandb.api.api_key)
    except AttributeError:  # a wandb without this API: Ray's callback checks it itself
        return
    if not logged_in:
        raise ConfigError(
            "run.wandb.mode is online but no W&B API key is set: export WANDB_API_KEY, run "
            "`wandb login`, or set run.wandb.mode: offline",
            key="run.wandb.mode",
        )


def published(result: dict[str, Any]) -> dict[str, Any]:
    """What MLflow and W&B get of one Tune result: ``result["rlhf"]`` (the metric names of
    the report and the live line) and ``training_iteration`` (their step)."""
    return {**result.get(M.RLHF_RESULTS, {}), "training_iteration": result["training_iteration"]}


def mlflow_uri(run: TrackingSettings) -> str | None:
    """``run.mlflow.tracking_uri``; a ``file:`` store is allowed (MLflow 3 asks for that)."""
    uri = run.mlflow.tracking_uri
    if uri is not None and uri.startswith("file:"):
        # MLflow 3 refuses file stores unless told they are wanted; the config says so.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def wandb_project(run: TrackingSettings, name: str) -> str:
    """``run.wandb.project``, else ``$WANDB_PROJECT``, else the run's name."""
    return run.wandb.project or os.environ.get("WANDB_PROJECT") or name


def logger_callbacks(cfg: RLConfig, exp_dir: Path) -> list[Any]:
    """Tune's logger callbacks for ``cfg.run.loggers`` (JSON always; Tune adds no others)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    check_tracking(cfg.run)
    # Tune would add CSV and TensorBoard loggers whatever the config says.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    loggers = cfg.run.loggers
    callbacks: list[Any] = [JsonLoggerCallback()]
    if "csv" in loggers:
        callbacks.append(CSVLoggerCallback())
    if "tensorboard" in loggers:
        callbacks.append(TBXLoggerCallback())
    if "mlflow" in loggers:
        callbacks.append(_mlflow_callback(cfg, exp_dir))
    if "wandb" in loggers:
        callbacks.append(_wandb_callback(cfg, exp_dir))
    return callbacks


def _mlflow_callback(cfg: RLConfig, exp_dir: Path) -> Any:
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from rayrm.rl.rllib_compat import mlflow_trial_runs

    class RLHFMLflowCallback(MLflowLoggerCallback):
        """Ray's MLflow callback, logging ``result["rlhf"]`` under its own names, and a trial
        restored after a crash or by ``--resume`` into the MLflow run it started (Ray's own
        opens a new one: a run's history would be split in two)."""

        def log_trial_start(self, trial: Any) -> None:
            runs = mlflow_trial_runs(self)
            if trial not in runs:
                earlier = _earlier_mlflow_run(
                    MlflowClient(self.tracking_uri), self.mlflow_util.experiment_id, exp_dir, trial
                )
                if earlier is not None:
                    MlflowClient(self.tracking_uri).update_run(earlier, status="RUNNING")
                    runs[trial] = earlier  # its parameters are logged already
                    return
            super().log_trial_start(trial)

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            super().log_trial_result(iteration, trial, published(result))

    return RLHFMLflowCallback(
        tracking_uri=mlflow_uri(cfg.run),
        experiment_name=cfg.run.mlflow.experiment or cfg.name,
        tags={RUN_TAG: str(exp_dir)},
    )


def _earlier_mlflow_run(client: Any, experiment_id: str, exp_dir: Path, trial: Any) -> str | None:
    """The id of the newest MLflow run this run folder's ``trial`` logged to, if any."""
    folder, name = str(exp_dir), str(trial)
    if "'" in folder + name:  # not expressible in MLflow's filter syntax: start a new run
        return None
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{RUN_TAG} = '{folder}' and tags.trial_name = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(runs[0].info.run_id) if runs else None


def _wandb_callback(cfg: RLConfig, exp_dir: Path) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    class RLHFWandbCallback(WandbLoggerCallback):
        """Ray's W&B callback (a logging actor per trial, on this node), logging
        ``result["rlhf"]`` under its own names."""

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            super().log_trial_result(iteration, trial, published(result))

    w = cfg.run.wandb
    if w.mode != "online":  # Ray's callback asks for an API key unless WANDB_MODE says so
        os.environ["WANDB_MODE"] = w.mode
    extra = {"entity": w.entity} if w.entity else {}
    # W&B's files go to the run folder itself: Tune's copy of a trial's staging folder is
    # taken before the logging actor has finished writing.
    return RLHFWandbCallback(
        project=wandb_project(cfg.run, cfg.name), mode=w.mode, dir=str(exp_dir), **extra
    )


def log_artifacts(cfg: RLConfig, exp_dir: Path, trial_id: str, files: list[Path]) -> None:
    """Adds ``files`` (the report and its plots) to the run's MLflow run (the newest one of
    the run folder ``exp_dir``) and W&B run (the trial's id, resumed; offline, written beside
    its first part in ``exp_dir/wandb``)."""
    files = [f for f in files if f.is_file()]
    if not files:
        return
    if "mlflow" in cfg.run.loggers:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow_uri(cfg.run))
        experiment = client.get_experiment_by_name(cfg.run.mlflow.experiment or cfg.name)
        if experiment is not None:
            runs = client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.{RUN_TAG} = '{exp_dir}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            for run in runs:
                for f in files:
                    client.log_artifact(run.info.run_id, str(f))
    if "wandb" in cfg.run.loggers and cfg.run.wandb.mode != "disabled":
        import wandb

        w = cfg.run.wandb
        run = wandb.init(
            id=trial_id,
            project=wandb_project(cfg.run, cfg.name),
            entity=w.entity,
            mode=w.mode,
            dir=str(exp_dir),
            resume="allow",
        )
        for f in files:
            run.save(str(f), base_path=str(f.parent), policy="now")
        run.finish()
