"""Peak memory of one learner update at a real vocabulary size, against the full-logits path.

What belongs here: the ``learner_memory`` section of ``rayrm bench``. One learner update is
what a learner does with a batch: the no-grad forwards of the learner connector (reference
log-probs, values; ``algorithm.forward_batch_size`` completions at a time) and one training
minibatch (forward, backward, optimizer step). It runs twice, each time in a fresh process on
the same model and batch:

* ``chunked`` -- rayrm's path: the trunk once per completion, the LM head only on the
  generated positions and a chunk of rows at a time (``rayrm.models.heads``), checkpointed in
  backward; values read from the trunk without the head.
* ``full_logits`` -- the path rayrm had before (and most trainers have): the model's full
  forward, logits for every position over the whole vocabulary, gathered to (N, V) float32,
  a log-softmax and an entropy over them, and a separate values pass.
* ``chunked_lora`` -- rayrm's path with ``model.lora`` (r 8 on peft's default layers): no
  reference copy, Adam state for the adapters and the value head only.

Besides the update's peak growth, each run reports the learner's peak during the update counted
from before the module was built (the module with its reference, the optimizer state, the
update) and the bytes one weight sync sends to the env runners
(``get_state(inference_only=True)``).

Peak memory is the process's peak RSS growth during the update (Linux ``VmHWM`` after resetting
it through ``/proc/self/clear_refs``), or ``torch.cuda.max_memory_allocated`` on a GPU. The
model is a tiny Qwen2 (width 64, 2 layers, tied embeddings) with Qwen2.5's 151,936-token
vocabulary, so the vocabulary-sized tensors dominate, as they do for real 0.5B–8B models.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from rayrm.bench.spec import BenchSpec
from rayrm.bench.support import build_workload, finish, run_config, start_child
from rayrm.core_algos import entropy_from_logits
from rayrm.models.precision import MasterWeightAdam
from rayrm.models.tiny import build_tiny_model, build_tokenizer
from rayrm.rl.algorithm import build_algo_config
from rayrm.rl.env_runner import RLHFEnvRunner
from rayrm.rl.module import LOGP, SEQ_ID, VF_PREDS, LMPolicyModule, group_rows, take_rows

QWEN_VOCAB = 151_936
PEAK_RATIO_TARGET = 4.0
MODES = ("chunked", "full_logits", "chunked_lora")
LORA = {"r": 8, "alpha": 16}


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


class _Peak:
    """Peak memory growth of a code block: CUDA allocator peak, else peak RSS (Linux)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def __enter__(self) -> _Peak:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            peak = self.torch.cuda.max_memory_allocated()
        else:
            peak = _status_kb("VmHWM") * 1024
        self.growth_mb = (peak - self.base) / 2**20


def _batch(vocab: int, completions: int, prompt_tokens: int, new_tokens: int, seed: int) -> Any:
    """Token rows of ``completions`` random completions, as the env runner produces them."""
    import numpy as np
    import torch
    from ray.rllib.core.columns import Columns

    rng = np.random.default_rng(seed)
    L = prompt_tokens + new_tokens
    ids, lengths, actions, seq = [], [], [], []
    for k in range(completions):
        tokens = rng.integers(3, vocab, size=L)
        for t in range(new_tokens):
            row = np.zeros(L, dtype=np.int64)
            row[: prompt_tokens + t] = tokens[: prompt_tokens + t]
            ids.append(row)
            lengths.append([prompt_tokens + t])
            actions.append(int(tokens[prompt_tokens + t]))
            seq.append(k)
    return {
        Columns.OBS: {"input_ids": torch.tensor(np.stack(ids)), "length": torch.tensor(lengths)},
        Columns.ACTIONS: torch.tensor(actions),
        SEQ_ID: torch.tensor(seq),
    }


def _full_logits_outputs(module: Any, model: Any, batch: dict[str, Any], values: bool) -> Any:
    """The full-logits path: (G, L, V) logits, gathered (N, V) float32, log-softmax, entropy."""
    import torch
    from ray.rllib.core.columns import Columns

    input_ids, length, seq_id = module.batch_rows(batch)
    rep, inverse = group_rows(seq_id, length)
    L = int(length[rep].max())
    mask = (torch.arange(L)[None, :] < length[rep][:, None]).long()
    out = model(input_ids=input_ids[rep, :L], attention_mask=mask, output_hidden_states=values)
    pos = length - 1
    logits = out.logits[inverse, pos].float() / module.temperature  # (N, V)
    logp = torch.log_softmax(logits, -1).gather(-1, batch[Columns.ACTIONS][:, None])[:, 0]
    vf = module.value_of(out.hidden_states[-1][inverse, pos]) if values else None
    return logp, entropy_from_logits(logits), vf


