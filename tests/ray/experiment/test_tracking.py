"""Experiment tracking (``run.loggers``): a run logs its ``result["rlhf"]`` metrics, its
config and its report to a local MLflow store and to W&B in offline mode, and they are found
there afterwards (no network), a restored trial logging into its MLflow run (a logger whose
package is missing: tests/unit/experiment/test_tracking_packages.py)."""

from __future__ import annotations

import json

import pytest
from helpers import make_config
from helpers import write_tracking_config as _write
from tracking_files import history_items, wait_for_files

from rayrm import metrics as M

pytestmark = pytest.mark.tracking
pytest.importorskip("mlflow")
pytest.importorskip("wandb")


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
    assert float(run.data.params["rayrm/algorithm/lr"]) == 3e-4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "reward.png", "kl.png"} <= artifacts, artifacts

    # W&B, offline: the run (id = the trial's) in the run folder, its history and config;
    # the report added to the same run id afterwards.
    trial_id = results[-1]["trial_id"]
    wandb_dir = tmp_path / "test" / "wandb"
    parts = sorted(wandb_dir.glob(f"offline-run-*-{trial_id}/run-{trial_id}.wandb"))
    assert len(parts) == 2, parts
    records = wait_for_files(parts, {"report.md", "reward.png"})
    logged, config, saved = {}, {}, set()
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = history_items(record)
            logged[items["_step"]] = items
        elif kind == "run":  # wandb.init's config
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "files":
            saved.update(f.path for f in record.files.files)
    assert [logged[step][M.REWARD_MEAN] for step in (1, 2, 3)] == pytest.approx(rewards)
    assert config["rayrm"]["algorithm"]["lr"] == 3e-4
    assert {"report.md", "reward.png"} <= saved, saved
    assert (parts[1].parent / "files" / "report.md").read_text().startswith("#")


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
        algorithm={"batch_size": 8},
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
    assert float(run.data.params["rayrm/algorithm/lr"]) == 3e-4
