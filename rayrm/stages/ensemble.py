"""``rayrm train-rm --members k``: a reward-model ensemble, trained and written as one source.

What belongs here: training k members of one reward model (seed ``train.seed + i``, each on a
bootstrap resample of the training pairs unless ``ensemble.bootstrap`` is false; all on the
same held-out pairs), scoring those held-out pairs with every member, and ``ensemble.json``:
the members' directories and the held-out accuracy of each member and of each way the
ensemble combines them (``mean``, ``min``, ``mean_minus_std``, as ``reward.combine``).
``reward.source: ensemble`` with ``reward.path`` set to the output directory reads it.

Members train one after the other, each a Ray Train run of its own (``<name>-member-<i>``)
with the stage's workers: k runs cost k times one, as independent models must.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayrm.config import ConfigError
from rayrm.config.stage import RMConfig, stage_config_from_dict
from rayrm.models.hf_files import ENSEMBLE_FILE
from rayrm.stages.batches import split_indices
from rayrm.stages.reward_model import collate, load_pairs, prepare_tokenizer, run_reward_training
from rayrm.stages.reward_model import train_loop as rm_train_loop
from rayrm.stages.trainer import RM_EVAL_ACCURACY, fit_stage, run_dir

__all__ = ["combined_accuracy", "member_config", "run_reward_models", "train_ensemble"]


def member_config(cfg: RMConfig, index: int) -> RMConfig:
    """Member ``index``'s stage config: its own run name, output folder and seed."""
    d = cfg.to_dict()
    d["name"] = f"{cfg.name}-member-{index}"
    d["output"]["dir"] = str(Path(cfg.output.dir) / f"member-{index}")
    d["train"]["seed"] = cfg.train.seed + index
    d["ensemble"] = None
    return stage_config_from_dict(RMConfig, d)


def bootstrap(train: Sequence[Any], seed: int) -> list[Any]:
    """As many pairs as ``train``, drawn with replacement (seeded)."""
    picks = np.random.default_rng([seed, 1]).integers(0, len(train), size=len(train))
    return [train[i] for i in picks]


def combined_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, float]:
    """Held-out pairwise accuracy of each member and of each combination.

    Args:
        chosen, rejected: (k, N) member rewards of the preferred and the other completions.

    Returns:
        ``{"member-<i>": ..., "mean": ..., "min": ..., "mean_minus_std": ...}``; ties count
        as wrong, as in training's ``rm/eval_accuracy``.
    """
    out = {
        f"member-{i}": float(np.mean(c > r))
        for i, (c, r) in enumerate(zip(chosen, rejected, strict=True))
    }
    combine = {
        "mean": lambda x: x.mean(0),
        "min": lambda x: x.min(0),
        "mean_minus_std": lambda x: x.mean(0) - x.std(0),
    }
    for name, fn in combine.items():
        out[name] = float(np.mean(fn(chosen) > fn(rejected)))
    return out


def score_pairs(model_dir: str, pairs: Sequence[Any], pad_id: int, batch_size: int = 32) -> Any:
    """(chosen, rejected) rewards of ``pairs`` by the reward model in ``model_dir`` (CPU)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = collate(pairs[start : start + batch_size], pad_id)
            rewards = model(**batch).logits[:, 0].float().numpy()
            half = len(rewards) // 2
            chosen.append(rewards[:half])
            rejected.append(rewards[half:])
    return np.concatenate(chosen), np.concatenate(rejected)


def run_reward_models(
    cfg: RMConfig, *, resume: bool = False, progress: bool = False
) -> dict[str, Any]:
    """``rayrm train-rm``: one reward model (``rayrm.stages.reward_model``), or with an
    ``ensemble`` section its members (:func:`train_ensemble`)."""
    if cfg.ensemble is None:
        return run_reward_training(cfg, resume=resume, progress=progress)
    from transformers import AutoTokenizer

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(cfg.model.resolved_tokenizer_path))
    pairs, info = load_pairs(cfg, tokenizer)
    return train_ensemble(
        cfg, pairs, info, pad_id=tokenizer.pad_token_id, resume=resume, progress=progress
    )


def train_ensemble(
    cfg: RMConfig,
    pairs: Sequence[Any],
    info: dict[str, Any],
    *,
    pad_id: int,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Trains ``cfg.ensemble.members`` reward models and writes ``ensemble.json``.

    Returns:
        ``{"output_dir", "run_dir", "metrics", "members", "accuracy", "data"}``: ``metrics``
        holds ``rm/eval_accuracy`` of the ``mean`` combination; ``members`` each member's
        :func:`~rayrm.stages.trainer.fit_stage` summary.

    Raises:
        ConfigError: Too few pairs to hold any out (the members are compared on them), or a
            run-folder conflict.
        StageFailed: A member's training failed.
    """
    if cfg.ensemble is None:
        raise ConfigError("train_ensemble needs an ensemble section", key="ensemble")
    train_idx, eval_idx = split_indices(len(pairs), cfg.train.eval_fraction, cfg.train.seed)
    if len(eval_idx) == 0 or len(train_idx) < cfg.resources.num_workers:
        raise ConfigError(
            f"ensemble.members needs held-out pairs to compare its members (train."
            f"eval_fraction > 0) and a training pair per worker: {len(train_idx)} training, "
            f"{len(eval_idx)} held-out pairs",
            key="train.eval_fraction",
        )
    train = [pairs[i] for i in train_idx]
    held_out = [pairs[i] for i in eval_idx]
    members, chosen, rejected = [], [], []
    for index in range(cfg.ensemble.members):
        member = member_config(cfg, index)
        data = bootstrap(train, member.train.seed) if cfg.ensemble.bootstrap else list(train)
        summary = fit_stage(
            member, rm_train_loop, {"train": data, "eval": held_out}, pad_id=pad_id,
            resume=resume, progress=progress,
        )  # fmt: skip
        members.append(summary)
        c, r = score_pairs(summary["output_dir"], held_out, pad_id)
        chosen.append(c)
        rejected.append(r)
    accuracy = combined_accuracy(np.stack(chosen), np.stack(rejected))
    out = Path(cfg.output.dir)
    record = {
        "members": [f"member-{i}" for i in range(cfg.ensemble.members)],
        "bootstrap": cfg.ensemble.bootstrap,
        "held_out_pairs": len(held_out),
        "accuracy": accuracy,
    }
    (out / ENSEMBLE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return {
        "output_dir": str(out),
        "run_dir": str(run_dir(member_config(cfg, 0)).parent),
        "metrics": {RM_EVAL_ACCURACY: accuracy["mean"]},
        "members": members,
        "accuracy": accuracy,
        "data": {**info, "train": len(train), "eval": len(held_out)},
    }
