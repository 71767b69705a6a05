"""Tests for the envs package: tokenizer, prompt files, rule reward and TextGenerationEnv."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gymnasium.utils.env_checker import check_env
from transformers import AutoTokenizer

import envs
from envs import (
    BUILTIN_CHARS,
    BUILTIN_PROMPTS,
    TextGenerationEnv,
    build_char_tokenizer,
    vowel_reward,
)
from envs.text_generation import resolve_reward_fn
from rayrm.data.prompts import load_prompts, write_prompts_jsonl

PAD, EOS, UNK = 0, 1, 2


@pytest.fixture(scope="module")
def char_tokenizer():
    return build_char_tokenizer()


def char_id(tokenizer, char: str) -> int:
    (token_id,) = tokenizer.encode(char, add_special_tokens=False)
    return token_id


def run_checker(env: gym.Env) -> None:
    """Runs Gymnasium's checker with its warnings turned into failures."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=False)


# --- built-in tokenizer, prompts and reward ---------------------------------------------------


def test_char_tokenizer_ids_and_round_trip(char_tokenizer):
    tok = char_tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (PAD, EOS, UNK)
    assert len(tok) == 3 + len(BUILTIN_CHARS)
    text = "hello,  world! it's me: ok?  "
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode([PAD, *ids, EOS], skip_special_tokens=True) == text
    # Upper case is normalized onto known characters; unknown characters become <unk>.
    assert tok.encode("AbC", add_special_tokens=False) == tok.encode(
        "abc", add_special_tokens=False
    )
    assert tok.encode("a~\n", add_special_tokens=False) == [char_id(tok, "a"), UNK, UNK]


def test_char_tokenizer_survives_save_and_auto_load(char_tokenizer, tmp_path):
    char_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (PAD, EOS, UNK)
    assert len(loaded) == len(char_tokenizer)
    for text in ["once upon a time", "it 's , odd . spacing ", "MiXeD Case!", ""]:
        ids = char_tokenizer.encode(text, add_special_tokens=False)
        assert loaded.encode(text, add_special_tokens=False) == ids
        assert loaded.decode(ids, skip_special_tokens=True) == char_tokenizer.decode(
            ids, skip_special_tokens=True
        )
        assert loaded.decode(ids, skip_special_tokens=True) == text.lower()


def test_builtin_prompts_use_builtin_chars_only():
    assert len(BUILTIN_PROMPTS) == 64
    assert len(set(BUILTIN_PROMPTS)) == len(BUILTIN_PROMPTS)
    for prompt in BUILTIN_PROMPTS:
        assert prompt and set(prompt) <= set(BUILTIN_CHARS), prompt


def test_vowel_reward_known_values():
    completions = ["aeiou", "bcd", "", "a b", "AE", "hello"]
    rewards = vowel_reward([""] * len(completions), completions)
    assert rewards == pytest.approx([1.0, 0.0, 0.0, 1 / 3, 1.0, 2 / 5])
    with pytest.raises(ValueError, match="1 prompts but 2 completions"):
        vowel_reward(["p"], ["a", "b"])


# --- prompt files -----------------------------------------------------------------------------


def test_load_prompts_parquet_and_jsonl(tmp_path):
    prompts = ["first prompt", "second, with 'quotes'", "third"]
    parquet_path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": prompts, "id": [1, 2, 3]}), parquet_path)
    assert load_prompts(parquet_path, column="text") == prompts
    jsonl_path = write_prompts_jsonl(tmp_path / "sub" / "p.jsonl", prompts)
    assert load_prompts(jsonl_path) == prompts
    assert load_prompts(str(jsonl_path)) == prompts


def test_load_prompts_errors_name_file_and_column(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(f"prompts file not found: {missing}")):
        load_prompts(missing)

    csv_path = tmp_path / "p.csv"
    csv_path.write_text("prompt\nhi\n")
    with pytest.raises(ValueError, match=r"p\.csv.*'\.csv'.*\.parquet, \.jsonl, \.json"):
        load_prompts(csv_path)

    jsonl_path = write_prompts_jsonl(tmp_path / "p.jsonl", ["a", "b"], column="text")
    with pytest.raises(ValueError, match=r"p\.jsonl has no column 'prompt'.*\['text'\]"):
        load_prompts(jsonl_path)

    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl has no rows"):
        load_prompts(empty_jsonl)
    empty_parquet = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), empty_parquet)
    with pytest.raises(ValueError, match=r"empty\.parquet has no rows"):
        load_prompts(empty_parquet)

    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"prompt": 1}\n{"prompt": 2}\n')
    with pytest.raises(ValueError, match=r"numbers\.jsonl, column 'prompt', row 0: expected a str"):
        load_prompts(numbers)
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"prompt": "ok"}\n{"prompt": null}\n')
    with pytest.raises(ValueError, match=r"row 1: expected a string, got NoneType"):
        load_prompts(nulls)

    json_array = tmp_path / "array.json"
    json_array.write_text('[{"prompt": "a"}]')
    with pytest.raises(ValueError, match=r"array\.json as newline-delimited JSON"):
        load_prompts(json_array)


