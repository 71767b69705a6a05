"""Benchmark of rayrm's RLHF loop: throughput, time per phase, peak memory (``rayrm bench``).

What belongs here: the measurements -- throughput and time per phase of rayrm's real code
path (the trial ``rayrm train`` would run: ``RLHFPPO`` as a Ray actor in its placement group,
then its ``train()``), the length series, bytes stored per step -- and the command line.
Every configuration prints one JSON line on stdout; the terminal's stderr gets one line per
rayrm configuration with the resources it ran on, everything else goes to the log. The
workload (built locally, nothing downloaded), the RSS sampler and the child processes are in
``rayrm.bench.support``; the local Ray and the trial in ``rayrm.bench.trial``; TRL's side in
``rayrm.bench.trl``; ``--repeats`` in ``rayrm.bench.repeats``.

Each training configuration (and TRL) runs in its own spawned child process with its own
local Ray, so its peak RSS is its own and no state leaks between configurations, and all of
them run in lockstep: they start, warm up, then take turns one iteration at a time, so that a
2-core machine shared with other jobs loads all of them alike and the ratios between them
hold. A rayrm configuration gets exactly what ``rayrm train`` would reserve on this machine:
a local Ray of ``run.num_cpus`` CPUs (``--num-cpus``; all cores by default), the config's own
resource defaults (a reward actor of ``reward.num_cpus_per_actor`` = 1 CPU), the local
learner taking the cores the other bundles leave (``claim_local_cores``, unless
``--num-cpus-per-learner`` sets ``resources.num_cpus_per_learner``), and each process's torch
threads set from its reservation. One that cannot fit fails with ``rayrm train``'s line.
The memory check only samples and runs in the benchmark's own process.
Sections (``--sections``):

* ``default`` -- the workload of issue 3: GPT-2 (2 layers, 4 heads, width 128), ~100-token
  vocabulary, 32 prompts x 20 new tokens per iteration, 2 epochs x 2 minibatches, reward from
  a same-size ``GPT2ForSequenceClassification``, KL penalty to the frozen reference.
* ``lengths`` -- the same workload at 16, 32, 64, 128 new tokens: seconds per generated token
  and the ratio cost(longest) / cost(shortest).
* ``memory`` -- bytes stored per sampled step (numpy ``nbytes`` of observations, actions,
  rewards and extra model outputs, divided by steps) for a small- and a 50k-vocabulary model;
  and the peak memory of one learner update at a 151,936-token vocabulary, rayrm's chunked
  LM head against the full-logits path (``rayrm.bench.memory``).
* ``trl`` -- the identical workload with TRL's ``PPOTrainer`` (needs ``trl==1.12.0``, the
  ``bench`` extra), stock and with its ``gc.collect()`` calls disabled, plus the ratio line.
* ``groups`` -- the default workload critic-free: rayrm's GRPO and RLOO with
  ``--samples-per-prompt`` completions per prompt against TRL's ``GRPOTrainer`` and
  ``RLOOTrainer`` with matching settings (``rayrm.bench.trl_groups``), seconds per iteration.
* ``learning`` -- reward gained after the same number of completions on the demo's task,
  rayrm against TRL, PPO / GRPO / RLOO, several seeds (``rayrm.bench.learning``).
* ``turns`` -- multi-turn decoding: seconds per token at each of 4 turns with replies fed
  through the KV cache, turn 4 over turn 1 (``rayrm.bench.turns``).
* ``tools`` -- multi-turn GRPO on the Calculator tool task, rayrm against TRL's
  ``GRPOTrainer(environment_factory=...)`` from the same policy (``--tools-model``, default a
  tiny Qwen2): seconds per iteration and success rate gained (``rayrm.bench.trl_env``).

Every line has a ``bench`` key: ``rayrm``, ``trl``, ``ratio``, ``length_series``,
``memory_per_step``, ``learner_memory``, ``trl_group``, ``group_ratio`` (``groups``),
``learning_start``, ``learning``, ``learning_ratio``, ``learning_trl`` (``learning``; see
``rayrm.bench.learning``), ``turn_decoding`` (``turns``), ``tools_rayrm``, ``tools_trl``,
``tools_ratio`` (``tools``; see ``rayrm.bench.trl_env``), ``repeat_summary`` (``--repeats``) or ``error``. A ``rayrm`` line has ``config``; ``model`` (``type``,
``n_layer``, ``n_head``, ``n_embd``, ``n_positions``, ``vocab_size``, ``policy_params``,
``reward_params``); ``batch_size``, ``max_new_tokens``, ``num_env_runners``, ``num_learners``,
``critic``, ``num_epochs``, ``num_minibatches``, ``warmup``; ``resources`` (``local_ray_cpus``;
``bundles`` as reserved, read back from the trial's placement group, and ``strategy``;
``trial_bundles``, what ``rayrm.experiment.resources.trial_bundles`` plans for the config;
``num_cpus_per_learner``, ``num_env_runners``, ``num_cpus_per_env_runner``, ``num_learners``,
``reward_num_cpus_per_actor``; ``threads``: the update's own, the most it ran on with the
sampler thread's lent to it, and the pipelined sampler thread's); ``iterations`` (measured),
``generated_tokens``, ``tokens_per_iteration``; ``tokens_per_s`` (generated tokens / wall time
of the measured ``algo.train()`` calls, i.e. whole iterations: sample + score + update + sync
and RLlib's bookkeeping), ``tokens_per_s_training_step`` (the same over rayrm's own
``timers/iteration_s``), ``s_per_token``, ``iteration_s_median``; ``phase_s`` (mean seconds
per iteration of ``sample``, ``score``, ``update``, ``sync``, ``iteration``); ``peak_rss_mb``
(``driver``: the ru_maxrss of the process driving the trial, as Tune's driver; ``workers``:
peak sum of its Ray worker processes -- the trial actor, reward actors, remote env runners
and learners; ``total``: peak of both together); ``notes``.
A ``trl`` line has the same throughput keys plus ``variant`` (``stock`` or ``no_gc``) and
``gc_collect_calls_per_step``, or ``skipped`` and ``reason``; a ``ratio`` line has
``rayrm_over_trl_stock``, ``rayrm_over_trl_no_gc``, the median-step ratios, ``targets`` and
``met``. With ``--repeats N`` every line of a repeat has ``repeat`` (1..N), and a
``repeat_summary`` line per rayrm configuration follows (``rayrm.bench.repeats``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rayrm.bench import trl as bench_trl
from rayrm.bench.flops import (
    add_utilisation,
    gpt2_shape,
    iteration_flops,
)
from rayrm.bench.learning import measure_learning
from rayrm.bench.memory import measure_learner_memory, measure_memory
from rayrm.bench.repeats import in_order, measure_tools_repeated, repeat_summary
from rayrm.bench.spec import GROUP_ALGOS, PRESETS, SECTIONS, BenchSpec
from rayrm.bench.support import (
    NOTE_NO_EOS,
    ChildError,
    PeakRSS,
    Workload,
    build_workload,
    emit,
    error_record,
    model_info,
    run_config,
    run_lockstep,
    start_child,
    without_env,
)
from rayrm.bench.trial import PHASES, PlacedTrial, say_resources, start_local_ray
from rayrm.bench.trl_env import settings_from_args as tools_settings
from rayrm.bench.trl_groups import group_records, serve_trl_group
from rayrm.bench.turns import measure_turn_decoding
from rayrm.console import LOG_NAME, quiet, warn
from rayrm.data.prompts import load_prompts
from rayrm.experiment.resources import claim_local_cores
from rayrm.models.tiny import build_tiny_model

LENGTH_RATIO_TARGET = 1.3


# ------------------------------------------------------------------------------ measuring
def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Throughput over whole iterations: generated tokens / wall time of ``algo.train()``."""
    tokens = sum(r["tokens"] for r in rows)
    walls = [r["wall"] for r in rows]
    return {
        "iterations": len(rows),
        "generated_tokens": int(tokens),
        "tokens_per_iteration": tokens / len(rows),
        "tokens_per_s": tokens / sum(walls),
        "tokens_per_s_training_step": tokens / sum(r["iteration"] for r in rows),
        "s_per_token": sum(walls) / tokens,
        "iteration_s_mean": statistics.fmean(walls),
        "iteration_s_median": statistics.median(walls),
        "phase_s": {p: statistics.fmean(r[p] for r in rows) for p in PHASES},
    }


