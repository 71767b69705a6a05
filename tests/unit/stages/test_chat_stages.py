"""SFT and reward-model training on conversations and on real-kind tokenizers (no Ray).

SFT renders a ``messages`` conversation with the chat template and learns the assistant turns
only; plain prompts get the BOS the model was trained with and responses are tokenized in the
prompt's context. Reward-model training reads conversational pairs (message lists) rendered as
the reward actors render conversations in PPO, so training and scoring see the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rayrm.config import ConfigError
from rayrm.config.stage import RMConfig, SFTConfig, stage_config_from_dict
from rayrm.models.tiny import build_tiny_model, build_tiny_reward_model, build_tokenizer
from rayrm.rewards import RewardModelActor
from rayrm.rewards import completion_records as records
from rayrm.stages.reward_model import (
    collate,
    encode_conversation_pairs,
    load_pairs,
    prepare_tokenizer,
)
from rayrm.stages.sft import IGNORE_INDEX, encode_conversations, encode_examples, load_examples

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "say hello"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "and the cat?"},
    {"role": "assistant", "content": "the cat said hi"},
]


@pytest.fixture(scope="module")
def qwen_tok():
    return build_tokenizer("qwen2")


def labelled_text(tokenizer, ids: np.ndarray, labels: np.ndarray) -> list[str]:
    """The contiguous labelled spans, decoded with special tokens."""
    spans, current = [], []
    for token, label in zip(ids.tolist(), labels.tolist(), strict=True):
        if label == IGNORE_INDEX:
            if current:
                spans.append(tokenizer.decode(current))
                current = []
        else:
            assert label == token
            current.append(token)
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_sft_conversations_learn_assistant_turns_only(qwen_tok):
    [(ids, labels)], dropped = encode_conversations(qwen_tok, [CONVERSATION], max_length=512)
    assert dropped == 0
    rendered = qwen_tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert ids.tolist() == qwen_tok(rendered, add_special_tokens=False)["input_ids"]
    # Each assistant turn with its end-of-turn token; system, user and headers are masked.
    assert labelled_text(qwen_tok, ids, labels) == [
        "hello<|im_end|>\n",
        "the cat said hi<|im_end|>\n",
    ]


def test_sft_conversations_need_a_template_and_truncate():
    with pytest.raises(ValueError, match="no chat template"):
        encode_conversations(build_tokenizer("gpt2"), [CONVERSATION], max_length=64)
    tok = build_tokenizer("qwen2")
    examples, dropped = encode_conversations(tok, [CONVERSATION], max_length=10)
    assert (examples, dropped) == ([], 1)  # cut before any assistant token


def test_sft_plain_examples_with_sentencepiece_keep_bos_and_word_marker():
    tok = build_tokenizer("llama")
    [(ids, labels)], _ = encode_examples(
        tok, prompts=["the cat said"], responses=[" hello"], max_length=64
    )
    tokens = tok.convert_ids_to_tokens(ids.tolist())
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    assert tokens[-2] == "▁hello"  # in context: not "▁" + "hello" as tokenizing alone gives
    assert [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX] == [
        ids[-2],
        ids[-1],
    ]
    [(ids, labels)], _ = encode_examples(tok, texts=["the cat"], max_length=64)
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    assert (labels[1:] == ids[1:]).all()


def test_sft_auto_format_reads_messages(tmp_path, qwen_tok):
    model = build_tiny_model(tmp_path / "policy", arch="qwen2", hidden=32, heads=4)
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    d = {
        "model": {"path": model},
        "data": {"path": str(path)},
        "output": {"dir": str(tmp_path / "out")},
    }
    cfg = stage_config_from_dict(SFTConfig, d)
    examples, info = load_examples(cfg, AutoTokenizer.from_pretrained(model))
    assert info["format"] == "messages" and len(examples) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    cfg = stage_config_from_dict(SFTConfig, {**d, "data": {"path": str(bad)}})
    with pytest.raises(ConfigError, match=r"bad\.jsonl, column 'messages', row 0, message 0"):
        load_examples(cfg, AutoTokenizer.from_pretrained(model))


def test_conversational_pairs_score_as_the_actor_scores(tmp_path, qwen_tok):
    rm_dir = build_tiny_reward_model(tmp_path / "rm", qwen_tok, arch="qwen2")
    prompts = [CONVERSATION[:2], [{"role": "user", "content": "the cat said"}]]
    chosen = [[{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "hi"}]]
    rejected = [[{"role": "assistant", "content": "go"}], [{"role": "assistant", "content": "no"}]]
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(rm_dir))
    pairs, dropped = encode_conversation_pairs(tok, prompts, chosen, rejected, max_length=128)
    assert dropped == 0
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    with torch.no_grad():
        rewards = model(**collate(pairs, pad_id=tok.pad_token_id)).logits[:, 0].numpy()
    actor = RewardModelActor(rm_dir, device="cpu")
    completions = [c[0]["content"] for c in chosen + rejected]
    expected = actor.score(records(["unused"] * 4, completions, messages=prompts * 2))
    np.testing.assert_allclose(rewards, expected, atol=1e-5)


def test_rm_load_pairs_reads_public_conversational_shape(tmp_path, qwen_tok):
    """HH-RLHF-style rows: whole conversations in chosen/rejected, no prompt column."""
    rm_start = build_tiny_model(tmp_path / "m", arch="qwen2", hidden=32, heads=4)
    path = Path(tmp_path / "pairs.jsonl")
    user = {"role": "user", "content": "hi"}
    rows = [
        {
            "chosen": [user, {"role": "assistant", "content": "hello there"}],
            "rejected": [user, {"role": "assistant", "content": "go away"}],
        }
    ] * 3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = {"model": {"path": rm_start}, "data": {"path": str(path)}, "output": {"dir": "o"}}
    cfg = stage_config_from_dict(RMConfig, d)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(rm_start))
    pairs, info = load_pairs(cfg, tok)
    assert len(pairs) == 3 and info["dropped"] == 0
    expected = tok.apply_chat_template(rows[0]["chosen"], tokenize=False)
    assert pairs[0][0].tolist() == tok(expected, add_special_tokens=False)["input_ids"]
