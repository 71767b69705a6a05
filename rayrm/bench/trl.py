"""The TRL side of ``rayrm bench``: the same workload with ``trl.experimental.ppo.PPOTrainer``.

What belongs here: running TRL 1.12's PPO on the workload ``rayrm.bench.run`` builds (the same
policy, reference, reward-model and value-model sizes and weights, prompts, batch, response
length, epochs, minibatches and KL coefficient) as a lockstep server in a spawned child
process, timing whole steps, and the TRL and ratio lines. TRL is an optional extra
(``pip install -e '.[bench]'``), never imported by the rest of rayrm.

TRL's step calls ``gc.collect()`` twice (after the rollout, and at the end of the step after
``on_step_end``). The server alternates stock steps and steps in which those calls are
no-ops (``_GcSwitch`` replaces the ``gc`` module inside TRL's ppo_trainer), counting the
calls; both variants run in the same trainer and the same rounds as the rayrm iterations.
"""

from __future__ import annotations

import importlib.metadata
import statistics
import tempfile
import time
from typing import Any

from rayrm.bench.support import BenchSpec, PeakRSS, Workload, model_info
from rayrm.data.prompts import load_prompts

TRL_VERSION = "1.12.0"
RAYRM_OVER_TRL_STOCK_TARGET = 1.5
RAYRM_OVER_TRL_NO_GC_TARGET = 1.0
VARIANTS = ("stock", "no_gc", "stock_default", "no_gc_default")
"""TRL steps: stock or with its ``gc.collect()`` calls as no-ops, at rayrm's thread count or at
torch's default in a process of its own."""
QUIET_CPU_ARGS: dict[str, Any] = {
    "report_to": "none",
    "save_strategy": "no",  # nothing is saved in output_dir
    "logging_strategy": "no",
    "disable_tqdm": True,
    "use_cpu": True,
    "dataloader_num_workers": 0,
}
"""Every TRL trainer's arguments in the benchmark: on the CPU, nothing logged or saved."""


def trl_unavailable_reason() -> str | None:
    """None when ``trl==1.12.0`` with ``trl.experimental.ppo.PPOTrainer`` is importable."""
    try:
        version = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return f"trl is not installed (pip install trl=={TRL_VERSION}, or the 'bench' extra)"
    if version != TRL_VERSION:
        return f"trl {version} is installed; the comparison is defined for trl=={TRL_VERSION}"
    try:
        from trl.experimental.ppo import PPOTrainer  # noqa: F401
    except ImportError as e:
        return f"trl.experimental.ppo.PPOTrainer cannot be imported: {e}"
    return None


class _Stopped(Exception):
    """Raised inside TRL's loop when the benchmark is aborted."""


class _GcSwitch:
    """Stands in for the ``gc`` module inside TRL's ppo_trainer: counts and maybe skips collect."""

    def __init__(self) -> None:
        import gc

        self._gc = gc
        self.enabled = True
        self.calls = 0

    def collect(self, *args: Any, **kwargs: Any) -> int:
        self.calls += 1
        return self._gc.collect(*args, **kwargs) if self.enabled else 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gc, name)


