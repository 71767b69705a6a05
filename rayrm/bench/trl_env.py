"""The ``tools`` section of ``rayrm bench``: multi-turn GRPO with a tool, rayrm against TRL.

What belongs here: the Calculator tool task (``envs.tasks.arithmetic``) run by rayrm's
multi-turn GRPO (``rayrm train``'s trial, ``env`` section) and by TRL 1.12's ``GRPOTrainer(
environment_factory=...)`` (HF ``generate``, no vLLM) from the same policy and rows in one
lockstep; the TRL environment wrapping the task; the ``tools_*`` lines.

Both trainers get the same settings (``ToolsSettings``): group size (``samples_per_prompt`` =
TRL's ``num_generations``), episodes per iteration, per-turn token limit (TRL:
``generation_kwargs.max_new_tokens``), assistant turns (``Calculator.max_turns``; TRL:
``max_tool_calling_iterations`` = turns - 1), token budget of a whole episode (TRL:
``max_completion_length`` = ``max_total_tokens`` - the longest opening), epochs, minibatches,
lr, β (k3 as a loss term, token-mean loss, rewards scaled by the group's std), clip range 0.2,
gradient clipping 1.0, temperature 1. The iteration maps onto TRL's generation batch as in
:mod:`rayrm.bench.trl_groups`: ``per_device_train_batch_size = batch_size / num_minibatches``,
``steps_per_generation = num_minibatches``, ``num_iterations = num_epochs``.

Measured side by side: seconds per iteration (median after the warm-up, the trainers taking
turns) and the success rate (fraction of an iteration's episodes whose final answer holds the
product, on each trainer's own rollouts) at the first iteration (the shared starting policy's)
and over the last ``success_window``. Targets: rayrm's s/iteration <= TRL's, success gain >=.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from envs.tasks import arithmetic
from envs.tasks.arithmetic import Calculator
from rayrm import metrics as M
from rayrm.bench.spec import ToolsSettings
from rayrm.bench.support import (
    ESTIMATOR_SETTINGS,
    ChildError,
    error_record,
    run_lockstep,
    start_child,
)
from rayrm.bench.trl import QUIET_CPU_ARGS, TRL_VERSION, trl_unavailable_reason
from rayrm.bench.trl_groups import LockstepStopped, lockstep_callback

__all__ = [
    "CalculatorToolEnv",
    "ToolsSettings",
    "calculator_reward",
    "measure_tools",
    "trl_dataset",
]

ENVIRONMENT = "envs.tasks.arithmetic:Calculator"
SPEED_TARGET = 1.0
"""TRL's seconds per iteration / rayrm's, at least."""


# ------------------------------------------------------------------------------ TRL's task
class CalculatorToolEnv:
    """The Calculator task as TRL's ``environment_factory`` wants it.

    TRL builds one instance per rollout, calls ``reset(**row)`` (every dataset column) before
    each episode and offers every public method but ``reset`` as a tool, its JSON schema read
    from the signature and docstring: ``calculate`` here has ``arithmetic.calculate``'s
    (the same schema in the prompt) and runs it. The reward is :func:`calculator_reward`.
    """

    def __init__(self) -> None:
        self.task: Calculator | None = None

    def reset(self, **row: Any) -> None:
        """Builds the row's :class:`Calculator`; the question is the dataset's prompt."""
        self.task = Calculator(row)

    def calculate(self, a: int, op: str, b: int) -> int:
        return arithmetic.calculate(a, op, b)


CalculatorToolEnv.calculate.__doc__ = arithmetic.calculate.__doc__


def calculator_reward(
    completions: list[list[dict[str, Any]]],
    environments: list[CalculatorToolEnv],
    **_: Any,
) -> list[float]:
    """TRL reward function: :meth:`Calculator.score` of each episode's final answer, as in
    rayrm's env (the assistant turn without a tool call; 0.0 when the episode ended on a
    tool call or a tool result: turns or tokens ran out)."""
    rewards = []
    for messages, env in zip(completions, environments, strict=True):
        last = messages[-1] if messages else {}
        if env.task is None:
            raise RuntimeError("calculator_reward: the environment was never reset")
        final = last.get("role") == "assistant" and not last.get("tool_calls")
        rewards.append(env.task.score(str(last.get("content") or "")) if final else 0.0)
    return rewards


def trl_dataset(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The columns of TRL's dataset: each row's question, rendered by :meth:`Calculator.reset`
    as rayrm's opening, as a one-message conversation, plus the row's own columns."""
    out: dict[str, list[Any]] = {"prompt": []}
    for row in rows:
        out["prompt"].append([{"role": "user", "content": Calculator(row).reset()}])
        for key, value in row.items():
            out.setdefault(key, []).append(value)
    return out


