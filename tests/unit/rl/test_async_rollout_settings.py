"""Pipelined rollouts (``algorithm.async_rollouts``) without Ray: the settings they reserve and
refuse, and what they ask of a two-core machine at their defaults (the runs themselves:
tests/ray/rl/test_async_rollouts.py)."""

from __future__ import annotations

import pytest
from helpers import async_config as _async_config
from helpers import make_config

from rayrm.config import ConfigError, config_from_dict
from rayrm.rl.algorithm import RLHFPPO, build_algo_config


def test_async_rollouts_reserve_and_refuse_recompute(tiny_policy_dir, prompts_file, tmp_path):
    cfg = _async_config(tiny_policy_dir, prompts_file, tmp_path)
    base = make_config(tiny_policy_dir, prompts_file, tmp_path)

    def main_cpus(c):
        return RLHFPPO.default_resource_request(build_algo_config(c)).bundles[0]["CPU"]

    # The sampler thread of a trial without remote env runners time-shares its reward
    # actor's CPUs (0.25 in make_config) and reserves the rest of num_cpus_per_env_runner.
    assert main_cpus(cfg) == main_cpus(base) + cfg.resources.num_cpus_per_env_runner - 0.25
    remote = _async_config(
        tiny_policy_dir, prompts_file, tmp_path, resources={"num_env_runners": 2}
    )
    assert main_cpus(remote) == main_cpus(base)
    # The sampler's log-probs are PPO's old ones (bf16 too): recomputing them is refused.
    assert not cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"dtype": "bfloat16"})}
    ).recompute_logp
    d = cfg.model_dump()
    d["algorithm"]["recompute_logp"] = True
    with pytest.raises(ConfigError, match="algorithm.recompute_logp") as err:
        config_from_dict(d, check_paths=False)
    assert err.value.key == "algorithm.recompute_logp"


def test_pipelined_rollouts_fit_a_two_core_machine_at_defaults(
    tiny_policy_dir, prompts_file, tmp_path
):
    """`rayrm train` with ``algorithm.async_rollouts`` on a 2-CPU local Ray, every resource at its
    default (a reward actor of 1 CPU, a sampler thread of 1): the sampler time-shares the
    reward actor's CPU, so the trial asks for 2 CPUs, not 3 (which waited, then failed)."""
    from rayrm.experiment.resources import claim_local_cores, trial_bundles, unmet

    d = make_config(tiny_policy_dir, prompts_file, tmp_path, algorithm={"async_rollouts": True})
    d = d.to_dict()
    d["reward"].pop("num_cpus_per_actor")  # the default
    cfg = claim_local_cores(config_from_dict(d, check_paths=False), 2.0)
    bundles, strategy = trial_bundles(cfg)
    assert sum(b.get("CPU", 0.0) for b in bundles) == 2.0
    assert unmet(bundles, strategy, [{"CPU": 2.0}]) is None
    assert cfg.resources.num_cpus_per_learner == 1.0  # the update's own CPU
