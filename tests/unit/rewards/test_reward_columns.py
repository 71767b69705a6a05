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
from rayrm.rewards import completion_records, pool_from_config
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
    assert named.score(completion_records(["p", "q"], ["1", "x"], columns=rows)).tolist() == [
        1.0,
        0.0,
    ]
    assert SEEN.pop("answer") == [1, None]  # a row without the column: None
    RewardFunctionActor(f"{__name__}:every_column").score(
        completion_records(["p", "q"], ["a", "b"], columns=rows)
    )
    assert SEEN.pop("kwargs") == {"answer": [1, None], "messages": None, "ids": None}
    # A function that names no column is called as before (the built-in rule reward too).
    plain = RewardFunctionActor(f"{__name__}:no_columns")
    assert plain.score(completion_records(["p", "q"], ["a", "b"], columns=rows)).tolist() == [
        1.0,
        1.0,
    ]
    builtin = RewardFunctionActor("envs.builtin:vowel_reward")
    assert builtin.score(completion_records(["p"], ["ae"], columns=[{"answer": 1}])).tolist() == [
        1.0
    ]


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


CALLS: list[dict[str, Any]] = []


def keeps_its_arguments(prompts, completions, references, messages, ids, answer):
    CALLS.append(dict(p=prompts, c=completions, r=references, m=messages, i=ids, a=answer))
    return [float(len(c)) for c in completions]


def test_records_reach_the_function_unpacked_in_order_chunk_by_chunk():
    """A pool of batch_size 2 calls the function once per chunk, with the chunk's records as
    the lists and keywords it names (as before records: one list per argument), in order."""
    from rayrm.config import RewardSettings
    from rayrm.rewards import RewardPool

    n = 5
    chat = [{"role": "user", "content": "hi"}]
    items = completion_records(
        [f"p{i}" for i in range(n)],
        ["x" * i for i in range(n)],
        references=[f"r{i}" if i < 3 else None for i in range(n)],
        messages=[chat if i % 2 else None for i in range(n)],
        ids=[f"id-{i}" for i in range(n)],
        columns=[{"answer": i, "other": "x"} for i in range(n)],
    )
    reward = RewardSettings(
        source="function", function=f"{__name__}:keeps_its_arguments", batch_size=2
    )
    with RewardPool(reward, local=True) as pool:
        scores = pool.score(items)
    np.testing.assert_array_equal(scores, range(n))
    calls, CALLS[:] = list(CALLS), []
    assert [c["p"] for c in calls] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    assert [c["c"] for c in calls] == [["", "x"], ["xx", "xxx"], ["xxxx"]]
    assert [c["r"] for c in calls] == [["r0", "r1"], ["r2", None], [None]]
    # The batch has conversations: a chunk without one gets its list all the same.
    assert [c["m"] for c in calls] == [[None, chat], [None, chat], [None]]
    assert [c["i"] for c in calls] == [["id-0", "id-1"], ["id-2", "id-3"], ["id-4"]]
    assert [c["a"] for c in calls] == [[0, 1], [2, 3], [4]]
    assert all(type(v) is list for c in calls for v in c.values() if v is not None)


def test_records_travel_by_pickle_and_are_built_from_lists_of_one_length():
    import pickle

    [record] = completion_records(
        ["p"], ["c"], references=["r"], ids=["i"], columns=[{"answer": [1]}]
    )
    assert pickle.loads(pickle.dumps(record)) == record
    assert record == Completion("p", "c", reference="r", id="i", columns={"answer": [1]})
    assert record.finished is None and record.num_tokens is None  # held-out samples
    for lists, what in (
        ({"references": ["r", "s"]}, "2 references"),
        ({"ids": []}, "0 ids"),
        ({"columns": [None] * 3}, "3 column rows"),
    ):
        with pytest.raises(ValueError, match=f"got 1 prompts but {what}"):
            completion_records(["p"], ["c"], **lists)