def ppo_trainer(
    spec: BenchSpec,
    workload: Workload,
    callbacks: list[Any],
    output_dir: str,
    *,
    steps: int,
    value_path: str | None = None,
    stop_at_eos: bool = False,
    constant_lr: bool = False,
) -> Any:
    """TRL's PPOTrainer on the benchmark workload, for ``steps`` steps (batches).

    Args:
        value_path: Directory the value model starts from (default: the policy's, as rayrm's
            ``model.critic: separate``; a reward model gives its trunk and score head).
        stop_at_eos: Responses end at the tokenizer's EOS (TRL's ``stop_token="eos"``).
        constant_lr: A constant learning rate (rayrm's) instead of TRL's linear decay.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(workload.policy, padding_side="left")
    prompts = load_prompts(workload.prompts)
    ids = [
        tokenizer.encode(p, add_special_tokens=False)[-spec.max_prompt_tokens :] for p in prompts
    ]
    policy = AutoModelForCausalLM.from_pretrained(workload.policy)
    ref = AutoModelForCausalLM.from_pretrained(workload.policy)
    # TRL's value model is a separate sequence-classification model; its trunk starts from the
    # policy weights, as rayrm's `model.critic: separate` does.
    value = AutoModelForSequenceClassification.from_pretrained(
        value_path or workload.policy, num_labels=1
    )
    value.config.pad_token_id = tokenizer.pad_token_id
    if workload.reward is None:
        raise ValueError("the TRL comparison needs the reward model")
    reward = AutoModelForSequenceClassification.from_pretrained(workload.reward)
    args = PPOConfig(
        output_dir=output_dir,  # nothing is saved (save_strategy="no")
        per_device_train_batch_size=spec.batch_size,  # with 1 accumulation step: the batch
        gradient_accumulation_steps=1,
        num_mini_batches=spec.num_minibatches,
        num_ppo_epochs=spec.num_epochs,
        total_episodes=spec.batch_size * steps,
        local_rollout_forward_batch_size=spec.batch_size,
        response_length=spec.max_new_tokens,
        stop_token="eos" if stop_at_eos else None,
        temperature=1.0,
        kl_coef=spec.kl_coef,
        kl_estimator="k1",
        vf_coef=0.1,
        cliprange=0.2,
        cliprange_value=0.2,
        gamma=1.0,
        lam=0.95,
        learning_rate=spec.lr,
        lr_scheduler_type="constant" if constant_lr else "linear",
        missing_eos_penalty=None,
        num_sample_generations=0,
        seed=spec.seed,
        **QUIET_CPU_ARGS,
    )
    return PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        train_dataset=Dataset.from_dict({"input_ids": ids}),
        value_model=value,
        callbacks=callbacks,
    )


def serve_trl(conn: Any, spec: BenchSpec, workload: Workload) -> dict[str, Any]:
    """Lockstep server (see ``rayrm.bench.support.run_lockstep``) running TRL's PPO.

    After ``warmup`` free-running steps, every step waits for a command, one of
    :data:`VARIANTS`, and answers with its time. A step's interval runs from the command to
    ``on_step_end``; TRL's second ``gc.collect()`` of the previous step runs after that
    ``on_step_end`` returns, so every interval holds exactly two calls, made in its own mode.
    ``*_default`` steps run at torch's default thread count in this process (the child is
    started without ``OMP_NUM_THREADS``: what a user running TRL gets), the others at
    ``spec.matched_threads``, the threads of rayrm's synchronous update (what ``rayrm train``
    reserves for its learner on this machine).
    """
    import torch

    default_threads = torch.get_num_threads()
    torch.set_num_threads(spec.matched_threads)
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from transformers import TrainerCallback

    switch = _GcSwitch()
    setattr(ppo_module, "gc", switch)  # noqa: B010  (TRL's module does `import gc; gc.collect()`)
    total = spec.warmup + len(VARIANTS) * spec.iterations
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    calls: dict[str, list[int]] = {v: [] for v in VARIANTS}

    class Lockstep(TrainerCallback):
        step, start, calls0, mode = 0, 0.0, 0, "stock"

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.step += 1
            if self.step > spec.warmup:
                times[self.mode].append(time.perf_counter() - self.start)
                calls[self.mode].append(switch.calls - self.calls0)
                conn.send(("row", times[self.mode][-1]))
            elif self.step == spec.warmup:
                conn.send(("ready", None))
            if self.step < spec.warmup or self.step == total:
                return
            self.mode = conn.recv()
            if self.mode == "stop":  # the benchmark is being aborted
                raise _Stopped
            if self.mode not in times:
                raise ValueError(f"unknown TRL mode {self.mode!r}")
            switch.enabled = self.mode.startswith("stock")
            default = self.mode.endswith("_default")
            torch.set_num_threads(default_threads if default else spec.matched_threads)
            self.calls0, self.start = switch.calls, time.perf_counter()

    if spec.warmup < 1:
        raise ValueError("the lockstep needs at least one warm-up step")
    with tempfile.TemporaryDirectory(prefix="rb-trl-") as output_dir, PeakRSS() as rss:
        trainer = ppo_trainer(spec, workload, [Lockstep()], output_dir, steps=total)
        try:
            trainer.train()
        except _Stopped:
            return {"stopped": True}
        rss.sample()
    tokens_per_step = spec.batch_size * spec.max_new_tokens
    steps = {}
    for variant, dts in times.items():
        steps[variant] = {
            "iterations": len(dts),
            "generated_tokens": tokens_per_step * len(dts),
            "tokens_per_s": tokens_per_step * len(dts) / sum(dts),
            "s_per_token": sum(dts) / (tokens_per_step * len(dts)),
            "iteration_s_median": statistics.median(dts),
            "gc_collect_calls_per_step": statistics.fmean(calls[variant]),
            "threads": (default_threads if variant.endswith("_default") else spec.matched_threads),
        }
    return {"peak_rss_mb": rss.report(), "steps": steps}


def _trl_record(
    spec: BenchSpec, workload: Workload, variant: str, m: dict[str, Any]
) -> dict[str, Any]:
    notes = [
        "same policy/reference/reward/value weights, prompts, batch, response length, epochs, "
        "minibatches, KL coefficient (k1 estimator), clip ranges, vf_coef, gamma, lambda, "
        "temperature 1 and lr as the rayrm line",
        "TRL always trains a separate value model (the rayrm line with critic=separate matches)",
        "TRL generates with HF generate(output_scores=True) and runs policy, value and reward "
        "models in this one process; rayrm scores in a Ray reward actor",
        "TRL's optimizer is transformers' default fused AdamW (adamw_torch_fused) with a linear "
        "LR decay and no gradient clipping (its PPO loop never clips); rayrm uses fused Adam "
        "with global-norm clipping 1.0",
        "rayrm runs GPT-2's gelu_new as torch's fused tanh GELU (the same function, "
        "rayrm.models.fused); TRL runs transformers' NewGELUActivation (eight elementwise ops)",
        "TRL draws each batch of prompts from a shuffled DataLoader, rayrm's envs draw prompts "
        "uniformly; both use the same 64 prompts, left-truncated to max_prompt_tokens",
        "generated tokens = batch x response_length: stop_token=None, every response is full length",
        "measured in lockstep with the rayrm lines: each round runs one rayrm iteration per "
        "critic and one TRL step of each variant, one at a time, so all see the same load",
    ]
    if variant.startswith("no_gc"):
        notes.append("TRL's gc.collect() calls are no-ops during these steps")
    if variant.endswith("_default"):
        notes.append("torch's default thread count in a process started without OMP_NUM_THREADS")
    return {
        "bench": "trl",
        "variant": variant,
        "trl_version": TRL_VERSION,
        "model": model_info(spec, workload),
        "batch_size": spec.batch_size,
        "max_new_tokens": spec.max_new_tokens,
        "num_epochs": spec.num_epochs,
        "num_minibatches": spec.num_minibatches,
        "warmup": spec.warmup,
        **m["steps"][variant],
        "peak_rss_mb": m["peak_rss_mb"],
        "notes": notes,
    }


def trl_records(
    spec: BenchSpec, workload: Workload, trl: dict[str, Any], rayrm: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The TRL lines (one per variant) and one ratio line per rayrm line measured with them."""
    records = {v: _trl_record(spec, workload, v, trl) for v in VARIANTS}
    ratios = [_ratio(r, records) for r in rayrm if r.get("bench") == "rayrm"]
    return [*records.values(), *ratios]