def serve_rayrm(conn: Any, spec: BenchSpec, workload: Workload, name: str) -> dict[str, Any]:
    """Lockstep server (``rayrm.bench.support.run_lockstep``): one iteration per ``"iterate"``.

    Starts the local Ray and the trial as ``rayrm train`` would on this machine
    (``rayrm.bench.trial``: the same CPUs, bundles, placement and threads; a trial that does
    not fit ends with ``rayrm train``'s line), runs ``warmup`` iterations, sends
    ``("ready", None)``, answers every ``"iterate"`` with ``("row", row)`` after one
    ``train()``, and on ``"stop"`` returns the configuration's ``"bench": "rayrm"`` line.
    """
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    storage = tempfile.mkdtemp(prefix="rb-store-")
    rows = []
    try:
        with PeakRSS() as rss:
            cfg = start_local_ray(run_config(spec, workload, storage), temp_dir)
            trial = PlacedTrial(cfg, logs=storage)
            try:
                for _ in range(spec.warmup):
                    trial.train()
                say_resources(name, trial.resources())  # in the log, before the measurement
                conn.send(("ready", None))
                while conn.recv() == "iterate":
                    rows.append(trial.train())
                    conn.send(("row", rows[-1]))
                resources = trial.resources()  # the update's threads over the whole run
                rss.sample()
            finally:
                trial.stop()
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)
    summary = summarize(rows)
    return {
        "bench": "rayrm",
        "config": name,
        "model": model_info(spec, workload),
        "batch_size": spec.batch_size,
        "max_new_tokens": spec.max_new_tokens,
        "num_env_runners": spec.num_env_runners,
        "num_learners": spec.num_learners,
        "critic": spec.critic if spec.estimator == "gae" else "none",
        "estimator": spec.estimator,
        "samples_per_prompt": spec.samples_per_prompt,
        "async_rollouts": spec.async_rollouts,
        "num_epochs": spec.num_epochs,
        "num_minibatches": spec.num_minibatches,
        "warmup": spec.warmup,
        "resources": resources,
        **summary,
        "peak_rss_mb": rss.report(),
        "flops": phase_flops(spec, workload, summary, resources["threads"]["update_max"]),
        "notes": [NOTE_NO_EOS],
    }


