"""``rayrm train-rm --members k`` on Ray Train: k reward models written as one ensemble
directory that ``reward.source: ensemble`` loads."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import torch
from helpers import rm_dict, vowel_pairs

from rayrm.config import config_from_dict
from rayrm.config.stage import RMConfig, stage_config_from_dict
from rayrm.models.hf_files import ENSEMBLE_FILE
from rayrm.rewards import completion_records


def test_members_train_and_load_as_one_source(ray_local, tmp_path, tiny_policy_dir):
    """Two members on bootstrap resamples: distinct weights, each and the ensemble scored on
    the shared held-out pairs; the directory then scores as one ensemble source."""
    from rayrm.rewards import pool_from_config
    from rayrm.stages.ensemble import run_reward_models

    data = tmp_path / "pairs.jsonl"
    rows = pa.table(vowel_pairs(240, seed=0)).to_pylist()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = rm_dict(tiny_policy_dir, str(data), tmp_path, train={"epochs": 2},
                  resources={"num_workers": 1})  # fmt: skip
    cfg = stage_config_from_dict(RMConfig, {**raw, "ensemble": {"members": 2}}, check_paths=True)
    summary = run_reward_models(cfg)

    out = Path(cfg.output.dir)
    record = json.loads((out / ENSEMBLE_FILE).read_text())
    assert record["members"] == ["member-0", "member-1"] and record["held_out_pairs"] == 48
    assert set(record["accuracy"]) == {"member-0", "member-1", "mean", "min", "mean_minus_std"}
    assert all(0.0 <= v <= 1.0 for v in record["accuracy"].values())
    assert summary["accuracy"] == record["accuracy"] and len(summary["members"]) == 2
    from safetensors.torch import load_file

    weights = [load_file(out / m / "model.safetensors") for m in record["members"]]
    assert weights[0].keys() == weights[1].keys()
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    run = {"model": {"path": tiny_policy_dir}, "data": {"prompts": "p.jsonl"},
           "reward": {"source": "ensemble", "path": str(out), "combine": "mean"}}  # fmt: skip
    from rayrm.config.io import resolve_paths

    reward = resolve_paths(config_from_dict(run)).reward
    fresh = vowel_pairs(32, seed=1)
    with pool_from_config(reward, local=True) as pool:
        scores, breakdown = pool.score_detailed(
            completion_records(fresh["prompt"], fresh["chosen"])
        )
    assert scores.shape == (32,) and {"reward/member/0", "reward/member/1"} <= set(breakdown)
