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
import os
from dataclasses import replace
from pathlib import Path

import pytest

from rayrm.bench import run as bench
from rayrm.bench import trl as bench_trl
from rayrm.bench.support import Workload, run_config
from rayrm.cli import build_parser
from rayrm.experiment.resources import claim_local_cores, trial_bundles

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
    "resources",
}
MODEL_KEYS = {"n_layer", "n_head", "n_embd", "vocab_size", "policy_params", "reward_params"}
PHASES = {"sample", "score", "update", "wait", "sync", "iteration"}


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


@pytest.mark.timeout(180)
@pytest.mark.slow  # starts Ray
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
        "--iterations", "2",
        "--warmup", "1",
        "--rollouts", "async",
        "--critics", "separate",
        "--sections", "default,trl,memory",
        "--memory-vocab-sizes", "100,50000",
        "--learner-memory-vocab", "32000",
        "--workdir", str(tmp_path),
    )  # fmt: skip
    assert bench.main(args) == 0
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    by_kind: dict[str, list[dict]] = {}
    for line in lines:
        by_kind.setdefault(line["bench"], []).append(line)
    assert set(by_kind) == {"rayrm", "trl", "memory_per_step", "learner_memory"}, lines

    rayrm = {r["config"]: r for r in by_kind["rayrm"]}
    assert set(rayrm) == {"default-separate-critic-async"}
    assert rayrm["default-separate-critic-async"]["estimator"] == "gae"
    assert rayrm["default-separate-critic-async"]["async_rollouts"] is True
    for record in rayrm.values():
        assert RAYRM_KEYS <= set(record), RAYRM_KEYS - set(record)
        assert MODEL_KEYS <= set(record["model"])
        assert set(record["phase_s"]) == PHASES
        assert set(record["peak_rss_mb"]) == {"driver", "workers", "total"}
        assert record["peak_rss_mb"]["workers"] > 0  # the reward-model actor
        # Special tokens are suppressed in the benchmark policy: every completion is full length.
        assert record["tokens_per_iteration"] == 4 * record["max_new_tokens"]
        assert record["tokens_per_s"] > 0
        flops = record["flops"]
        assert flops["threads"] >= 1 and flops["peak_matmul_flops_per_s"] > 0
        assert set(flops["mfu"]) == {"sample", "score", "update"}
        assert 0 < flops["mfu"]["update"] < 1
    assert rayrm["default-separate-critic-async"]["model"]["vocab_size"] == 100
    _check_reserved_as_rayrm_train(args, rayrm["default-separate-critic-async"], tmp_path)

    assert by_kind["trl"] == [{"bench": "trl", "skipped": True, "reason": "not installed (test)"}]

    # The length-series line, from rayrm lines as the lengths section produces them.
    line = rayrm["default-separate-critic-async"]
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
    modes = {"chunked", "full_logits", "chunked_lora"}
    assert learner["vocab_size"] == 32000 and set(learner["peak_mb"]) == modes
    # Even at this smaller vocabulary the full-logits path peaks higher.
    assert learner["peak_mb"]["full_logits"] > learner["peak_mb"]["chunked"] > 0
    assert learner["ratio_full_over_chunked"] > 1
    # LoRA: no reference copy, no Adam state for the base; a sync sends the adapters alone.
    peak, sync = learner["learner_peak_mb"], learner["sync_mb"]
    assert peak["chunked_lora"] < peak["chunked"], peak
    assert 0 < sync["chunked_lora"] < 0.1 * sync["chunked"], sync


def _check_reserved_as_rayrm_train(args: argparse.Namespace, line: dict, tmp_path: Path):
    """The trial reserved exactly the bundles of the config ``rayrm train`` would run on this
    machine: the benchmark's config file, claimed by a lone local trial on all cores."""
    work = tmp_path / "workload"
    workload = Workload(
        str(work / "policy"), str(work / "reward"), str(work / "prompts.jsonl"), 100, 38, 0, 0
    )
    spec = replace(bench.spec_from_args(args), critic="separate", async_rollouts=True)
    cfg = claim_local_cores(run_config(spec, workload, str(tmp_path)), os.cpu_count())
    resources = line["resources"]
    assert resources["local_ray_cpus"] == os.cpu_count()
    assert resources["bundles"] == trial_bundles(cfg)[0]  # read back from the placement group
    assert resources["num_cpus_per_learner"] == cfg.resources.num_cpus_per_learner
    assert resources["reward_num_cpus_per_actor"] == 1.0  # rayrm's default, not a fraction
    # The update runs on its learner's CPUs, the sampler thread on its runner's (time-sharing
    # the reward actor's) and the update borrows it while it idles.
    threads = resources["threads"]
    assert threads["update"] == int(cfg.resources.num_cpus_per_learner)
    assert threads["sampler"] == 1 and line["flops"]["threads"] == threads["update_max"]


@pytest.mark.timeout(120)
@pytest.mark.slow  # starts Ray
def test_a_configuration_that_does_not_fit_fails_as_rayrm_train(tmp_path, capfd):
    """On a local Ray of one CPU the trial (learner 1 + reward actor 1) cannot be placed: the
    benchmark gives it no extra logical CPUs and ends with rayrm train's line."""
    args = _args(
        "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--batch-size", "4",
        "--max-new-tokens", "4", "--iterations", "1", "--warmup", "1", "--num-cpus", "1",
        "--critics", "separate", "--sections", "default", "--workdir", str(tmp_path),
    )  # fmt: skip
    assert bench.main(args) == 1
    out, err = capfd.readouterr()
    (line,) = [json.loads(x) for x in out.splitlines()]
    expected = "rayrm: error: resources: a trial asks for CPU 2, GPU 0 (2 bundles, PACK); the "
    assert line["bench"] == "error" and line["error"].startswith(expected), line
    assert "cluster's 1 node(s) have CPU 1" in line["error"] and line["error"] in err
