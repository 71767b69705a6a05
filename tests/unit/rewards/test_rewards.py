"""Tests for rayrm.rewards: spec resolution, pool dispatch/order, reward-model padding."""

from __future__ import annotations

import os

from rayrm.config import RewardSettings
from rayrm.rewards import completion_records as records

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from scorers import completion_length
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    PreTrainedTokenizerFast,
)

from envs.builtin import build_char_tokenizer
from rayrm.models.tiny import build_tiny_reward_model
from rayrm.rewards import (
    RewardFunctionActor,
    RewardModelActor,
    RewardPool,
    RewardSourceError,
    resolve_function,
)

torch.set_num_threads(1)

LEN_SPEC = "scorers:completion_length"  # Ray workers import it by that name


def wrong_length(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.0]


NOT_CALLABLE = 3


def char_tokenizer(*, with_pad: bool = True) -> PreTrainedTokenizerFast:
    """The built-in character tokenizer (<pad>=0, <eos>=1, <unk>=2), optionally without pad."""
    tok = build_char_tokenizer()
    if not with_pad:
        tok.pad_token = None
    return tok


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory) -> str:
    return build_tiny_reward_model(tmp_path_factory.mktemp("rm"), char_tokenizer())


PROMPTS = [f"q{chr(ord('a') + i)}: " for i in range(10)]
COMPLETIONS = ["a" * (i * 3 % 7 + 1) + "!" * i for i in range(10)]
TEXTS = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]


# --- resolve_function -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_colon_here", "module:function"),
        ("a:b:c", "module:function"),
        (":fn", "module:function"),
        ("definitely_missing_mod_xyz:fn", "cannot import"),
        (f"{__name__}:nope", "no attribute"),
        (f"{__name__}:NOT_CALLABLE", "not callable"),
    ],
)
def test_resolve_function_errors_name_the_spec(spec: str, fragment: str) -> None:
    with pytest.raises(RewardSourceError) as info:
        resolve_function(spec)
    msg = str(info.value)
    assert spec in msg and fragment in msg and "\n" not in msg


def test_resolve_function_dotted_module() -> None:
    assert resolve_function("os.path:join") is os.path.join
    assert resolve_function(LEN_SPEC) is completion_length


# --- RewardFunctionActor / local pool ---------------------------------------------------------


def test_function_actor_checks_output_length() -> None:
    actor = RewardFunctionActor(f"{__name__}:wrong_length")
    with pytest.raises(RewardSourceError, match="shape"):
        actor.score(records(["p", "p"], ["c", "c"]))


def test_local_pool_order_and_call_count() -> None:
    reward = RewardSettings(source="function", function=LEN_SPEC, num_actors=2, batch_size=4)
    pool = RewardPool(reward, local=True)
    scores = pool.score(records(PROMPTS, COMPLETIONS))
    assert scores.dtype == np.float32 and scores.shape == (10,)
    np.testing.assert_array_equal(scores, [len(c) for c in COMPLETIONS])
    assert pool.num_calls == 3
    stats = pool.stats()
    assert stats["num_calls"] == 3 and stats["num_scored"] == 10
    assert [s["num_calls"] for s in stats["per_actor"]] == [2, 1]


def test_pool_empty_and_mismatched() -> None:
    with RewardPool(RewardSettings(source="function", function=LEN_SPEC), local=True) as pool:
        out = pool.score(records([], []))
        assert out.shape == (0,) and out.dtype == np.float32
        assert pool.num_calls == 0
        with pytest.raises(ValueError, match="prompts"):
            pool.score(records(["a", "b"], ["c"]))


def test_pool_argument_checks() -> None:
    with pytest.raises(ValueError, match="source"):
        RewardPool(RewardSettings(source="composite"), local=True)  # no single source
    with pytest.raises(ValueError, match="path"):
        RewardPool(RewardSettings(source="model"), local=True)
    with pytest.raises(ValueError, match="function"):
        RewardPool(RewardSettings(source="function", function=None), local=True)


# --- RewardModelActor -------------------------------------------------------------------------


def _per_item_scores(path: str, texts: list[str]) -> np.ndarray:
    """Unbatched reference: one forward per text, so no padding is involved."""
    tok = char_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            out.append(model(**enc).logits[0, 0].item())
    return np.asarray(out, dtype=np.float32)


def test_reward_model_batched_equals_per_item(tiny_rm_dir: str) -> None:
    actor = RewardModelActor(tiny_rm_dir, device="cpu")
    scores = actor.score(records(PROMPTS, COMPLETIONS))
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
    assert scores.shape == (10,)
    expected = _per_item_scores(tiny_rm_dir, TEXTS)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.ptp(scores) > 0  # a constant score would make the equivalence vacuous
    assert actor.stats() == {"num_calls": 1, "num_scored": 10}
    assert actor.ping() is True


def test_reward_model_without_pad_token_pads_with_eos(tmp_path) -> None:
    path = build_tiny_reward_model(tmp_path, char_tokenizer(with_pad=False))
    actor = RewardModelActor(path, device="cpu")
    assert actor.tokenizer.pad_token == "<eos>"
    assert actor.model.config.pad_token_id == actor.tokenizer.eos_token_id == 1
    scores = actor.score(records(PROMPTS, COMPLETIONS))
    expected = _per_item_scores(path, TEXTS)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_reward_model_local_pool(tiny_rm_dir: str) -> None:
    reward = RewardSettings(source="model", path=tiny_rm_dir, batch_size=3)
    with RewardPool(reward, local=True) as pool:
        pooled = pool.score(records(PROMPTS, COMPLETIONS))
        assert pool.num_calls == 4
    direct = RewardModelActor(tiny_rm_dir, device="cpu").score(records(PROMPTS, COMPLETIONS))
    np.testing.assert_allclose(pooled, direct, atol=1e-5)


def test_reward_model_wrong_num_labels(tmp_path) -> None:
    tok = char_tokenizer()
    config = GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tok), num_labels=2
    )
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(RewardSourceError, match="num_labels=2"):
        RewardModelActor(str(tmp_path), device="cpu")
