"""The benchmark's pieces that need no run (``rayrm.bench``): the order and summary of repeats,
the model FLOPs counted by hand, and the groups section's configurations against TRL's (the
smoke run itself: tests/ray/bench/test_bench.py)."""

from __future__ import annotations

import pytest

from rayrm.bench.repeats import in_order, repeat_summary
from rayrm.bench.support import BenchSpec, Workload, run_config


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
    TRL in tests/ray/bench/test_against_trl.py): TRL's GRPO and RLOO settings, no critic."""
    workload = Workload(tiny_policy_dir, None, prompts_file, 100, 64, 0, 0)
    grpo = run_config(BenchSpec(estimator="grpo", samples_per_prompt=4), workload, str(tmp_path))
    assert grpo.generation.samples_per_prompt == 4 and not grpo.algorithm.uses_critic
    assert (
        grpo.algorithm.kl_mode,
        grpo.algorithm.kl_estimator,
        grpo.algorithm.loss_aggregation,
    ) == (
        "loss",
        "k3",
        "token_mean",
    )
    rloo = run_config(BenchSpec(estimator="rloo", samples_per_prompt=4), workload, str(tmp_path))
    assert (
        rloo.algorithm.advantage_estimator,
        rloo.algorithm.kl_mode,
        rloo.algorithm.kl_estimator,
    ) == (
        "rloo",
        "reward",
        "k1",
    )
    # Resources: rayrm's defaults (what rayrm train derives them from), or the flags' keys.
    cfg = run_config(BenchSpec(), workload, str(tmp_path))
    assert cfg.model.critic == "separate" and cfg.reward.num_cpus_per_actor == 1.0
    assert "num_cpus_per_learner" not in cfg.resources.model_fields_set  # claimed as in train
    assert cfg.resources.num_cpus_per_env_runner == 1.0 and cfg.run.num_cpus is None
    given = run_config(BenchSpec(num_cpus=4, num_cpus_per_learner=2), workload, str(tmp_path))
    assert given.resources.num_cpus_per_learner == 2 and given.run.num_cpus == 4