def update_threads(spec: BenchSpec, workload: Workload) -> int:
    """torch threads of the update of rayrm's synchronous trial of ``spec``, as ``rayrm train``
    reserves it on a local Ray of ``spec.num_cpus`` CPUs (all cores: ``os.cpu_count()``): its
    learner's CPUs (``claim_local_cores``), whole. TRL's steps at rayrm's thread count use it."""
    sync = run_config(replace(spec, async_rollouts=False), workload, tempfile.gettempdir())
    claimed = claim_local_cores(sync, float(spec.num_cpus or os.cpu_count() or 1))
    return max(1, int(claimed.resources.num_cpus_per_learner))


def phase_flops(
    spec: BenchSpec, workload: Workload, summary: dict[str, Any], threads: int
) -> dict[str, Any]:
    """Model FLOPs per phase (``rayrm.bench.flops``) and ``threads``, the most the update
    could run on; :func:`add_utilisation` adds the achieved rates and MFU."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workload.policy)
    lengths = [
        min(len(tokenizer.encode(p, add_special_tokens=False)), spec.max_prompt_tokens)
        for p in load_prompts(workload.prompts)
    ]
    policy = gpt2_shape(workload.policy)
    flops = iteration_flops(
        policy=policy,
        reward=gpt2_shape(workload.reward) if workload.reward else None,
        completions=spec.batch_size,
        prompt_tokens=statistics.fmean(lengths),
        completion_tokens=summary["tokens_per_iteration"] / spec.batch_size,
        num_epochs=spec.num_epochs,
        critic=spec.critic if spec.estimator == "gae" else "none",
        # Synchronous with a local learner: the reference and value forwards run while the
        # batch is scored (rayrm.rl.connectors.precomputed.score_alongside).
        forwards_in_score=not spec.async_rollouts and spec.num_learners == 0,
    )
    return {"threads": threads, "model_flops_per_iteration": flops}


# ------------------------------------------------------------------------------ command line


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    """The preset's spec, with every size flag given on the command line applied over it."""
    fields = BenchSpec.__dataclass_fields__
    given = {k: getattr(args, k) for k in fields if getattr(args, k, None) is not None}
    return BenchSpec(**{**PRESETS[getattr(args, "preset", "tiny")], **given})


