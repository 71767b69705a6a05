"""Threads without Ray: a lone local trial takes the spare cores, and the update borrows the
sampler's threads while it idles (every process's threads on Ray:
tests/ray/experiment/test_threads.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from helpers import make_config

from rayrm.threads import ThreadLoan


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
    assert learner_cpus(8, algorithm={"async_rollouts": True}) == 7
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