def update_peak(
    model_dir: str,
    mode: str,
    completions: int,
    prompt_tokens: int,
    new_tokens: int,
    num_minibatches: int,
) -> dict[str, Any]:
    """One learner update (connector forwards + one training minibatch) in this process."""
    import gymnasium as gym
    import torch
    import tree
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from transformers import AutoConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    per_minibatch = completions // num_minibatches
    space = gym.spaces.Dict({})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    whole = _Peak(device).__enter__()  # the learner's whole peak: module, optimizer, update
    module = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=space,
        action_space=gym.spaces.Discrete(vocab),
        model_config={
            "path": model_dir,
            "forward_batch_size": per_minibatch,
            "lora": LORA if mode.endswith("_lora") else None,
        },
        inference_only=False,
    ).build()
    module.to(device)
    module.train()
    optimizer = MasterWeightAdam(module.trainable_parameters(), lr=1e-5, max_grad_norm=1.0)
    batch = _batch(vocab, completions, prompt_tokens, new_tokens, seed=0)
    batch = tree.map_structure(lambda x: x.to(device), batch)
    rows = torch.nonzero(batch[SEQ_ID] < per_minibatch).squeeze(-1)
    minibatch = take_rows(batch, rows)
    chunked = mode.startswith("chunked")
    with _Peak(device) as peak:
        with torch.no_grad():
            if chunked:
                module.rollout_outputs(batch, logp=False)
            else:
                _full_logits_outputs(module, module.ref_model, batch, values=False)
                _full_logits_outputs(module, module.lm, batch, values=True)
        if chunked:
            out = module.forward_train(minibatch)
            logp, values = out[LOGP], out[VF_PREDS]
        else:
            logp, _, values = _full_logits_outputs(module, module.lm, minibatch, values=True)
        loss = -logp.mean() + 0.5 * (values**2).mean()
        loss.backward()
        optimizer.step()
    whole.__exit__(None, None, None)
    synced = module.get_state(inference_only=True)
    return {
        "mode": mode,
        "peak_mb": round(peak.growth_mb, 1),
        "learner_peak_mb": round(whole.growth_mb, 1),
        "sync_mb": round(sum(v.numel() * v.element_size() for v in synced.values()) / 2**20, 3),
        "device": device.type,
        "rows_per_update": int(batch[SEQ_ID].numel()),
        "rows_per_minibatch": int(rows.numel()),
    }


def measure_learner_memory(
    workdir: str,
    *,
    vocab_size: int = QWEN_VOCAB,
    completions: int = 16,
    prompt_tokens: int = 16,
    new_tokens: int = 48,
    num_minibatches: int = 2,
) -> dict[str, Any]:
    """Runs both paths, each in its own process, and returns the ``learner_memory`` line."""

    model_dir = build_tiny_model(
        Path(workdir) / "qwen2-vocab",
        arch="qwen2",
        tokenizer=build_tokenizer("qwen2"),
        tokenizer_kind="qwen2",
        hidden=64,
        heads=4,
        positions=prompt_tokens + new_tokens + 8,
        vocab_size=vocab_size,
    )
    args = (completions, prompt_tokens, new_tokens, num_minibatches)
    # Large allocations straight from mmap, so a freed tensor leaves the RSS (glibc otherwise
    # keeps freed blocks of up to 32 MB in its heap); read by the children's allocator at start.
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        runs = {mode: finish(*start_child(update_peak, model_dir, mode, *args)) for mode in MODES}
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_")
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    ratio = runs["full_logits"]["peak_mb"] / max(runs["chunked"]["peak_mb"], 1e-9)
    N = runs["chunked"]["rows_per_update"]
    return {
        "bench": "learner_memory",
        "vocab_size": vocab_size,
        "model": {"type": "qwen2", "hidden": 64, "layers": 2, "tied_embeddings": True},
        "completions": completions,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "num_minibatches": num_minibatches,
        "device": runs["chunked"]["device"],
        "peak_mb": {mode: runs[mode]["peak_mb"] for mode in MODES},
        "ratio_full_over_chunked": ratio,
        "learner_peak_mb": {mode: runs[mode]["learner_peak_mb"] for mode in MODES},
        "sync_mb": {mode: runs[mode]["sync_mb"] for mode in MODES},
        "lora": LORA,
        "one_float32_n_by_v_tensor_mb": round(N * vocab_size * 4 / 2**20, 1),
        "target": PEAK_RATIO_TARGET,
        "met": ratio >= PEAK_RATIO_TARGET,
        "notes": [
            "peak growth during one update (connector no-grad forwards over the learner batch, "
            "then one training minibatch: forward, backward, Adam step), each path in a fresh "
            "process; the optimizer state and weights are the same for both",
            "CPU: growth of the peak RSS (VmHWM reset via /proc/self/clear_refs) with glibc's "
            "MALLOC_MMAP_THRESHOLD_=65536, so freed tensors leave the RSS; GPU: "
            "torch.cuda.max_memory_allocated growth",
        ],
    }


