"""`rayrm tune`'s search space: samplers placed in the param space (the sweeps:
tests/ray/experiment/test_sweep.py)."""

from __future__ import annotations

from helpers import sweep_config as _sweep_config
from ray import tune

from rayrm.experiment.sweep import param_space


def test_param_space_places_samplers(tiny_policy_dir, prompts_file, tmp_path):
    cfg = _sweep_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        search_space={
            "algorithm.lr": {"loguniform": [1e-5, 1e-3]},
            "seed": {"grid": [0, 1, 2]},
            "generation.temperature": {"choice": [0.7, 1.0]},
        },
    )
    space = param_space(cfg)["rayrm"]
    assert isinstance(space["algorithm"]["lr"], tune.search.sample.Float)
    assert space["seed"] == {"grid_search": [0, 1, 2]}
    assert isinstance(space["generation"]["temperature"], tune.search.sample.Categorical)
    assert space["algorithm"]["batch_size"] == 8  # untouched keys keep their values