# --- TextGenerationEnv --------------------------------------------------------------------


def test_make_with_no_args_passes_env_checker():
    env = gym.make("rayrm/TextGeneration-v0")
    assert isinstance(env.unwrapped, TextGenerationEnv)
    run_checker(env)
    run_checker(gym.make("rayrm/TextGeneration-v0", render_mode="ansi"))


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Gymnasium warns when an id is registered again
        importlib.reload(envs)
    assert "rayrm/TextGeneration-v0" in gym.registry


@pytest.mark.parametrize("prompt_format", ["parquet", "jsonl"])
def test_saved_tokenizer_and_prompt_file_pass_env_checker(char_tokenizer, tmp_path, prompt_format):
    tokenizer_dir = tmp_path / "tokenizer"
    char_tokenizer.save_pretrained(tokenizer_dir)
    prompts = ["a file prompt", "another one", "x"]
    if prompt_format == "parquet":
        prompts_path = tmp_path / "prompts.parquet"
        pq.write_table(pa.table({"question": prompts}), prompts_path)
    else:
        prompts_path = write_prompts_jsonl(tmp_path / "prompts.jsonl", prompts, column="question")
    env = gym.make(
        "rayrm/TextGeneration-v0",
        tokenizer=str(tokenizer_dir),
        prompts=str(prompts_path),
        prompt_column="question",
        max_prompt_tokens=8,
        max_new_tokens=4,
        vocab_size=64,
    )
    run_checker(env)
    assert env.unwrapped.prompts == prompts
    assert env.action_space.n == 64
    _, info = env.reset(seed=3)
    assert info["prompt"] in prompts


def test_seeded_reset_reproduces_prompt_sequence():
    def prompt_sequence(seed: int) -> list[str]:
        env = TextGenerationEnv()
        infos = [env.reset(seed=seed)[1]] + [env.reset()[1] for _ in range(19)]
        assert all(BUILTIN_PROMPTS[i["prompt_index"]] == i["prompt"] for i in infos)
        return [info["prompt"] for info in infos]

    assert prompt_sequence(7) == prompt_sequence(7)
    assert prompt_sequence(7) != prompt_sequence(8)


