"""rayrm's trial in the benchmark, with the resources ``rayrm train`` would reserve for it.

What belongs here: the local Ray a benchmark configuration runs on and the trial placed on it,
both as ``rayrm train`` does it on the same machine -- a local Ray with ``run.num_cpus`` CPUs
(all cores by default), the config as the trial then reserves it (the local learner takes the
cores the other bundles leave: ``rayrm.experiment.train.start_ray_for``), the check that those
bundles fit (``wait_for_resources``: a configuration that cannot fit ends with the one line
``rayrm train`` prints, it does not quietly get more logical CPUs), and ``RLHFPPO`` started
as Tune starts a trial: an actor in the first bundle of a placement group of the trial's
bundles, its reward actors and remote env runners and learners captured in the others. Every
process then runs torch on the threads its reservation gives it (``use_reserved_cpus``), the
pipelined sampler thread and the update's loan included. The measurements are in
``rayrm.bench.run``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rayrm import metrics as M
from rayrm.bench.support import REPO
from rayrm.config import RLConfig
from rayrm.console import warn
from rayrm.experiment.resources import trial_bundles, wait_for_resources
from rayrm.experiment.train import start_ray_for
from rayrm.rl.algorithm import RLHFPPO, build_algo_config
from rayrm.rl.rllib_compat import trainable_logdirs_under

PHASES = ("sample", "score", "update", "wait", "sync", "iteration")
"""Timers of a rayrm line (``timers/<phase>_s``): under ``async_rollouts`` sample and score
run alongside the update, and ``wait`` is what the update then waited for the next batch."""


def iteration_row(result: dict[str, Any], wall_s: float) -> dict[str, float]:
    """Phase timers (s), generated tokens and wall time of one ``algo.train()`` result, and
    the episodes' ``env/success`` and ``env/turns`` when the run has an ``env`` section."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED

    rlhf = result[M.RLHF_RESULTS]
    row = {p: float(rlhf[f"timers/{p}_s"]) for p in PHASES}
    row["tokens"] = float(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED])
    row["wall"] = wall_s
    for key in (M.ENV_SUCCESS, M.ENV_TURNS):  # multi-turn episodes' means, when published
        if key in rlhf:
            row[key] = float(rlhf[key])
    return row


class BenchTrial(RLHFPPO):
    """``RLHFPPO`` as the Ray actor Tune makes of a trial, with its log folder given (else it
    makes an empty one under ~/ray_results) and what the benchmark reads of it."""

    def __init__(self, *, logs: str, **kwargs: Any) -> None:
        with trainable_logdirs_under(logs):
            super().__init__(**kwargs)

    def timed_train(self) -> dict[str, float]:
        """One ``train()`` (Tune's call), timed here: its :func:`iteration_row`."""
        t0 = time.perf_counter()
        result = self.train()
        return iteration_row(result, time.perf_counter() - t0)

    def thread_counts(self) -> dict[str, int]:
        """torch threads of the update (``update``: its own; ``update_max``: the most it ran on,
        its own plus the sampler thread's while that idles) and of the pipelined sampler
        thread (``sampler``; 0 without one), as the trial set them from its reservation."""
        if self.threads is None:
            own = torch.get_num_threads()  # the actor's one thread: setup's count
            return {"update": own, "update_max": own, "sampler": 0}
        loan = self.threads
        return {
            "update": loan.own,
            "update_max": max(loan.applied, default=loan.own),
            "sampler": loan.lent,
        }


class PlacedTrial:
    """A :class:`BenchTrial` of ``cfg`` on this process's Ray, placed as Tune places a trial:
    a placement group of its bundles (``trial_bundles``), the actor in the first one, child
    actors captured by the group."""

    def __init__(self, cfg: RLConfig, logs: str) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        wait_for_resources(cfg)  # what rayrm train checks; it fails with the same line
        self.cfg = cfg
        config = build_algo_config(cfg)
        pgf = RLHFPPO.default_resource_request(config)
        self.pg, self.strategy = pgf.to_placement_group(), pgf.strategy
        ray.get(self.pg.ready())
        head = {k: float(v) for k, v in pgf.bundles[0].items()}
        self.actor = (
            ray.remote(BenchTrial)
            .options(
                num_cpus=head.pop("CPU", 0.0),
                num_gpus=head.pop("GPU", 0.0),
                memory=head.pop("memory", 0.0),
                resources=head,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg,
                    placement_group_bundle_index=0,
                    placement_group_capture_child_tasks=True,
                ),
            )
            .remote(config=config, logs=logs)
        )

    def train(self) -> dict[str, float]:
        import ray

        return dict(ray.get(self.actor.timed_train.remote()))

    def resources(self) -> dict[str, Any]:
        """What the trial reserved and ran on (the ``resources`` entry of a rayrm line)."""
        import ray

        res = self.cfg.resources
        planned, _ = trial_bundles(self.cfg)
        return {
            "local_ray_cpus": ray.cluster_resources().get("CPU", 0.0),
            "bundles": [
                {k: float(v) for k, v in b.items() if v} for b in self.pg.bundle_specs
            ],  # as reserved, read back from the placement group
            "strategy": self.strategy,
            "trial_bundles": planned,
            "num_cpus_per_learner": res.num_cpus_per_learner,
            "num_env_runners": res.num_env_runners,
            "num_cpus_per_env_runner": res.num_cpus_per_env_runner,
            "num_learners": res.num_learners,
            "reward_num_cpus_per_actor": self.cfg.reward.num_cpus_per_actor,
            "threads": dict(ray.get(self.actor.thread_counts.remote())),
        }

    def stop(self) -> None:
        import ray

        try:
            ray.get(self.actor.stop.remote(), timeout=120)
        finally:
            ray.kill(self.actor)
            ray.util.remove_placement_group(self.pg)


def start_local_ray(cfg: RLConfig, temp_dir: str) -> RLConfig:
    """Starts the Ray ``rayrm train`` runs ``cfg`` on: a local one (``run.num_cpus`` CPUs, all
    cores by default) keeping its files in ``temp_dir``, its workers running this checkout's
    code. Returns the config as its trial reserves there."""
    env_vars = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return start_ray_for(cfg, temp_dir=temp_dir, log_to_driver=False, env_vars=env_vars)


def describe(name: str, resources: dict[str, Any]) -> str:
    """One human-readable line of a configuration's resources."""

    def fmt(bundle: dict[str, float]) -> str:
        return "{" + ", ".join(f"{k} {v:g}" for k, v in bundle.items()) + "}"

    t = resources["threads"]
    sampler = f", sampler {t['sampler']} (lent to the update while idle)" if t["sampler"] else ""
    return (
        f"rayrm bench: {name}: local Ray {resources['local_ray_cpus']:g} CPUs; trial bundles "
        f"{' '.join(fmt(b) for b in resources['bundles'])} ({resources['strategy']}); learner "
        f"{resources['num_cpus_per_learner']:g} CPU(s), reward actor "
        f"{resources['reward_num_cpus_per_actor']:g}; torch threads: update {t['update']} "
        f"(at most {t['update_max']}){sampler}"
    )


def say_resources(name: str, resources: dict[str, Any]) -> None:
    """The line of :func:`describe` on stderr (the terminal; a child's goes to the log)."""
    warn(describe(name, resources))
