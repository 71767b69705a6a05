"""The learning section of ``rayrm bench``: reward gained after the same number of completions,
rayrm against TRL, on one RLHF task, several seeds, printed side by side.

What belongs here: the task (the demo's SFT policy and its learned reward model, built or found
cached by :func:`rayrm.demo.run.build_rl_inputs`, nothing downloaded), one training run per
trainer, algorithm and seed -- each in its own spawned process -- and the evaluation all final
policies share. The throughput sections are in :mod:`rayrm.bench.run`.

The task is the demo's: continue a review prompt positively. Both trainers start from the same
SFT policy and optimise the same reward model; PPO's value model starts from the reward model
(trunk and score head) in both, as InstructGPT and TRL do. After ``iterations`` iterations of
``batch_size`` completions each (the same number of completions for every run) the final
policy is evaluated on the held-out prompts (subjects no training prompt mentions) with the
same sampler, seeds and scorers for every policy: the reward model's mean score (what both
trainers optimise) and VADER's (the gold judge the reward model was trained to imitate). A
run's gain is its final score minus the SFT policy's.

Algorithms and settings (``LearnSettings``): ``ppo`` -- TRL 1.12 ``PPOTrainer``'s settings,
β 0.05 fixed, lr 1e-4, 2 epochs x 2 minibatches, a separate critic; ``grpo`` / ``rloo`` --
``samples_per_prompt`` completions per prompt, TRL's ``GRPOTrainer`` / ``RLOOTrainer`` with
the matching rayrm settings (``rayrm.bench.support.ESTIMATOR_SETTINGS``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rayrm.bench import trl as bench_trl
from rayrm.bench.spec import LearnSettings
from rayrm.bench.support import (
    ESTIMATOR_SETTINGS,
    BenchSpec,
    Workload,
    error_record,
    finish,
    start_child,
)
from rayrm.bench.trl_groups import group_trainer

ASYNC = "rayrm_async"
"""The learning runs' name for rayrm with pipelined rollouts (``--rollouts ...,async``)."""


def learn_spec(s: LearnSettings, algo: str, seed: int) -> BenchSpec:
    """The :class:`BenchSpec` of one run (the model fields are unused: the task has its own)."""
    return BenchSpec(
        batch_size=s.batch_size,
        max_new_tokens=s.max_new_tokens,
        max_prompt_tokens=s.max_prompt_tokens,
        iterations=s.iterations,
        warmup=0,
        num_epochs=s.num_epochs,
        num_minibatches=s.num_minibatches,
        kl_coef=s.kl_coef,
        lr=s.lr,
        critic="separate",
        seed=seed,
        estimator="gae" if algo == "ppo" else algo,
        samples_per_prompt=1 if algo == "ppo" else s.samples_per_prompt,
        num_cpus=s.num_cpus,
        num_cpus_per_learner=s.num_cpus_per_learner,
    )


def task_workload(inputs: dict[str, str]) -> Workload:
    """The demo's SFT policy, reward model and training prompts as a benchmark workload."""
    return Workload(inputs["sft_model"], inputs["reward_model"], inputs["prompts"], 0, 0, 0, 0)


# ------------------------------------------------------------------------------ one run
def rayrm_config(spec: BenchSpec, workload: Workload, storage: str, name: str) -> Any:
    """``rayrm train``'s config of one learning run (PPO's critic starts from the RM)."""
    from rayrm.config import config_from_dict

    model: dict[str, Any] = {"path": workload.policy}
    if spec.estimator == "gae":
        model |= {"critic": "separate", "critic_path": workload.reward}
    learner: dict[str, float] = {}
    if spec.num_cpus_per_learner is not None:
        learner["num_cpus_per_learner"] = spec.num_cpus_per_learner
    return config_from_dict(
        {
            "name": name,
            "seed": spec.seed,
            "model": model,
            "data": {"prompts": workload.prompts, "max_prompt_tokens": spec.max_prompt_tokens},
            "generation": {
                "max_new_tokens": spec.max_new_tokens,
                "samples_per_prompt": spec.samples_per_prompt,
            },
            "reward": {"source": "model", "path": workload.reward},
            "algorithm": {
                "batch_size": spec.batch_size,
                "num_minibatches": spec.num_minibatches,
                "num_epochs": spec.num_epochs,
                "lr": spec.lr,
                "kl_coef": spec.kl_coef,
                "async_rollouts": spec.async_rollouts,
                **ESTIMATOR_SETTINGS[spec.estimator],
            },
            "resources": {"num_env_runners": 0, **learner},
            "run": {
                "num_cpus": spec.num_cpus,
                "num_iterations": spec.iterations,
                "checkpoint_every": spec.iterations,
                "storage_path": storage,
                "max_failures": 0,
            },
            "eval": {"every": 0},
        },
        check_paths=True,
    )