def main(args: argparse.Namespace) -> int:
    """Runs the selected sections and prints one JSON line per configuration.

    Returns:
        0 when every configuration ran (targets missed are reported, not errors), 1 otherwise.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(
            f"rayrm bench: error: unknown sections {sorted(unknown)}; use {SECTIONS}",
            file=sys.stderr,
        )
        return 2
    spec = replace(spec_from_args(args), critic=args.critics[0])
    if spec.warmup < 1 or spec.iterations < 1 or args.repeats < 1:
        print(
            "rayrm bench: error: --warmup, --iterations and --repeats must be >= 1",
            file=sys.stderr,
        )
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rayrm-bench-"))
    longest = max([spec.max_new_tokens, *(args.lengths if "lengths" in sections else [])])
    n_positions = spec.max_prompt_tokens + longest
    records: list[dict[str, Any]] = []

    def run(record: dict[str, Any]) -> dict[str, Any]:
        emit(record)
        records.append(record)
        if record.get("bench") == "rayrm":
            say_resources(record["config"], record["resources"])
        elif record.get("bench") == "error":
            warn(record["error"])
        return record

    # Everything but the JSON lines (Ray's, RLlib's, TRL's output) goes to the log.
    log = workdir / LOG_NAME if args.workdir else Path(f"{workdir}.log")
    try:
        with quiet(log, verbose=args.verbose):
            _sections(args, sections, spec, workdir, n_positions, run)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.get("bench") == "error" for r in records) else 0


def _sections(
    args: argparse.Namespace,
    sections: list[str],
    spec: BenchSpec,
    workdir: Path,
    n_positions: int,
    run: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Measures the selected sections; ``run`` prints and keeps each line."""
    groups = []
    if "default" in sections or "trl" in sections:
        specs = {
            f"default-{c}-critic{'-async' if mode == 'async' else ''}": replace(
                spec, critic=c, async_rollouts=mode == "async"
            )
            for c in args.critics
            for mode in getattr(args, "rollouts", ["sync"])
        }
        groups.append((specs, "trl" in sections))
    if "lengths" in sections and args.lengths:
        groups.append(
            ({f"length-{n}": replace(spec, max_new_tokens=n) for n in args.lengths}, False)
        )
    if groups or "groups" in sections:
        workload = build_workload(workdir / "workload", spec, n_positions=n_positions)
    for specs, with_trl in groups:
        for record in _measure(spec, specs, workload, with_trl=with_trl, repeats=args.repeats):
            run(record)
    if "groups" in sections:
        group_spec = replace(spec, samples_per_prompt=args.group_samples)
        for record in _measure_groups(group_spec, workload):
            run(record)
    if "learning" in sections:
        for record in measure_learning(args, workdir / "learning"):
            run(record)
    if "turns" in sections:
        try:
            for record in measure_turn_decoding(
                build_tiny_model(
                    workdir / "turns",
                    arch="gpt2",
                    hidden=spec.n_embd,
                    layers=spec.n_layer,
                    heads=spec.n_head,
                    positions=512,
                ),
                repeats=max(5, args.repeats),
            ):
                run(record)
        except Exception:  # noqa: BLE001  (reported as a line; the rest still runs)
            run(error_record("measure_turn_decoding", RuntimeError(traceback.format_exc())))
    if "tools" in sections:
        try:
            for record in measure_tools_repeated(
                tools_settings(args, spec, workdir / "tools"), args.repeats
            ):
                run(record)
        except Exception:  # noqa: BLE001  (reported as a line; the rest still runs)
            run(error_record("measure_tools", RuntimeError(traceback.format_exc())))
    if "memory" in sections and args.memory_vocab_sizes:
        try:
            run(measure_memory(spec, args.memory_vocab_sizes, str(workdir / "memory")))
        except Exception:  # noqa: BLE001  (reported as a line; the rest still runs)
            run(error_record("measure_memory", RuntimeError(traceback.format_exc())))
    if "memory" in sections and args.learner_memory_vocab:
        try:
            run(
                measure_learner_memory(
                    str(workdir / "learner_memory"), vocab_size=args.learner_memory_vocab
                )
            )
        except Exception:  # noqa: BLE001  (reported as a line; the rest still runs)
            run(error_record("measure_learner_memory", RuntimeError(traceback.format_exc())))


def _measure(
    spec: BenchSpec,
    specs: dict[str, BenchSpec],
    workload: Workload,
    *,
    with_trl: bool,
    repeats: int = 1,
) -> Iterator[dict[str, Any]]:
    """Runs the rayrm configurations ``specs`` and, if asked for and installed, TRL's PPO on
    ``spec``, all in one lockstep, ``repeats`` times (fresh processes and local Rays each time,
    the order alternated: ``rayrm.bench.repeats``). Yields each repeat's lines (with
    ``repeat`` when there are several) as it ends -- the rayrm lines, then the TRL and ratio
    lines (or the line saying why TRL was skipped), then the length-series line if ``specs``
    has lengths -- and, after several repeats, their ``repeat_summary`` lines.
    """
    reason = bench_trl.trl_unavailable_reason() if with_trl else None
    trl_spec = replace(spec, matched_threads=update_threads(spec, workload))
    every: list[dict[str, Any]] = []
    for repeat in range(repeats):
        lines = _lockstep(trl_spec, specs, workload, with_trl, reason, repeat)
        for line in lines:
            if repeats > 1:
                line["repeat"] = repeat + 1
            every.append(line)
            yield line
    if repeats > 1:
        yield from repeat_summary(every, repeats)


