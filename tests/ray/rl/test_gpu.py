"""The GPU path: bfloat16 training with a GPU learner, a GPU env runner and a GPU reward actor.

Marked ``gpu`` and skipped where CUDA is absent (CI never has a GPU). Run them on a GPU machine
with ``python -m pytest -q -m gpu``; docs/models.md ("What ran on a GPU") says when they last ran
there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_config

from rayrm import metrics as M
from rayrm.models.tiny import build_tiny_model, build_tiny_reward_model, build_tokenizer
from rayrm.rl.algorithm import build_algo_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bfloat16_training_on_gpu_learner_runner_and_reward_actor(ray_local, tmp_path):
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the local Ray sees no GPU")
    policy = build_tiny_model(tmp_path / "policy", arch="qwen2", hidden=64, heads=4)
    rm = build_tiny_reward_model(tmp_path / "rm", build_tokenizer("qwen2"), arch="qwen2")
    from envs.builtin import BUILTIN_PROMPTS
    from rayrm.data.prompts import write_prompts_jsonl

    prompts = str(write_prompts_jsonl(tmp_path / "p.jsonl", BUILTIN_PROMPTS))
    cfg = make_config(
        policy,
        prompts,
        tmp_path,
        model={"dtype": "bfloat16"},
        reward={"source": "model", "path": rm, "num_gpus_per_actor": 0.25},
        algorithm={"batch_size": 8, "lr": 1e-5},
        resources={
            "num_learners": 1,
            "num_gpus_per_learner": 0.5,
            "num_env_runners": 1,
            "num_gpus_per_env_runner": 0.25,
        },
    )
    algo = build_algo_config(cfg).build_algo()
    try:
        results = [algo.train() for _ in range(3)]
        for r in results:
            rlhf = r[M.RLHF_RESULTS]
            assert np.isfinite(rlhf[M.LOSS_POLICY]) and rlhf[M.LOSS_SKIPPED_STEPS] == 0
        devices = algo.learner_group.foreach_learner(
            lambda learner: str(next(learner.module["default_policy"].parameters()).device)
        )
        assert all(d.startswith("cuda") for d in devices), devices
        runner_devices = algo.env_runner_group.foreach_env_runner(
            lambda runner: (
                str(next(runner.module.lm.parameters()).dtype)
                + "@"
                + str(next(runner.module.lm.parameters()).device)
            ),
            local_env_runner=False,
        )
        assert runner_devices == ["torch.bfloat16@cuda:0"], runner_devices
        actor = algo.rewards.scorer.actors[0]
        assert str(ray.get(actor.__ray_call__.remote(lambda a: a.device))).startswith("cuda")
    finally:
        algo.stop()
