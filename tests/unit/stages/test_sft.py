"""SFT: examples and prompt masking, the masked loss, stage configs, and a two-worker Ray Train
run (DDP over gloo) that lowers the held-out loss."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from helpers import REPO

from envs.builtin import build_char_tokenizer
from rayrm.cli import build_parser
from rayrm.config import ConfigError
from rayrm.config.stage import SFTConfig, load_stage_config, stage_config_from_dict
from rayrm.stages import trainer as stages
from rayrm.stages.sft import (
    IGNORE_INDEX,
    build_example,
    collate,
    encode_examples,
    load_examples,
    run_sft,
    token_nll,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def copy_corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Prompts ``copy xyz =`` with responses `` xyz``: a pattern a tiny GPT-2 picks up fast."""
    rng = random.Random(seed)
    prompts, responses = [], []
    for _ in range(n):
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))
        prompts.append(f"copy {word} =")
        responses.append(f" {word}")
    return prompts, responses


def write_corpus(path: Path, n: int = 320, seed: int = 0) -> str:
    prompts, responses = copy_corpus(n, seed)
    pq.write_table(pa.table({"prompt": prompts, "response": responses}), path)
    return str(path)


def sft_dict(policy: str, data_path: str, tmp: Path, **sections: dict) -> dict:
    d = {
        "name": "sft-test",
        "model": {"path": policy},
        "data": {"path": data_path, "max_length": 32},
        "train": {"lr": 3e-3, "epochs": 3, "batch_size": 16, "eval_fraction": 0.2, "seed": 0},
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "output": {"dir": str(tmp / "sft-out"), "storage_path": str(tmp / "runs")},
    }
    for name, values in sections.items():
        d[name] = {**d.get(name, {}), **values}
    return d


# ---------------------------------------------------------------------------------------------
# Examples, masking and loss (no Ray)
# ---------------------------------------------------------------------------------------------


def test_prompt_positions_are_masked_exactly():
    tok = build_char_tokenizer()
    prompts, responses = ["copy abc =", "hi"], [" abc", " there"]
    examples, dropped = encode_examples(tok, prompts=prompts, responses=responses, max_length=64)
    assert dropped == 0
    for (ids, labels), p, r in zip(examples, prompts, responses, strict=True):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = tok(r, add_special_tokens=False)["input_ids"]
        assert ids.tolist() == p_ids + r_ids + [tok.eos_token_id]
        assert (labels == IGNORE_INDEX).tolist() == [True] * len(p_ids) + [False] * (len(r_ids) + 1)
        assert labels[len(p_ids) :].tolist() == r_ids + [tok.eos_token_id]


def test_text_examples_train_on_every_token_and_truncate():
    ids, labels = build_example([], [5, 6, 7], eos_id=1, max_length=10)
    assert ids.tolist() == labels.tolist() == [5, 6, 7, 1]
    ids, labels = build_example([3, 4], [5, 6, 7], eos_id=1, max_length=4)
    assert ids.tolist() == [3, 4, 5, 6]
    assert labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX, 5, 6]
    # A prompt that fills max_length leaves nothing to learn: dropped.
    assert build_example([3, 4, 5], [6], eos_id=1, max_length=3) is None
    assert build_example([], [], eos_id=1, max_length=3) is None  # EOS alone is never predicted


def test_token_nll_ignores_masked_positions_and_matches_uniform():
    tok = build_char_tokenizer()
    examples, _ = encode_examples(
        tok, prompts=["copy ab =", "x"], responses=[" ab", " yz"], max_length=64
    )
    batch = collate(examples, pad_id=tok.pad_token_id)
    B, T = batch["input_ids"].shape
    assert batch["attention_mask"].sum().item() == sum(len(e[0]) for e in examples)
    V = len(tok)
    nll, n = token_nll(torch.zeros(B, T, V), batch["labels"])
    assert n.item() == sum(int((e[1][1:] != IGNORE_INDEX).sum()) for e in examples)
    assert nll.item() == pytest.approx(n.item() * math.log(V), rel=1e-5)
    # Position t predicts token t + 1: logits that predict prompt tokens (or padding) are unused.
    logits = torch.randn(B, T, V)
    base, _ = token_nll(logits, batch["labels"])
    prompt_len = len(tok("copy ab =", add_special_tokens=False)["input_ids"])
    changed = logits.clone()
    changed[0, : prompt_len - 1] += 5 * torch.randn(prompt_len - 1, V)
    changed[1, len(examples[1][0]) - 1 :] += 3.0  # padding of the shorter row, and its last token
    assert token_nll(changed, batch["labels"])[0].item() == pytest.approx(base.item(), rel=1e-6)
    changed[0, prompt_len - 1] += 5 * torch.randn(V)  # predicts the first response token
    assert token_nll(changed, batch["labels"])[0].item() != pytest.approx(base.item(), rel=1e-6)


