"""The per-run report: ``report.md`` plus PNG plots in the run folder, and a terminal headline.

Multi-turn runs (an ``env`` section) get their held-out part from
:mod:`rayrm.analysis.conversations`.

What belongs here: reading a finished run's results, plotting the curves that tell whether
RLHF worked (training reward, held-out proxy vs gold, KL, response length), and a table of
completions for the same prompts before and after training, scored by proxy and gold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rayrm import metrics as M
from rayrm.analysis.conversations import (
    episodes_before_after,
    episodes_headline,
    episodes_section,
)
from rayrm.config import RLConfig
from rayrm.config.stopping import fired
from rayrm.models.decoding import sample_sequences
from rayrm.models.loading import load_causal_lm
from rayrm.rewards import Completion, completion_records, pool_from_config
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rl.checkpoint import checkpoint_codec, load_policy
from rayrm.rl.evaluation import score_held_out
from rayrm.rl.prompt_order import held_out_columns, held_out_prompts

REPORT_FILE = "report.md"


MARKED = ("heldout.png", "monitors.png", "success.png")
"""Plots that mark where ``run.stop_when`` fired, next to the gold (or success) curve."""


def load_results(exp_dir: Path) -> list[dict[str, Any]]:
    """Results of the run's (single) trial, one dict per iteration, last write wins."""
    files = sorted(Path(exp_dir).glob("*/result.json"))
    if not files:
        raise FileNotFoundError(f"no result.json under {exp_dir}")
    by_iteration: dict[int, dict[str, Any]] = {}
    for line in files[-1].read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_iteration[int(r["training_iteration"])] = r
    return [by_iteration[i] for i in sorted(by_iteration)]


