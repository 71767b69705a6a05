"""Every rayrm process runs torch on as many threads as the CPUs it reserves (issue 11, item 1).

The tests' local Ray has 4 logical CPUs (more than the machine: reservations are bookkeeping),
so each kind of process can reserve more than one: a trial process whose local learner and env
runner share its bundle, a remote env runner, a reward actor (remote learners and Ray Train
workers call the same function). ``RAYRM_TORCH_THREADS`` overrides the count; a
driver is left as it is.
"""

from __future__ import annotations

import pytest
import ray
import torch
from helpers import ThreadProbe, make_config, trial_class
from helpers import torch_threads as _threads
from helpers import trial_threads as _trial_threads

from rayrm.experiment.resources import trial_bundles
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rl.algorithm import build_algo_config
from rayrm.threads import THREADS_ENV, use_reserved_cpus


def test_every_process_uses_the_cpus_it_reserves(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    """A trial as Tune starts it (an actor in its first bundle: with a local learner, RLlib
    reserves num_cpus_per_learner for it), a remote env runner and a reward actor."""
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 4},
        reward={"num_cpus_per_actor": 0},
        resources={
            "num_env_runners": 1,
            "num_cpus_per_env_runner": 2,
            "num_learners": 0,
            "num_cpus_per_learner": 2,
        },
    )
    bundles, _ = trial_bundles(cfg)
    assert bundles[0]["CPU"] == 2
    trial = ray.remote(num_cpus=bundles[0]["CPU"])(trial_class()).remote(
        config=build_algo_config(cfg), logs=str(tmp_path / "logs")
    )
    try:
        # 4 CPUs: the trial 2, the env runner 2, the reward actor none (still one thread).
        assert ray.get(trial.__ray_call__.remote(_trial_threads)) == (2, [2], [1])
        assert torch.get_num_threads() == 1  # the driver reserves nothing: left as it was
    finally:
        ray.get(trial.stop.remote())
        ray.kill(trial)


_Probe = ray.remote(ThreadProbe)


def test_reward_actors_fractions_and_the_override(ray_local, monkeypatch):
    judge = ray.remote(num_cpus=2)(RewardFunctionActor).remote("envs.builtin:vowel_reward")
    assert ray.get(judge.__ray_call__.remote(_threads)) == 2
    ray.kill(judge)
    assert ray.get(_Probe.options(num_cpus=0.5).remote().threads.remote()) == 1
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert use_reserved_cpus() is None  # a driver without the override
    monkeypatch.setenv(THREADS_ENV, "3")  # read by every process, drivers included
    try:
        assert use_reserved_cpus() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(1)
    monkeypatch.setenv(THREADS_ENV, "0")
    with pytest.raises(ValueError, match=f"{THREADS_ENV} must be an integer >= 1, got '0'"):
        use_reserved_cpus()
