"""Configs of the two Ray Train stages before PPO: SFT and reward-model training.

One YAML file describes one stage run and fills :class:`SFTConfig` (``rayrm sft``) or
:class:`RMConfig` (``rayrm train-rm``); every key is documented once, in the ``Attributes``
section of its class. The conventions are those of the run config (``rayrm.config.base``):
unknown keys, missing required keys, wrong types and out-of-range values raise one
:class:`~rayrm.config.base.ConfigError` naming the dotted key; ``--set key=value`` overrides
any key; :func:`load_stage_config` makes every path absolute and checks it before Ray starts.

Cheap to import: no ``ray``, no ``torch``.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field

from rayrm.config.base import ConfigError, NonEmptyStr, Section, build
from rayrm.config.checks import check_dir
from rayrm.config.io import absolute, absolute_or_none, read_yaml_with_overrides
from rayrm.config.lora import LoraSettings
from rayrm.config.tracking import TrackingSettings

__all__ = [
    "PREFERENCE_SUFFIXES",
    "SFT_SUFFIXES",
    "EnsembleSettings",
    "PreferenceDataSettings",
    "RMConfig",
    "SFTConfig",
    "SFTDataSettings",
    "StageConfig",
    "StageModelSettings",
    "StageOutputSettings",
    "StageResourcesSettings",
    "StageTrainSettings",
    "load_stage_config",
    "stage_config_from_dict",
]

SFT_SUFFIXES = (".parquet", ".jsonl", ".json", ".txt")
"""File extensions ``data.path`` may have for SFT (``.txt``: one example per non-empty line)."""

PREFERENCE_SUFFIXES = (".parquet", ".jsonl", ".json")
"""File extensions ``data.path`` may have for reward-model training."""

_C = TypeVar("_C", bound="StageConfig")


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class StageModelSettings(Section):
    """The model a stage starts from.

    Attributes:
        path: Local Hugging Face model directory (must contain ``config.json``). Required.
            SFT: a causal LM. Reward-model training: a causal LM (its trunk is reused and a
            fresh scalar head added) or a sequence-classification model with one label.
        tokenizer_path: Tokenizer directory; None means ``path``.
        lora: Train LoRA adapters (and a reward model's scalar head) instead of every weight
            (:class:`~rayrm.config.lora.LoraSettings`); checkpoints and the output hold the
            merged model. None: full fine-tuning.
    """

    path: NonEmptyStr
    tokenizer_path: NonEmptyStr | None = None
    lora: LoraSettings | None = None

    @property
    def resolved_tokenizer_path(self) -> str:
        """Directory the tokenizer is loaded from."""
        return self.tokenizer_path if self.tokenizer_path is not None else self.path


class SFTDataSettings(Section):
    """The SFT corpus.

    Attributes:
        path: ``.parquet``, ``.jsonl``/``.json`` (one JSON object per line) or ``.txt`` (one
            example per non-empty line, read as column ``text``). Required.
        format: ``text`` trains on every token of ``text_column``; ``prompt_response`` trains
            on ``response_column`` only, with the ``prompt_column`` tokens masked out of the
            loss; ``messages`` renders each row's conversation (``messages_column``: a list of
            ``{role, content}``) with the tokenizer's chat template and trains on the assistant
            turns only (everything else masked); ``auto`` picks ``prompt_response`` when both
            of those columns exist, else ``messages`` when that column exists, else ``text``.
        text_column: Column holding whole training texts (``format: text``).
        prompt_column: Column holding prompts (``format: prompt_response``).
        response_column: Column holding responses (``format: prompt_response``).
        messages_column: Column holding conversations (``format: messages``).
        tools_column: Column holding each conversation's tools, when the file has it: JSON
            schemas (a list of objects, or its JSON text; ``envs.tools.tool_schema``) passed
            to the chat template as a multi-turn environment passes its tools, so tool-calling
            traces render as RL renders them (``format: messages``).
        max_length: Tokens per example (prompt + response + EOS, or the rendered
            conversation); longer examples are cut at the end, and those left without a
            token to learn are dropped.
    """

    path: NonEmptyStr
    format: Literal["auto", "text", "prompt_response", "messages"] = "auto"
    text_column: NonEmptyStr = "text"
    prompt_column: NonEmptyStr = "prompt"
    response_column: NonEmptyStr = "response"
    messages_column: NonEmptyStr = "messages"
    tools_column: NonEmptyStr = "tools"
    max_length: int = Field(512, ge=2)


class PreferenceDataSettings(Section):
    """The preference pairs.

    Attributes:
        path: ``.parquet`` or ``.jsonl``/``.json`` (one JSON object per line) with one row per
            pair. Required.
        prompt_column: Column holding the prompt (optional for conversational pairs).
        chosen_column: Column holding the preferred completion.
        rejected_column: Column holding the other completion.
        max_length: ``prompt + completion`` is cut to this many tokens, keeping the end (as
            the reward actors do); clamped to the model's position limit.

    Conversational pairs, the common shape of public preference datasets, are read as such:
    when ``chosen``/``rejected`` hold lists of ``{role, content}`` messages (whole
    conversations, or the assistant's reply with the conversation in ``prompt_column``), each
    side is rendered with the tokenizer's chat template, as the reward actors render
    conversations in PPO.
    """

    path: NonEmptyStr
    prompt_column: NonEmptyStr = "prompt"
    chosen_column: NonEmptyStr = "chosen"
    rejected_column: NonEmptyStr = "rejected"
    max_length: int = Field(512, ge=1)


class StageTrainSettings(Section):
    """Optimisation.

    Attributes:
        lr: AdamW learning rate (constant).
        epochs: Passes over the training split.
        batch_size: Examples (SFT) or pairs (reward model) per optimizer step *per worker*;
            the global batch is ``batch_size * resources.num_workers``.
        eval_fraction: Share of the rows held out for the per-epoch evaluation (0 disables
            it). The split depends only on ``seed``.
        seed: Seed of the split, the shuffling and the new head's initialisation.
        weight_decay: AdamW weight decay.
        max_grad_norm: Global gradient-norm clip; None disables it.
    """

    lr: float = Field(5.0e-5, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    eval_fraction: float = Field(0.1, ge=0, le=0.5)
    seed: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)


class StageResourcesSettings(Section):
    """Ray Train workers (data-parallel: DDP over gloo on CPU, NCCL on GPU).

    Attributes:
        num_workers: Training workers; each holds a full model copy and a shard of the data.
        use_gpu: Give each worker one GPU.
        cpus_per_worker: CPUs reserved for each worker.
        num_cpus: CPUs for a local Ray started in-process; None uses all of them. Ignored
            when connecting to a cluster (``RAY_ADDRESS``).
        max_failures: Times the worker group is restarted after a worker dies or raises; it
            continues from the last epoch checkpoint.
    """

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, ge=0)
    num_cpus: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=0)


class StageOutputSettings(Section):
    """Where results go.

    Attributes:
        dir: Hugging Face model directory written at the end (weights, config, tokenizer,
            plus ``rayrm_stage.yaml`` and ``training_summary.json``). Required.
        storage_path: Directory under which the Ray Train run folder (``name``) with the
            per-epoch checkpoints is created; on a cluster, shared storage.
        num_checkpoints_to_keep: Keep only the newest this many checkpoints; None keeps all.
        overwrite: Allow writing into an existing, non-empty ``dir``.
    """

    dir: NonEmptyStr
    storage_path: NonEmptyStr = "./rayrm_runs"
    num_checkpoints_to_keep: int | None = Field(None, ge=1)
    overwrite: bool = False


class EnsembleSettings(Section):
    """``rayrm train-rm --members k``: k reward models as one ensemble.

    Attributes:
        members: Reward models to train (at least two), one after the other, each with seed
            ``train.seed + i``; they share the held-out pairs (split with ``train.seed``).
        bootstrap: Each member trains on a bootstrap resample of the training pairs (as many,
            drawn with replacement, seeded per member); false: all members see every pair
            and differ by seed only.
    """

    members: int = Field(2, ge=2)
    bootstrap: bool = True


# ---------------------------------------------------------------------------------------------
# Stage configs
# ---------------------------------------------------------------------------------------------


class StageConfig(Section):
    """What the stage configs share: validation and (de)serialisation.

    Attributes:
        name: The Ray Train run's folder under ``output.storage_path``.
    """

    name: NonEmptyStr

    KIND: typing.ClassVar[str] = "stage"
    DATA_SUFFIXES: typing.ClassVar[tuple[str, ...]] = ()

    def check(self) -> None:
        """Checks the relations between fields (types and ranges are checked on building).

        Raises:
            ConfigError: On the first problem found, naming its dotted key.
        """
        self._check_relations()

    def _check_relations(self) -> None:
        if "/" in self.name or "\\" in self.name or self.name in ("", ".", ".."):
            raise ConfigError(
                f"name {self.name!r} must be a plain folder name: it becomes the run's folder "
                f"under output.storage_path",
                key="name",
            )
        path: str = self.data.path  # type: ignore[attr-defined]
        if not path.endswith(self.DATA_SUFFIXES):
            raise ConfigError(
                f"data.path {path!r} must end with one of {', '.join(self.DATA_SUFFIXES)}",
                key="data.path",
            )

    def save_yaml(self, path: str | Path) -> None:
        """Writes the config as YAML that :func:`load_stage_config` reads back."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


class SFTConfig(StageConfig):
    """``rayrm sft``: supervised fine-tuning of a causal LM on Ray Train.

    Attributes:
        name: Run folder name under ``output.storage_path``.
        model: See :class:`StageModelSettings` (a causal LM).
        data: See :class:`SFTDataSettings`.
        train: See :class:`StageTrainSettings`.
        resources: See :class:`StageResourcesSettings`.
        output: See :class:`StageOutputSettings`.
        run: Where each epoch's metrics also go
            (:class:`~rayrm.config.tracking.TrackingSettings`).
    """

    name: NonEmptyStr = "sft"
    model: StageModelSettings
    data: SFTDataSettings
    train: StageTrainSettings = StageTrainSettings()
    resources: StageResourcesSettings = StageResourcesSettings()
    output: StageOutputSettings
    run: TrackingSettings = TrackingSettings()

    KIND: typing.ClassVar[str] = "sft"
    DATA_SUFFIXES: typing.ClassVar[tuple[str, ...]] = SFT_SUFFIXES

    def _check_relations(self) -> None:
        super()._check_relations()
        d = self.data
        if d.format in ("auto", "prompt_response") and d.prompt_column == d.response_column:
            raise ConfigError(
                f"data.response_column must differ from data.prompt_column (both are "
                f"{d.prompt_column!r}): prompt tokens are masked out of the loss, response "
                f"tokens are trained on",
                key="data.response_column",
            )


class RMConfig(StageConfig):
    """``rayrm train-rm``: Bradley–Terry reward-model training on Ray Train.

    Attributes:
        name: Run folder name under ``output.storage_path``.
        model: See :class:`StageModelSettings` (a causal LM or a one-label seq-cls model).
        data: See :class:`PreferenceDataSettings`.
        train: See :class:`StageTrainSettings`.
        resources: See :class:`StageResourcesSettings`.
        output: See :class:`StageOutputSettings`. With ``ensemble``, ``output.dir`` holds the
            members (``member-0`` ...) and ``ensemble.json``, which ``reward.source: ensemble``
            reads as ``reward.path``.
        run: Where each epoch's metrics also go
            (:class:`~rayrm.config.tracking.TrackingSettings`).
        ensemble: See :class:`EnsembleSettings`; None trains one reward model.
    """

    name: NonEmptyStr = "reward-model"
    model: StageModelSettings
    data: PreferenceDataSettings
    train: StageTrainSettings = StageTrainSettings()
    resources: StageResourcesSettings = StageResourcesSettings()
    output: StageOutputSettings
    run: TrackingSettings = TrackingSettings()
    ensemble: EnsembleSettings | None = None

    KIND: typing.ClassVar[str] = "rm"
    DATA_SUFFIXES: typing.ClassVar[tuple[str, ...]] = PREFERENCE_SUFFIXES

    def _check_relations(self) -> None:
        super()._check_relations()
        d = self.data
        columns = {
            "data.prompt_column": d.prompt_column,
            "data.chosen_column": d.chosen_column,
            "data.rejected_column": d.rejected_column,
        }
        seen: dict[str, str] = {}
        for key, column in columns.items():
            if column in seen:
                raise ConfigError(
                    f"{key} ({column!r}) must differ from {seen[column]}: prompt, chosen and "
                    f"rejected texts come from three different columns",
                    key=key,
                )
            seen[column] = key


# ---------------------------------------------------------------------------------------------
# Building, overrides, files
# ---------------------------------------------------------------------------------------------


def stage_config_from_dict(cls: type[_C], d: Mapping[str, Any], *, check_paths: bool = False) -> _C:
    """Builds and validates a stage config from plain nested mappings.

    Args:
        cls: :class:`SFTConfig` or :class:`RMConfig`.
        d: Sections and values, as in the YAML file.
        check_paths: Also make paths absolute and check them (:func:`validate_stage_paths`).
            Leave False where the filesystem is not the user's (e.g. in Ray workers).

    Raises:
        ConfigError: On the first problem found.
    """
    cfg = build(cls, d)
    cfg.check()
    if check_paths:
        cfg = resolve_stage_paths(cfg)
        validate_stage_paths(cfg)
    return cfg


def load_stage_config(
    cls: type[_C], path: str | Path, overrides: Sequence[str] = (), *, check_paths: bool = True
) -> _C:
    """Reads a stage's YAML config, applies ``--set`` overrides, validates, resolves paths.

    Args:
        cls: :class:`SFTConfig` or :class:`RMConfig`.
        path: The YAML file.
        overrides: ``"dotted.key=value"`` strings applied in order (values parsed as YAML).
        check_paths: Make every path absolute and check it (:func:`validate_stage_paths`).

    Raises:
        ConfigError: Naming the file or the dotted key of the first problem found.
    """
    raw = read_yaml_with_overrides(path, overrides, cls)
    return stage_config_from_dict(cls, raw, check_paths=check_paths)


def resolve_stage_paths(cfg: _C) -> _C:
    """A copy of ``cfg`` with every path absolute (``~`` expanded, relative to the cwd).

    Ray Train workers run in their own working directory, so relative paths must not reach
    them.
    """
    c: Any = cfg
    return cfg.model_copy(
        update={
            "model": c.model.model_copy(
                update={
                    "path": absolute(c.model.path),
                    "tokenizer_path": absolute_or_none(c.model.tokenizer_path),
                }
            ),
            "data": c.data.model_copy(update={"path": absolute(c.data.path)}),
            "output": c.output.model_copy(
                update={
                    "dir": absolute(c.output.dir),
                    "storage_path": absolute(c.output.storage_path),
                }
            ),
        }
    )


def _read_model_config(path: str) -> dict[str, Any]:
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ConfigError(
            f"model.path {path!r} has no config.json (expected a local Hugging Face model "
            f"directory, written by save_pretrained)",
            key="model.path",
        )
    try:
        with open(config_file, encoding="utf-8") as f:
            return dict(json.load(f))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.path {config_file!r} is not readable JSON ({exc})", key="model.path"
        ) from exc


