"""Critic-free estimators end to end: group sampling, groups kept whole, no value model, and
the reward rising under GRPO and RLOO (the math itself: tests/test_core_algos.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_config
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rayrm import metrics as M
from rayrm.config import ConfigError
from rayrm.experiment.train import format_line
from rayrm.rl.algorithm import build_algo_config, group_filter, shard_whole_episodes
from rayrm.rl.env_runner import GROUP
from rayrm.rl.rllib_compat import local_learner


def _episode(group: str | None, length: int) -> SingleAgentEpisode:
    episode = SingleAgentEpisode(
        observations=[0] * (length + 1),
        actions=[0] * length,
        rewards=[0.0] * length,
        infos=[{GROUP: group}] + [{}] * length,
        len_lookback_buffer=0,
    )
    assert len(episode) == length
    return episode


def test_groups_survive_sharding_over_two_learners():
    lengths = {"a": [3, 9, 1, 2], "b": [5, 5, 5, 5], "c": [1, 1, 1, 12], "d": [2, 2, 8, 2]}
    episodes = [_episode(g, n) for g, ns in lengths.items() for n in ns]
    shards = shard_whole_episodes(episodes, 2)
    assert sorted(len(s) for s in shards) == [8, 8]  # equal shares of completions
    for shard in shards:
        groups = [e.get_infos(0)[GROUP] for e in shard]
        for g in set(groups):
            assert groups.count(g) == 4, groups  # every group whole, on one learner
    assert {e.id_ for s in shards for e in s} == {e.id_ for e in episodes}


def test_uniform_groups_are_counted_and_filtered():
    episodes = [_episode(g, 2) for g in "aabb"]
    raw = np.array([1.0, 1.0, 0.0, 2.0])  # group a uniform
    kept, stats = group_filter(episodes, raw, drop_uniform=True, needed=2)
    assert kept == episodes[2:]
    assert stats == {M.ROLLOUT_GROUP_STD: pytest.approx(0.5), M.ROLLOUT_UNIFORM_GROUPS: 0.5}
    kept, _ = group_filter(episodes, raw, drop_uniform=True, needed=3)
    assert kept == episodes  # too few would be left for an update: keep all
    assert group_filter([_episode(None, 2)] * 2, raw[:2], drop_uniform=True, needed=1)[1] == {}


def test_live_line_shows_groups_and_no_value_loss():
    r = {M.REWARD_MEAN: 0.5, M.ROLLOUT_GROUP_STD: 0.25, M.ROLLOUT_UNIFORM_GROUPS: 0.125}
    line = format_line({M.RLHF_RESULTS: r, "training_iteration": 3}, 10)
    assert "group std 0.250 uniform 0.12" in line and " vf " not in line
    assert " vf " in format_line({M.RLHF_RESULTS: {M.LOSS_VALUE: 0.1}}, 10)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"ppo": {"advantage_estimator": "grpo"}}, "generation.samples_per_prompt"),
        (
            {"ppo": {"advantage_estimator": "rloo"}, "generation": {"samples_per_prompt": 3}},
            "ppo.batch_size",
        ),
        (
            {
                "ppo": {"advantage_estimator": "grpo"},
                "generation": {"samples_per_prompt": 4},
                "model": {"critic": "separate"},
            },
            "model.critic",
        ),
    ],
)
def test_group_config_errors_name_the_key(tiny_policy_dir, prompts_file, tmp_path, sections, key):
    with pytest.raises(ConfigError) as err:
        make_config(tiny_policy_dir, prompts_file, tmp_path, **sections)
    assert err.value.key == key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_reward_rises_without_a_critic(
    ray_local, tiny_policy_dir, prompts_file, tmp_path, estimator, seed
):
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        ppo={
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
        sampled = algo.env_runner.sample_completions(explore=True)
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