def test_load_examples_formats(tmp_path, tiny_policy_dir):
    tok = build_char_tokenizer()
    txt = tmp_path / "corpus.txt"
    txt.write_text("hello there\n\nsecond line\n", encoding="utf-8")
    cfg = stage_config_from_dict(SFTConfig, sft_dict(tiny_policy_dir, str(txt), tmp_path))
    examples, info = load_examples(cfg, tok)
    assert info["format"] == "text" and info["rows"] == 2 and len(examples) == 2
    assert (examples[0][1] != IGNORE_INDEX).all()

    data = write_corpus(tmp_path / "pairs.parquet", n=8)
    cfg = stage_config_from_dict(SFTConfig, sft_dict(tiny_policy_dir, data, tmp_path))
    examples, info = load_examples(cfg, tok)
    assert info["format"] == "prompt_response" and len(examples) == 8
    assert (examples[0][1] == IGNORE_INDEX).any()

    d = sft_dict(tiny_policy_dir, data, tmp_path, data={"format": "text"})
    with pytest.raises(ConfigError) as e:
        load_examples(stage_config_from_dict(SFTConfig, d), tok)
    assert e.value.key == "data.text_column" and "'text'" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ({"train": {"lrr": 1e-3}}, "train.lrr", "did you mean train.lr"),
        ({"train": {"eval_fraction": 0.9}}, "train.eval_fraction", "in [0, 0.5]"),
        ({"train": {"batch_size": "big"}}, "train.batch_size", "must be an integer"),
        ({"data": {"format": "chat"}}, "data.format", "must be one of"),
        ({"data": {"path": "corpus.csv"}}, "data.path", "must end with"),
        ({"resources": {"num_workers": 0}}, "resources.num_workers", ">= 1"),
        ({"output": {"dir": None}}, "output.dir", "is required"),
    ],
)
def test_config_errors_name_the_key(tmp_path, tiny_policy_dir, override, key, message):
    d = sft_dict(tiny_policy_dir, str(tmp_path / "c.parquet"), tmp_path)
    for section, values in override.items():
        d[section] = {**d[section], **values}
    with pytest.raises(ConfigError) as e:
        stage_config_from_dict(SFTConfig, d)
    assert e.value.key == key and message in str(e.value)


def test_config_paths_and_overrides(tmp_path, tiny_policy_dir):
    data = write_corpus(tmp_path / "c.parquet", n=4)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(sft_dict(tiny_policy_dir, data, tmp_path)), encoding="utf-8")
    cfg = load_stage_config(SFTConfig, path, ["train.lr=1e-4", "resources.num_workers=1"])
    assert cfg.train.lr == 1e-4 and cfg.resources.num_workers == 1
    with pytest.raises(ConfigError) as e:
        load_stage_config(SFTConfig, path, ["train.nope=1"])
    assert e.value.key == "train.nope"
    with pytest.raises(ConfigError) as e:
        load_stage_config(SFTConfig, path, ["model.path=/does/not/exist"])
    assert e.value.key == "model.path"
    with pytest.raises(ConfigError) as e:
        load_stage_config(SFTConfig, path, [f"data.path={tmp_path / 'missing.jsonl'}"])
    assert e.value.key == "data.path"
    (tmp_path / "sft-out").mkdir()
    (tmp_path / "sft-out" / "x").write_text("taken")
    with pytest.raises(ConfigError) as e:
        load_stage_config(SFTConfig, path)
    assert e.value.key == "output.dir"
    assert load_stage_config(SFTConfig, path, ["output.overwrite=true"]).output.overwrite


def test_example_config_documents_every_key():
    raw = yaml.safe_load((REPO / "jobs/configs/sft_example.yaml").read_text(encoding="utf-8"))
    defaults = {"model": {"path": "m"}, "data": {"path": "d.parquet"}, "output": {"dir": "o"}}
    for section, values in defaults.items():
        raw[section].update(values)
    cfg = stage_config_from_dict(SFTConfig, raw)  # unknown keys would raise
    assert cfg.train.epochs == 1
    for section in ("model", "data", "train", "resources", "output", "run"):
        assert set(raw[section]) == set(type(getattr(cfg, section)).model_fields)


def test_cli_arguments():
    args = build_parser().parse_args(
        ["sft", "c.yaml", "--set", "train.lr=1", "--set", "name=x", "--resume"]
    )
    assert args.config == "c.yaml" and args.overrides == ["train.lr=1", "name=x"] and args.resume


# ---------------------------------------------------------------------------------------------
# Ray Train: two workers
# ---------------------------------------------------------------------------------------------


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
