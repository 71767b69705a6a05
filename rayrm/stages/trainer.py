"""Ray Train plumbing shared by the SFT and reward-model stages.

What belongs here: everything the two stages do alike — the per-worker epoch loop (sharding,
optimizer steps, held-out evaluation, all-reduced metrics, one checkpoint per epoch, resume),
the driver side (``TorchTrainer.fit`` and writing the final Hugging Face directory), and the
metric keys. A stage (``rayrm.stages.sft``, ``rayrm.stages.reward_model``) only supplies a
:class:`StageSteps`: how to build its model, collate examples and compute a batch's loss.

Data path: the driver reads and tokenizes the dataset (so bad columns fail before Ray starts)
and puts the token ids in the object store; every worker fetches them and trains on its own
shard. Only the model directory must be visible to the workers (shared storage on a cluster),
as for ``rayrm train``.

Sharding: each epoch, the training rows are shuffled with ``(seed, epoch)`` — the same order on
every worker — cut to a multiple of the worker count, and dealt out ``rank::world_size``. Every
worker therefore takes the same number of optimizer steps, which DDP requires.

Checkpoints (one per epoch, written by rank 0 and reported with ``ray.train.report``)::

    model/                 Hugging Face model directory (save_pretrained) + tokenizer
    optimizer.pt           AdamW state, for resuming
    trainer_state.json     {"epoch": last finished epoch, "history": [metrics per epoch]}
    rayrm_stage.yaml       the resolved stage config
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrm.config import ConfigError
from rayrm.config.stage import StageConfig, stage_config_from_dict
from rayrm.console import holds_run, live
from rayrm.ray_init import init_ray
from rayrm.rl.rllib_compat import started_ray_here, torch_trainer_class
from rayrm.stages.batches import epoch_shard, iter_batches, split_indices
from rayrm.threads import use_reserved_cpus
from rayrm.tracking import check_tracking

# Metric keys (reported per epoch; all-reduced over workers, so every rank reports the same).
EPOCH = "epoch"
TIMER_EPOCH = "timers/epoch_s"
SFT_TRAIN_LOSS = "sft/train_loss"
SFT_EVAL_LOSS = "sft/eval_loss"
SFT_EVAL_PERPLEXITY = "sft/eval_perplexity"
SFT_TRAIN_TOKENS = "sft/train_tokens"
RM_TRAIN_LOSS = "rm/train_loss"
RM_TRAIN_ACCURACY = "rm/train_accuracy"
RM_EVAL_LOSS = "rm/eval_loss"
RM_EVAL_ACCURACY = "rm/eval_accuracy"
RM_EVAL_MARGIN = "rm/eval_margin"
RM_EVAL_CHOSEN_REWARD = "rm/eval_chosen_reward"
RM_EVAL_REJECTED_REWARD = "rm/eval_rejected_reward"

# Checkpoint and output layout.
MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.pt"
TRAINED_FILE = "trained_weights.pt"
"""Under ``model.lora``: the adapters and heads a checkpoint resumes from (its ``model/`` is
the merged model, the stage's output)."""
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "rayrm_stage.yaml"
SUMMARY_FILE = "training_summary.json"


class StageFailed(RuntimeError):
    """The Ray Train run ended in an error (the workers' tracebacks are in the Ray logs)."""


@dataclass(frozen=True)
class StageSteps:
    """What a stage plugs into :func:`worker_loop`; module-level functions, so it pickles.

    Attributes:
        config_cls: The stage's config class.
        build_model: ``(model_dir, cfg, tokenizer) -> nn.Module`` (a fresh start or a
            checkpoint's ``model/``), in train mode, on CPU.
        collate: ``(examples, pad_id) -> dict[str, Tensor]``, one batch.
        compute: ``(model, batch) -> (loss, sums)``; ``loss`` is what this worker
            backpropagates, ``sums`` are additive statistics (floats) for the metrics.
        metrics: ``(train_sums, eval_sums) -> dict``, the epoch's metrics from the sums
            added over batches and workers (``eval_sums`` empty without evaluation).
        describe: ``(metrics) -> str``, the end-of-epoch line.
        sum_keys: The keys ``compute`` returns in ``sums``.
        heads: Submodules trained beside the adapters under ``model.lora`` (a reward
            model's fresh ``score`` head).
    """

    config_cls: type[StageConfig]
    build_model: Callable[[str, Any, Any], Any]
    collate: Callable[[Sequence[Any], int], dict[str, Any]]
    compute: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, float]]]
    metrics: Callable[[dict[str, float], dict[str, float]], dict[str, float]]
    describe: Callable[[dict[str, float]], str]
    sum_keys: tuple[str, ...]
    heads: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