def prepare_tokenizer(tokenizer: Any) -> Any:
    """The policy's tokenizer for TRL: left padding and, when its chat template is not one TRL
    knows (the tiny models'), TRL's response template of Qwen's ChatML with Hermes
    ``<tool_call>`` blocks, which is how TRL reads tool calls out of a turn."""
    from trl.chat_template_utils import add_response_schema, qwen3_template

    tokenizer.padding_side = "left"
    if getattr(tokenizer, "response_template", None) is None:
        try:
            add_response_schema(tokenizer)
        except ValueError:
            if "<tool_call>" not in str(tokenizer.chat_template):
                raise
            tokenizer.response_template = qwen3_template
    return tokenizer


def _max_opening(s: ToolsSettings, tokenizer: Any) -> int:
    from envs.multi_turn import load_rows
    from envs.tools import tool_schema
    from rayrm.models.turns import TurnCodec

    codec = TurnCodec(tokenizer, tools=[tool_schema(fn) for fn in Calculator.tools])
    rows = load_rows(s.rows)
    return max(len(codec.first([{"role": "user", "content": Calculator(r).reset()}])) for r in rows)


def tools_trainer(
    s: ToolsSettings, *, iterations: int, output_dir: str, callbacks: list[Any], log: list[Any]
) -> Any:
    """TRL's ``GRPOTrainer`` on the task for ``iterations`` generations with ``s``'s shapes
    (the module docstring); every generation's rewards are appended to ``log``."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer

    from envs.multi_turn import load_rows

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.manual_seed(s.seed)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(s.model))
    budget = s.max_total_tokens - _max_opening(s, tokenizer)

    def reward(completions: Any, environments: Any, **kw: Any) -> list[float]:
        out = calculator_reward(completions, environments)
        turns = [sum(m.get("role") == "assistant" for m in c) for c in completions]
        log.append((statistics.fmean(out), statistics.fmean(turns)))
        return out

    reward.__name__ = "calculator_success"
    args = trl.GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=s.batch_size // s.num_minibatches,
        gradient_accumulation_steps=1,
        steps_per_generation=s.num_minibatches,
        num_iterations=s.num_epochs,
        num_generations=s.samples_per_prompt,
        max_completion_length=budget,
        generation_kwargs={"max_new_tokens": s.max_new_tokens},
        max_tool_calling_iterations=s.max_turns - 1,
        max_steps=iterations * s.num_minibatches * s.num_epochs,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=s.kl_coef,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=s.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        seed=s.seed,
        **QUIET_CPU_ARGS,
    )
    return trl.GRPOTrainer(
        model=s.model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict(trl_dataset(load_rows(s.rows))),
        processing_class=tokenizer,
        environment_factory=CalculatorToolEnv,
        callbacks=callbacks,
    )


def serve_trl_tools(conn: Any, s: ToolsSettings) -> dict[str, Any]:
    """Lockstep server (``rayrm.bench.support.run_lockstep``) running TRL's trainer: one
    iteration is one generation and its ``num_epochs x num_minibatches`` optimizer steps,
    timed from the ``"iterate"`` command to the ``on_step_end`` of its last step."""
    import torch

    torch.set_num_threads(s.matched_threads)
    per_iteration = s.num_epochs * s.num_minibatches
    total = s.warmup + s.iterations
    times: list[float] = []
    log: list[tuple[float, float]] = []

    lockstep = lockstep_callback(
        conn, per_iteration=per_iteration, warmup=s.warmup, total=total, times=times
    )

    with tempfile.TemporaryDirectory(prefix="rb-trl-") as output_dir:
        trainer = tools_trainer(
            s, iterations=total, output_dir=output_dir, callbacks=[lockstep], log=log
        )
        try:
            trainer.train()
        except LockstepStopped:
            return {"stopped": True}
    return {"times": times, "success": [x for x, _ in log], "turns": [t for _, t in log]}


# ------------------------------------------------------------------------------ rayrm's side
def rayrm_config(s: ToolsSettings, storage: str) -> Any:
    """``rayrm train``'s config of the task: multi-turn GRPO with TRL's GRPO settings
    (``rayrm.bench.support.ESTIMATOR_SETTINGS``), the reward from the environment."""
    from rayrm.config import config_from_dict

    learner = (
        {} if s.num_cpus_per_learner is None else {"num_cpus_per_learner": s.num_cpus_per_learner}
    )
    return config_from_dict(
        {
            "name": "bench-tools",
            "seed": s.seed,
            "model": {"path": s.model},
            "data": {"prompts": s.rows, "max_prompt_tokens": s.max_prompt_tokens},
            "generation": {
                "max_new_tokens": s.max_new_tokens,
                "samples_per_prompt": s.samples_per_prompt,
            },
            "env": {
                "environment": ENVIRONMENT,
                "max_turns": s.max_turns,
                "max_total_tokens": s.max_total_tokens,
            },
            "reward": {"source": "env"},
            "algorithm": {
                "batch_size": s.batch_size,
                "num_minibatches": s.num_minibatches,
                "num_epochs": s.num_epochs,
                "lr": s.lr,
                "kl_coef": s.kl_coef,
                **ESTIMATOR_SETTINGS["grpo"],
            },
            "resources": {"num_env_runners": 0, **learner},
            "run": {
                "num_iterations": s.warmup + s.iterations,
                "storage_path": storage,
                "num_cpus": s.num_cpus,
                "pending_timeout_s": 0,
            },
            "eval": {"every": 0, "report": False},
        },
        check_paths=True,
    )


def update_threads(s: ToolsSettings) -> int:
    """torch threads of rayrm's update as ``rayrm train`` reserves it here (TRL gets as many)."""
    from rayrm.experiment.resources import claim_local_cores

    cfg = rayrm_config(s, tempfile.gettempdir())
    claimed = claim_local_cores(cfg, float(s.num_cpus or os.cpu_count() or 1))
    return max(1, int(claimed.resources.num_cpus_per_learner))


