"""TRL 1.12's critic-free trainers, ``GRPOTrainer`` and ``RLOOTrainer``, in ``rayrm bench``.

What belongs here: building TRL's GRPO and RLOO trainers on a benchmark workload with the
settings of the rayrm configuration they are compared with (the same policy and reward-model
weights, prompts, completions per prompt, batch, response length, epochs, minibatches, KL
coefficient, clip range, learning rate), a lockstep server timing whole iterations (one
generation and its optimizer steps), and the TRL and ratio lines of the ``groups`` section.
The learning section (:mod:`rayrm.bench.learning`) trains with the same builder.

How the shapes map: rayrm's iteration samples ``batch_size`` completions (``batch_size /
samples_per_prompt`` prompts) and takes ``num_epochs x num_minibatches`` optimizer steps on
them. TRL's ``generation_batch_size`` is ``per_device_train_batch_size x
steps_per_generation``; with ``per_device_train_batch_size = batch_size / num_minibatches``,
``steps_per_generation = num_minibatches`` and ``num_iterations`` (TRL's mu) ``= num_epochs``
one TRL generation is one rayrm iteration, with as many optimizer steps of as many completions.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from rayrm.bench.spec import GROUP_ALGOS
from rayrm.bench.support import BenchSpec, PeakRSS, Workload, model_info
from rayrm.bench.trl import QUIET_CPU_ARGS
from rayrm.data.prompts import load_prompts

SPEED_TARGET = 1.0
"""rayrm's seconds per iteration must be at most TRL's: TRL's / rayrm's >= 1."""


class LockstepStopped(Exception):
    """Raised inside TRL's loop when the benchmark is aborted."""


def prompt_texts(workload: Workload, tokenizer: Any, max_prompt_tokens: int) -> list[str]:
    """The workload's prompts, each cut to its last ``max_prompt_tokens`` tokens (as rayrm's
    env cuts them), as text: TRL's critic-free trainers tokenize text prompts themselves."""
    out = []
    for prompt in load_prompts(workload.prompts):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        out.append(
            tokenizer.decode(ids[-max_prompt_tokens:]) if len(ids) > max_prompt_tokens else prompt
        )
    return out


def lockstep_callback(
    conn: Any, *, per_iteration: int, warmup: int, total: int, times: list[float]
) -> Any:
    """A ``TrainerCallback`` that runs TRL's loop in lockstep with the benchmark's other
    configurations: after each iteration (``per_iteration`` optimizer steps) past the
    ``warmup`` it sends ``("row", seconds)`` (also appended to ``times``), after the warm-up
    ``("ready", None)``, then waits for ``"iterate"`` (``"stop"`` aborts the run)."""
    from transformers import TrainerCallback

    class Lockstep(TrainerCallback):  # type: ignore[misc]
        step, start = 0, 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.step += 1
            if self.step % per_iteration:
                return
            done = self.step // per_iteration
            if done > warmup:
                times.append(time.perf_counter() - self.start)
                conn.send(("row", times[-1]))
            elif done == warmup:
                conn.send(("ready", None))
            if done < warmup or done == total:
                return
            command = conn.recv()
            if command == "stop":  # the benchmark is being aborted
                raise LockstepStopped
            if command != "iterate":
                raise ValueError(f"unknown command {command!r}")
            self.start = time.perf_counter()

    return Lockstep()


def group_trainer(
    algo: str,
    spec: BenchSpec,
    workload: Workload,
    *,
    iterations: int,
    output_dir: str,
    callbacks: list[Any] | None = None,
) -> Any:
    """TRL's ``GRPOTrainer`` (``algo="grpo"``) or ``RLOOTrainer`` (``"rloo"``) on ``workload``
    for ``iterations`` generations, with ``spec``'s shapes (see the module docstring).

    The reward is the workload's reward model (TRL loads it as a sequence classifier and
    scores ``prompt + completion`` text, as rayrm's reward actor does). The learning rate is
    constant, as rayrm's; TRL clips gradients at norm 1.0, as rayrm does.
    """
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer

    if algo not in GROUP_ALGOS:
        raise ValueError(f"algo must be one of {GROUP_ALGOS}, got {algo!r}")
    if workload.reward is None:
        raise ValueError("the TRL comparison needs the reward model")
    if spec.batch_size % spec.num_minibatches or spec.batch_size % spec.samples_per_prompt:
        raise ValueError("batch_size must be a multiple of num_minibatches and samples_per_prompt")
    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(workload.policy, padding_side="left")
    texts = prompt_texts(workload, tokenizer, spec.max_prompt_tokens)
    config_cls, trainer_cls = (
        (trl.GRPOConfig, trl.GRPOTrainer) if algo == "grpo" else (trl.RLOOConfig, trl.RLOOTrainer)
    )
    extra: dict[str, Any] = (
        {"loss_type": "dapo", "scale_rewards": "group"} if algo == "grpo" else {}
    )
    args = config_cls(
        output_dir=output_dir,
        per_device_train_batch_size=spec.batch_size // spec.num_minibatches,
        gradient_accumulation_steps=1,
        steps_per_generation=spec.num_minibatches,
        num_iterations=spec.num_epochs,
        num_generations=spec.samples_per_prompt,
        max_completion_length=spec.max_new_tokens,
        max_steps=iterations * spec.num_minibatches * spec.num_epochs,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=spec.kl_coef,
        epsilon=0.2,
        learning_rate=spec.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        seed=spec.seed,
        **QUIET_CPU_ARGS,
        **extra,
    )
    return trainer_cls(
        model=workload.policy,
        reward_funcs=workload.reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": texts}),
        processing_class=tokenizer,
        callbacks=callbacks or [],
    )


