"""Reward scoring under faults: resubmission of a crashed or failing chunk, its budget, the
stable completion ids a side-effecting scorer deduplicates by, and the counts."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import ray
from helpers import function_pool

from rayrm.rewards import RewardPool
from rayrm.rewards import completion_records as records
from rayrm.rewards.base import RewardSourceError


def test_crashed_chunk_is_resubmitted_with_the_same_ids(ray_local, tmp_path):
    log = tmp_path / "judge.jsonl"
    pool = function_pool("scorers:crash_once_logging_ids", num_actors=2, batch_size=3)
    try:
        completions = ["x" * i for i in range(3)]
        ids = ["a-0", "b-1", "c-2"]
        scores = pool.score(records([str(log)] * 3, completions, ids=ids))
        np.testing.assert_array_equal(scores, [0.0, 1.0, 2.0])
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        # At-least-once: the chunk ran twice, both times with the same ids.
        assert len(calls) == 2 and calls[0] == calls[1]
        assert [i for i, _ in calls[0]] == ids
        assert pool.num_resubmitted == 1
    finally:
        pool.shutdown()


def test_retry_exceptions_resubmit_up_to_the_budget(ray_local):
    """Named errors (by the raised type or a base, bare or qualified) are resubmitted up to
    max_restarts times, then end the scoring naming the function; others end it at once."""
    pool = function_pool("scorers:always_resets", max_restarts=2)
    cases = [
        (["ConnectionError"], 2),
        (["builtins.ConnectionResetError"], 2),
        (True, 2),
        (False, 0),
        (["OutOfMemoryError", "TimeoutError"], 0),
    ]
    try:
        for retry, resubmitted in cases:
            pool.retry_exceptions, pool.num_resubmitted = retry, 0
            with pytest.raises(RewardSourceError, match="always_resets.* raised ConnectionReset"):
                pool.score(records(["p"], ["x"]))
            assert pool.num_resubmitted == resubmitted, retry
    finally:
        pool.shutdown()


def test_shared_pool_outlives_any_number_of_crashes(ray_local):
    """A shared pool (a `serve-rm` service) restarts its actors without limit by default; a
    private pool's actors restart twice."""
    pool = function_pool("envs.builtin:vowel_reward", name="rayrm-test-crashes")
    actor = pool.actors[0]
    try:
        for _ in range(3):
            pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
            os.kill(pid, signal.SIGKILL)  # a crash (ray.kill's restarts are counted otherwise)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=60) != pid:
                        break  # restarted in a new process
                except ray.exceptions.ActorUnavailableError:  # still restarting
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert pool.score(records(["x"], ["a"]))[0] == 1.0
    finally:
        RewardPool.kill_shared("rayrm-test-crashes", 1)