def _series(results: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in results:
        value = r.get(M.RLHF_RESULTS, {}).get(key)
        if value is not None and math.isfinite(value):
            xs.append(int(r["training_iteration"]))
            ys.append(float(value))
    return xs, ys


def _eval_points(results: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Held-out evaluations, one point per evaluated policy (x = updates done before it)."""
    points: dict[int, float] = {}
    for r in results:
        stats = r.get(M.RLHF_RESULTS, {})
        x, y = stats.get(M.EVAL_UPDATES, math.nan), stats.get(key, math.nan)
        if math.isfinite(x) and math.isfinite(y):  # NaN on iterations without an evaluation
            points[int(x)] = float(y)
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def stop_fired(cfg: RLConfig, results: list[dict[str, Any]]) -> tuple[int, str] | None:
    """The first iteration where a ``run.stop_when`` rule held, and the rule in words."""
    for r in results:
        iteration, values = int(r["training_iteration"]), r.get(M.RLHF_RESULTS, {})
        for metric, rule in cfg.run.stop_when.items():
            if fired(rule, iteration, values.get(metric)):
                bound = f"above {rule.above:g}" if rule.above is not None else ""
                if rule.below is not None:
                    bound = (
                        f"below {rule.below:g}" if not bound else f"{bound} or below {rule.below:g}"
                    )
                return iteration, f"{metric} {bound} ({values[metric]:.3g})"
    return None


def _plot(
    path: Path,
    title: str,
    curves: list[tuple[str, list[int], list[float]]],
    mark: tuple[int, str] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    lines = []
    for i, (label, xs, ys) in enumerate(curves):
        if not xs:
            continue
        # Each further curve gets its own y-axis: a reward model's logits and a gold score in
        # [-1, 1] share the x-axis (when the curves part) but not a scale.
        axis = ax if not lines else ax.twinx()
        (line,) = axis.plot(
            xs, ys, color=f"C{i}", marker="o" if len(xs) < 30 else None, label=label
        )
        axis.set_ylabel(label, color=f"C{i}")
        lines.append(line)
    if mark is not None and lines:  # where run.stop_when fired
        ax.axvline(mark[0], color="gray", linestyle="--")
        ax.annotate(f"stop: {mark[1]}", (mark[0], 0.02), xycoords=("data", "axes fraction"),
                    fontsize=7, color="gray", rotation=90, ha="right")  # fmt: skip
    ax.set_title(title)
    ax.set_xlabel("iteration (PPO updates)")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(lines, [line.get_label() for line in lines])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _score(cfg: RLConfig, records: list[Completion]) -> dict[str, np.ndarray]:
    """Proxy (and gold) scores of held-out records, in this process, as the evaluation's."""
    pool = pool_from_config(cfg.reward, local=True, tokenizer=cfg.model.resolved_tokenizer_path)
    gold = cfg.eval.gold_function
    return score_held_out(records, pool, RewardFunctionActor(gold) if gold else None)


def _before_after(cfg: RLConfig, exp_dir: Path) -> dict[str, Any]:
    """Completions of the initial and the final policy for the same held-out prompts."""

    final, tokenizer, _, ckpt = load_policy(exp_dir)
    initial = load_causal_lm(cfg.model.path, cfg.model.dtype)
    codec = checkpoint_codec(ckpt, cfg, tokenizer)
    prompts, references = held_out_prompts(cfg, references=True)
    columns = held_out_columns(cfg, len(prompts))
    messages = [codec.conversation(p) for p in prompts]
    g = cfg.generation
    kwargs = dict(
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        seed=cfg.seed,
    )
    out: dict[str, Any] = {}
    for name, model in (("before", initial), ("after", final)):
        pairs = [codec.texts(p, c) for p, c in sample_sequences(model, codec, prompts, **kwargs)]
        prompt_texts = out.setdefault("prompts", [t[0] for t in pairs])
        out[name] = [t[1] for t in pairs]
        records = completion_records(
            prompt_texts, out[name], references=references, messages=messages, columns=columns
        )
        out[f"{name}_scores"] = _score(cfg, records)
    return out


def _fmt(values: np.ndarray) -> str:
    return f"{values.mean():+.3f} ± {values.std():.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "∅"


def _completion_table(ba: dict[str, Any], rows: int) -> list[str]:
    """The Markdown table of completions before and after, with their scores."""
    scores = ["proxy", "gold"] if "gold" in ba["after_scores"] else ["proxy"]
    columns = ["prompt", "before", *scores, "after", *scores]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for i in range(rows):
        row = [_cell(ba["prompts"][i])]
        for when in ("before", "after"):
            row.append(_cell(ba[when][i]))
            row += [f"{ba[f'{when}_scores'][s][i]:+.3f}" for s in scores]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _plots(cfg: RLConfig, results: list[dict[str, Any]]) -> dict[str, tuple[str, list]]:
    """The report's plots: file name -> (title, curves)."""
    held_out = "held-out: proxy vs gold"
    plots: dict[str, tuple[str, list]] = {
        "reward.png": (
            "training reward (batch mean)",
            [("proxy", *_series(results, M.REWARD_MEAN))],
        ),
        "heldout.png": (
            held_out,
            [
                ("proxy", *_eval_points(results, M.EVAL_PROXY_MEAN)),
                ("gold", *_eval_points(results, M.EVAL_GOLD_MEAN)),
            ],
        ),
    }
    if cfg.env is not None:
        plots["success.png"] = (
            "success: training episodes and held-out rows",
            [
                ("training", *_series(results, M.ENV_SUCCESS)),
                ("held-out", *_eval_points(results, M.EVAL_SUCCESS)),
            ],
        )
    plots["kl.png"] = (
        "KL to the reference (per sequence)",
        [("KL", *_series(results, M.KL_SEQUENCE))],
    )
    plots["monitors.png"] = (
        "over-optimisation monitors (no gold needed)",
        [
            ("distinct bigrams", *_series(results, M.MONITOR_DISTINCT_2)),
            ("reward gain per nat of KL", *_series(results, M.MONITOR_REWARD_GAIN_PER_KL)),
        ],
    )
    plots["length.png"] = (
        "response length (tokens)" if cfg.env is None else "policy tokens per episode",
        [("length", *_series(results, M.ROLLOUT_LENGTH))],
    )
    return plots


def write_report(cfg: RLConfig, exp_dir: str | Path) -> tuple[Path, list[str]]:
    """Writes ``report.md`` and plots into ``exp_dir``: completions before and after, or for
    a multi-turn run (an ``env`` section) held-out success and whole conversations
    (``rayrm.analysis.conversations``).

    Returns:
        ``(report_path, headline_lines)``.
    """
    exp_dir = Path(exp_dir)
    results = load_results(exp_dir)
    plots = _plots(cfg, results)
    stop = stop_fired(cfg, results)
    for name, (title, curves) in plots.items():
        _plot(exp_dir / name, title, curves, stop if name in MARKED else None)

    _, rewards = _series(results, M.REWARD_MEAN)
    _, kls = _series(results, M.KL_SEQUENCE)
    _, lengths = _series(results, M.ROLLOUT_LENGTH)
    headline = [
        f"training reward (batch mean): {rewards[0]:+.3f} -> {rewards[-1]:+.3f} "
        f"over {len(results)} iterations",
    ]
    if cfg.env is None:
        ba = _before_after(cfg, exp_dir)
        n = len(ba["prompts"])
        headline.append(
            f"held-out proxy, {n} completions: before {_fmt(ba['before_scores']['proxy'])}, "
            f"after {_fmt(ba['after_scores']['proxy'])}"
        )
        if "gold" in ba["after_scores"]:
            headline.append(
                f"held-out GOLD, {n} completions: before {_fmt(ba['before_scores']['gold'])}, "
                f"after {_fmt(ba['after_scores']['gold'])}"
            )
        what = "response length"
        examples = [
            "## Completions before and after training",
            "",
            *_completion_table(ba, min(cfg.eval.report_samples, n)),
        ]
    else:
        episodes = episodes_before_after(cfg, exp_dir)
        _, success = _series(results, M.ENV_SUCCESS)
        if success:
            headline.append(f"training success (batch mean): {success[0]:.3f} -> {success[-1]:.3f}")
        headline += episodes_headline(episodes)
        what = "policy tokens per episode"
        examples = [
            "## Conversations before and after training",
            "",
            "Each held-out row played by the initial and by the final policy (same sampling "
            "seed), every turn and reply as the sampler saw them.",
            "",
            *episodes_section(episodes, cfg.eval.report_samples),
        ]
    headline += [f"run.stop_when fired at iteration {stop[0]}: {stop[1]}"] if stop else []
    headline.append(
        f"KL per sequence (last): {kls[-1]:.3f}; {what}: "
        f"{lengths[0]:.1f} -> {lengths[-1]:.1f} tokens"
    )

    source = f"{cfg.reward.source}" + (
        f" (`{cfg.reward.path or cfg.reward.function}`)" if cfg.reward.source != "env" else ""
    )
    env = f" Environment: `{cfg.env.environment}`." if cfg.env is not None else ""
    lines = [
        f"# rayrm report: {cfg.name}",
        "",
        f"Run folder: `{exp_dir}`. Policy: `{cfg.model.path}`. Reward: {source}.{env} Gold "
        f"scorer: `{cfg.eval.gold_function or 'none'}`.",
        "",
        "## Headline",
        "",
        *[f"- {h}" for h in headline],
        "",
        "Before = the initial policy, after = the final checkpoint; same held-out prompts, same "
        "sampling seed; mean ± std over the sampled completions (success: ± standard error).",
        "",
        "## Curves",
        "",
        *[f"![{title}]({name})" for name, (title, _) in plots.items()],
        "",
        *examples,
    ]
    path = exp_dir / REPORT_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, headline
