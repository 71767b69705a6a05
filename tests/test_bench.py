"""Smoke test of the benchmark (`rayrm bench`, `jobs/benchmark.py`) on a tiny configuration.

Runs ``rayrm.bench.run.main`` (a lockstep child process with its own local Ray, and the memory
check in-process) and checks that stdout is JSON lines with the documented keys, that every
completion ran to the token limit, and that the bytes stored per sampled step are the same
for a 100- and a 50k-token vocabulary. TRL is never run here: the comparison is reported as
skipped (TRL is a benchmark extra, not installed in CI). The length series (four more
training configurations) is checked on the summary it computes from the rayrm lines.
"""

from __future__ import annotations

import argparse
import json

import pytest

from rayrm.bench import run as bench
from rayrm.bench import trl as bench_trl
from rayrm.cli import build_parser

RAYRM_KEYS = {
    "config",
    "model",
    "batch_size",
    "max_new_tokens",
    "num_env_runners",
    "num_learners",
    "critic",
    "iterations",
    "generated_tokens",
    "tokens_per_iteration",
    "tokens_per_s",
    "tokens_per_s_training_step",
    "s_per_token",
    "iteration_s_median",
    "phase_s",
    "peak_rss_mb",
}
MODEL_KEYS = {"n_layer", "n_head", "n_embd", "vocab_size", "policy_params", "reward_params"}
PHASES = {"sample", "score", "update", "sync", "iteration"}


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


@pytest.mark.timeout(180)
def test_benchmark_smoke(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(bench_trl, "trl_unavailable_reason", lambda: "not installed (test)")
    args = _args(
        "--n-layer", "1",
        "--n-head", "2",
        "--n-embd", "32",
        "--batch-size", "4",
        "--max-new-tokens", "6",
        "--num-minibatches", "2",
        "--num-epochs", "1",
        "--iterations", "1",
        "--warmup", "1",
        "--critics", "separate",
        "--sections", "default,trl,memory,groups",
        "--samples-per-prompt", "2",
        "--memory-vocab-sizes", "100,50000",
        "--learner-memory-vocab", "32000",
        "--workdir", str(tmp_path),
    )  # fmt: skip
    assert bench.main(args) == 0
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    by_kind: dict[str, list[dict]] = {}
    for line in lines:
        by_kind.setdefault(line["bench"], []).append(line)
    assert set(by_kind) == {"rayrm", "trl", "trl_group", "memory_per_step", "learner_memory"}
    assert by_kind["trl_group"] == [
        {"bench": "trl_group", "skipped": True, "reason": "not installed (test)"}
    ]

    rayrm = {r["config"]: r for r in by_kind["rayrm"]}
    assert set(rayrm) == {"default-separate-critic", "groups-grpo", "groups-rloo"}
    for algo in ("grpo", "rloo"):  # critic-free, groups of 2 completions per prompt
        record = rayrm[f"groups-{algo}"]
        assert record["estimator"] == algo and record["critic"] == "none"
        assert record["samples_per_prompt"] == 2
    assert rayrm["default-separate-critic"]["estimator"] == "gae"
    for record in rayrm.values():
        assert RAYRM_KEYS <= set(record), RAYRM_KEYS - set(record)
        assert MODEL_KEYS <= set(record["model"])
        assert set(record["phase_s"]) == PHASES
        assert set(record["peak_rss_mb"]) == {"driver", "workers", "total"}
        assert record["peak_rss_mb"]["workers"] > 0  # the reward-model actor
        # Special tokens are suppressed in the benchmark policy: every completion is full length.
        assert record["tokens_per_iteration"] == 4 * record["max_new_tokens"]
        assert record["tokens_per_s"] > 0
    assert rayrm["default-separate-critic"]["model"]["vocab_size"] == 100

    assert by_kind["trl"] == [{"bench": "trl", "skipped": True, "reason": "not installed (test)"}]

    # The length-series line, from rayrm lines as the lengths section produces them.
    line = rayrm["default-separate-critic"]
    longer = {**line, "max_new_tokens": 12, "s_per_token": 1.5 * line["s_per_token"]}
    series = bench.length_summary([line, longer])
    assert series["lengths"] == [6, 12]
    assert series["ratio_12_over_6"] == pytest.approx(1.5)
    assert series["met"] is False and series["target"] == bench.LENGTH_RATIO_TARGET
    assert set(series["s_per_token"]) == {"6", "12"}

    (memory,) = by_kind["memory_per_step"]
    small, large = memory["bytes_per_step"]["100"], memory["bytes_per_step"]["50000"]
    assert small == large and memory["equal"], memory
    assert large < memory["full_logits_bytes_per_step"]["50000"] / 100

    (learner,) = by_kind["learner_memory"]
    assert learner["vocab_size"] == 32000 and set(learner["peak_mb"]) == {"chunked", "full_logits"}
    # Even at this smaller vocabulary the full-logits path peaks higher.
    assert learner["peak_mb"]["full_logits"] > learner["peak_mb"]["chunked"] > 0
    assert learner["ratio_full_over_chunked"] > 1
