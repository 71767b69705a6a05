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
from rayrm.models.heads import head_logits, token_logp_entropy
from rayrm.models.precision import MasterWeightAdam
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
    from envs.prompts import write_prompts_jsonl

    prompts = str(write_prompts_jsonl(tmp_path / "p.jsonl", BUILTIN_PROMPTS))
    cfg = make_config(
        policy,
        prompts,
        tmp_path,
        model={"dtype": "bfloat16"},
        reward={"source": "model", "path": rm, "num_gpus_per_actor": 0.25},
        ppo={"batch_size": 8, "lr": 1e-5},
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


def test_chunked_head_matches_full_softmax_in_bfloat16_on_gpu(tmp_path):
    model = build_tiny_model(tmp_path / "q", arch="qwen2", hidden=64, heads=4, vocab_size=151_936)
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda()
    hidden = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    actions = torch.randint(0, 151_936, (300,), device="cuda")
    logp, entropy = token_logp_entropy(lm, hidden, actions, temperature=0.8)
    full = torch.log_softmax(head_logits(lm, hidden) / 0.8, -1)
    torch.testing.assert_close(logp, full.gather(-1, actions[:, None])[:, 0], atol=2e-2, rtol=0)
    torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1), atol=5e-2, rtol=1e-2)
    (logp.sum() + entropy.sum()).backward()
    # The backward against float64 full logits of the same weights and hidden states: within
    # bfloat16's rounding (0.17% of the gradient's norm when this ran on the CPU in bf16).
    h64 = hidden.detach().double().requires_grad_(True)
    w64 = lm.get_output_embeddings().weight.detach().double()
    full64 = torch.log_softmax(h64 @ w64.T / 0.8, -1)
    (full64.gather(-1, actions[:, None]).sum() - (full64.exp() * full64).sum()).backward()
    error = (hidden.grad.double() - h64.grad).norm() / h64.grad.norm()
    assert error < 2e-2, float(error)


def test_master_weights_on_gpu():
    p = torch.nn.Parameter(torch.full((1024,), 0.02, device="cuda", dtype=torch.bfloat16))
    optimizer = MasterWeightAdam([p], lr=1e-5, foreach=True)
    for _ in range(50):
        p.grad = torch.ones_like(p)
        optimizer.step()
    assert optimizer.masters[0].device.type == "cuda"
    assert float(optimizer.masters[0][0]) == pytest.approx(0.02 - 50e-5, abs=2e-4)
    assert float(p[0]) < 0.0199  # the compute copy moved with the master
