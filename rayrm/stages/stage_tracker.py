"""The SFT and reward-model stages' metrics into TensorBoard, CSV, MLflow and W&B (``run.loggers``).

Ray Train (V2) takes no Tune logger callbacks; its ``UserCallback`` runs in the training
run's controller and sees every ``ray.train.report``. :class:`StageTracker` logs rank 0's
epoch metrics there, at step ``epoch``, under their own names (``train/loss``, ...): TensorBoard
events and ``progress.csv`` in the stage's run folder, one MLflow run (the config as
parameters) and one W&B run (the config as its config). The runs end with the last epoch,
or as failed when a worker raises.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from rayrm.tracking import mlflow_uri, wandb_project

__all__ = ["StageTracker"]

EPOCH = "epoch"
"""The step of every logged metric (what the stage trainer reports as ``epoch``)."""


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class StageTracker(UserCallback):
    """Logs each epoch of a stage run to ``cfg.run.loggers`` (see the module docstring)."""

    def __init__(self, cfg: Any, run_dir: str) -> None:
        self.config = cfg.to_dict()
        self.run = cfg.run
        self.name = cfg.name
        self.epochs = cfg.train.epochs
        self.run_dir = Path(run_dir)
        self._open: dict[str, Any] | None = None

    def _start(self) -> dict[str, Any]:
        """Opens every logger at the first report (in the controller process)."""
        loggers, opened = self.run.loggers, {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in loggers:
            from tensorboardX import SummaryWriter

            opened["tensorboard"] = SummaryWriter(str(self.run_dir))
        if "mlflow" in loggers:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(mlflow_uri(self.run))
            experiment = self.run.mlflow.experiment or self.name
            found = client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else client.create_experiment(experiment)
            run = client.create_run(
                exp_id, run_name=self.name, tags={"rayrm_run": str(self.run_dir)}
            )
            params = {k: str(v)[:6000] for k, v in _flat(self.config).items()}
            for key, value in params.items():
                client.log_param(run.info.run_id, key, value)
            opened["mlflow"] = (client, run.info.run_id)
        if "wandb" in loggers:
            import wandb

            w = self.run.wandb
            opened["wandb"] = wandb.init(
                project=wandb_project(self.run, self.name),
                entity=w.entity,
                mode=w.mode,
                dir=str(self.run_dir),
                name=self.name,
                config=self.config,
            )
        return opened

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        if not metrics:
            return
        row = {k: v for k, v in metrics[0].items() if isinstance(v, int | float)}
        step = int(row.get(EPOCH, 0))
        if self._open is None:
            self._open = self._start()
        if "csv" in self.run.loggers:
            path = self.run_dir / "progress.csv"
            new = not path.exists()
            with path.open("a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(
                    f, fieldnames=self._csv_fields(path, row), extrasaction="ignore"
                )
                if new:
                    writer.writeheader()
                writer.writerow(row)
        if "tensorboard" in self._open:
            for key, value in row.items():
                self._open["tensorboard"].add_scalar(key, value, step)
            self._open["tensorboard"].flush()
        if "mlflow" in self._open:
            client, run_id = self._open["mlflow"]
            for key, value in row.items():
                client.log_metric(run_id, key, float(value), step=step)
        if "wandb" in self._open:
            self._open["wandb"].log(row, step=step)
        if step >= self.epochs:
            self._finish(failed=False)

    @staticmethod
    def _csv_fields(path: Path, row: dict[str, Any]) -> list[str]:
        """The header already written (a resumed stage appends to it), else this row's keys."""
        if path.exists() and path.stat().st_size:
            with path.open(encoding="utf-8") as f:
                return next(csv.reader(f))
        return list(row)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self._finish(failed=True)

    def _finish(self, *, failed: bool) -> None:
        opened, self._open = self._open or {}, None
        if "tensorboard" in opened:
            opened["tensorboard"].close()
        if "mlflow" in opened:
            client, run_id = opened["mlflow"]
            client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
        if "wandb" in opened:
            opened["wandb"].finish(exit_code=1 if failed else 0)
