"""The demo's stages: what each one runs, with which settings, and what it hands on.

What belongs here: the demo's sizes (:class:`DemoSizes`) and one ``build_*`` function per
stage. Each writes its artifacts into a fresh folder and returns a JSON-able summary, which
:func:`rayrm.demo.cache.run_stage` stores as the stage's ``done`` marker. The stages are rayrm's own
commands, called as functions: ``rayrm sft`` (:func:`rayrm.stages.sft.run_sft`), ``rayrm data
pairs`` (:func:`rayrm.stages.preference_data.build_preference_pairs`), ``rayrm train-rm``
(:func:`rayrm.stages.reward_model.run_reward_training`) and ``rayrm train``
(:func:`rayrm.experiment.train.run_train` + :func:`rayrm.analysis.report.write_report`). Which settings each stage
depends on is listed once, in ``STAGE_SETTINGS``; the caching in :mod:`rayrm.demo.run` hashes them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rayrm import metrics as M
from rayrm.analysis.report import write_report
from rayrm.config import RLConfig, config_from_dict
from rayrm.config.stage import RMConfig, SFTConfig, stage_config_from_dict
from rayrm.data.prompts import load_prompts, write_prompts_jsonl
from rayrm.demo.data import heldout_prompts, review_corpus, train_prompts, train_tokenizer
from rayrm.experiment.train import TrainingFailed, run_train
from rayrm.models.decoding import sample_completions
from rayrm.models.loading import load_causal_lm
from rayrm.models.tiny import build_tiny_policy
from rayrm.resolver import import_function
from rayrm.rewards.judges import vader_positivity
from rayrm.rl.checkpoint import checkpoint_codec, load_policy
from rayrm.stages.preference_data import build_preference_pairs
from rayrm.stages.reward_model import run_reward_training
from rayrm.stages.sft import run_sft
from rayrm.stages.trainer import (
    RM_EVAL_ACCURACY,
    RM_EVAL_MARGIN,
    RM_TRAIN_ACCURACY,
    SFT_EVAL_LOSS,
    SFT_TRAIN_LOSS,
)

__all__ = [
    "JUDGE",
    "SIZES",
    "STAGE_SETTINGS",
    "DemoSizes",
    "append_demo_section",
    "build_data",
    "build_pairs",
    "build_ppo",
    "build_reward_model",
    "build_sft",
    "build_tokenizer",
    "compare_gold",
    "gold_line",
    "ppo_config",
    "algorithm_section",
    "stage_common",
]

JUDGE = "rayrm.rewards.judges:vader_positivity"
"""The gold judge: labels the preference pairs and scores the held-out completions."""

GOLD_NAMES = {"vader_positivity": "VADER", "fluent_positivity": "VADER x fluency"}
"""How the summary line names a gold judge (by its function's name)."""


@dataclass(frozen=True, kw_only=True)
class DemoSizes:
    """Every size and setting of the demo's stages (all part of the stage hashes).

    Attributes:
        corpus_lines: Generated reviews the tokenizer and SFT train on.
        vocab_size: BPE vocabulary limit (the corpus fills fewer ids).
        n_layer, n_head, n_embd: The GPT-2 policy (built locally, random init).
        sft_epochs, sft_lr, sft_batch_size: SFT on the corpus.
        num_pairs: Preference pairs sampled from the SFT policy and labelled by the judge.
        pair_min_margin: Pairs whose two gold scores differ by this or less are dropped.
        rm_epochs, rm_lr, rm_batch_size: Reward-model training (from the SFT trunk).
        ppo_iterations, ppo_batch_size, ppo_lr: PPO against the reward model.
        algo: ``ppo`` (GAE with a value head) or ``grpo`` (critic-free: 4 samples per prompt,
            group-normalised rewards, β·KL (k3) as a loss term with a fixed β, GRPO's
            per-completion loss normalisation).
        kl_coef, target_kl: Initial β and the per-sequence KL the adaptive controller aims at.
        max_new_tokens: Completion limit for pairs, PPO and evaluation.
        heldout_repeats: Each held-out prompt appears this many times in the held-out file, so
            every evaluation samples that many completions per prompt.
        eval_every: Held-out proxy-vs-gold evaluation every this many PPO iterations.
        final_samples: Completions per held-out row in the final SFT-vs-PPO comparison.
        judge: The gold judge (``"module:function"``) that labels the pairs and scores the
            held-out completions.
        seed: Seed of the corpus, splits, initialisation and sampling.
    """

    corpus_lines: int = 4000
    vocab_size: int = 768
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    sft_epochs: int = 4
    sft_lr: float = 1.0e-3
    sft_batch_size: int = 32
    num_pairs: int = 1500
    pair_min_margin: float = 0.05
    rm_epochs: int = 3
    rm_lr: float = 3.0e-4
    rm_batch_size: int = 32
    ppo_iterations: int = 40
    ppo_batch_size: int = 64
    ppo_lr: float = 1.0e-4
    algo: Literal["ppo", "grpo"] = "ppo"
    kl_coef: float = 0.05
    target_kl: float = 4.0
    max_new_tokens: int = 16
    heldout_repeats: int = 4
    eval_every: int = 5
    final_samples: int = 4
    judge: str = JUDGE
    seed: int = 0


GRPO_SAMPLES = 4
"""Completions per prompt of ``rayrm demo --algo grpo``."""

GRPO_SETTINGS: dict[str, Any] = {
    "advantage_estimator": "grpo",
    "kl_mode": "loss",
    "kl_estimator": "k3",
    "loss_aggregation": "seq_mean_token_mean",
}
"""The ``algorithm`` section of ``rayrm demo --algo grpo`` besides the PPO stage's own."""

SIZES: dict[str, DemoSizes] = {
    "full": DemoSizes(),
    "smoke": DemoSizes(
        corpus_lines=300,
        vocab_size=320,
        n_layer=1,
        n_head=2,
        n_embd=32,
        sft_epochs=1,
        sft_batch_size=16,
        num_pairs=24,
        rm_epochs=1,
        rm_batch_size=8,
        ppo_iterations=2,
        ppo_batch_size=8,
        max_new_tokens=8,
        heldout_repeats=1,
        eval_every=1,
        final_samples=1,
    ),
}
"""``full``: the demo (minutes on 2 CPU cores). ``smoke``: every stage at toy size (tests)."""

STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "data": ("corpus_lines", "heldout_repeats", "seed"),
    "tokenizer": ("vocab_size",),
    "sft": ("n_layer", "n_head", "n_embd", "sft_epochs", "sft_lr", "sft_batch_size", "seed"),
    "pairs": ("num_pairs", "pair_min_margin", "max_new_tokens", "judge", "seed"),
    "reward_model": ("rm_epochs", "rm_lr", "rm_batch_size", "seed"),
    "ppo": (
        "algo",
        "ppo_iterations",
        "ppo_batch_size",
        "ppo_lr",
        "kl_coef",
        "target_kl",
        "max_new_tokens",
        "eval_every",
        "final_samples",
        "judge",
        "seed",
    ),  # fmt: skip
}
"""The :class:`DemoSizes` fields each stage's output depends on (besides its input stages)."""


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------


