"""Dataset reading, ``rayrm data inspect`` statistics and ``rayrm data pairs``."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import z_only_policy

from envs.builtin import BUILTIN_PROMPTS, build_char_tokenizer, vowel_reward
from rayrm.analysis.inspect import (
    format_inspection,
    inspect_dataset,
    inspect_main,
)
from rayrm.cli import build_parser
from rayrm.config import ConfigError
from rayrm.data.prompts import write_prompts_jsonl
from rayrm.stages.preference_data import (
    PAIR_COLUMNS,
    build_preference_pairs,
    pairs_main,
)
from rayrm.stages.tables import read_table, string_column


def test_read_table_formats(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("one\n\n  \ntwo words\n", encoding="utf-8")
    assert read_table(txt).column("text").to_pylist() == ["one", "two words"]
    jsonl = write_prompts_jsonl(tmp_path / "p.jsonl", ["a", "bb"])
    assert read_table(jsonl).column("prompt").to_pylist() == ["a", "bb"]
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "t.parquet")
    assert read_table(tmp_path / "t.parquet").num_rows == 2
    with pytest.raises(ConfigError) as e:
        read_table(tmp_path / "missing.parquet", key="data.path")
    assert e.value.key == "data.path" and "not found" in str(e.value)
    (tmp_path / "t.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="unsupported extension"):
        read_table(tmp_path / "t.csv")
    table = pa.table({"s": ["a", None]})
    with pytest.raises(ConfigError) as e:
        string_column(table, "s", path="f", key="data.prompt_column")
    assert e.value.key == "data.prompt_column" and "row 1" in str(e.value)
    with pytest.raises(ConfigError, match="no column 'q'"):
        string_column(table, "q", path="f")


def test_inspect_dataset_stats(tmp_path):
    path = tmp_path / "d.parquet"
    texts = ["ab", "abcd", "abcdef", "abcdefgh"]
    pq.write_table(pa.table({"text": texts, "score": [1.0, 2.0, 3.0, None]}), path)
    stats = inspect_dataset(path, build_char_tokenizer())
    assert stats["rows"] == 4
    text = stats["columns"]["text"]
    assert text["chars"] == {"min": 2.0, "mean": 5.0, "p50": 4.0, "p95": 8.0, "max": 8.0}
    assert text["tokens"] == text["chars"]  # one token per character
    score = stats["columns"]["score"]
    assert score["nulls"] == 1 and score["values"]["mean"] == 2.0 and "chars" not in score
    assert inspect_dataset(path, max_rows=2)["columns"]["text"]["chars"]["max"] == 4.0
    table = format_inspection(stats)
    assert "4 rows, 2 columns" in table
    assert any(
        line.startswith("text") and "2 / 5 / 4 / 8 / 8" in line for line in table.splitlines()
    )


def test_inspect_cli(tmp_path, tiny_policy_dir, capsys):
    path = write_prompts_jsonl(tmp_path / "p.jsonl", BUILTIN_PROMPTS)
    args = build_parser().parse_args(
        ["data", "inspect", str(path), "--tokenizer", tiny_policy_dir, "--json"]
    )
    assert inspect_main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == len(BUILTIN_PROMPTS) and "tokens" in stats["columns"]["prompt"]


def test_build_preference_pairs(tmp_path, tiny_policy_dir):
    prompts = write_prompts_jsonl(tmp_path / "p.jsonl", BUILTIN_PROMPTS[:24])
    out = tmp_path / "pairs" / "pairs.parquet"
    summary = build_preference_pairs(
        tiny_policy_dir, prompts, "envs.builtin:vowel_reward", out, max_new_tokens=8, seed=1
    )
    table = pq.read_table(out)
    assert tuple(table.column_names) == PAIR_COLUMNS
    rows = table.to_pylist()
    assert summary["num_pairs"] == len(rows) > 12
    assert summary["num_attempts"] == 24 and summary["num_dropped"] == 24 - len(rows)
    for row in rows:
        assert row["prompt"] in BUILTIN_PROMPTS and row["chosen"] != row["rejected"]
        assert row["chosen_score"] > row["rejected_score"]
        scores = vowel_reward([row["prompt"]] * 2, [row["chosen"], row["rejected"]])
        assert scores == pytest.approx([row["chosen_score"], row["rejected_score"]])
    assert table.schema.metadata[b"rayrm.judge"] == b"envs.builtin:vowel_reward"
    # Same seed, same pairs.
    again = build_preference_pairs(
        tiny_policy_dir, prompts, vowel_reward, tmp_path / "again.parquet", max_new_tokens=8, seed=1
    )
    assert again["num_pairs"] == len(rows)
    assert pq.read_table(tmp_path / "again.parquet").to_pylist() == rows


def test_pairs_against_a_second_policy(tmp_path, tiny_policy_dir):
    """``against``: one completion of each pair from the policy, the other from the second
    policy (here one that writes only "z"), whichever the judge prefers."""
    prompts = write_prompts_jsonl(tmp_path / "p.jsonl", BUILTIN_PROMPTS[:16])
    zs = z_only_policy(tiny_policy_dir, tmp_path / "z")
    out = tmp_path / "pairs.parquet"
    summary = build_preference_pairs(
        tiny_policy_dir, prompts, "envs.builtin:vowel_reward", out, max_new_tokens=6, seed=2,
        against=zs,
    )  # fmt: skip
    table = pq.read_table(out)
    rows = table.to_pylist()
    assert summary["num_pairs"] == len(rows) > 8
    for row in rows:  # "z" has no vowels: the policy's side wins whenever it has one
        assert row["rejected"] == "zzzzzz" and "z" not in row["chosen"]
    assert table.schema.metadata[b"rayrm.against"] == zs.encode()


def test_pairs_cli_num_pairs_and_margin(tmp_path, tiny_policy_dir, capsys):
    prompts = write_prompts_jsonl(tmp_path / "p.jsonl", BUILTIN_PROMPTS[:8])
    out = tmp_path / "pairs.parquet"
    args = build_parser().parse_args(
        ["data", "pairs", "--policy", tiny_policy_dir, "--prompts", str(prompts), "--out", str(out)]
        + ["--judge", "envs.builtin:vowel_reward", "--num-pairs", "20", "--min-margin", "0.05"]
        + ["--max-new-tokens", "8", "--batch-size", "16"]
    )
    assert pairs_main(args) == 0
    assert "wrote 20 pairs" in capsys.readouterr().out
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 20
    assert all(r["chosen_score"] - r["rejected_score"] > 0.05 for r in rows)


def test_pairs_errors_name_the_option(tmp_path, tiny_policy_dir):
    prompts = write_prompts_jsonl(tmp_path / "p.jsonl", ["a"])
    with pytest.raises(ConfigError) as e:
        build_preference_pairs(
            tiny_policy_dir, prompts, "envs.builtin:nope", tmp_path / "o.parquet"
        )
    assert e.value.key == "judge"
    with pytest.raises(ConfigError) as e:
        build_preference_pairs(
            tiny_policy_dir,
            prompts,
            "envs.builtin:vowel_reward",
            tmp_path / "o.parquet",
            prompt_column="question",
        )
    assert e.value.key == "prompt_column"
    with pytest.raises(ConfigError) as e:
        build_preference_pairs(
            tmp_path / "no-policy", prompts, "envs.builtin:vowel_reward", tmp_path / "o.parquet"
        )
    assert e.value.key == "policy"
