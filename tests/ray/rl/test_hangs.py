"""Hangs end within their timeouts (the watchdog itself: tests/unit/rl/test_watchdog.py): a
wedged learner fails its iteration in one line, a hung env runner is restarted while the others
sample its share, and the restarted runner receives the learner's current weights."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
import torch
from helpers import make_config
from ray.rllib.core import DEFAULT_MODULE_ID

from rayrm import metrics as M
from rayrm.errors import TimedOut
from rayrm.rl.algorithm import build_algo_config


def _pids(group) -> list[int]:
    return group.foreach_env_runner(lambda runner: os.getpid(), local_env_runner=False)


def test_wedged_learner_fails_the_iteration_in_one_line(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 4, "num_minibatches": 1},
        generation={"max_new_tokens": 4},
        resources={"num_learners": 1, "num_cpus_per_learner": 0.5},
        run={"iteration_timeout_s": 5},
    )
    algo = build_algo_config(cfg).build_algo()
    (pid,) = [r.get() for r in algo.learner_group.foreach_learner(lambda _: os.getpid())]
    try:
        algo.train()
        os.kill(pid, signal.SIGSTOP)  # a wedged GPU process: alive, never answers
        start = time.monotonic()
        with pytest.raises(TimedOut) as failed:
            algo.train()
        assert time.monotonic() - start < 30
        assert str(failed.value) == (
            "iteration 2 (in its update phase) ran past run.iteration_timeout_s=5s "
            "(a hung learner, runner or reward actor)"
        )
    finally:
        os.kill(pid, signal.SIGCONT)
        algo.stop()


def test_hung_env_runner_is_restarted_with_current_weights(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 8},
        generation={"max_new_tokens": 6},
        resources={
            "num_env_runners": 2,
            "num_cpus_per_env_runner": 0.5,
            "sample_timeout_s": 4,
        },
    )
    algo = build_algo_config(cfg).build_algo()
    group = algo.env_runner_group
    stopped = _pids(group)[1]
    (initial,) = group.foreach_env_runner(
        lambda runner: runner.module.get_state(inference_only=True),
        remote_worker_ids=[1],
        local_env_runner=False,
    )
    try:
        algo.train()
        os.kill(stopped, signal.SIGSTOP)  # hung: alive, never answers
        start = time.monotonic()
        hung = algo.train()[M.RLHF_RESULTS]
        assert time.monotonic() - start < 40
        assert hung[M.ROLLOUT_COMPLETIONS] == cfg.algorithm.batch_size  # the other one sampled
        assert hung[M.ROLLOUT_HEALTHY_RUNNERS] == 1  # flagged
        deadline = time.monotonic() + 60
        while group.num_healthy_remote_workers() < 2 and time.monotonic() < deadline:
            algo.train()
            time.sleep(0.5)
        pids = _pids(group)
        assert len(pids) == 2 and stopped not in pids  # a new process took its place
        # The restarted runner samples with the learner's current weights, not the initial ones.
        learner = algo.learner_group.get_weights()[DEFAULT_MODULE_ID]
        for state in group.foreach_env_runner(
            lambda runner: runner.module.get_state(inference_only=True), local_env_runner=False
        ):
            assert state.keys() <= learner.keys() and state
            for name, value in state.items():
                torch.testing.assert_close(torch.as_tensor(value), torch.as_tensor(learner[name]))
        # The policy moved, so a runner that kept the initial weights would differ.
        assert any(
            not torch.equal(torch.as_tensor(v), torch.as_tensor(learner[k]))
            for k, v in initial.items()
        )
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone if the restart killed it
            os.kill(stopped, signal.SIGCONT)
        algo.stop()
