"""Experiment tracking (``run.loggers``): a run logs its ``result["rlhf"]`` metrics, its
config and its report to a local MLflow store and to W&B in offline mode, and they are found
there afterwards (no network); a logger whose package is missing is a one-line error."""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest
from conftest import make_config

from rayrm import metrics as M

pytestmark = pytest.mark.tracking
pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def _wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): a LevelDB-style log of
    ``wandb_internal_pb2.Record`` protobufs in 32 KiB blocks after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records = path.read_bytes(), []
    assert data[:4] == b":W&B", data[:8]
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def _wait_for_files(parts: list[Path], names: set[str], timeout: float = 30.0) -> list:
    """The records of all ``parts``, read again until a ``files`` record names each of
    ``names`` or ``timeout`` passes (W&B's service may write the log after its client returns)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for part in parts for r in _wandb_records(part)]
        saved = {
            f.path for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files
        }
        if names <= saved or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _history_items(record) -> dict:
    """A W&B history record's values by name (a name with ``/`` may come as a nested key)."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}


def _write(tiny_policy_dir, prompts_file, tmp_path, run: dict) -> Path:
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        run={"num_iterations": 3, "checkpoint_every": 3, **run},
        eval={"report": True},
    )
    path = tmp_path / "config.yaml"
    cfg.save_yaml(path)
    return path


def test_train_logs_to_mlflow_and_wandb(ray_local, tiny_policy_dir, prompts_file, tmp_path):
    from mlflow.tracking import MlflowClient

    from rayrm.cli import main

    store = (tmp_path / "mlruns").as_uri()
    path = _write(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        {
            "loggers": ["csv", "mlflow", "wandb"],
            "mlflow": {"tracking_uri": store, "experiment": "rayrm-test"},
            "wandb": {"project": "rayrm-test", "mode": "offline"},
        },
    )
    assert main(["train", str(path)]) == 0
    (result_file,) = (tmp_path / "test").glob("*/result.json")
    trial_dir = result_file.parent
    results = [json.loads(line) for line in result_file.read_text().splitlines()]
    rewards = [r[M.RLHF_RESULTS][M.REWARD_MEAN] for r in results]
    assert len(rewards) == 3
    # Exactly the loggers named: CSV yes, TensorBoard no.
    assert (trial_dir / "progress.csv").is_file()
    assert not list(trial_dir.glob("events.out.tfevents*"))

    # MLflow: the metrics under result["rlhf"]'s names, one per iteration; the config as
    # parameters; the report and its plots as artifacts.
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("rayrm-test")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, M.REWARD_MEAN)
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(rewards)
    assert M.KL_SEQUENCE in run.data.metrics and M.TIMER_UPDATE in run.data.metrics
    assert float(run.data.params["rayrm/ppo/lr"]) == 3e-4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "reward.png", "kl.png"} <= artifacts, artifacts

    # W&B, offline: the run (id = the trial's) in the run folder, its history and config;
    # the report added to the same run id afterwards.
    trial_id = results[-1]["trial_id"]
    wandb_dir = tmp_path / "test" / "wandb"
    parts = sorted(wandb_dir.glob(f"offline-run-*-{trial_id}/run-{trial_id}.wandb"))
    assert len(parts) == 2, parts
    records = _wait_for_files(parts, {"report.md", "reward.png"})
    logged, config, saved = {}, {}, set()
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = _history_items(record)
            logged[items["_step"]] = items
        elif kind == "run":  # wandb.init's config
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "files":
            saved.update(f.path for f in record.files.files)
    assert [logged[step][M.REWARD_MEAN] for step in (1, 2, 3)] == pytest.approx(rewards)
    assert config["rayrm"]["ppo"]["lr"] == 3e-4
    assert {"report.md", "reward.png"} <= saved, saved
    assert (parts[1].parent / "files" / "report.md").read_text().startswith("#")


def test_missing_tracking_package_is_one_line(
    tiny_policy_dir, prompts_file, tmp_path, capsys, monkeypatch
):
    from rayrm.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else find_spec(name, *a),
    )
    path = _write(tiny_policy_dir, prompts_file, tmp_path, {"loggers": ["wandb"]})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.loggers" in err[0] and "pip install 'rayrm[wandb]'" in err[0], err


def test_sft_stage_logs_every_epoch(ray_local, tiny_policy_dir, tmp_path, monkeypatch):
    """Ray Train stages log rank 0's epoch metrics from the controller: TensorBoard and CSV in
    the run folder, MLflow (a finished run, the config as parameters), W&B offline."""
    from mlflow.tracking import MlflowClient
    from test_sft import sft_dict, write_corpus

    from rayrm.config.stage import SFTConfig, stage_config_from_dict
    from rayrm.stages import trainer as stages
    from rayrm.stages.sft import run_sft

    store = (tmp_path / "mlruns").as_uri()
    run = {
        "loggers": ["tensorboard", "csv", "mlflow", "wandb"],
        "mlflow": {"tracking_uri": store},
        "wandb": {"project": "rayrm-test", "mode": "offline"},
    }
    data = write_corpus(tmp_path / "corpus.parquet", n=64)
    d = sft_dict(tiny_policy_dir, data, tmp_path, train={"epochs": 2}, run=run)
    d["resources"] = {"num_workers": 1, "cpus_per_worker": 1}
    summary = run_sft(stage_config_from_dict(SFTConfig, d, check_paths=True))
    history = summary["history"]
    losses = [h[stages.SFT_EVAL_LOSS] for h in history]
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
    for record in _wandb_records(part):
        if record.WhichOneof("record_type") == "history":
            items = _history_items(record)
            steps[items["_step"]] = items[stages.SFT_EVAL_LOSS]
    assert [steps[1], steps[2]] == pytest.approx(losses)


def test_a_restored_trial_logs_into_its_mlflow_run(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    """A trial whose process is killed mid-run is restored from its checkpoint by ``rayrm
    train``; its metrics go on in the MLflow run it started, not a second one."""
    from mlflow.tracking import MlflowClient
    from test_fault_tolerance import _KillTrialOnce

    from rayrm.experiment.train import run_train

    store = (tmp_path / "mlruns").as_uri()
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        ppo={"batch_size": 8},
        generation={"max_new_tokens": 6},
        run={
            "num_iterations": 4, "checkpoint_every": 2, "max_failures": 1,
            "loggers": ["mlflow"], "mlflow": {"tracking_uri": store, "experiment": "restored"},
        },
    )  # fmt: skip
    killer = _KillTrialOnce(at=3, marker=tmp_path / "killed")
    exp_dir, last = run_train(cfg, callbacks=[killer])
    assert killer.killed and last["training_iteration"] == 4
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("restored")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, M.REWARD_MEAN)]
    assert sorted(set(steps)) == [1, 2, 3, 4], steps  # iteration 3 maybe twice
    assert float(run.data.params["rayrm/ppo/lr"]) == 3e-4
