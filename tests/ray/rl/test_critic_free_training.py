"""Critic-free estimators trained through Ray: the reward rising under GRPO and RLOO without a
critic, filtered groups on two learners, and the learner's KL loss term and per-token metrics
(groups and their config without Ray: tests/unit/rl/test_critic_free.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SEEDS, make_config

from rayrm import metrics as M
from rayrm.rl.algorithm import build_algo_config
from rayrm.rl.episodes import GROUP
from rayrm.rl.rllib_compat import local_learner


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_reward_rises_without_a_critic(
    ray_local, tiny_policy_dir, prompts_file, tmp_path, estimator, seed
):
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={
            "batch_size": 32,
            "advantage_estimator": estimator,
            "kl_mode": "loss",
            "kl_estimator": "k3",
            "loss_aggregation": "seq_mean_token_mean",
        },
        generation={"samples_per_prompt": 4},
    ).model_copy(update={"seed": seed})
    algo = build_algo_config(cfg).build_algo()
    try:
        # Group sampling: 8 prompts x 4 samples, each group one prompt.
        sampled = algo.env_runner.collect_episodes(explore=True)
        by_group: dict[str, set[int]] = {}
        for e in sampled:
            by_group.setdefault(e.get_infos(0)[GROUP], set()).add(e.get_infos(0)["prompt_index"])
        assert len(by_group) == 8 and all(len(p) == 1 for p in by_group.values())
        # No value model anywhere: not built, not trained, not saved.
        learner = local_learner(algo.learner_group).module["default_policy"]
        assert not any("value" in k or "critic" in k for k in learner.state_dict())
        results = [algo.train()[M.RLHF_RESULTS] for _ in range(16)]
    finally:
        algo.stop()
    assert M.LOSS_VALUE not in results[-1] and M.LOSS_KL in results[-1]
    rewards = [r[M.REWARD_MEAN] for r in results]
    first, last = np.mean(rewards[:4]), np.mean(rewards[-4:])
    assert last > first + 0.1, (first, last)


def test_filtered_groups_train_on_two_learners(ray_local, tiny_policy_dir, tmp_path):
    """Batch 32 of 8 samples per prompt over 4 prompts (each once per iteration), 3 uniform
    groups, 2 learners: both learners train every iteration (with the informative group
    alone, one learner got none and failed)."""
    from rayrm.data.prompts import write_prompts_jsonl

    texts = ["the cat is", "a dog was", "my hat is", "one sun was"]
    prompts = write_prompts_jsonl(tmp_path / "p.jsonl", texts)
    cfg = make_config(
        tiny_policy_dir, str(prompts), tmp_path,
        reward={"function": "scorers:one_prompt_informative"},
        generation={"samples_per_prompt": 8, "max_new_tokens": 4},
        algorithm={"batch_size": 32, "num_minibatches": 2, "advantage_estimator": "grpo",
             "filter_uniform_groups": True},
        resources={"num_learners": 2, "num_cpus_per_learner": 1},
        run={"iteration_timeout_s": 120},  # the failure was a collective waiting forever
    )  # fmt: skip
    algo = build_algo_config(cfg).build_algo()
    try:
        results = [algo.train()[M.RLHF_RESULTS] for _ in range(2)]
    finally:
        algo.stop()
    assert [r[M.ROLLOUT_UNIFORM_GROUPS] for r in results] == [0.75, 0.75]
    assert all(np.isfinite(r[M.LOSS_POLICY]) for r in results)


def test_learner_kl_loss_term_and_per_token_metrics(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    """The learner's loss with ``kl_mode: loss``: β times k3 (the default as a loss),
    aggregated as the policy loss (Dr. GRPO's sum over max_new_tokens here), gives exactly
    β·∂k3 on each token; the logged entropy and KL are per-token means, not that sum."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.columns import Columns

    from rayrm.rl.connectors.advantages import ADVANTAGES
    from rayrm.rl.module import ENTROPY, LOGP, REF_LOGP, SEQ_ID

    cfg = make_config(
        tiny_policy_dir, prompts_file, tmp_path,
        algorithm={"batch_size": 8, "advantage_estimator": "grpo", "kl_mode": "loss", "kl_coef": 0.5,
             "loss_aggregation": "seq_mean_token_sum_norm"},
        generation={"samples_per_prompt": 2, "max_new_tokens": 4},
    )  # fmt: skip
    algo = build_algo_config(cfg).build_algo()
    try:
        learner = local_learner(algo.learner_group)
        logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64, requires_grad=True)
        log_r = torch.tensor([-0.5, 1.0, 0.0, 2.0], dtype=torch.float64)  # ref - logp
        batch = {
            Columns.ACTION_LOGP: logp.detach(),
            ADVANTAGES: torch.zeros(4, dtype=torch.float64),  # no policy-gradient term
            REF_LOGP: logp.detach() + log_r,
            SEQ_ID: torch.tensor([0, 0, 0, 1]),
        }
        entropy = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
        total = learner.compute_loss_for_module(
            module_id=DEFAULT_MODULE_ID, config=None, batch=batch,
            fwd_out={LOGP: logp, ENTROPY: entropy},
        )  # fmt: skip
        total.backward()
        logged = {k: learner.metrics.peek((DEFAULT_MODULE_ID, k)) for k in (M.ENTROPY, M.KL_LOSS)}
    finally:
        algo.stop()
    k3 = torch.exp(log_r) - 1 - log_r
    # (sum over completion 0 + sum over completion 1) / 2 completions / max_new_tokens 4
    assert total.item() == pytest.approx(0.5 * (k3[:3].sum() + k3[3]).item() / 2 / 4)
    expected = 0.5 / (2 * 4) * (1 - torch.exp(log_r))
    torch.testing.assert_close(logp.grad, expected)
    assert float(logged[M.ENTROPY]) == pytest.approx(3.0)  # mean of [1, 2, 3, 6]
    assert float(logged[M.KL_LOSS]) == pytest.approx(k3.mean().item())
