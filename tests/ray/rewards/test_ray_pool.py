"""Reward pools of Ray actors: order and call count, function actors that never import torch,
and a start failure in one line (resolution, local pools and reward models:
tests/unit/rewards/test_rewards.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import ray

from rayrm.config import RewardSettings
from rayrm.rewards import RewardPool, RewardSourceError
from rayrm.rewards import completion_records as records

LEN_SPEC = "scorers:completion_length"  # Ray workers import it by that name
PROMPTS = [f"q{chr(ord('a') + i)}: " for i in range(10)]
COMPLETIONS = ["a" * (i * 3 % 7 + 1) + "!" * i for i in range(10)]


def test_ray_pool_order_and_call_count(ray_local) -> None:
    pool = RewardPool(
        RewardSettings(
            source="function",
            function=LEN_SPEC,
            num_actors=2,
            batch_size=4,
            num_cpus_per_actor=0.5,
        )
    )
    try:
        scores = pool.score(records(PROMPTS, COMPLETIONS))
        assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
        np.testing.assert_array_equal(scores, [len(c) for c in COMPLETIONS])
        assert pool.num_calls == 3
        stats = pool.stats()
        assert stats["num_calls"] == 3 and stats["num_scored"] == 10
        assert sorted(s["num_calls"] for s in stats["per_actor"]) == [1, 2]
    finally:
        pool.shutdown()


def test_function_actors_run_without_torch(ray_local) -> None:
    """A reward function that does not use torch is served by actors that never import torch
    or transformers (Ray, numpy and the function's module only): lighter, faster to start."""
    pool = RewardPool(
        RewardSettings(
            source="function",
            function="envs.builtin:vowel_reward",
            num_actors=2,
            batch_size=4,
            num_cpus_per_actor=0.5,
        )
    )
    try:
        assert pool.score(records(PROMPTS, COMPLETIONS)).shape == (len(PROMPTS),)
        heavy = {"torch", "transformers"}  # a lambda travels by value: it imports nothing here
        loaded = [
            a.__ray_call__.remote(lambda _: sorted(heavy & set(sys.modules))) for a in pool.actors
        ]
        assert ray.get(loaded) == [[], []]
    finally:
        pool.shutdown()


def test_ray_pool_start_failure_is_one_line(ray_local) -> None:
    with pytest.raises(RewardSourceError, match="nope_mod_xyz:fn") as info:
        RewardPool(
            RewardSettings(source="function", function="nope_mod_xyz:fn", num_cpus_per_actor=0.5)
        )
    assert "\n" not in str(info.value)