def train_rayrm(spec: BenchSpec, workload: Workload, out: str) -> str:
    """One ``rayrm train`` run (Tune, as users run it, on the local Ray and with the
    resources ``rayrm train`` gives it); the final policy exported to ``out``."""
    import ray

    from rayrm.bench.trial import start_local_ray
    from rayrm.experiment.train import run_train
    from rayrm.rl.checkpoint import export_policy

    temp_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    storage = tempfile.mkdtemp(prefix="rb-learn-")
    try:
        cfg = start_local_ray(rayrm_config(spec, workload, storage, "learn"), temp_dir)
        exp_dir, _ = run_train(cfg)
        export_policy(exp_dir, out)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)
    return out


def train_trl(algo: str, spec: BenchSpec, workload: Workload, out: str) -> str:
    """One TRL run (``PPOTrainer``, ``GRPOTrainer`` or ``RLOOTrainer``); the policy saved to
    ``out``."""
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rb-trl-") as output_dir:
        if algo == "ppo":
            trainer = bench_trl.ppo_trainer(
                spec,
                workload,
                [],
                output_dir,
                steps=spec.iterations,
                value_path=workload.reward,
                stop_at_eos=True,
                constant_lr=True,
            )
            trainer.train()
            policy = trainer.policy_model
        else:
            trainer = group_trainer(
                algo, spec, workload, iterations=spec.iterations, output_dir=output_dir
            )
            trainer.train()
            policy = trainer.model
        policy.save_pretrained(out)
    AutoTokenizer.from_pretrained(workload.policy).save_pretrained(out)
    return out


# ------------------------------------------------------------------------------ evaluation
def evaluate(
    policy: str, inputs: dict[str, str], s: LearnSettings, *, seed: int = 10_000
) -> dict[str, Any]:
    """Held-out scores of the policy in ``policy`` (a Hugging Face directory).

    Every policy is sampled with the SFT policy's prompt codec (tokenizer, stop ids), at
    temperature 1, ``eval_samples`` completions per held-out row with the same seeds, and
    scored by the reward model and by VADER.
    """
    import numpy as np

    from rayrm.data.prompts import load_prompts
    from rayrm.models.decoding import sample_completions
    from rayrm.models.loading import load_causal_lm
    from rayrm.rewards.actors import RewardModelActor
    from rayrm.rewards.base import completion_records
    from rayrm.rewards.judges import vader_positivity
    from rayrm.stages.preference_data import load_policy_with_codec

    _, codec = load_policy_with_codec(inputs["sft_model"], s.max_prompt_tokens)
    model = load_causal_lm(policy)
    rows = load_prompts(inputs["heldout"])
    prompts: list[str] = []
    completions: list[str] = []
    for k in range(s.eval_samples):
        completions += sample_completions(
            model, codec, rows, max_new_tokens=s.max_new_tokens, seed=seed + k
        )
        prompts += rows
    out: dict[str, Any] = {"n": len(completions)}
    scores = {
        "reward": RewardModelActor(inputs["reward_model"]).score(
            completion_records(prompts, completions)
        ),
        "gold": vader_positivity(prompts, completions),
    }
    for name, values in scores.items():
        x = np.asarray(values, dtype=np.float64)
        out[name] = float(x.mean())
        out[f"{name}_se"] = float(x.std(ddof=1) / math.sqrt(len(x)))
    return out


# ------------------------------------------------------------------------------ the section
def _build_task(workdir: str, size: str) -> dict[str, str]:
    from rayrm.demo.run import build_rl_inputs

    return build_rl_inputs(workdir, size=size, log=lambda _: None)  # type: ignore[arg-type]


def settings_from_args(args: argparse.Namespace) -> LearnSettings:
    return replace(
        LearnSettings(),
        iterations=args.learning_iterations,
        eval_samples=args.learning_eval_samples,
        demo_size=args.learning_demo_size,
        num_cpus=getattr(args, "num_cpus", None),
        num_cpus_per_learner=getattr(args, "num_cpus_per_learner", None),
    )