def episode_bytes_per_step(episodes: list[Any]) -> dict[str, float]:
    """Numpy bytes stored per step in sampled episodes, by field, plus their ``total``."""
    import numpy as np
    import tree
    from ray.rllib.core.columns import Columns

    def nbytes(x: Any) -> int:
        return sum(np.asarray(leaf).nbytes for leaf in tree.flatten(x))

    fields = {"observations": 0, "actions": 0, "rewards": 0, "extra_model_outputs": 0}
    steps = 0
    for episode in episodes:
        e = episode if episode.is_numpy else episode.to_numpy()
        steps += len(e)
        fields["observations"] += nbytes(e.get_observations())
        fields["actions"] += nbytes(e.get_actions())
        fields["rewards"] += nbytes(e.get_rewards())
        fields["extra_model_outputs"] += sum(
            nbytes(e.get_extra_model_outputs(k)) for k in e.extra_model_outputs
        )
        if not set(e.extra_model_outputs) <= {Columns.ACTION_LOGP}:
            raise ValueError(f"unexpected extra model outputs {set(e.extra_model_outputs)}")
    out = {k: v / steps for k, v in fields.items()}
    out["total"] = sum(fields.values()) / steps
    return out


def measure_memory(spec: BenchSpec, vocab_sizes: list[int], workdir: str) -> dict[str, Any]:
    """Samples one batch with each vocabulary size and compares the bytes stored per step.

    Runs rayrm's ``RLHFEnvRunner`` -- the class RLlib instantiates for sampling -- in this
    process, without Ray: sampling needs no reward actor.
    """
    import torch

    torch.set_num_threads(1)
    per_vocab: dict[str, dict[str, float]] = {}
    steps: dict[str, int] = {}
    for vocab in vocab_sizes:
        vspec = replace(spec, vocab_size=vocab)
        n_positions = spec.max_prompt_tokens + spec.max_new_tokens
        workload = build_workload(
            Path(workdir) / f"vocab{vocab}", vspec, n_positions=n_positions, reward_model=False
        )
        runner = RLHFEnvRunner(config=build_algo_config(run_config(vspec, workload, workdir)))
        try:
            episodes = runner.sample()
        finally:
            runner.stop()
        per_vocab[str(vocab)] = episode_bytes_per_step(episodes)
        steps[str(vocab)] = sum(len(e) for e in episodes)
    totals = {v: b["total"] for v, b in per_vocab.items()}
    return {
        "bench": "memory_per_step",
        "vocab_sizes": vocab_sizes,
        "bytes_per_step": totals,
        "breakdown": per_vocab,
        "sampled_steps": steps,
        "equal": len(set(totals.values())) == 1,
        "full_logits_bytes_per_step": {str(v): 4 * v for v in vocab_sizes},
        "model": {"n_layer": spec.n_layer, "n_head": spec.n_head, "n_embd": spec.n_embd},
        "batch_size": spec.batch_size,
        "max_new_tokens": spec.max_new_tokens,
        "max_prompt_tokens": spec.max_prompt_tokens,
        "notes": [
            "observations hold only the row's length per step (int64; the prompt's ids are "
            "stored once, in the first info, and the learner rebuilds the rows from them and "
            "the actions): O(1) per step, independent of V and of the sequence length; "
            "actions, rewards and the chosen token's log-prob are scalars",
            "an episode stores one observation more than it has steps; all completions run to "
            "max_new_tokens (see the default lines' notes), so the per-step figures compare",
        ],
    }
