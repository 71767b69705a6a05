"""Model FLOPs of an RLHF iteration and the machine's matrix-multiply peak (``rayrm bench``).

What belongs here: the analytic FLOP count of each phase of one iteration of a benchmark
configuration, the GEMM probe that measures the peak rate at the thread count the phase ran
with, and the utilisation (MFU) they give.

Model FLOPs, as in Kaplan et al. 2020 (https://arxiv.org/abs/2001.08361, §2.1) and PaLM's MFU
(Chowdhery et al. 2022, appendix B): a forward pass costs per token ``2 N`` (``N``: the
non-embedding parameters) plus ``2 n_layer n_ctx d_model`` for attention over the context,
plus ``2 d_model V`` where the token's logits over the vocabulary are needed; a training step
(forward and backward) costs three forwards. Only the work the algorithm needs is counted,
not what an implementation adds (recomputation, padding):

* ``sample``: every prompt token once (the prefill) and every generated token once with its
  logits (KV-cached decoding), the context growing to ``prompt + completion``;
* ``score``: one reward-model forward over ``prompt + completion`` (a scalar head);
* ``update``: the no-grad forwards of the learner connector (the reference policy with logits
  at the completion tokens; the critic -- a separate trunk, or the policy trunk for a shared
  value head -- for the old values; none without a critic), then ``num_epochs`` training
  passes over the batch (the policy with logits at the completion tokens, and a separate
  critic) at three forwards each. Where those no-grad forwards run while the reward actors
  score (synchronous iterations with a local learner: ``forwards_in_score``), they count in
  ``score`` instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a GPT-2-like model."""

    non_embedding_params: int
    n_layer: int
    d_model: int
    vocab_size: int

    def forward(self, tokens: float, context: float, logit_tokens: float) -> float:
        """Forward FLOPs over ``tokens`` tokens attending to ``context`` tokens on average,
        ``logit_tokens`` of them with logits over the vocabulary."""
        per_token = 2 * self.non_embedding_params + 2 * self.n_layer * context * self.d_model
        return tokens * per_token + logit_tokens * 2 * self.d_model * self.vocab_size


def gpt2_shape(model_dir: str) -> ModelShape:
    """The shape of the GPT-2 model saved in ``model_dir`` (embeddings excluded from ``N``)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    trunk = AutoModel.from_config(config)
    embeddings = sum(
        p.numel() for name, p in trunk.named_parameters() if name.split(".")[0] in ("wte", "wpe")
    )
    total = sum(p.numel() for p in trunk.parameters())
    return ModelShape(total - embeddings, config.n_layer, config.n_embd, config.vocab_size)


def iteration_flops(
    *,
    policy: ModelShape,
    reward: ModelShape | None,
    completions: int,
    prompt_tokens: float,
    completion_tokens: float,
    num_epochs: int,
    critic: str,
    forwards_in_score: bool = False,
) -> dict[str, float]:
    """Model FLOPs per phase of one iteration (see the module docstring).

    Args:
        completions: completions per iteration.
        prompt_tokens, completion_tokens: mean tokens per prompt and per completion.
        reward: the reward model's shape; None for a reward function (no model FLOPs).
        critic: ``separate`` (a second trunk the policy's size), ``shared`` (a value head on
            the policy trunk) or ``none``.
        forwards_in_score: the learner connector's no-grad forwards run in the score phase.
    """
    b, p, t = completions, prompt_tokens, completion_tokens
    seq = p + t
    sample = b * (policy.forward(p, p / 2, 0) + policy.forward(t, p + t / 2, t))
    score = b * reward.forward(seq, seq / 2, 0) if reward is not None else 0.0
    policy_pass = b * policy.forward(seq, seq / 2, t)
    critic_pass = b * policy.forward(seq, seq / 2, 0)  # the critic trunk is the policy's size
    connector = policy_pass + (critic_pass if critic != "none" else 0.0)  # reference, values
    train = 3 * (policy_pass + (critic_pass if critic == "separate" else 0.0))
    if forwards_in_score:
        return {"sample": sample, "score": score + connector, "update": num_epochs * train}
    return {"sample": sample, "score": score, "update": connector + num_epochs * train}


def peak_matmul_flops(threads: int, *, n: int = 1024, repeats: int = 5) -> float:
    """Best float32 ``n x n`` matrix-multiply rate of this process at ``threads`` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best


def utilisation(flops: dict[str, float], phase_s: dict[str, float], peak: float) -> dict[str, Any]:
    """Achieved FLOP/s and MFU per phase: ``flops[phase] / phase_s[phase]`` over ``peak``."""
    achieved = {k: flops[k] / phase_s[k] for k in flops if phase_s.get(k)}
    return {
        "model_flops_per_iteration": flops,
        "achieved_flops_per_s": achieved,
        "peak_matmul_flops_per_s": peak,
        "mfu": {k: v / peak for k, v in achieved.items()},
    }


def add_utilisation(records: list[dict[str, Any]]) -> None:
    """Adds to each rayrm line its achieved FLOP/s and MFU per phase, against the best
    matrix-multiply rate at its thread count, probed here once every trainer of the lockstep
    has stopped (a probe while another process still works, or shuts down, reads low)."""
    peaks: dict[int, float] = {}
    for record in records:
        flops = record.get("flops")
        if record.get("bench") != "rayrm" or not flops:
            continue
        threads = flops["threads"]
        if threads not in peaks:
            peaks[threads] = peak_matmul_flops(threads)
        model_flops = flops["model_flops_per_iteration"]
        record["flops"] = {
            "threads": threads,
            **utilisation(model_flops, record["phase_s"], peaks[threads]),
        }