def serve_rayrm_tools(conn: Any, s: ToolsSettings) -> dict[str, Any]:
    """Lockstep server running rayrm's trial as ``rayrm train`` places it on this machine
    (``rayrm.bench.trial``); every iteration's row holds its ``env/success``."""
    import ray

    from rayrm.bench.trial import PlacedTrial, start_local_ray

    temp_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    storage = tempfile.mkdtemp(prefix="rb-store-")
    rows = []
    try:
        cfg = start_local_ray(rayrm_config(s, storage), temp_dir)
        trial = PlacedTrial(cfg, logs=storage)
        try:
            for _ in range(s.warmup):
                rows.append(trial.train())
            conn.send(("ready", None))
            while conn.recv() == "iterate":
                rows.append(trial.train())
                conn.send(("row", rows[-1]))
            resources = trial.resources()
        finally:
            trial.stop()
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)
    return {"rows": rows, "resources": resources}


# ------------------------------------------------------------------------------ the section
def default_inputs(workdir: Path, spec: Any) -> tuple[str, str]:
    """A tiny random Qwen2 (the benchmark spec's width, layers and heads; ChatML with tools)
    and 64 rows, built in ``workdir`` unless there."""
    from rayrm.models.tiny import build_tiny_model

    model, rows = workdir / "qwen2", workdir / "rows.jsonl"
    if not (model / "config.json").exists():
        build_tiny_model(
            model, arch="qwen2", hidden=spec.n_embd, layers=spec.n_layer, heads=spec.n_head,
            positions=1280, seed=spec.seed,
        )  # fmt: skip
    if not rows.exists():
        arithmetic.write_rows(rows, 64, seed=spec.seed)
    return str(model), str(rows)


