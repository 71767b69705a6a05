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
from rayrm.bench.repeats import in_order, repeat_summary
from rayrm.bench.support import BenchSpec, Workload, run_config
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


def test_repeats_alternate_and_summarise():
    turns = [("a", "iterate"), ("trl", "stock"), ("trl", "no_gc")]
    assert in_order(turns, 0) == turns and in_order(turns, 1) == turns[::-1]
    assert in_order(turns, 2) == turns

    def lines(repeat: int, tokens: float, ratio: float) -> list[dict]:
        rayrm = {
            "bench": "rayrm",
            "config": "default-separate-critic-async",
            "repeat": repeat,
            "resources": {"bundles": [{"CPU": 1.0}, {"CPU": 1.0}]},
            "tokens_per_s": tokens,
            "iteration_s_median": 640 / tokens,
            "flops": {"mfu": {"update": tokens / 4000}},
        }
        ratio_line = {
            "bench": "ratio",
            "rayrm_config": rayrm["config"],
            "rayrm_threads": 2,
            "rayrm_tokens_per_s": tokens,
            "rayrm_over_trl_no_gc_default": ratio,
            "median_step_ratio_no_gc_default": ratio + 0.01,
            "rayrm_async_rollouts": True,
        }
        return [rayrm, {"bench": "trl", "variant": "no_gc_default"}, ratio_line]

    every = lines(1, 2000.0, 1.1) + lines(2, 1800.0, 0.9) + lines(3, 2200.0, 1.0)
    (summary,) = repeat_summary(every, 3)
    assert summary["bench"] == "repeat_summary" and summary["repeats_ok"] == 3
    ratio = summary["rayrm_over_trl_no_gc_default"]
    assert ratio == {"median": 1.0, "min": 0.9, "max": 1.1, "runs": [1.1, 0.9, 1.0]}
    assert summary["tokens_per_s"]["median"] == 2000.0
    assert summary["update_mfu"]["max"] == pytest.approx(0.55)
    assert summary["median_step_ratio_no_gc_default"]["median"] == pytest.approx(1.01)
    assert "rayrm_threads" not in summary  # thread counts are not spread over
    assert summary["met_by_median"] == {"rayrm_over_trl_no_gc_default": True}


def test_model_flops_by_hand(tmp_path):
    from transformers import GPT2Config, GPT2Model

    from rayrm.bench.flops import (
        ModelShape,
        gpt2_shape,
        iteration_flops,
        peak_matmul_flops,
        utilisation,
    )

    # N = 100 non-embedding parameters, 1 layer, width 2, 10-token vocabulary: a forward costs
    # tokens * (2N + 2 * 1 * context * 2) + logit rows * 2 * 2 * 10.
    shape = ModelShape(non_embedding_params=100, n_layer=1, d_model=2, vocab_size=10)
    assert shape.forward(tokens=4, context=2, logit_tokens=2) == 4 * 208 + 80
    common = {"completions": 1, "prompt_tokens": 2, "completion_tokens": 2, "num_epochs": 1}
    # sample: prefill 2 tokens (mean context 1), decode 2 (mean context 3) with their logits:
    # 2*204 + 2*212 + 80 = 912. Update without a critic: reference 912 + 3 * policy 912.
    none = iteration_flops(policy=shape, reward=None, critic="none", **common)
    assert none == {"sample": 912, "score": 0, "update": 912 + 3 * 912}
    # A separate critic (no logits: 4 * 208 = 832) adds its old-values forward and training.
    sep = iteration_flops(policy=shape, reward=shape, critic="separate", **common)
    assert sep == {"sample": 912, "score": 832, "update": 912 + 832 + 3 * (912 + 832)}
    # Synchronous with a local learner the no-grad forwards run while the batch is scored.
    moved = iteration_flops(
        policy=shape, reward=shape, critic="separate", forwards_in_score=True, **common
    )
    assert moved == {"sample": 912, "score": 832 + 912 + 832, "update": 3 * (912 + 832)}
    shared = iteration_flops(policy=shape, reward=shape, critic="shared", **common)
    assert shared["update"] == 912 + 832 + 3 * 912  # old values need a trunk pass

    # GPT-2's non-embedding parameters: 12 d^2 + 13 d per layer, plus the final layer norm.
    GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    assert gpt2_shape(str(tmp_path)) == ModelShape(2 * (12 * 32**2 + 13 * 32) + 2 * 32, 2, 32, 50)

    peak = peak_matmul_flops(1, n=256, repeats=2)
    assert peak > 1e8  # any CPU multiplies faster than 0.1 GFLOP/s
    u = utilisation({"update": peak / 2}, {"update": 1.0, "sample": 0.5}, peak)
    assert u["mfu"] == {"update": 0.5} and u["achieved_flops_per_s"] == {"update": peak / 2}


def test_group_configurations_match_trl(tiny_policy_dir, prompts_file, tmp_path):
    """The groups section's rayrm configurations (run in lockstep like the default ones; with
    TRL in tests/test_bench_learning.py): TRL's GRPO and RLOO settings, no critic."""
    workload = Workload(tiny_policy_dir, None, prompts_file, 100, 64, 0, 0)
    grpo = run_config(BenchSpec(estimator="grpo", samples_per_prompt=4), workload, str(tmp_path))
    assert grpo.generation.samples_per_prompt == 4 and not grpo.ppo.uses_critic
    assert (grpo.ppo.kl_mode, grpo.ppo.kl_estimator, grpo.ppo.loss_aggregation) == (
        "loss",
        "k3",
        "token_mean",
    )
    rloo = run_config(BenchSpec(estimator="rloo", samples_per_prompt=4), workload, str(tmp_path))
    assert (rloo.ppo.advantage_estimator, rloo.ppo.kl_mode, rloo.ppo.kl_estimator) == (
        "rloo",
        "reward",
        "k1",
    )
    # Resources: rayrm's defaults (what rayrm train derives them from), or the flags' keys.
    ppo = run_config(BenchSpec(), workload, str(tmp_path))
    assert ppo.model.critic == "separate" and ppo.reward.num_cpus_per_actor == 1.0
    assert "num_cpus_per_learner" not in ppo.resources.model_fields_set  # claimed as in train
    assert ppo.resources.num_cpus_per_env_runner == 1.0 and ppo.run.num_cpus is None
    given = run_config(BenchSpec(num_cpus=4, num_cpus_per_learner=2), workload, str(tmp_path))
    assert given.resources.num_cpus_per_learner == 2 and given.run.num_cpus == 4
