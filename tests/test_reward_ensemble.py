"""``rayrm train-rm --members k``: k reward models written as one ensemble directory that
``reward.source: ensemble`` loads (issue 33, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_reward_training import rm_dict, vowel_pairs

from rayrm.cli import build_parser
from rayrm.config import ConfigError, config_from_dict, load_config
from rayrm.config.stage import RMConfig, stage_config_from_dict
from rayrm.models.hf_files import ENSEMBLE_FILE
from rayrm.rewards import completion_records
from rayrm.stages.ensemble import bootstrap, combined_accuracy, member_config


def test_combined_accuracy_by_hand():
    """Two members, four held-out pairs: each member's accuracy and each combination's."""
    chosen = np.array([[1.0, 0.0, 3.0, 0.0], [0.0, 2.0, 3.0, -1.0]])
    rejected = np.array([[0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.0]])
    acc = combined_accuracy(chosen, rejected)
    assert acc["member-0"] == 0.5 and acc["member-1"] == 0.5  # pairs 0, 2 and 1, 2
    # mean: (0.5 vs 0.5) tie, (1 vs 0.5), (3 vs 0), (-0.5 vs 0.25): pairs 1, 2
    assert acc["mean"] == 0.5
    # min: (0 vs 0), (0 vs 0), (3 vs 0), (-1 vs 0): pair 2 only
    assert acc["min"] == 0.25
    # mean - std: (0 vs 0), (0 vs 0), (3 vs 0), (-1 vs 0): pair 2 only
    assert acc["mean_minus_std"] == 0.25


def test_members_differ_by_seed_output_and_bootstrap(tmp_path, tiny_policy_dir):
    raw = rm_dict(tiny_policy_dir, str(tmp_path / "d.jsonl"), tmp_path)
    cfg = stage_config_from_dict(RMConfig, {**raw, "ensemble": {"members": 3}})
    members = [member_config(cfg, i) for i in range(3)]
    assert [m.train.seed for m in members] == [0, 1, 2]
    assert [m.name for m in members] == [f"rm-test-member-{i}" for i in range(3)]
    assert [Path(m.output.dir) for m in members] == [
        Path(cfg.output.dir) / f"member-{i}" for i in range(3)
    ]
    assert all(m.ensemble is None for m in members)
    train = list(range(100))
    a, b = bootstrap(train, 1), bootstrap(train, 2)
    assert len(a) == 100 and a == bootstrap(train, 1) and a != b
    assert len(set(a)) < 100  # drawn with replacement
    with pytest.raises(ConfigError, match=r"ensemble\.members must be >= 2"):
        stage_config_from_dict(RMConfig, {**raw, "ensemble": {"members": 1}})


def test_members_flag_sets_the_ensemble():
    args = build_parser().parse_args(["train-rm", "rm.yaml", "--members", "3"])
    assert args.members == 3 and args.command == "train-rm"
    assert not hasattr(build_parser().parse_args(["sft", "s.yaml"]), "members")


def test_an_ensemble_directory_is_a_reward_source(tmp_path, tiny_policy_dir):
    """``reward.source: ensemble`` with ``reward.path`` reads its members from
    ``ensemble.json``; a directory without one is refused naming reward.path."""
    ens = tmp_path / "ens"
    for i in range(2):
        (ens / f"member-{i}").mkdir(parents=True)
        for f in Path(tiny_policy_dir).iterdir():
            (ens / f"member-{i}" / f.name).write_bytes(f.read_bytes())
    (ens / ENSEMBLE_FILE).write_text(json.dumps({"members": ["member-0", "member-1"]}))
    (tmp_path / "p.jsonl").write_text('{"prompt": "hello"}\n')
    base = {"model": {"path": tiny_policy_dir}, "data": {"prompts": str(tmp_path / "p.jsonl")}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({**base, "reward": {"source": "ensemble", "path": str(ens)}}))
    cfg = load_config(path)
    assert cfg.reward.members == [str(ens / "member-0"), str(ens / "member-1")]
    assert cfg.reward.num_actor_pools == 2
    path.write_text(json.dumps({**base, "reward": {"source": "ensemble", "path": str(tmp_path)}}))
    with pytest.raises(ConfigError, match=r"^reward\.path: .*ensemble\.json lists no members"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"reward\.members needs at least two"):
        config_from_dict({**base, "reward": {"source": "ensemble"}})


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