def settings_from_args(args: Any, spec: Any, workdir: Path) -> ToolsSettings:
    """The settings from ``rayrm bench``'s ``--tools-*`` options (no model or rows: those of
    :func:`default_inputs`), ``--samples-per-prompt`` and the shared workload options."""
    model, rows = getattr(args, "tools_model", None), getattr(args, "tools_rows", None)
    if model is None or rows is None:
        built_model, built_rows = default_inputs(workdir, spec)
        model, rows = model or built_model, rows or built_rows
    shared = ("batch_size", "num_epochs", "num_minibatches", "lr", "kl_coef", "warmup")
    shared += ("iterations", "seed", "num_cpus", "num_cpus_per_learner")
    return ToolsSettings(
        model=str(model),
        rows=str(rows),
        samples_per_prompt=getattr(args, "group_samples", 4),
        max_new_tokens=getattr(args, "tools_max_new_tokens", None) or 96,
        max_total_tokens=getattr(args, "tools_max_total_tokens", None) or 1152,
        max_prompt_tokens=getattr(args, "tools_max_prompt_tokens", None) or 768,
        success_window=getattr(args, "tools_success_window", None) or 2,
        **{k: getattr(spec, k) for k in shared},
    )


def measure_tools(s: ToolsSettings, *, trl_first: bool = False) -> Iterator[dict[str, Any]]:
    """Runs rayrm and, if installed, TRL in one lockstep (TRL starts and takes its turn first
    when ``trl_first``); yields ``tools_rayrm``, then ``tools_trl`` and ``tools_ratio`` (or the
    line saying why TRL was skipped)."""
    reason = trl_unavailable_reason()
    s = replace(s, matched_threads=update_threads(s))
    names = ["rayrm"] if reason is not None else ["trl", "rayrm"] if trl_first else ["rayrm", "trl"]
    serve = {"rayrm": serve_rayrm_tools, "trl": serve_trl_tools}
    servers = {n: start_child(serve[n], s, serve=True) for n in names}
    try:
        finals = run_lockstep(servers, [(n, "iterate") for n in servers], s.iterations)
    except ChildError as e:
        yield error_record("run_lockstep", e)
        return
    rayrm = _rayrm_line(s, finals["rayrm"])
    yield rayrm
    if reason is not None:
        yield {"bench": "tools_trl", "skipped": True, "reason": reason}
        return
    trl = _trl_line(s, finals["trl"])
    yield trl
    yield _ratio(rayrm, trl)


def _success(series: list[float], window: int) -> dict[str, Any]:
    first, last = series[0], statistics.fmean(series[-window:])
    return {
        "success_first": first,
        "success_last": last,
        "success_gain": last - first,
        "success_by_iteration": series,
    }


def _settings(s: ToolsSettings) -> dict[str, Any]:
    out = asdict(s)
    out.update(max_turns=s.max_turns, environment=ENVIRONMENT, episodes=s.batch_size)
    return out


