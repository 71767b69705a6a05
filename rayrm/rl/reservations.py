"""What one trial reserves on the cluster: RLlib's bundles (the trial process with its local
learner and env runner, remote learners, remote env runners), plus the trial's reward actors,
plus the CPUs a pipelined sampler thread needs beyond those it time-shares.

``RLHFPPO.default_resource_request`` returns :func:`trial_request`; the trial process sets its
threads from the same numbers (``rayrm.threads.use_reserved_cpus``, ``ThreadLoan``).
"""

from __future__ import annotations

from ray.tune.execution.placement_groups import PlacementGroupFactory

from rayrm.config import RLConfig

__all__ = ["local_sampler_cpus", "local_sampler_threads", "trial_request"]


def local_sampler_threads(cfg: RLConfig) -> int:
    """torch threads of the trial's second thread that samples and scores the next batch
    (``algorithm.async_rollouts`` without remote env runners): ``num_cpus_per_env_runner``, at
    least one; 0 without that thread."""
    if cfg.algorithm.async_rollouts and cfg.resources.num_env_runners == 0:
        return max(1, int(cfg.resources.num_cpus_per_env_runner))
    return 0


def _private_reward_bundles(cfg: RLConfig) -> list[dict[str, float]]:
    """One bundle per reward actor the trial starts itself (a shared pool reserves its own)."""
    reward = cfg.reward
    bundle = {
        "CPU": reward.num_cpus_per_actor,
        "GPU": reward.num_gpus_per_actor,
        **reward.custom_resources_per_actor,
    }
    bundle = {k: float(v) for k, v in bundle.items() if v > 0}
    if not bundle or reward.pool_name is not None:
        return []
    num_actors = reward.num_actors * reward.num_actor_pools  # ensembles/composites: several
    return [dict(bundle) for _ in range(num_actors)]


def local_sampler_cpus(cfg: RLConfig) -> float:
    """CPUs the trial reserves beyond its learner's for that sampler thread.

    The thread samples, then waits while the reward actors score what it sampled: it and the
    trial's own reward actors never compute at once, so it time-shares their CPUs and only
    what they lack is reserved (``num_cpus_per_env_runner`` minus the private reward actors'
    CPUs). With the defaults on a 2-core machine the trial holds one CPU for its update and
    the reward actor one for sampling and scoring.
    """
    if not local_sampler_threads(cfg):
        return 0.0
    shared = sum(b.get("CPU", 0.0) for b in _private_reward_bundles(cfg))
    return max(0.0, cfg.resources.num_cpus_per_env_runner - shared)


def trial_request(pgf: PlacementGroupFactory, cfg: RLConfig) -> PlacementGroupFactory:
    """RLlib PPO's request ``pgf`` plus the trial's reward actors and its sampler thread."""
    main = dict(pgf.bundles[0])
    main["CPU"] = main.get("CPU", 0) + local_sampler_cpus(cfg)
    bundles = [main, *pgf.bundles[1:], *_private_reward_bundles(cfg)]
    return PlacementGroupFactory(bundles=bundles, strategy=pgf.strategy)