def test_observation_holds_prompt_then_generated_ids(char_tokenizer):
    env = TextGenerationEnv(max_prompt_tokens=8, max_new_tokens=4)
    obs, info = env.reset(options={"prompt": "hi there"})
    assert info == {"prompt": "hi there", "prompt_index": -1}
    prompt_ids = char_tokenizer.encode("hi there", add_special_tokens=False)
    assert obs["input_ids"].shape == (12,) and obs["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(obs["input_ids"], prompt_ids + [PAD] * 4)
    np.testing.assert_array_equal(obs["length"], [8])

    a, b = char_id(char_tokenizer, "a"), char_id(char_tokenizer, "b")
    obs, _, _, _, info = env.step(a)
    obs, _, _, _, info = env.step(np.int64(b))
    np.testing.assert_array_equal(obs["input_ids"], prompt_ids + [a, b, PAD, PAD])
    np.testing.assert_array_equal(obs["length"], [10])
    assert info == {"prompt": "hi there", "num_generated": 2}  # the text comes at the end
    assert env.observation_space.contains(obs)


def test_prompt_is_left_truncated_and_empty_prompt_becomes_eos(char_tokenizer):
    env = TextGenerationEnv(max_prompt_tokens=4, max_new_tokens=2)
    obs, info = env.reset(options={"prompt": "abcdefg"})
    assert info["prompt"] == "abcdefg"  # info keeps the full text
    expected = char_tokenizer.encode("defg", add_special_tokens=False)
    np.testing.assert_array_equal(obs["input_ids"][:4], expected)
    np.testing.assert_array_equal(obs["length"], [4])

    obs, _ = env.reset(options={"prompt": ""})
    np.testing.assert_array_equal(obs["input_ids"], [EOS, PAD, PAD, PAD, PAD, PAD])
    np.testing.assert_array_equal(obs["length"], [1])


def test_eos_terminates_and_reward_is_paid_only_at_the_last_step(char_tokenizer):
    calls = []

    def reward_fn(prompts: list[str], completions: list[str]) -> list[float]:
        calls.append((prompts, completions))
        return [10.0 + len(completions[0])]

    env = TextGenerationEnv(reward_fn=reward_fn, max_new_tokens=8, render_mode="ansi")
    env.reset(options={"prompt_index": 2})
    rewards = []
    for char in "ok":
        _, reward, terminated, truncated, info = env.step(char_id(char_tokenizer, char))
        rewards.append(reward)
        assert not terminated and not truncated and "reward_deferred" not in info
    obs, reward, terminated, truncated, info = env.step(EOS)
    assert rewards == [0.0, 0.0]
    assert (reward, terminated, truncated) == (12.0, True, False)
    assert calls == [([BUILTIN_PROMPTS[2]], ["ok"])]
    assert info == {
        "prompt": BUILTIN_PROMPTS[2],
        "prompt_text": BUILTIN_PROMPTS[2],  # what the prompt's tokens decode to
        "completion": "ok",
        "num_generated": 3,
        "reward_deferred": False,
        "stop_token": True,  # EOS ended it: the last action is not in the text
    }
    assert obs["input_ids"][obs["length"][0] - 1] == EOS  # EOS is part of the sequence
    assert env.render() == BUILTIN_PROMPTS[2] + "ok"


def test_max_new_tokens_truncates_with_builtin_reward(char_tokenizer):
    env = TextGenerationEnv(max_new_tokens=3)
    env.reset(seed=0)
    a, b = char_id(char_tokenizer, "a"), char_id(char_tokenizer, "b")
    results = [env.step(token) for token in (a, b, a)]
    assert [r[1] for r in results] == [0.0, 0.0, pytest.approx(2 / 3)]
    assert [(r[2], r[3]) for r in results] == [(False, False), (False, False), (False, True)]
    assert results[-1][4]["completion"] == "aba"


def test_deferred_reward_pays_zero_and_sets_flag():
    env = TextGenerationEnv(reward_fn=None, max_new_tokens=2)
    assert env.reward_deferred
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(EOS)
    assert (reward, terminated, info["reward_deferred"], info["completion"]) == (
        0.0,
        True,
        True,
        "",
    )


def test_step_errors():
    env = TextGenerationEnv(max_new_tokens=1)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in the action space"):
        env.step(env.vocab_size)
    with pytest.raises(ValueError, match="not in the action space"):
        env.step(-1)
    env.step(3)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(3)


def test_vocab_size_may_exceed_tokenizer_but_not_fall_short(char_tokenizer):
    env = TextGenerationEnv(vocab_size=100, max_new_tokens=1)
    env.reset(seed=0)
    _, _, _, truncated, info = env.step(99)  # an id the tokenizer does not know decodes to ""
    assert truncated and info["completion"] == ""
    with pytest.raises(ValueError, match=r"vocab_size \(10\) must be >= len\(tokenizer\)"):
        TextGenerationEnv(vocab_size=10)


def test_reward_fn_specs():
    assert resolve_reward_fn("builtin") is vowel_reward
    assert resolve_reward_fn("envs.builtin:vowel_reward") is vowel_reward
    assert resolve_reward_fn(None) is None
    with pytest.raises(ValueError, match="'no_such_module:f'.*cannot import"):
        TextGenerationEnv(reward_fn="no_such_module:f")
    with pytest.raises(ValueError, match="'envs.builtin:nope'.*has no 'nope'"):
        TextGenerationEnv(reward_fn="envs.builtin:nope")
    with pytest.raises(ValueError, match="'envs.builtin:BUILTIN_CHARS' is not callable"):
        TextGenerationEnv(reward_fn="envs.builtin:BUILTIN_CHARS")
    with pytest.raises(ValueError, match="'vowels' must be 'builtin' or of the form"):
        TextGenerationEnv(reward_fn="vowels")


def test_reset_option_errors():
    env = TextGenerationEnv()
    with pytest.raises(ValueError, match="out of range for 64 prompts"):
        env.reset(options={"prompt_index": 64})
    with pytest.raises(ValueError, match="not both"):
        env.reset(options={"prompt": "x", "prompt_index": 0})


def test_tokenizer_without_pad_falls_back_to_eos(char_tokenizer, tmp_path: Path):
    char_tokenizer.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.pad_token = None
    env = TextGenerationEnv(tokenizer=tokenizer, prompts=["ab"], max_new_tokens=2)
    obs, _ = env.reset(seed=0)
    assert env.pad_token_id == EOS
    assert list(obs["input_ids"][2:]) == [EOS] * (env.max_seq_len - 2)


def test_text_is_decoded_once_per_completion_unless_stop_strings_are_watched(monkeypatch):
    for stop_strings, decodes in (((), 1), (("zzz",), 4)):
        env = TextGenerationEnv(max_new_tokens=4, stop_strings=stop_strings, reward_fn=None)
        calls: list[int] = []

        def counted(*args, texts=env.codec.texts, calls=calls, **kwargs):
            calls.append(1)
            return texts(*args, **kwargs)

        monkeypatch.setattr(env.codec, "texts", counted)
        env.reset(seed=0, options={"prompt": "hi"})
        a = char_id(env.tokenizer, "a")
        infos = [env.step(a)[4] for _ in range(4)]
        assert len(calls) == decodes, stop_strings
        assert ["completion" in i for i in infos] == [False, False, False, True]
        assert infos[-1]["completion"] == "aaaa" and infos[-1]["prompt_text"] == "hi"
