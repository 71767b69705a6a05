"""Every rayrm process runs torch on as many threads as the CPUs it reserves (issue 11, item 1).

The tests' local Ray has 4 logical CPUs (more than the machine: reservations are bookkeeping),
so each kind of process can reserve more than one: a trial process whose local learner and env
runner share its bundle, a remote env runner, a reward actor (remote learners and Ray Train
workers call the same function). ``RAYRM_TORCH_THREADS`` overrides the count; a
driver is left as it is.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import torch
from helpers import make_config, trial_class

from rayrm.experiment.resources import trial_bundles
from rayrm.ray_init import THREADS_ENV, ThreadLoan, use_reserved_cpus
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rl.algorithm import RLHFPPO, build_algo_config


def _threads(_: object) -> int:
    return torch.get_num_threads()


def _trial_threads(algo: RLHFPPO) -> tuple[int, list[int], list[int]]:
    """Threads of the trial process, its remote env runners and its reward actors."""
    runners = algo.env_runner_group.foreach_env_runner(_threads, local_env_runner=False)
    actors = algo.rewards.scorer.actors
    return (
        torch.get_num_threads(),
        runners,
        ray.get([a.__ray_call__.remote(_threads) for a in actors]),
    )


def test_every_process_uses_the_cpus_it_reserves(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    """A trial as Tune starts it (an actor in its first bundle: with a local learner, RLlib
    reserves num_cpus_per_learner for it), a remote env runner and a reward actor."""
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        ppo={"batch_size": 4},
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


@ray.remote
class _Probe:
    def threads(self) -> int | None:
        return use_reserved_cpus()


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


def test_a_lone_local_trial_takes_the_spare_cores(tiny_policy_dir, prompts_file, tmp_path):
    """`rayrm train` on a local Ray of its own: the trial's learner reserves what the reward
    actors, env runners and a pipelined sampler leave (hence as many torch threads)."""
    from rayrm.experiment.resources import claim_local_cores

    def learner_cpus(local_cpus: float, **sections: dict) -> float:
        cfg = make_config(tiny_policy_dir, prompts_file, tmp_path, **sections)
        return claim_local_cores(cfg, local_cpus).resources.num_cpus_per_learner

    # make_config's reward actor reserves 0.25 CPU.
    assert learner_cpus(8) == 7 and learner_cpus(2) == 1 and learner_cpus(1) == 1
    assert learner_cpus(8, resources={"num_env_runners": 2}) == 5  # two runners, one CPU each
    # The sampler thread's CPU, less the reward actor's 0.25 it time-shares.
    assert learner_cpus(8, ppo={"async_rollouts": True}) == 7
    reward = {"num_cpus_per_actor": 1, "num_actors": 2}
    assert learner_cpus(4, reward=reward) == 2
    # Given explicitly, or remote learners: left alone.
    assert learner_cpus(8, resources={"num_cpus_per_learner": 2}) == 2
    assert learner_cpus(8, resources={"num_learners": 2}) == 1


def test_the_update_borrows_the_sampler_threads_while_it_idles():
    """torch's count is per OS thread: the update's thread takes ``own + lent`` while nothing
    samples, gives ``lent`` back while the sampler thread (at ``lent``) works."""
    loan = ThreadLoan(own=1, lent=2)
    release, seen = threading.Event(), []

    def sample() -> str:
        seen.append(torch.get_num_threads())
        release.wait(60)
        return "batch"

    try:
        with ThreadPoolExecutor(1) as sampler:
            assert loan.apply() == 3 and torch.get_num_threads() == 3  # nothing sampling
            future = loan.submit(sampler, sample)
            assert torch.get_num_threads() == 1 and loan.apply() == 1  # the sampler works
            release.set()
            assert future.result() == "batch" and seen == [2]
            assert loan.apply() == 3 and torch.get_num_threads() == 3  # its batch is ready
        assert dict(loan.applied) == {3: 2, 1: 1}
    finally:
        torch.set_num_threads(1)
