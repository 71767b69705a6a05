"""``rayrm train-rm --members k`` (issue 33, item 2): members' seeds, folders and bootstrap
resamples, the held-out accuracy of each combination, the flag, and an ensemble directory
as a reward source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import rm_dict

from rayrm.cli import build_parser
from rayrm.config import ConfigError, config_from_dict, load_config
from rayrm.config.stage import RMConfig, stage_config_from_dict
from rayrm.models.hf_files import ENSEMBLE_FILE
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
