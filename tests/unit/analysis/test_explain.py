"""``rayrm explain``: per-token reward attribution on reward models with known answers.

The known-answer model is ``rayrm.demo.reference_task.build_mean_value_reward_model``: a GPT-2 sequence
classifier whose score is the mean of per-character values (here 1 for vowels), so the score of
each prefix, and each token's contribution, follows by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from envs.builtin import build_char_tokenizer
from rayrm.analysis.explain import (
    BOLD,
    GREEN,
    RED,
    RESET,
    colorize,
    load_reward_model,
    main,
    policy_kl,
    reward_attribution,
)
from rayrm.cli import build_parser
from rayrm.demo.reference_task import build_mean_value_reward_model
from rayrm.models.tiny import build_tiny_policy, build_tiny_reward_model
from rayrm.rewards import RewardModelActor
from rayrm.rewards import completion_records as records

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vowel_rm(tmp_path_factory) -> str:
    return build_mean_value_reward_model(tmp_path_factory.mktemp("rm"), {c: 1.0 for c in "aeiou"})


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["explain", *argv])


def test_known_per_token_contributions(vowel_rm: str) -> None:
    model, tokenizer = load_reward_model(vowel_rm)
    a = reward_attribution(model, tokenizer, "xx", "ab e")
    assert a.method == "causal" and a.tokens == ["a", "b", " ", "e"]
    # Prefix texts xx, xxa, xxab, xxab_, xxab_e have vowel fractions 0, 1/3, 1/4, 1/5, 2/6.
    np.testing.assert_allclose(a.prefix_scores, [0, 1 / 3, 1 / 4, 1 / 5, 2 / 6], atol=1e-6)
    np.testing.assert_allclose(a.deltas, [1 / 3, -1 / 12, -1 / 20, 2 / 15], atol=1e-6)
    # The whole text's prefix score is what the reward actors score.
    actor = RewardModelActor(vowel_rm)
    assert a.prefix_scores[-1] == pytest.approx(actor.score(records(["xx"], ["ab e"]))[0], abs=1e-6)
    # An empty prompt: s_0 is 0 by definition, then the first token's value.
    assert reward_attribution(model, tokenizer, "", "ea").prefix_scores.tolist() == [0, 1, 1]


def test_one_pass_equals_scoring_every_prefix(tmp_path: Path) -> None:
    """The causal one-pass method equals scoring each prefix text, on a random tiny RM."""
    path = build_tiny_reward_model(tmp_path / "rm", build_char_tokenizer())
    model, tokenizer = load_reward_model(path)
    prompt, completion = "the cat said", " hello there!"
    causal = reward_attribution(model, tokenizer, prompt, completion, method="causal")
    batched = reward_attribution(model, tokenizer, prompt, completion, method="batched")
    np.testing.assert_allclose(causal.prefix_scores, batched.prefix_scores, atol=1e-5)
    actor = RewardModelActor(path)
    texts = [completion[:t] for t in range(len(completion) + 1)]
    np.testing.assert_allclose(
        causal.prefix_scores, actor.score(records([prompt] * len(texts), texts)), atol=1e-5
    )


def test_encoder_reward_model_scores_prefixes_as_a_batch(tmp_path: Path) -> None:
    tokenizer = build_char_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_reward_model(tmp_path)
    a = reward_attribution(model, tok, "hi ", "abc")
    assert a.method == "batched"  # bidirectional: a prefix's score needs its own pass
    actor = RewardModelActor(str(tmp_path))
    expected = actor.score(records(["hi "] * 4, ["", "a", "ab", "abc"]))
    np.testing.assert_allclose(a.prefix_scores, expected, atol=1e-5)


def test_terminal_colours_and_html(vowel_rm: str, tmp_path: Path, capsys) -> None:
    assert colorize(["a", "b", "c"], np.array([1.0, -0.1, 0.0])) == (
        f"{GREEN}{BOLD}a{RESET}{RED}b{RESET}c"
    )
    assert colorize(["a", "b"], np.array([1.0, -1.0]), color=False) == "ab"
    html = tmp_path / "explain.html"
    args = parse(
        "--prompt", "xx", "--completion", "ab", "--reward-model", vowel_rm, "--html", str(html)
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reward: +0.2500 (prompt alone +0.0000" in out
    assert "   1  'a'            +0.3333   +0.3333" in out
    assert "   2  'b'            +0.2500   -0.0833" in out
    page = html.read_text()
    assert 'title="Δ +0.3333">a</span>' in page and 'title="Δ -0.0833">b</span>' in page
    assert "rgba(0,160,0,1.000)" in page  # the largest contribution, fully green


def test_kl_of_a_policy_to_itself_is_zero(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = build_tiny_policy(tmp_path / "policy")
    policy = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = build_char_tokenizer()
    kl = policy_kl(policy, policy, tokenizer, "the cat", " sat", eos=True)
    assert kl.tokens == [" ", "s", "a", "t", "<eos>"]
    np.testing.assert_allclose(kl.kl, 0.0, atol=1e-6)
    np.testing.assert_allclose(kl.kl_exact, 0.0, atol=1e-6)
    assert np.all(kl.logp < 0)