def serve_trl_group(conn: Any, spec: BenchSpec, workload: Workload, algo: str) -> dict[str, Any]:
    """Lockstep server (``rayrm.bench.support.run_lockstep``) running TRL's ``algo`` trainer.

    One iteration is one generation and its ``num_epochs x num_minibatches`` optimizer steps;
    it is timed from the ``"iterate"`` command to the ``on_step_end`` of its last step.
    """
    import torch

    torch.set_num_threads(spec.matched_threads)  # rayrm's update's threads
    per_iteration = spec.num_epochs * spec.num_minibatches
    total = spec.warmup + spec.iterations
    times: list[float] = []

    lockstep = lockstep_callback(
        conn, per_iteration=per_iteration, warmup=spec.warmup, total=total, times=times
    )

    if spec.warmup < 1:
        raise ValueError("the lockstep needs at least one warm-up iteration")
    with tempfile.TemporaryDirectory(prefix="rb-trl-") as output_dir, PeakRSS() as rss:
        trainer = group_trainer(
            algo, spec, workload, iterations=total, output_dir=output_dir, callbacks=[lockstep]
        )
        try:
            trainer.train()
        except LockstepStopped:
            return {"stopped": True}
        rss.sample()
    return {"peak_rss_mb": rss.report(), "times": times}


def group_records(
    spec: BenchSpec,
    workload: Workload,
    trl: dict[str, dict[str, Any]],
    rayrm: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """The TRL line and the ratio line of each algorithm, from TRL's server results ``trl``
    and the rayrm lines ``rayrm`` (both keyed by algorithm)."""
    lines = []
    for algo, result in trl.items():
        dts = result["times"]
        tokens = spec.batch_size * spec.max_new_tokens
        line = {
            "bench": "trl_group",
            "algo": algo,
            "trainer": "GRPOTrainer" if algo == "grpo" else "RLOOTrainer",
            "model": model_info(spec, workload),
            "batch_size": spec.batch_size,
            "samples_per_prompt": spec.samples_per_prompt,
            "max_new_tokens": spec.max_new_tokens,
            "num_epochs": spec.num_epochs,
            "num_minibatches": spec.num_minibatches,
            "warmup": spec.warmup,
            "iterations": len(dts),
            "iteration_s_mean": statistics.fmean(dts),
            "iteration_s_median": statistics.median(dts),
            "tokens_per_s": tokens * len(dts) / sum(dts),
            "peak_rss_mb": result["peak_rss_mb"],
            "notes": _notes(algo),
        }
        lines.append(line)
        if algo in rayrm:
            lines.append(_group_ratio(algo, rayrm[algo], line))
    return lines


def _notes(algo: str) -> list[str]:
    common = [
        "same policy and reward-model weights, prompts, completions per prompt, batch, "
        "response length, KL coefficient, clip range (0.2), lr (constant), gradient clipping "
        "(1.0) as the rayrm line; TRL's mu (num_iterations) = num_epochs and "
        "steps_per_generation = num_minibatches",
        "TRL generates with HF generate() and scores with the reward model in this one "
        "process; rayrm samples in an env runner and scores in a Ray reward actor",
        "every response is full length (the benchmark policy never emits EOS)",
        "measured in lockstep with the rayrm lines, one iteration each in turn",
    ]
    if algo == "grpo":
        return [
            *common,
            "GRPO: beta x k3 KL as a loss term, token-mean loss (TRL loss_type='dapo'), rewards "
            "scaled by the group's std: rayrm's algorithm.kl_mode=loss, kl_estimator=k3, "
            "loss_aggregation=token_mean",
        ]
    return [
        *common,
        "RLOO: beta x summed k1 KL subtracted from the sequence reward, leave-one-out baseline; "
        "TRL clips a sequence-level ratio, rayrm a per-token ratio averaged per completion "
        "(algorithm.loss_aggregation=seq_mean_token_mean)",
    ]


def _group_ratio(algo: str, rayrm: dict[str, Any], trl: dict[str, Any]) -> dict[str, Any]:
    rayrm_s = rayrm["iteration_s_mean"]
    speed = trl["iteration_s_mean"] / rayrm_s
    return {
        "bench": "group_ratio",
        "algo": algo,
        "what": "TRL seconds per iteration / rayrm seconds per iteration (> 1: rayrm faster)",
        "rayrm_config": rayrm["config"],
        "rayrm_s_per_iteration": rayrm_s,
        "trl_s_per_iteration": trl["iteration_s_mean"],
        "trl_over_rayrm_s_per_iteration": speed,
        "median_ratio": trl["iteration_s_median"] / rayrm["iteration_s_median"],
        "target": SPEED_TARGET,
        "met": speed >= SPEED_TARGET,
    }