def build_data(d: Path, s: DemoSizes) -> dict[str, Any]:
    """The review corpus, the training prompts and the held-out prompts."""

    d.mkdir(parents=True)
    corpus = review_corpus(s.corpus_lines, seed=s.seed)
    (d / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    write_prompts_jsonl(d / "prompts.jsonl", train_prompts())
    heldout = heldout_prompts(s.heldout_repeats)
    write_prompts_jsonl(d / "heldout.jsonl", heldout)
    gold = vader_positivity(corpus, corpus)
    return {
        "corpus_lines": len(corpus),
        "train_prompts": len(train_prompts()),
        "heldout_rows": len(heldout),
        "corpus_gold_mean": sum(gold) / len(gold),
    }


def build_tokenizer(d: Path, s: DemoSizes, corpus: Path) -> dict[str, Any]:
    """A byte-level BPE tokenizer trained on the corpus."""

    lines = corpus.read_text(encoding="utf-8").splitlines()
    tokenizer = train_tokenizer(lines, s.vocab_size, d)
    return {"vocab_size": len(tokenizer)}


def stage_common(
    d: Path, model: Path, seed: int, epochs: int, lr: float, batch: int
) -> dict[str, Any]:
    """The sections an SFT and a reward-model stage config share (one worker, one CPU)."""
    return {
        "model": {"path": str(model)},
        "train": {
            "lr": lr,
            "epochs": epochs,
            "batch_size": batch,
            "eval_fraction": 0.15,
            "seed": seed,
        },
        "resources": {"num_workers": 1, "cpus_per_worker": 1.0},
        "output": {
            "dir": str(d / "model"),
            "storage_path": str(d / "ray"),
            "num_checkpoints_to_keep": 1,
        },
    }


def build_sft(
    d: Path, s: DemoSizes, corpus: Path, tokenizer_dir: Path, progress: bool
) -> dict[str, Any]:
    """A random tiny GPT-2, fine-tuned on the corpus with ``rayrm sft`` (one worker)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    init = d / "init"
    build_tiny_policy(
        init, tokenizer, n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, n_positions=64
    )
    raw = stage_common(d, init, s.seed, s.sft_epochs, s.sft_lr, s.sft_batch_size)
    raw |= {"name": "sft", "data": {"path": str(corpus), "max_length": 48}}
    summary = run_sft(stage_config_from_dict(SFTConfig, raw, check_paths=True), progress=progress)
    m = summary["metrics"]
    return {
        "model": summary["output_dir"],
        "train_loss": m[SFT_TRAIN_LOSS],
        "eval_loss": m.get(SFT_EVAL_LOSS),
    }


def build_pairs(
    d: Path, s: DemoSizes, sft_model: str, prompts: Path, progress: bool
) -> dict[str, Any]:
    """Two samples per training prompt from the SFT policy; the gold judge picks the chosen one."""

    return build_preference_pairs(
        sft_model,
        prompts,
        s.judge,
        d / "pairs.parquet",
        num_pairs=s.num_pairs,
        max_new_tokens=s.max_new_tokens,
        batch_size=64,
        min_margin=s.pair_min_margin,
        seed=s.seed,
        progress=progress,
    )


def build_reward_model(
    d: Path, s: DemoSizes, sft_model: str, pairs: str, progress: bool
) -> dict[str, Any]:
    """A Bradley–Terry reward model on the pairs, from the SFT trunk, with ``rayrm train-rm``."""

    raw = stage_common(d, Path(sft_model), s.seed, s.rm_epochs, s.rm_lr, s.rm_batch_size)
    raw |= {"name": "reward-model", "data": {"path": pairs, "max_length": 64}}
    cfg = stage_config_from_dict(RMConfig, raw, check_paths=True)
    summary = run_reward_training(cfg, progress=progress)
    m = summary["metrics"]
    return {
        "model": summary["output_dir"],
        "train_accuracy": m[RM_TRAIN_ACCURACY],
        "eval_accuracy": m[RM_EVAL_ACCURACY],
        "eval_margin": m[RM_EVAL_MARGIN],
        "eval_pairs": summary["data"]["eval"],
    }


def ppo_config(
    name: str, storage: Path, s: DemoSizes, sft_model: str, rm: str, data: Path
) -> RLConfig:
    """The ``rayrm train`` config of the PPO stage (reward: the learned model; gold: the
    judge)."""

    heldout_rows = len(load_prompts(data / "heldout.jsonl"))
    return config_from_dict(
        {
            "name": name,
            "seed": s.seed,
            "model": {"path": sft_model},
            "data": {"prompts": str(data / "prompts.jsonl"), "max_prompt_tokens": 16},
            "generation": {
                "max_new_tokens": s.max_new_tokens,
                "samples_per_prompt": GRPO_SAMPLES if s.algo == "grpo" else 1,
            },
            "reward": {"source": "model", "path": rm, "num_cpus_per_actor": 0.5},
            "algorithm": algorithm_section(
                s.algo,
                batch_size=s.ppo_batch_size,
                lr=s.ppo_lr,
                kl_coef=s.kl_coef,
                target_kl=s.target_kl,
            ),  # fmt: skip
            "resources": {"num_env_runners": 0},
            "run": {
                "num_iterations": s.ppo_iterations,
                "checkpoint_every": s.ppo_iterations,
                "storage_path": str(storage),
                "max_failures": 0,
            },
            "eval": {
                "prompts": str(data / "heldout.jsonl"),
                "num_prompts": heldout_rows,
                "every": s.eval_every,
                "gold_function": s.judge,
                "report_samples": 8,
            },
        },
        check_paths=True,
    )


def algorithm_section(
    algo: str, *, batch_size: int, lr: float, kl_coef: float, target_kl: float
) -> dict[str, Any]:
    """The demos' ``algorithm`` section: 2 minibatches, 2 epochs; PPO with the adaptive KL
    controller, or GRPO (:data:`GRPO_SETTINGS`) with a fixed β."""
    return {
        "batch_size": batch_size,
        "num_minibatches": 2,
        "num_epochs": 2,
        "lr": lr,
        "vf_coef": 0.5,
        "kl_coef": kl_coef,
        "adaptive_kl": algo == "ppo",
        "target_kl": target_kl,
        "kl_horizon": 2000,
        **(GRPO_SETTINGS if algo == "grpo" else {}),
    }


def compare_gold(
    sft_model: str,
    exp_dir: Path,
    prompts: list[str],
    *,
    samples: int,
    max_new_tokens: int,
    seed: int,
    judge: str = JUDGE,
) -> dict[str, Any]:
    """Gold scores of SFT-policy and PPO-policy samples on the same held-out prompts.

    Each policy samples ``samples`` completions per prompt row (same seeds for both); the
    gold ``judge`` (``"module:function"``) scores them.

    Returns:
        ``{"sft": stats, "ppo": stats, "difference", "difference_se", "z"}``, ``stats`` =
        ``{"mean", "std", "se", "n"}`` (std over the completions, se = std / sqrt(n)); ``z`` is
        the difference in units of its standard error (Welch).
    """
    import numpy as np

    gold_of = import_function(judge)
    final, tokenizer, cfg, ckpt = load_policy(exp_dir)
    codec = checkpoint_codec(ckpt, cfg, tokenizer)
    out: dict[str, Any] = {}
    for name, model in (("sft", load_causal_lm(sft_model)), ("ppo", final)):
        scores: list[float] = []
        for k in range(samples):
            completions = sample_completions(
                model, codec, prompts, max_new_tokens=max_new_tokens, seed=seed + k
            )
            scores += gold_of(prompts, completions)
        x = np.asarray(scores)
        out[name] = {
            "mean": float(x.mean()),
            "std": float(x.std(ddof=1)),
            "se": float(x.std(ddof=1) / math.sqrt(len(x))),
            "n": len(x),
        }
    out["difference"] = out["ppo"]["mean"] - out["sft"]["mean"]
    out["difference_se"] = math.hypot(out["ppo"]["se"], out["sft"]["se"])
    out["z"] = out["difference"] / max(out["difference_se"], 1e-12)
    return out


StageRow = tuple[str, Path, float | None]
"""``(stage name, folder, seconds)`` for the report's stage table; None seconds: cached."""


def build_ppo(
    d: Path,
    s: DemoSizes,
    sft_model: str,
    rm: dict[str, Any],
    data: Path,
    earlier: list[StageRow],
) -> dict[str, Any]:
    """PPO against the reward model (``rayrm train``), its report, then the gold comparison.

    ``d`` is the run folder: Tune creates it (``run.storage_path = d.parent``, ``name =
    d.name``). The report gets a section on the whole pipeline (:func:`append_demo_section`),
    with ``earlier`` stages' times.
    """

    start = time.perf_counter()
    cfg = ppo_config(d.name, d.parent, s, sft_model, rm["model"], data)
    exp_dir, last = run_train(cfg)
    if int(last.get("training_iteration", 0)) < cfg.run.num_iterations:
        raise TrainingFailed(f"PPO stopped early: {last.get('training_iteration')} iterations")
    cfg.save_yaml(exp_dir / "config.yaml")
    report, headline = write_report(cfg, exp_dir)
    gold = compare_gold(
        sft_model,
        exp_dir,
        load_prompts(data / "heldout.jsonl"),
        samples=s.final_samples,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed + 1,
        judge=s.judge,
    )
    gold["algo"] = s.algo.upper()
    gold["judge"] = s.judge.rsplit(":", 1)[-1]
    r = last.get(M.RLHF_RESULTS, {})
    info = {
        "report": str(report),
        "headline": headline,
        "gold": gold,
        "final_reward": r.get(M.REWARD_MEAN),
        "final_kl": r.get(M.KL_SEQUENCE),
        "rm_eval_accuracy": rm["eval_accuracy"],
    }
    rows = [*earlier, ("ppo", d, time.perf_counter() - start)]
    append_demo_section(report, info, rows)
    return info


def gold_line(gold: dict[str, Any]) -> str:
    """One line: the gold scores of both policies, their spread and the difference."""
    a, b = gold["sft"], gold["ppo"]
    return (
        f"held-out gold ({GOLD_NAMES.get(gold.get('judge', ''), 'VADER')}), {a['n']} completions each: SFT {a['mean']:+.3f} ± {a['std']:.3f} "
        f"(se {a['se']:.3f}) -> {gold.get('algo', 'PPO')} {b['mean']:+.3f} ± {b['std']:.3f} (se {b['se']:.3f}); "
        f"difference {gold['difference']:+.3f} = {gold['z']:.1f} standard errors"
    )


def append_demo_section(report: Path, info: dict[str, Any], rows: list[StageRow]) -> None:
    """Adds the gold comparison, the reward model's accuracy and the stage times to the report."""
    lines = [
        "",
        "## The demo pipeline",
        "",
        f"- {gold_line(info['gold'])} (mean ± std over completions; same held-out prompts "
        f"and sampling seeds for both policies).",
        f"- reward model held-out pairwise accuracy: {info['rm_eval_accuracy']:.3f}.",
        "",
        "| stage | folder | wall time (this run) |",
        "| --- | --- | --- |",
    ]
    for name, folder, seconds in rows:
        lines.append(
            f"| {name} | `{folder}` | {'cached' if seconds is None else f'{seconds:.1f} s'} |"
        )
    with report.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