def measure_learning(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, Any]]:
    """Builds the task, trains every (algorithm, seed) with rayrm and, if installed, TRL, and
    yields the SFT policy's scores, one ``learning`` line per run as it ends, then one
    ``learning_ratio`` line per algorithm."""
    s = settings_from_args(args)
    try:  # in a child process: the stages' progress lines must not reach stdout
        inputs = finish(*start_child(_build_task, str(workdir / "task"), s.demo_size))
    except Exception as e:  # noqa: BLE001  (reported as a line)
        yield error_record("build_rl_inputs", e)
        return
    reason = bench_trl.trl_unavailable_reason()
    rollouts = getattr(args, "rollouts", ["sync"])
    trainers = [
        *(["rayrm"] if "sync" in rollouts else []),
        *([ASYNC] if "async" in rollouts else []),
        *([] if reason else ["trl"]),
    ]
    start = evaluate(inputs["sft_model"], inputs, s)
    yield {"bench": "learning_start", "policy": "sft", **start}
    runs: list[dict[str, Any]] = []
    for algo in args.learning_algos:
        for seed in args.learning_seeds:
            for trainer in trainers:
                runs.append(_one_run(trainer, algo, seed, s, inputs, start, workdir))
                yield runs[-1]
    if reason:
        yield {"bench": "learning_trl", "skipped": True, "reason": reason}
    for algo in args.learning_algos:
        yield _learning_ratio(algo, runs, s)


def _one_run(
    trainer: str,
    algo: str,
    seed: int,
    s: LearnSettings,
    inputs: dict[str, str],
    start: dict[str, Any],
    workdir: Path,
) -> dict[str, Any]:
    spec = replace(learn_spec(s, algo, seed), async_rollouts=trainer == ASYNC)
    workload = task_workload(inputs)
    out = str(workdir / "policies" / f"{trainer}-{algo}-{seed}")
    shutil.rmtree(out, ignore_errors=True)
    try:
        if trainer in ("rayrm", ASYNC):
            proc = start_child(train_rayrm, spec, workload, out)
        else:
            proc = start_child(train_trl, algo, spec, workload, out)
        finish(*proc)
        final = evaluate(out, inputs, s)
    except Exception as e:  # noqa: BLE001  (reported as a line; the other runs go on)
        return {
            **error_record(f"train_{trainer}", e),
            "trainer": trainer,
            "algo": algo,
            "seed": seed,
        }
    return {
        "bench": "learning",
        "trainer": trainer,
        "algo": algo,
        "seed": seed,
        "completions": s.batch_size * s.iterations,
        **final,
        "reward_gain": final["reward"] - start["reward"],
        "gold_gain": final["gold"] - start["gold"],
    }


def _learning_ratio(algo: str, runs: list[dict[str, Any]], s: LearnSettings) -> dict[str, Any]:
    line: dict[str, Any] = {
        "bench": "learning_ratio",
        "algo": algo,
        "completions": s.batch_size * s.iterations,
        "iterations": s.iterations,
        "batch_size": s.batch_size,
        "samples_per_prompt": 1 if algo == "ppo" else s.samples_per_prompt,
    }
    for trainer in ("rayrm", ASYNC, "trl"):
        ok = [
            r
            for r in runs
            if r["algo"] == algo and r["trainer"] == trainer and r["bench"] == "learning"
        ]
        if not ok:
            continue
        for key in ("reward_gain", "gold_gain"):
            values = [r[key] for r in ok]
            line[f"{trainer}_{key}"] = statistics.fmean(values)
            line[f"{trainer}_{key}_per_seed"] = values
    if "rayrm_reward_gain" in line and "trl_reward_gain" in line:
        rayrm, trl = line["rayrm_reward_gain"], line["trl_reward_gain"]
        line |= {
            "rayrm_minus_trl_reward_gain": rayrm - trl,
            "rayrm_minus_trl_gold_gain": line["rayrm_gold_gain"] - line["trl_gold_gain"],
            # A ratio only means something when TRL gained.
            "rayrm_over_trl_reward_gain": rayrm / trl if trl > 0 else None,
            "target": "rayrm's mean reward gain >= TRL's",
            "met": rayrm >= trl,
        }
    if "rayrm_reward_gain" in line and f"{ASYNC}_reward_gain" in line:
        # algorithm.async_rollouts stays off until it learns as much per completion as synchronous.
        line["async_minus_sync_reward_gain"] = (
            line[f"{ASYNC}_reward_gain"] - line["rayrm_reward_gain"]
        )
    return line
