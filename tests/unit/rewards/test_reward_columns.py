"""A single-turn reward function receives every other column of its prompt's row.

From the prompts file (JSON Lines and Parquet, typed as they give them) through the env's info,
the completion record and the reward pipeline, to the function: each column it names as a
parameter (or every column, with ``**kwargs``) as a list of the rows' values, as TRL passes a
dataset's columns. On Qwen2 (byte-level BPE, ChatML, two EOS ids): conversations keep theirs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import episode_of
from transformers import AutoTokenizer

from envs.text_generation import TextGenerationEnv
from rayrm.rewards import pool_from_config
from rayrm.rewards.base import Completion
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rewards.shaping import RewardPipeline
from rayrm.rl.episodes import completion_of

ROWS = [
    {"prompt": "2+3=", "reference": "5", "answer": 5, "tests": ["a", "b"], "meta": {"k": 1}},
    {"prompt": "4+4=", "reference": "8", "answer": 8, "tests": [], "meta": {"k": 2}},
]
SEEN: dict[str, Any] = {}


def exact_answer(prompts, completions, answer):
    """Named ``answer`` only: gets that column."""
    SEEN["answer"] = answer
    return [float(str(a) in c) for a, c in zip(answer, completions, strict=True)]


def every_column(prompts, completions, references=None, **kwargs):
    SEEN["kwargs"] = kwargs
    SEEN["references"] = references
    return [0.0] * len(prompts)


def no_columns(prompts, completions):
    return [1.0] * len(prompts)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_the_rows_other_columns_reach_the_reward_function(archs, tmp_path: Path, kind: str):
    if kind == "jsonl":
        path = tmp_path / "prompts.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    else:
        path = tmp_path / "prompts.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    tok = AutoTokenizer.from_pretrained(archs["qwen2"])
    env = TextGenerationEnv(tokenizer=tok, prompts=str(path), reward_fn=None, max_new_tokens=8)
    five = tok(" 5", add_special_tokens=False)["input_ids"]
    episodes = [
        episode_of(env, [*five, tok.eos_token_id], {"prompt_index": 0}),
        episode_of(env, five * 8, {"prompt_index": 1}),
    ]
    records = [completion_of(e) for e in episodes]
    # The row's other columns, typed as the file gives them; prompt and reference stay apart.
    assert [r.columns for r in records] == [
        {k: v for k, v in row.items() if k not in ("prompt", "reference")} for row in ROWS
    ]
    assert [r.reference for r in records] == ["5", "8"]

    pool = pool_from_config(_reward(f"{__name__}:exact_answer"), local=True)
    scored = RewardPipeline(pool).score(records)
    assert SEEN.pop("answer") == [5, 8]
    np.testing.assert_array_equal(scored.raw, [1.0, 0.0])  # " 5" answers 2+3 only

    RewardPipeline(pool_from_config(_reward(f"{__name__}:every_column"), local=True)).score(records)
    kwargs = SEEN.pop("kwargs")
    assert kwargs.pop("ids") == [r.id for r in records] and kwargs.pop("messages") is None
    assert kwargs == {  # with **kwargs, every column besides the standard arguments
        "answer": [5, 8],
        "tests": [["a", "b"], []],
        "meta": [{"k": 1}, {"k": 2}],
    }
    assert SEEN.pop("references") == ["5", "8"]


def test_columns_go_only_where_they_are_named():
    rows = [{"answer": 1, "ids": "not passed: ids are the completions' own"}, None]
    named = RewardFunctionActor(f"{__name__}:exact_answer")
    assert named.score(["p", "q"], ["1", "x"], columns=rows).tolist() == [1.0, 0.0]
    assert SEEN.pop("answer") == [1, None]  # a row without the column: None
    RewardFunctionActor(f"{__name__}:every_column").score(["p", "q"], ["a", "b"], columns=rows)
    assert SEEN.pop("kwargs") == {"answer": [1, None], "messages": None, "ids": None}
    # A function that names no column is called as before (the built-in rule reward too).
    plain = RewardFunctionActor(f"{__name__}:no_columns")
    assert plain.score(["p", "q"], ["a", "b"], columns=rows).tolist() == [1.0, 1.0]
    builtin = RewardFunctionActor("envs.builtin:vowel_reward")
    assert builtin.score(["p"], ["ae"], columns=[{"answer": 1}]).tolist() == [1.0]


def test_a_list_of_prompts_has_no_columns(archs):
    tok = AutoTokenizer.from_pretrained(archs["qwen2"])
    env = TextGenerationEnv(tokenizer=tok, prompts=["hi"], reward_fn=None, max_new_tokens=2)
    episode = episode_of(env, [tok.eos_token_id], {"prompt_index": 0})
    record = completion_of(episode)
    assert record.columns is None and "columns" not in episode.get_infos(0)
    assert Completion("p", "c", True, 1).columns is None


def _reward(function: str) -> Any:
    from rayrm.config import config_from_dict

    d = {"model": {"path": "m"}, "data": {"prompts": "p.jsonl"}, "reward": {"function": function}}
    return config_from_dict(d).reward


def test_preflight_calls_the_function_with_the_rows_columns(tiny_policy_dir, tmp_path: Path):
    """``rayrm train``'s preflight probes the function as its actors call it: a function that
    needs a column (no default) passes, and sees the first rows' values."""
    from helpers import make_config

    from rayrm.experiment.preflight import preflight

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    cfg = make_config(
        tiny_policy_dir, str(path), tmp_path, reward={"function": f"{__name__}:exact_answer"}
    )
    assert "prompts: 2" in preflight(cfg)
    assert SEEN.pop("answer") == [5, 8]
