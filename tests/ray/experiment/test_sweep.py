"""`rayrm tune`: search spaces, ASHA and PBT sweeps, best-policy export, β across PBT restores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_config
from helpers import sweep_config as _sweep_config

from rayrm.config import config_from_dict
from rayrm.experiment.sweep import param_space
from rayrm.rl.algorithm import build_algo_config


def test_asha_sweep_table_and_best_export(
    ray_local, tiny_policy_dir, prompts_file, tmp_path, capfd
):
    from transformers import AutoModelForCausalLM

    from rayrm.cli import main

    cfg = _sweep_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        # The estimator is searched like any key: PPO with a critic against critic-free RLOO.
        search_space={"algorithm.advantage_estimator": {"grid": ["gae", "rloo"]}},
        scheduler="asha",
        grace_period=1,
        metric="objective/reward_minus_kl",
    )
    path = tmp_path / "sweep.yaml"
    cfg.save_yaml(path)
    assert main(["tune", str(path)]) == 0
    out = capfd.readouterr().out
    table = out[out.index("trial ") :].splitlines()
    assert "algorithm.advantage_estimator" in table[0] and "objective/reward_minus_kl" in table[0]
    assert sorted(line.split()[1] for line in table[1:3]) == ["gae", "rloo"]
    best = Path(cfg.run.storage_path) / "sweep" / "best_policy"
    assert AutoModelForCausalLM.from_pretrained(best).config.vocab_size > 0
    # A finished sweep resumes to the same end without re-running trials.
    assert main(["tune", str(path), "--resume"]) == 0


def test_pbt_sweep_runs(ray_local, tiny_policy_dir, prompts_file, tmp_path):
    from rayrm.experiment.sweep import run_tune

    cfg = _sweep_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        search_space={"algorithm.lr": {"loguniform": [1e-4, 1e-3]}},
        scheduler="pbt",
        perturbation_interval=2,
        pbt_synch=True,  # every perturbation point perturbs (asynchronous: timing decides)
        num_samples=2,
    )
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"num_iterations": 3})})
    # A peer's exploit restores a checkpoint of up to one interval ago: 2 / 1 + 2 are kept.
    assert param_space(cfg)["rayrm"]["run"]["keep_checkpoints"] == 4
    _, results = run_tune(cfg)
    assert not results.errors
    assert [r.metrics["training_iteration"] for r in results] == [3, 3]
    # A perturbation happened at iteration 2: the worse trial exploited the other's checkpoint
    # and went on with a learning rate other than the one it started with.
    lrs = []
    for result in results:
        rows = [json.loads(line) for line in (Path(result.path) / "result.json").open()]
        lrs.append([row["config"]["rayrm"]["algorithm"]["lr"] for row in rows])
    assert any(len(set(trial)) > 1 for trial in lrs), lrs


@pytest.mark.parametrize("mutated", [False, True])
def test_adaptive_beta_travels_with_checkpoints(
    ray_local, tiny_policy_dir, prompts_file, tmp_path, mutated
):
    """A restore keeps the adaptive β, unless the new trial config perturbed it (PBT)."""
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 8, "adaptive_kl": True, "target_kl": 0.01, "kl_horizon": 10},
        generation={"max_new_tokens": 6},
    )
    algo = build_algo_config(cfg).build_algo()
    try:
        algo.train()
        algo.train()
        state = algo.get_state()
        beta = algo.kl_ctl.value
    finally:
        algo.stop()
    assert beta != cfg.algorithm.kl_coef
    d = cfg.to_dict()
    if mutated:
        d["algorithm"]["kl_coef"] = 0.2
        d["algorithm"]["lr"] = 5e-4
    other = build_algo_config(config_from_dict(d)).build_algo()
    try:
        other.set_state(state)
        assert other.kl_ctl.value == pytest.approx(0.2 if mutated else beta)
        lrs = other.learner_group.foreach_learner(
            lambda learner: [
                g["lr"]
                for _, o in learner.get_optimizers_for_module("default_policy")
                for g in o.param_groups
            ]
        )
        lrs = [x.get() if hasattr(x, "get") else x for x in lrs]
        assert lrs[0] == [pytest.approx(d["algorithm"]["lr"])] * len(lrs[0])
    finally:
        other.stop()
