"""The benchmark against TRL 1.12, end to end at toy sizes (the ``trl`` marker: needs the
``bench`` extra, which CI does not install; each skips, saying so, without TRL): the groups and
learning sections against TRL's GRPOTrainer, RLOOTrainer and PPOTrainer, and the tools section
in lockstep (without TRL: tests/unit/bench/test_bench_learning.py and test_bench_tools.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from rayrm.cli import build_parser


def _default_torch_threads() -> int:
    """torch's thread count in a fresh process started without OMP_NUM_THREADS."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "import torch; print(torch.get_num_threads())"
    return int(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    )


@pytest.mark.trl
@pytest.mark.timeout(900)
def test_groups_and_learning_against_trl(tmp_path, capfd):
    """End to end with TRL 1.12: PPO, GRPO, RLOO and learning print TRL and ratio lines."""
    from rayrm.bench import run as bench
    from rayrm.bench import trl as bench_trl

    if bench_trl.trl_unavailable_reason() is not None:
        pytest.skip(bench_trl.trl_unavailable_reason())
    args = build_parser().parse_args(
        [
            "bench",
            "--n-layer", "1",
            "--n-head", "2",
            "--n-embd", "32",
            "--batch-size", "8",
            "--max-new-tokens", "4",
            "--iterations", "1",
            "--warmup", "1",
            "--sections", "default,trl,groups,learning",
            "--critics", "separate",
            "--learning-demo-size", "smoke",
            "--learning-iterations", "1",
            "--learning-seeds", "0",
            "--learning-eval-samples", "1",
            "--workdir", str(tmp_path),
        ]
    )  # fmt: skip
    assert bench.main(args) == 0
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    kinds = [line["bench"] for line in lines]
    assert kinds.count("trl_group") == 2 and kinds.count("group_ratio") == 2, kinds
    for ratio in (line for line in lines if line["bench"] == "group_ratio"):
        assert ratio["trl_over_rayrm_s_per_iteration"] > 0
    variants = {line["variant"]: line for line in lines if line["bench"] == "trl"}
    assert set(variants) == {"stock", "no_gc", "stock_default", "no_gc_default"}
    assert variants["no_gc_default"]["threads"] == _default_torch_threads()
    (ratio,) = [line for line in lines if line["bench"] == "ratio"]
    assert ratio["rayrm_over_trl_no_gc_default"] > 0
    # rayrm's update: its learner's CPUs as rayrm train claims them beside a 1-CPU reward actor.
    assert ratio["rayrm_threads"] == variants["no_gc"]["threads"] == max(1, os.cpu_count() - 1)
    runs = [line for line in lines if line["bench"] == "learning"]
    assert {(r["trainer"], r["algo"]) for r in runs} == {
        (t, a) for t in ("rayrm", "trl") for a in ("ppo", "grpo", "rloo")
    }
    assert all(math.isfinite(r["reward_gain"]) for r in runs)
    summaries = [line for line in lines if line["bench"] == "learning_ratio"]
    assert [s["algo"] for s in summaries] == ["ppo", "grpo", "rloo"]
    assert all("met" in s for s in summaries)


@pytest.mark.trl
@pytest.mark.timeout(600)
def test_tools_section_against_trl(inputs, tmp_path, capfd):
    """End to end with TRL 1.12: one measured iteration of each trainer, in lockstep."""
    from rayrm.bench import run as bench
    from rayrm.bench import trl as bench_trl
    from rayrm.cli import build_parser

    if bench_trl.trl_unavailable_reason() is not None:
        pytest.skip(bench_trl.trl_unavailable_reason())
    model, rows = inputs
    args = build_parser().parse_args(
        [
            "bench",
            "--sections", "tools",
            "--tools-model", model,
            "--tools-rows", rows,
            "--tools-max-new-tokens", "6",
            "--batch-size", "8",
            "--samples-per-prompt", "4",
            "--num-epochs", "1",
            "--iterations", "1",
            "--warmup", "1",
            "--workdir", str(tmp_path),
        ]
    )  # fmt: skip
    assert bench.main(args) == 0
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    by_kind = {line["bench"]: line for line in lines}
    assert set(by_kind) == {"tools_rayrm", "tools_trl", "tools_ratio"}, lines
    for kind in ("tools_rayrm", "tools_trl"):
        line = by_kind[kind]
        assert line["iterations"] == 1 and line["iteration_s_median"] > 0
        assert len(line["success_by_iteration"]) == 2  # the warm-up's and the measured one's
        assert 0.0 <= line["success_last"] <= 1.0 and line["episodes_seen"] == 16
        assert line["settings"]["max_new_tokens"] == 6
    assert (
        by_kind["tools_rayrm"]["resources"]["threads"]["update"] == by_kind["tools_trl"]["threads"]
    )
    ratio = by_kind["tools_ratio"]
    assert ratio["trl_over_rayrm_s_per_iteration"] > 0 and set(ratio["met"]) == {
        "speed",
        "success_gain",
    }