def _all_reduce_sums(sums: dict[str, float], keys: Sequence[str]) -> dict[str, float]:
    """Adds ``sums`` over all workers (every worker must pass the same ``keys``)."""
    import torch
    import torch.distributed as dist

    values = torch.tensor([float(sums.get(k, 0.0)) for k in keys], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        values = values.to(backend_device)
        dist.all_reduce(values)
        values = values.cpu()
    return dict(zip(keys, values.tolist(), strict=True))


def _unwrap(model: Any) -> Any:
    """The model inside a DDP wrapper (for evaluation and saving)."""
    return getattr(model, "module", model)


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Iterable[Any]:
    """A progress bar that Ray renders on the driver (``tqdm_ray``), or the bare items."""
    if not enabled:
        return items
    from ray.experimental.tqdm_ray import tqdm

    return tqdm(items, desc=desc, unit="batch")


def _save_and_report(
    metrics: dict[str, float],
    *,
    rank: int,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    state: dict[str, Any],
    cfg: StageConfig,
) -> None:
    """Reports the epoch's metrics from every worker; rank 0 attaches the checkpoint."""
    import ray.train
    import torch

    from rayrm.models.lora import merged_copy, trained_state

    with tempfile.TemporaryDirectory(prefix="rayrm-ckpt-") as tmp:
        checkpoint = None
        if rank == 0:
            lm = _unwrap(model)
            if cfg.model.lora is not None:
                torch.save(trained_state(lm), os.path.join(tmp, TRAINED_FILE))
                lm = merged_copy(lm)
            lm.save_pretrained(os.path.join(tmp, MODEL_DIR))
            tokenizer.save_pretrained(os.path.join(tmp, MODEL_DIR))
            torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
            Path(tmp, STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
            cfg.save_yaml(os.path.join(tmp, CONFIG_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _run_batches(
    steps: StageSteps,
    model: Any,
    batches: Iterable[list[Any]],
    *,
    pad_id: int,
    device: Any,
    optimizer: Any = None,
    max_grad_norm: float | None = None,
) -> dict[str, float]:
    """One pass over ``batches``: optimizer steps when ``optimizer`` is given, else eval."""
    import torch

    sums: dict[str, float] = defaultdict(float)
    for examples in batches:
        batch = {k: v.to(device) for k, v in steps.collate(examples, pad_id).items()}
        if optimizer is None:
            with torch.no_grad():
                _, batch_sums = steps.compute(model, batch)
        else:
            loss, batch_sums = steps.compute(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
        for k, v in batch_sums.items():
            sums[k] += v
    return sums


def _start(cfg: Any, steps: StageSteps, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Model (DDP-wrapped, on the worker's device), optimizer and trainer state.

    Starts from the run's latest checkpoint when there is one (after a worker failure, or a
    rerun with ``--resume``), else from ``model.path``.
    """
    import ray.train
    import ray.train.torch
    import torch

    from rayrm.models.lora import add_lora

    state: dict[str, Any] = {"epoch": -1, "history": []}
    optimizer_state = None
    checkpoint = ray.train.get_checkpoint()
    lora = cfg.model.lora.to_dict() if cfg.model.lora is not None else None
    if checkpoint is None:
        model = steps.build_model(cfg.model.path, cfg, tokenizer)
        if lora:
            add_lora(model, lora, also_train=steps.heads)
    else:
        with checkpoint.as_directory() as d:
            state = json.loads(Path(d, STATE_FILE).read_text(encoding="utf-8"))
            if lora:  # the base again, then the trained adapters and heads
                model = add_lora(
                    steps.build_model(cfg.model.path, cfg, tokenizer), lora, also_train=steps.heads
                )
                model.load_state_dict(torch.load(os.path.join(d, TRAINED_FILE)), strict=False)
            else:
                model = steps.build_model(os.path.join(d, MODEL_DIR), cfg, tokenizer)
            optimizer_state = torch.load(os.path.join(d, OPTIMIZER_FILE), map_location="cpu")
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    return model, optimizer, state


def worker_loop(config: dict[str, Any], steps: StageSteps) -> None:
    """The training function every Ray Train worker runs (``train_loop_per_worker``).

    Per epoch: this worker's shard of the training rows in optimizer steps, its shard of the
    held-out rows in eval mode, metrics summed over all workers, one checkpoint.

    Args:
        config: ``{"cfg": stage config dict, "data": ObjectRef of {"train": [...],
            "eval": [...]}, "pad_id": int, "progress": bool}``.
        steps: The stage's model, collate and loss functions.
    """
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-worker "Loading weights" bars only add noise
    cfg: Any = stage_config_from_dict(steps.config_cls, config["cfg"])
    data = ray.get(config["data"])
    train_rows, eval_rows = data["train"], data["eval"]
    pad_id = int(config["pad_id"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if use_reserved_cpus() is None:  # Ray Train workers are actors: this is a fallback
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.resolved_tokenizer_path)
    model, optimizer, state = _start(cfg, steps, tokenizer)
    device = ray.train.torch.get_device()
    eval_shard = list(range(rank, len(eval_rows), world))
    for epoch in range(state["epoch"] + 1, cfg.train.epochs):
        start = time.perf_counter()
        model.train()
        shard = epoch_shard(
            len(train_rows), epoch=epoch, seed=cfg.train.seed, rank=rank, world_size=world
        )
        chunks = list(iter_batches(shard.tolist(), cfg.train.batch_size))
        desc = f"{cfg.KIND} epoch {epoch + 1}/{cfg.train.epochs}"
        bar = _progress(chunks, desc, config["progress"] and rank == 0)
        train_sums = _run_batches(
            steps,
            model,
            ([train_rows[i] for i in c] for c in bar),
            pad_id=pad_id,
            device=device,
            optimizer=optimizer,
            max_grad_norm=cfg.train.max_grad_norm,
        )
        if hasattr(bar, "close"):
            bar.close()  # sends the final count; the bar stays on the driver's screen
        model.eval()
        eval_batches = (
            [eval_rows[i] for i in c] for c in iter_batches(eval_shard, cfg.train.batch_size)
        )
        eval_sums = _run_batches(steps, _unwrap(model), eval_batches, pad_id=pad_id, device=device)
        # Every worker joins both all-reduces with the same keys, even with an empty shard.
        train_sums = _all_reduce_sums(train_sums, steps.sum_keys)
        eval_sums = _all_reduce_sums(eval_sums, steps.sum_keys) if eval_rows else {}
        metrics = {EPOCH: epoch + 1, **steps.metrics(train_sums, eval_sums)}
        metrics[TIMER_EPOCH] = time.perf_counter() - start
        state = {"epoch": epoch, "history": [*state["history"], metrics]}
        if rank == 0:
            live(f"{desc} | {steps.describe(metrics)}")
        _save_and_report(
            metrics,
            rank=rank,
            model=model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            state=state,
            cfg=cfg,
        )


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


def run_dir(cfg: Any) -> Path:
    """The Ray Train run folder: ``output.storage_path / name``."""
    return Path(cfg.output.storage_path) / cfg.name


def check_run_dir(cfg: Any, resume: bool) -> None:
    """Refuses to silently continue (or to resume) the wrong run.

    Ray Train continues from the latest checkpoint of a run folder that already holds one, so
    reusing a ``name`` must be asked for explicitly.

    Raises:
        ConfigError: The folder holds a run and ``resume`` is False, or the reverse.
    """
    folder = run_dir(cfg)
    exists = holds_run(folder)
    if exists and not resume:
        raise ConfigError(
            f"run folder {folder} already holds a run: pass --resume to continue it, or "
            f"choose another name",
            key="name",
        )
    if resume and not exists:
        raise ConfigError(f"nothing to resume: no run folder at {folder}", key="name")


def fit_stage(
    cfg: Any,
    train_loop: Callable[[dict[str, Any]], None],
    data: dict[str, list[Any]],
    *,
    pad_id: int,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Runs ``train_loop`` on Ray Train and writes the final model to ``output.dir``.

    Args:
        cfg: The resolved stage config (absolute paths, checked).
        train_loop: Module-level ``fn(config)`` that calls :func:`worker_loop`.
        data: ``{"train": [...], "eval": [...]}`` tokenized rows, put in the object store.
        pad_id: Token id batches are padded with.
        resume: Continue the run in ``output.storage_path/name`` from its last checkpoint.
        progress: Show per-epoch progress bars (rank 0's, rendered by the driver).

    Returns:
        ``{"output_dir", "run_dir", "checkpoint", "metrics", "history"}``: ``metrics`` are
        the last epoch's, ``history`` one dict per epoch.

    Raises:
        ConfigError: See :func:`check_run_dir`.
        StageFailed: A worker raised; the message holds the original error.
    """
    import ray
    import ray.train

    from rayrm.stages.stage_tracker import StageTracker

    check_run_dir(cfg, resume)
    check_tracking(cfg.run)  # a logger's package installed
    # Ray Train's print patch tees worker prints into its logger, which shows our epoch lines
    # twice and turns tqdm_ray's updates into blank lines; plain prints reach the driver once.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    init_ray(cfg.resources.num_cpus)
    if started_ray_here():  # its one node is never drained: no watcher actor (2.5 s of CPU)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    res = cfg.resources
    trainer = torch_trainer_class()(
        train_loop,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "data": ray.put(data),
            "pad_id": pad_id,
            "progress": progress,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers,
            use_gpu=res.use_gpu,
            resources_per_worker={"CPU": res.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=cfg.output.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.output.num_checkpoints_to_keep
            ),
            failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
            callbacks=[StageTracker(cfg, str(run_dir(cfg)))],
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise StageFailed(f"{cfg.KIND} run {cfg.name!r} failed: {exc}") from exc
    if result.error is not None:
        raise StageFailed(f"{cfg.KIND} run {cfg.name!r} failed: {result.error}")
    if result.checkpoint is None:
        raise StageFailed(f"{cfg.KIND} run {cfg.name!r} finished without a checkpoint")
    return write_output(cfg, result.checkpoint, run_path=str(result.path))


def run_stage(
    cfg: Any,
    train_loop: Callable[[dict[str, Any]], None],
    examples: Sequence[Any],
    info: dict[str, Any],
    *,
    pad_id: int,
    unit: str,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The driver both stages share: split the encoded examples, check there are enough for
    the workers, fit on Ray Train, summarise.

    Args:
        cfg: The stage config (absolute paths).
        train_loop: The stage's ``train_loop_per_worker`` (a module-level function).
        examples: Encoded examples (SFT) or pairs (reward model), read before Ray starts.
        info: What reading the data found (format, rows, dropped, ...), kept in the summary.
        pad_id: Token id the collate pads with.
        unit: What an example is called in messages ("examples", "pairs").
        resume, progress: See :func:`fit_stage`.

    Returns:
        :func:`fit_stage`'s summary plus ``"data"`` (``info`` and the train/eval sizes).

    Raises:
        ConfigError: Too few training examples for the workers, or a run-folder conflict.
        StageFailed: Training failed in a worker.
    """
    train_idx, eval_idx = split_indices(len(examples), cfg.train.eval_fraction, cfg.train.seed)
    if len(train_idx) < cfg.resources.num_workers:
        raise ConfigError(
            f"data.path has {len(train_idx)} training {unit} after the eval split; each of "
            f"the resources.num_workers={cfg.resources.num_workers} workers needs at least one",
            key="resources.num_workers",
        )
    data = {"train": [examples[i] for i in train_idx], "eval": [examples[i] for i in eval_idx]}
    summary = fit_stage(cfg, train_loop, data, pad_id=pad_id, resume=resume, progress=progress)
    summary["data"] = {**info, "train": len(train_idx), "eval": len(eval_idx)}
    return summary


def write_output(cfg: Any, checkpoint: Any, *, run_path: str) -> dict[str, Any]:
    """Copies a checkpoint's Hugging Face model into ``output.dir`` with config and summary."""
    out = Path(cfg.output.dir)
    with checkpoint.as_directory() as d:
        state = json.loads(Path(d, STATE_FILE).read_text(encoding="utf-8"))
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(d, MODEL_DIR), out, dirs_exist_ok=True)
    cfg.save_yaml(out / CONFIG_FILE)
    summary = {
        "output_dir": str(out),
        "run_dir": run_path,
        "checkpoint": str(checkpoint.path),
        "metrics": state["history"][-1] if state["history"] else {},
        "history": state["history"],
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def describe_metrics(metrics: dict[str, float], keys: Sequence[tuple[str, str, str]]) -> str:
    """``label value`` pairs for the keys present, e.g. ``train loss 1.234``."""
    parts = [
        f"{label} {format(metrics[key], spec)}"
        for key, label, spec in keys
        if key in metrics and not (isinstance(metrics[key], float) and math.isnan(metrics[key]))
    ]
    return " | ".join(parts)
