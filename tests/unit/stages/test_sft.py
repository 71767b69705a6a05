"""SFT: examples and prompt masking, the masked loss, stage configs and the command line (a
two-worker Ray Train run: tests/ray/stages/test_sft_workers.py)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from helpers import REPO, sft_dict, write_corpus

from envs.builtin import build_char_tokenizer
from rayrm.cli import build_parser
from rayrm.config import ConfigError
from rayrm.config.stage import SFTConfig, load_stage_config, stage_config_from_dict
from rayrm.stages.sft import (
    IGNORE_INDEX,
    build_example,
    collate,
    encode_examples,
    load_examples,
    token_nll,
)

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
