"""SFT on Ray Train: two workers (DDP over gloo) lower the held-out loss, log to every tracker
and resume (examples, masking, the loss and the config: tests/unit/stages/test_sft.py)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import copy_corpus, sft_dict, write_corpus

from envs.builtin import build_char_tokenizer
from rayrm.config import ConfigError
from rayrm.config.stage import SFTConfig, stage_config_from_dict
from rayrm.stages import trainer as stages
from rayrm.stages.sft import collate, encode_examples, run_sft, token_nll


def heldout_loss(model_dir: str, examples) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = collate(examples, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, n = token_nll(logits, batch["labels"])
    return nll.item() / n.item()


TRACKERS = all(importlib.util.find_spec(name) for name in ("mlflow", "wandb"))
"""The tracking extras are installed (the test extra installs them)."""


def _check_epoch_logs(summary: dict, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train stages log rank 0's epoch metrics from the controller: TensorBoard and CSV in
    the run folder, MLflow (a finished run, the config as parameters), W&B offline."""
    from mlflow.tracking import MlflowClient
    from tracking_files import history_items, wandb_records

    losses = [h[stages.SFT_EVAL_LOSS] for h in summary["history"]]
    run_dir = Path(summary["run_dir"])
    rows = (run_dir / "progress.csv").read_text().splitlines()
    assert len(rows) == 3 and stages.SFT_EVAL_LOSS in rows[0].split(",")
    assert list(run_dir.glob("events.out.tfevents*"))

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what rayrm sets for a file: URI
    client = MlflowClient(store)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("sft-test").experiment_id])
    assert mlrun.info.status == "FINISHED"
    logged = client.get_metric_history(mlrun.info.run_id, stages.SFT_EVAL_LOSS)
    assert [m.step for m in logged] == [1, 2]
    assert [m.value for m in logged] == pytest.approx(losses)
    assert float(mlrun.data.params["train/lr"]) == 3e-3

    (part,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    steps = {}
    for record in wandb_records(part):
        if record.WhichOneof("record_type") == "history":
            items = history_items(record)
            steps[items["_step"]] = items[stages.SFT_EVAL_LOSS]
    assert [steps[1], steps[2]] == pytest.approx(losses)


def test_two_worker_sft_lowers_heldout_loss_and_resumes(
    ray_local, tmp_path, tiny_policy_dir, monkeypatch
):
    """Two Ray Train workers; the run also logs to every tracker (when installed)."""
    data = write_corpus(tmp_path / "corpus.parquet", n=320)
    store = (tmp_path / "mlruns").as_uri()
    run = {
        "loggers": ["tensorboard", "csv", "mlflow", "wandb"],
        "mlflow": {"tracking_uri": store},
        "wandb": {"project": "rayrm-test", "mode": "offline"},
    }
    cfg = stage_config_from_dict(
        SFTConfig,
        sft_dict(
            tiny_policy_dir,
            data,
            tmp_path,
            train={"epochs": 2},
            **({"run": run} if TRACKERS else {}),
        ),
        check_paths=True,
    )
    summary = run_sft(cfg)

    history = summary["history"]
    assert [h[stages.EPOCH] for h in history] == [1, 2]
    assert history[-1][stages.SFT_EVAL_LOSS] < history[0][stages.SFT_EVAL_LOSS]
    if TRACKERS:
        _check_epoch_logs(summary, store, monkeypatch)
    # Started in-process here, Ray's one node is never drained: no preemption watcher actor.
    assert os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER") == "0"
    assert summary["data"] == {
        "format": "prompt_response",
        "max_length": 32,
        "rows": 320,
        "dropped": 0,
        "train": 256,
        "eval": 64,
    }
    # Fresh held-out examples: the SFT model beats the initial one by a wide margin.
    prompts, responses = copy_corpus(64, seed=1)
    tok = build_char_tokenizer()
    fresh, _ = encode_examples(tok, prompts=prompts, responses=responses, max_length=32)
    before, after = heldout_loss(tiny_policy_dir, fresh), heldout_loss(cfg.output.dir, fresh)
    assert after < before - 1.0, (before, after)

    out = Path(cfg.output.dir)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    saved = json.loads((out / stages.SUMMARY_FILE).read_text())
    assert saved["metrics"] == history[-1]
    ckpts = sorted(p for p in Path(summary["run_dir"]).glob("checkpoint_*") if p.is_dir())
    assert len(ckpts) == 2 and (ckpts[-1] / stages.MODEL_DIR / "config.json").exists()

    # Rerunning the same name needs --resume; with it only the missing epoch runs.
    more = stage_config_from_dict(
        SFTConfig,
        sft_dict(tiny_policy_dir, data, tmp_path, train={"epochs": 3}, output={"overwrite": True}),
        check_paths=True,
    )
    with pytest.raises(ConfigError) as e:
        run_sft(more)
    assert e.value.key == "name"
    resumed = run_sft(more, resume=True)
    assert [h[stages.EPOCH] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == history
    assert np.isfinite(resumed["metrics"][stages.SFT_EVAL_LOSS])