def _rayrm_line(s: ToolsSettings, result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    measured = rows[s.warmup :]
    walls = [r["wall"] for r in measured]
    return {
        "bench": "tools_rayrm",
        "trainer": "rayrm multi-turn GRPO (RLHFPPO, env section)",
        "settings": _settings(s),
        "resources": result["resources"],
        "iterations": len(measured),
        "iteration_s_median": statistics.median(walls),
        "iteration_s_mean": statistics.fmean(walls),
        "iteration_s": walls,
        "policy_tokens_per_iteration": statistics.fmean(r["tokens"] for r in measured),
        "turns_per_episode": statistics.fmean(r.get(M.ENV_TURNS, 0.0) for r in rows),
        "episodes_seen": s.batch_size * len(rows),
        **_success([r.get(M.ENV_SUCCESS, 0.0) for r in rows], s.success_window),
    }


def _trl_line(s: ToolsSettings, result: dict[str, Any]) -> dict[str, Any]:
    times = result["times"]
    return {
        "bench": "tools_trl",
        "trainer": "GRPOTrainer(environment_factory=CalculatorToolEnv)",
        "trl_version": TRL_VERSION,
        "settings": _settings(s),
        "threads": s.matched_threads,
        "iterations": len(times),
        "iteration_s_median": statistics.median(times),
        "iteration_s_mean": statistics.fmean(times),
        "iteration_s": times,
        "turns_per_episode": statistics.fmean(result["turns"]),
        "episodes_seen": s.batch_size * len(result["success"]),
        **_success(result["success"], s.success_window),
        "notes": NOTES,
    }


NOTES = [
    "same policy weights and tokenizer, rows, question text, tool (envs.tasks.arithmetic."
    "calculate, the same JSON schema in the prompt), reward (Calculator.score of the turn "
    "without a tool call; 0 when turns or tokens run out), group size, episodes per iteration, "
    "per-turn token limit, turns, epochs, minibatches, lr, beta (k3 loss term), token-mean loss, "
    "group-std reward scaling, clip 0.2, gradient clipping 1.0, temperature 1",
    "TRL reads tool calls with transformers' response parser (TRL's Qwen ChatML template when "
    "the tokenizer has none); a malformed <tool_call> makes TRL treat the turn as the final "
    "answer, rayrm's hermes parser answers it with an 'error: ...' tool message and goes on",
    "a failing tool: TRL's tool message is str({'error': ...}), rayrm's 'error: <type>: ...'; "
    "rayrm also limits a tool call's time (env.tool_timeout_s), TRL does not",
    "a turn cut by the token limit: rayrm appends the template's closing (<|im_end|>\\n) before "
    "the tool result, TRL appends the tool result's ids right after the cut turn",
    "TRL stops a turn at the tokenizer's EOS only; rayrm also at the model's "
    "generation_config EOS ids (Qwen2: <|endoftext|> too)",
    "the episode budget: rayrm's env.max_total_tokens counts the opening; TRL's "
    "max_completion_length is that minus the longest opening",
    "TRL generates with HF generate() in its one process (torch threads = rayrm's update's); "
    "rayrm samples in its env runner, with the KV cache extended by the tool results",
    "success: the fraction of an iteration's episodes solved, on each trainer's own rollouts; "
    "the first iteration is sampled by the shared starting policy",
    "measured in lockstep: one rayrm iteration, then one TRL iteration, round after round",
]


def _ratio(rayrm: dict[str, Any], trl: dict[str, Any]) -> dict[str, Any]:
    speed = trl["iteration_s_median"] / rayrm["iteration_s_median"]
    gain = rayrm["success_gain"] - trl["success_gain"]
    return {
        "bench": "tools_ratio",
        "what": "TRL seconds per iteration / rayrm's (> 1: rayrm faster); rayrm's success gain "
        "minus TRL's",
        "trl_over_rayrm_s_per_iteration": speed,
        "rayrm_s_per_iteration": rayrm["iteration_s_median"],
        "trl_s_per_iteration": trl["iteration_s_median"],
        "rayrm_minus_trl_success_gain": gain,
        "episodes": rayrm["episodes_seen"],
        "targets": {"trl_over_rayrm_s_per_iteration": SPEED_TARGET, "success_gain": "rayrm >= TRL"},
        "met": {"speed": speed >= SPEED_TARGET, "success_gain": gain >= 0},
    }
