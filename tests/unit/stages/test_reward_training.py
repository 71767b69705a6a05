"""Reward-model training: Bradley–Terry loss, encoding as the reward actors see it, config
errors (a two-worker Ray Train run: tests/ray/stages/test_reward_model_workers.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from helpers import REPO, rm_dict, vowel_pairs

from envs.builtin import build_char_tokenizer
from rayrm.config import ConfigError, RewardSettings
from rayrm.config.stage import RMConfig, load_stage_config, stage_config_from_dict
from rayrm.models.tiny import build_tiny_reward_model
from rayrm.rewards import RewardPool
from rayrm.rewards import completion_records as records
from rayrm.stages.reward_model import (
    bradley_terry_loss,
    collate,
    compute,
    encode_pairs,
    load_pairs,
    prepare_tokenizer,
)

# ---------------------------------------------------------------------------------------------
# Loss and encoding (no Ray)
# ---------------------------------------------------------------------------------------------


def test_bradley_terry_loss_values_and_gradient():
    chosen = torch.tensor([0.0, 10.0, -10.0, 1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 0.0, 3.0])
    losses = bradley_terry_loss(chosen, rejected)
    expected = [math.log(2), math.log1p(math.exp(-10)), 10 + math.log1p(math.exp(-10))]
    expected.append(math.log1p(math.exp(2.0)))
    np.testing.assert_allclose(losses.detach().numpy(), expected, rtol=1e-5)
    losses.sum().backward()
    # d/dr_c of -log σ(r_c - r_r) = -σ(r_r - r_c): always pushes the chosen reward up.
    np.testing.assert_allclose(
        chosen.grad.numpy(), -torch.sigmoid(rejected - chosen).detach().numpy(), rtol=1e-5
    )


def test_training_scores_equal_reward_actor_scores(tmp_path):
    """The training forward reads the same token as RewardModelActor (truncation and padding)."""
    tok = build_char_tokenizer()
    rm_dir = build_tiny_reward_model(tmp_path / "rm", tok)
    rows = vowel_pairs(6, seed=3)
    rows["prompt"][0] = "a long prompt that gets cut from the left " * 4  # > max_length
    max_length = 40
    pairs, dropped = encode_pairs(
        prepare_tokenizer(tok), rows["prompt"], rows["chosen"], rows["rejected"], max_length=40
    )
    assert dropped == 0 and max(len(p[0]) for p in pairs) == max_length
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    batch = collate(pairs, pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 * len(pairs)
    with torch.no_grad():
        rewards = model(**batch).logits[:, 0].numpy()
    pool = RewardPool(
        RewardSettings(source="model", path=rm_dir, max_length=max_length), local=True
    )
    prompts = rows["prompt"] * 2
    expected = pool.score(records(prompts, rows["chosen"] + rows["rejected"]))
    np.testing.assert_allclose(rewards, expected, atol=1e-5)
    _, sums = compute(model, batch)
    assert sums["pairs"] == len(pairs)
    n = len(pairs)
    assert sums["correct"] == float((expected[:n] > expected[n:]).sum())


def test_identical_pairs_are_dropped():
    tok = prepare_tokenizer(build_char_tokenizer())
    pairs, dropped = encode_pairs(tok, ["p", "p"], ["same", "abc"], ["same", "xyz"], max_length=16)
    assert dropped == 1 and len(pairs) == 1


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_config_errors_name_the_key(tmp_path, tiny_policy_dir):
    data = tmp_path / "pairs.parquet"
    pq.write_table(pa.table(vowel_pairs(8, seed=0)), data)
    base = rm_dict(tiny_policy_dir, str(data), tmp_path)

    def error(**sections: dict) -> ConfigError:
        d = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
        for name, values in sections.items():
            d[name] = {**d[name], **values}
        with pytest.raises(ConfigError) as e:
            stage_config_from_dict(RMConfig, d, check_paths=True)
        return e.value

    assert error(data={"chosen_colum": "c"}).key == "data.chosen_colum"
    assert error(data={"rejected_column": "chosen"}).key == "data.rejected_column"
    assert error(data={"path": str(tmp_path / "pairs.txt")}).key == "data.path"
    assert error(data={"path": str(tmp_path / "nope.parquet")}).key == "data.path"
    assert error(train={"lr": -1.0}).key == "train.lr"
    assert error(model={"path": str(tmp_path)}).key == "model.path"  # no config.json
    two_labels = tmp_path / "cls2"
    build_tiny_reward_model(two_labels, build_char_tokenizer())
    config = json.loads((two_labels / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b"}
    config["label2id"] = {"a": 0, "b": 1}
    (two_labels / "config.json").write_text(json.dumps(config))
    e = error(model={"path": str(two_labels)})
    assert e.key == "model.path" and "num_labels=1" in str(e)

    d = rm_dict(tiny_policy_dir, str(data), tmp_path)
    d["data"] = {**d["data"], "chosen_column": "better"}  # configs are frozen: build another
    cfg = stage_config_from_dict(RMConfig, d)
    with pytest.raises(ConfigError) as e:
        load_pairs(cfg, prepare_tokenizer(build_char_tokenizer()))
    assert e.value.key == "data.chosen_column" and "better" in str(e.value)


def test_example_config_documents_every_key():
    raw = yaml.safe_load((REPO / "jobs/configs/rm_example.yaml").read_text(encoding="utf-8"))
    raw["model"]["path"], raw["data"]["path"], raw["output"]["dir"] = "m", "d.jsonl", "o"
    cfg = stage_config_from_dict(RMConfig, raw)
    for section in ("model", "data", "train", "resources", "output", "run"):
        assert set(raw[section]) == set(type(getattr(cfg, section)).model_fields)
    with pytest.raises(ConfigError) as e:
        load_stage_config(RMConfig, REPO / "jobs/configs/rm_example.yaml", check_paths=False)
    assert e.value.key == "model.path" and "required" in str(e.value)