def _check_model(cfg: StageConfig) -> None:
    model: StageModelSettings = cfg.model  # type: ignore[attr-defined]
    check_dir("model.path", model.path, "a local Hugging Face model directory")
    hf = _read_model_config(model.path)
    architectures = [str(a) for a in hf.get("architectures") or []]
    seq_cls = any(a.endswith("ForSequenceClassification") for a in architectures)
    if isinstance(cfg, SFTConfig) and seq_cls:
        raise ConfigError(
            f"model.path {model.path!r} holds a sequence-classification model "
            f"({', '.join(architectures)}); SFT needs a causal LM",
            key="model.path",
        )
    if isinstance(cfg, RMConfig) and seq_cls:
        num_labels = len(hf.get("id2label") or {}) or int(hf.get("num_labels", 2))
        if num_labels != 1:
            raise ConfigError(
                f"model.path {model.path!r} is a sequence-classification model with "
                f"{num_labels} labels; a reward model has a single scalar head (num_labels=1). "
                f"Start from its causal-LM or base model instead",
                key="model.path",
            )
    if model.tokenizer_path is not None:
        check_dir("model.tokenizer_path", model.tokenizer_path, "the tokenizer directory")


def validate_stage_paths(cfg: StageConfig) -> None:
    """Checks the model directory, the data file and the output locations.

    Args:
        cfg: A config that passed :meth:`StageConfig.validate`, with absolute paths.

    Raises:
        ConfigError: Naming the key and the path at fault.
    """
    _check_model(cfg)
    data_path: NonEmptyStr = cfg.data.path  # type: ignore[attr-defined]
    if not os.path.exists(data_path):
        raise ConfigError(f"data.path {data_path!r} does not exist", key="data.path")
    if not os.path.isfile(data_path):
        raise ConfigError(f"data.path {data_path!r} is not a file", key="data.path")
    out: StageOutputSettings = cfg.output  # type: ignore[attr-defined]
    if os.path.exists(out.dir):
        if not os.path.isdir(out.dir):
            raise ConfigError(
                f"output.dir {out.dir!r} exists and is not a directory", key="output.dir"
            )
        if os.listdir(out.dir) and not out.overwrite:
            raise ConfigError(
                f"output.dir {out.dir!r} exists and is not empty: choose another directory "
                f"or set output.overwrite=true",
                key="output.dir",
            )
    if os.path.exists(out.storage_path) and not os.path.isdir(out.storage_path):
        raise ConfigError(
            f"output.storage_path {out.storage_path!r} exists and is not a directory",
            key="output.storage_path",
        )