def _lockstep(
    spec: BenchSpec,
    specs: dict[str, BenchSpec],
    workload: Workload,
    with_trl: bool,
    reason: str | None,
    repeat: int,
) -> list[dict[str, Any]]:
    """One lockstep of :func:`_measure` (TRL in it if asked for and ``reason``, why it cannot
    run, is None), in repeat ``repeat``'s order."""
    trl = with_trl and reason is None
    turns = [(name, "iterate") for name in specs]
    if trl:
        turns += [("trl", v) for v in bench_trl.VARIANTS]
    turns = in_order(turns, repeat)
    servers = {}
    for name in dict.fromkeys(name for name, _ in turns):  # started in the turns' order
        if name == "trl":
            with without_env("OMP_NUM_THREADS"):  # the TRL child sees torch's default threads
                servers["trl"] = start_child(bench_trl.serve_trl, spec, workload, serve=True)
        else:
            servers[name] = start_child(serve_rayrm, specs[name], workload, name, serve=True)
    try:
        finals = run_lockstep(servers, turns, spec.iterations)
    except ChildError as e:
        return [error_record("run_lockstep", e)]
    rayrm = [finals[name] for name in specs]
    add_utilisation(rayrm)
    lines = list(rayrm)
    defaults = [r for r in rayrm if r["config"].startswith("default-")]
    if "trl" in finals:
        lines += bench_trl.trl_records(spec, workload, finals["trl"], defaults)
    elif with_trl:
        lines.append({"bench": "trl", "skipped": True, "reason": reason})
    series = [r for r in rayrm if r["config"].startswith("length-")]
    if series:
        lines.append(length_summary(series))
    return lines


def _measure_groups(spec: BenchSpec, workload: Workload) -> list[dict[str, Any]]:
    """rayrm's GRPO and RLOO and, if installed, TRL's GRPOTrainer and RLOOTrainer on ``spec``
    (``spec.samples_per_prompt`` completions per prompt), all in one lockstep."""
    reason = bench_trl.trl_unavailable_reason()
    spec = replace(spec, matched_threads=update_threads(spec, workload))
    specs = {a: replace(spec, estimator=a) for a in GROUP_ALGOS}
    servers = {
        f"groups-{a}": start_child(serve_rayrm, s, workload, f"groups-{a}", serve=True)
        for a, s in specs.items()
    }
    if reason is None:
        for algo in GROUP_ALGOS:
            servers[f"trl-{algo}"] = start_child(serve_trl_group, spec, workload, algo, serve=True)
    try:
        finals = run_lockstep(servers, [(n, "iterate") for n in servers], spec.iterations)
    except ChildError as e:
        return [error_record("run_lockstep", e)]
    rayrm = {a: finals[f"groups-{a}"] for a in GROUP_ALGOS}
    lines: list[dict[str, Any]] = list(rayrm.values())
    add_utilisation(lines)
    if reason is not None:
        return [*lines, {"bench": "trl_group", "skipped": True, "reason": reason}]
    trl = {a: finals[f"trl-{a}"] for a in GROUP_ALGOS}
    return lines + group_records(spec, workload, trl, rayrm)


def length_summary(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Cost per generated token across the length series and cost(longest) / cost(shortest)."""
    ok = [r for r in series if r.get("bench") == "rayrm"]
    if len(ok) < 2:
        return {"bench": "length_series", "error": "fewer than two lengths ran"}
    cost = {str(r["max_new_tokens"]): r["s_per_token"] for r in ok}
    shortest, longest = ok[0], ok[-1]
    ratio = longest["s_per_token"] / shortest["s_per_token"]
    return {
        "bench": "length_series",
        "lengths": [r["max_new_tokens"] for r in ok],
        "s_per_token": cost,
        "tokens_per_s": {str(r["max_new_tokens"]): r["tokens_per_s"] for r in ok},
        "sample_s_per_token": {
            str(r["max_new_tokens"]): r["phase_s"]["sample"] / r["tokens_per_iteration"] for r in ok
        },
        "update_s_per_token": {
            str(r["max_new_tokens"]): r["phase_s"]["update"] / r["tokens_per_iteration"] for r in ok
        },
        f"ratio_{longest['max_new_tokens']}_over_{shortest['max_new_tokens']}": ratio,
        "target": LENGTH_RATIO_TARGET,
        "met": ratio <= LENGTH_RATIO_TARGET,
    }
