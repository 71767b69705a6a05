"""The benchmark's learning section (rayrm.bench.learning): the configs of the learning runs,
the shared evaluation (byte-level BPE policy and reward model built locally, the real loading
code) and the side-by-side summary. (With TRL installed, the groups and learning sections end to
end against TRL at toy sizes: tests/ray/bench/test_against_trl.py.)
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from rayrm.bench import learning
from rayrm.bench.learning import LearnSettings, learn_spec, rayrm_config, task_workload
from rayrm.data.prompts import write_prompts_jsonl
from rayrm.models.tiny import build_tiny_policy, build_tiny_reward_model, build_tokenizer


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A byte-level BPE policy, a reward model for it, training and held-out prompts."""
    d = tmp_path_factory.mktemp("task")
    tokenizer = build_tokenizer("gpt2")
    prompts = ["the food was", "the room was", "service was", "the view was"]
    return {
        "sft_model": build_tiny_policy(d / "sft", tokenizer, n_positions=64),
        "reward_model": build_tiny_reward_model(d / "rm", tokenizer),
        "prompts": str(write_prompts_jsonl(d / "prompts.jsonl", prompts)),
        "heldout": str(write_prompts_jsonl(d / "heldout.jsonl", ["the salad was", "the bed was"])),
    }


def test_learning_run_configs(task, tmp_path):
    s = LearnSettings()
    workload = task_workload(task)
    ppo_cfg = rayrm_config(learn_spec(s, "ppo", 3), workload, str(tmp_path), "x")
    # TRL's PPO settings: a separate critic started from the reward model, beta fixed.
    assert ppo_cfg.model.critic == "separate" and ppo_cfg.model.critic_path == task["reward_model"]
    assert ppo_cfg.algorithm.advantage_estimator == "gae" and not ppo_cfg.algorithm.adaptive_kl
    assert ppo_cfg.generation.samples_per_prompt == 1 and ppo_cfg.seed == 3
    assert (ppo_cfg.algorithm.batch_size, ppo_cfg.algorithm.lr, ppo_cfg.algorithm.kl_coef) == (
        32,
        1e-4,
        0.05,
    )
    assert not ppo_cfg.algorithm.async_rollouts
    # rayrm train's resources: the reward actor at its default, all cores, the learner claimed.
    assert ppo_cfg.reward.num_cpus_per_actor == 1.0 and ppo_cfg.run.num_cpus is None
    assert "num_cpus_per_learner" not in ppo_cfg.resources.model_fields_set
    pipelined = replace(learn_spec(s, "ppo", 3), async_rollouts=True)
    assert rayrm_config(pipelined, workload, str(tmp_path), "x").algorithm.async_rollouts
    grpo = rayrm_config(learn_spec(s, "grpo", 0), workload, str(tmp_path), "x")
    assert grpo.algorithm.advantage_estimator == "grpo" and grpo.generation.samples_per_prompt == 4
    assert (grpo.algorithm.kl_mode, grpo.algorithm.kl_estimator) == ("loss", "k3")
    assert grpo.algorithm.loss_aggregation == "token_mean"
    rloo = rayrm_config(learn_spec(s, "rloo", 0), workload, str(tmp_path), "x")
    assert (
        rloo.algorithm.advantage_estimator,
        rloo.algorithm.kl_mode,
        rloo.algorithm.kl_estimator,
    ) == (
        "rloo",
        "reward",
        "k1",
    )
    for cfg in (ppo_cfg, grpo, rloo):  # the same completions per run
        assert cfg.algorithm.batch_size * cfg.run.num_iterations == s.batch_size * s.iterations


def test_evaluation_is_the_same_for_every_policy(task, tmp_path):
    s = LearnSettings(eval_samples=2, max_new_tokens=6)
    first = learning.evaluate(task["sft_model"], task, s)
    assert first["n"] == 2 * 2  # held-out rows x samples
    assert set(first) == {"n", "reward", "reward_se", "gold", "gold_se"}
    assert first == learning.evaluate(task["sft_model"], task, s)  # same seeds, same scores
    other = build_tiny_policy(tmp_path / "other", build_tokenizer("gpt2"), n_positions=64, seed=5)
    assert learning.evaluate(other, task, s)["reward"] != first["reward"]


def test_learning_summary():
    runs = [
        {
            "bench": "learning",
            "trainer": t,
            "algo": "grpo",
            "seed": i,
            "reward_gain": r,
            "gold_gain": g,
        }
        for t, i, r, g in [
            ("rayrm", 0, 1.0, 0.2),
            ("rayrm", 1, 2.0, 0.4),
            ("trl", 0, 1.0, 0.1),
            ("trl", 1, 1.0, 0.1),
        ]
    ]
    runs.append({"bench": "error", "trainer": "trl", "algo": "grpo", "seed": 2})
    line = learning._learning_ratio("grpo", runs, LearnSettings(iterations=10))
    assert line["completions"] == 320
    assert line["rayrm_reward_gain"] == pytest.approx(1.5)
    assert line["rayrm_reward_gain_per_seed"] == [1.0, 2.0]
    assert line["trl_reward_gain"] == pytest.approx(1.0)
    assert line["rayrm_over_trl_reward_gain"] == pytest.approx(1.5)
    assert line["rayrm_minus_trl_gold_gain"] == pytest.approx(0.2)
    assert line["met"] is True
    for r in runs:
        if r["trainer"] == "trl" and "reward_gain" in r:
            r["reward_gain"] = -1.0  # TRL lost reward: no ratio, rayrm still ahead
    line = learning._learning_ratio("grpo", runs, LearnSettings())
    assert line["rayrm_over_trl_reward_gain"] is None and line["met"] is True
    # Pipelined rayrm runs (--rollouts sync,async) are summed apart and set against sync.
    runs += [
        {**runs[0], "trainer": learning.ASYNC, "reward_gain": 1.25},
        {**runs[1], "trainer": learning.ASYNC, "reward_gain": 1.75},
    ]
    line = learning._learning_ratio("grpo", runs, LearnSettings())
    assert line[f"{learning.ASYNC}_reward_gain_per_seed"] == [1.25, 1.75]
    assert line["async_minus_sync_reward_gain"] == pytest.approx(0.0)
    assert line["rayrm_reward_gain"] == pytest.approx(1.5)
