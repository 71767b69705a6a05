"""Reward models and chat templates of the kinds of models users bring, without Ray: a chat
reward model renders with its own template, a reward model without tokenizer files takes
``reward.tokenizer_path``, and a system turn Gemma's template refuses stops the run in preflight
(the RL loop on each architecture: tests/ray/models/test_real_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CONVERSATIONS, make_config

from rayrm.data.prompts import write_prompts_jsonl
from rayrm.models.tiny import build_tiny_reward_model, build_tokenizer
from rayrm.rewards import RewardModelActor
from rayrm.rewards import completion_records as records

torch.set_num_threads(1)


def test_chat_reward_model_reads_its_own_template(archs, tmp_path):
    """A reward model with another tokenizer renders messages + completion with its own chat
    template, exactly as scoring that text directly."""
    llama_tok = build_tokenizer("llama")
    llama_tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    )
    rm_dir = build_tiny_reward_model(tmp_path / "rm", llama_tok, arch="llama")
    actor = RewardModelActor(rm_dir, device="cpu")
    conversation = CONVERSATIONS[1]
    [score] = actor.score(records(["ignored"], [" hello"], messages=[conversation]))
    text = "[system] be brief\n[user] the cat said\n[assistant]  hello\n"
    batch = actor.tokenizer([text], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        expected = actor.model(**batch).logits[0, 0].item()
    assert score == pytest.approx(expected, abs=1e-5)
    plain = RewardModelActor(build_tiny_reward_model(tmp_path / "plain", build_tokenizer("gpt2")))
    with pytest.raises(ValueError, match="no chat template"):
        plain.score(records(["p"], ["c"], messages=[conversation]))


def test_reward_model_without_tokenizer_uses_tokenizer_path(archs, tmp_path):
    rm_dir = Path(build_tiny_reward_model(tmp_path / "rm", build_tokenizer("gpt2")))
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (rm_dir / name).rename(tok_dir / name)
    with pytest.raises(ValueError, match="no tokenizer files.*reward.tokenizer_path"):
        RewardModelActor(str(rm_dir), device="cpu")
    actor = RewardModelActor(str(rm_dir), device="cpu", tokenizer_path=str(tok_dir))
    assert actor.score(records(["the cat"], [" said"])).shape == (1,)


def test_a_system_turn_gemma_refuses_fails_before_training(archs, tmp_path):
    """Gemma's chat template raises on a system message: the run stops in preflight with one
    line naming the row and the template's reason, before anything starts."""
    from rayrm.config import ConfigError
    from rayrm.experiment.preflight import preflight

    prompts = write_prompts_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS, "messages")
    cfg = make_config(archs["gemma2"], str(prompts), tmp_path, data={"max_prompt_tokens": 40})
    with pytest.raises(ConfigError, match=r"data.prompts row 1: .*System role not supported"):
        preflight(cfg)
    cfg = make_config(
        archs["qwen2"], str(prompts), tmp_path, data={"max_prompt_tokens": 40}
    )  # ChatML takes the same rows
    assert preflight(cfg).startswith("prompts: 4")
