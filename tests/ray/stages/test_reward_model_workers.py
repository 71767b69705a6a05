"""Reward-model training on Ray Train: two workers learn rule-labelled pairs, and the reward
pool then serves the model (the loss, the encoding and the config:
tests/unit/stages/test_reward_training.py)."""

from __future__ import annotations

import json

import pyarrow as pa
from helpers import rm_dict, vowel_pairs

from rayrm.config import RewardSettings
from rayrm.config.stage import RMConfig, stage_config_from_dict
from rayrm.rewards import RewardPool
from rayrm.rewards import completion_records as records
from rayrm.stages import trainer as stages
from rayrm.stages.reward_model import run_reward_training


def test_two_worker_reward_model_learns_rule_and_serves(ray_local, tmp_path, tiny_policy_dir):
    data = tmp_path / "pairs.jsonl"
    rows = pa.table(vowel_pairs(800, seed=0)).to_pylist()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = stage_config_from_dict(
        RMConfig, rm_dict(tiny_policy_dir, str(data), tmp_path), check_paths=True
    )
    summary = run_reward_training(cfg)

    m = summary["metrics"]
    assert m[stages.RM_EVAL_ACCURACY] >= 0.9, summary["history"]
    assert m[stages.RM_EVAL_MARGIN] > 0
    assert len(summary["history"]) == 4 and summary["data"]["eval"] == 160

    from transformers import AutoModelForSequenceClassification

    out = cfg.output.dir
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.pad_token_id == 0
    fresh = vowel_pairs(100, seed=1)
    with RewardPool(RewardSettings(source="model", path=out), local=True) as pool:
        chosen = pool.score(records(fresh["prompt"], fresh["chosen"]))
        rejected = pool.score(records(fresh["prompt"], fresh["rejected"]))
    assert (chosen > rejected).mean() >= 0.9
