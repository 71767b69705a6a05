"""Where a run's metrics go besides its folder: ``run.loggers``, ``run.mlflow``, ``run.wandb``.

Typed sections only; the callbacks that write to MLflow and Weights & Biases are built by
``rayrm.experiment.tracking`` (which also says, in one line, which extra is missing).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrm.config.base import NonEmptyStr, Section

__all__ = ["Logger", "MLflowSettings", "TrackingSettings", "WandbSettings", "default_loggers"]

Logger = Literal["tensorboard", "csv", "mlflow", "wandb"]
"""What ``run.loggers`` may name (Tune's JSON results, ``result.json``, are always written)."""


def default_loggers() -> list[Logger]:
    """``run.loggers`` unless set: TensorBoard and CSV in the trial folder (Tune's own)."""
    return ["tensorboard", "csv"]


class MLflowSettings(Section):
    """``run.mlflow``: the MLflow tracking server or store (``run.loggers`` has ``mlflow``).

    Attributes:
        tracking_uri: ``http(s)://`` server, ``databricks``, ``sqlite:///...`` or a local
            ``file:`` store (MLflow 3 accepts file stores only with ``MLFLOW_ALLOW_FILE_STORE``,
            which rayrm sets for a ``file:`` URI it is given). None: MLflow's default
            (``$MLFLOW_TRACKING_URI``).
        experiment: MLflow experiment the runs go to (created if missing); None: the run's
            ``name``.
    """

    tracking_uri: NonEmptyStr | None = None
    experiment: NonEmptyStr | None = None


class WandbSettings(Section):
    """``run.wandb``: the Weights & Biases project (``run.loggers`` has ``wandb``).

    Attributes:
        project: W&B project; None: ``$WANDB_PROJECT``, else the run's ``name``.
        entity: W&B team or user; None: the account's default.
        mode: ``online``, ``offline`` (written under the trial folder's ``wandb/``, uploaded
            later with ``wandb sync``) or ``disabled``.
    """

    project: NonEmptyStr | None = None
    entity: NonEmptyStr | None = None
    mode: Literal["online", "offline", "disabled"] = "online"


class TrackingSettings(Section):
    """``run.loggers``, ``run.mlflow``, ``run.wandb``: where metrics go besides the run folder's
    own files (the ``run`` section of RL runs has them; SFT and reward-model configs have a
    ``run`` section of just these).

    Attributes:
        loggers: ``tensorboard``, ``csv`` (both written in the run folder), ``mlflow``,
            ``wandb`` (the extras ``rayrm[mlflow]``, ``rayrm[wandb]``). RL runs always write
            Tune's ``result.json`` too.
        mlflow: See :class:`MLflowSettings`.
        wandb: See :class:`WandbSettings`.
    """

    loggers: list[Logger] = Field(default_factory=default_loggers)
    mlflow: MLflowSettings = MLflowSettings()
    wandb: WandbSettings = WandbSettings()