def _ratio(rayrm: dict[str, Any], trl: dict[str, dict[str, Any]]) -> dict[str, Any]:
    over = {v: rayrm["tokens_per_s"] / line["tokens_per_s"] for v, line in trl.items()}
    targets = {
        "rayrm_over_trl_stock": RAYRM_OVER_TRL_STOCK_TARGET,
        "rayrm_over_trl_no_gc": RAYRM_OVER_TRL_NO_GC_TARGET,
        "rayrm_over_trl_no_gc_default": RAYRM_OVER_TRL_NO_GC_TARGET,
    }
    identical = rayrm["critic"] == "separate"
    return {
        "bench": "ratio",
        "what": "rayrm tokens/s / TRL PPOTrainer tokens/s",
        "rayrm_config": rayrm["config"],
        "rayrm_critic": rayrm["critic"],
        "identical_workload": identical,
        "workload": rayrm["model"] | {"max_new_tokens": rayrm["max_new_tokens"]},
        "rayrm_threads": rayrm["flops"]["threads"],
        "rayrm_async_rollouts": rayrm.get("async_rollouts", False),
        "trl_threads": {v: line["threads"] for v, line in trl.items()},
        "rayrm_tokens_per_s": rayrm["tokens_per_s"],
        **{f"trl_{v}_tokens_per_s": line["tokens_per_s"] for v, line in trl.items()},
        **{f"rayrm_over_trl_{v}": ratio for v, ratio in over.items()},
        **{
            f"median_step_ratio_{v}": line["iteration_s_median"] / rayrm["iteration_s_median"]
            for v, line in trl.items()
        },
        "targets": targets,
        "met": {k: over[k.removeprefix("rayrm_over_trl_")] >= t for k, t in targets.items()},
        "notes": [
            "identical workload: rayrm trains a separate value model as TRL does"
            if identical
            else "not the identical workload: rayrm's default shared critic (a value head on "
            "the policy trunk) does one transformer forward/backward less per minibatch "
            "than TRL's separate value model"
        ],
    }
