"""Critic-free estimators: group sampling, groups kept whole through sharding and filtering,
no value model, and their config errors (the math itself:
tests/unit/core_algos/test_core_algos.py; training through Ray:
tests/ray/rl/test_critic_free_training.py)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_config
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rayrm import metrics as M
from rayrm.config import ConfigError
from rayrm.experiment.train import format_line
from rayrm.rl.episodes import GROUP, select_groups, shard_whole_episodes


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
    deal = {"num_learners": 0, "num_minibatches": 2}
    kept, stats = select_groups(episodes, raw, drop_uniform=True, **deal)
    assert kept == episodes[2:]
    assert stats == {M.ROLLOUT_GROUP_STD: pytest.approx(0.5), M.ROLLOUT_UNIFORM_GROUPS: 0.5}
    deal = {"num_learners": 0, "num_minibatches": 3}
    kept, _ = select_groups(episodes, raw, drop_uniform=True, **deal)
    assert kept == episodes  # too few would be left for an update: the uniform group stays
    none = select_groups([_episode(None, 2)] * 2, raw[:2], drop_uniform=True, **deal)
    assert none[1] == {}


def test_filtered_groups_give_every_learner_a_completion_per_minibatch():
    """Batch 32, 8 samples per prompt, 3 of 4 groups uniform, 2 learners: the informative
    group alone would leave one learner nothing (a crash, or a DDP all-reduce that waits
    forever); as few uniform groups as dealing needs stay in."""
    episodes = [_episode(g, 3) for g in "abcd" for _ in range(8)]
    raw = np.concatenate([np.ones(24), np.arange(8.0)])  # only d informative
    deal = {"num_learners": 2, "num_minibatches": 2}
    kept, stats = select_groups(episodes, raw, drop_uniform=True, **deal)
    assert stats[M.ROLLOUT_UNIFORM_GROUPS] == 0.75
    assert len(kept) == 16 and episodes[24] in kept  # d and one uniform group
    assert sorted(len(s) for s in shard_whole_episodes(kept, 2)) == [8, 8]
    # Four learners need every group back.
    kept, _ = select_groups(episodes, raw, drop_uniform=True, num_learners=4, num_minibatches=1)
    assert kept == episodes


def test_live_line_shows_groups_and_no_value_loss():
    r = {M.REWARD_MEAN: 0.5, M.ROLLOUT_GROUP_STD: 0.25, M.ROLLOUT_UNIFORM_GROUPS: 0.125}
    line = format_line({M.RLHF_RESULTS: r, "training_iteration": 3}, 10)
    assert "group std 0.250 uniform 0.12" in line and " vf " not in line
    assert " vf " in format_line({M.RLHF_RESULTS: {M.LOSS_VALUE: 0.1}}, 10)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"algorithm": {"advantage_estimator": "grpo"}}, "generation.samples_per_prompt"),
        (
            {"algorithm": {"advantage_estimator": "rloo"}, "generation": {"samples_per_prompt": 3}},
            "algorithm.batch_size",
        ),
        (
            {
                "algorithm": {"advantage_estimator": "grpo"},
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
