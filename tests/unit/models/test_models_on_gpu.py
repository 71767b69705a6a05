"""The GPU path without Ray: the chunked LM head against a full softmax in bfloat16, and float32
master weights on a GPU (the GPU training run: tests/ray/rl/test_gpu.py).

Marked ``gpu`` and skipped where CUDA is absent (CI never has a GPU). Run them on a GPU machine
with ``python -m pytest -q -m gpu``.
"""

from __future__ import annotations

import pytest
import torch

from rayrm.models.heads import head_logits, token_logp_entropy
from rayrm.models.precision import MasterWeightAdam
from rayrm.models.tiny import build_tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


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
