"""Over-optimisation curves of finished runs: held-out gold and proxy against KL, where the gold
peaks, and when each gold-free monitor fired (Gao et al. 2022, https://arxiv.org/abs/2210.10760).

What belongs here: reading the curves out of a run's results (:func:`curve_of`), the
iteration at which each monitor first crossed its threshold (:func:`monitor_firing`), the
summary over seeds (:func:`summarise`), and the plot and table of a study that compares ways
of rewarding (one reward model, an ensemble combined three ways, adversarial rounds). Pure
functions of result dicts (as :func:`rayrm.analysis.report.load_results` reads them): no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayrm import metrics as M

__all__ = [
    "MONITOR_AFTER",
    "MONITOR_RULES",
    "Curve",
    "curve_of",
    "monitor_firing",
    "plot_gao",
    "study_table",
    "summarise",
]

Curve = list[dict[str, float]]
"""Held-out evaluations of one run in order: ``{"updates", "kl", "proxy", "gold"}`` each."""

MONITOR_RULES: dict[str, tuple[str, float]] = {
    M.MONITOR_DISTINCT_2: ("below_first", 0.75),
    M.MONITOR_LENGTH_RATIO: ("outside", 0.25),
    M.MONITOR_REWARD_GAIN_PER_KL: ("below_peak", 0.5),
    M.REWARD_DISAGREEMENT: ("above_first", 2.0),
}
"""When a monitor counts as fired, relative to the run's own values, since absolute
thresholds (``run.stop_when``) depend on the task: ``below_first`` x: under x times its
first value; ``outside`` x: the length ratio more than x away from 1; ``below_peak`` x: under
x times its highest value so far; ``above_first`` x: over x times its first value. Iterations
before :data:`MONITOR_AFTER` never count (``run.stop_when``'s ``after``)."""

MONITOR_AFTER = 10
"""The first iteration whose monitor values count: the first few updates move a policy most
(its length, its reward per nat of KL), over-optimised or not."""


def _rlhf(result: Mapping[str, Any]) -> Mapping[str, Any]:
    return result.get(M.RLHF_RESULTS, {})


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def curve_of(results: Sequence[Mapping[str, Any]]) -> Curve:
    """The held-out evaluations of a run, each with the KL to the reference of the policy that
    was evaluated: the per-sequence KL of the batch it sampled next (iteration ``updates + 1``;
    the run's last policy, evaluated after the last update, takes the last batch's KL)."""
    kl_at = {
        int(r["training_iteration"]): float(_rlhf(r)[M.KL_SEQUENCE])
        for r in results
        if _finite(_rlhf(r).get(M.KL_SEQUENCE))
    }
    points: dict[int, dict[str, float]] = {}
    for r in results:
        stats = _rlhf(r)
        updates, gold = stats.get(M.EVAL_UPDATES), stats.get(M.EVAL_GOLD_MEAN)
        if not (_finite(updates) and _finite(gold)):
            continue
        u = int(updates)
        kl = kl_at.get(u + 1, kl_at.get(u, math.nan)) if u > 0 else 0.0
        points[u] = {
            "updates": float(u),
            "kl": kl,
            "proxy": float(stats.get(M.EVAL_PROXY_MEAN, math.nan)),
            "gold": float(gold),
        }
    return [points[u] for u in sorted(points)]


def monitor_firing(
    results: Sequence[Mapping[str, Any]], after: int = MONITOR_AFTER
) -> dict[str, int | None]:
    """The first training iteration from ``after`` on at which each monitor of
    :data:`MONITOR_RULES` fired (None: never, or the run does not publish it)."""
    out: dict[str, int | None] = {}
    for metric, (kind, x) in MONITOR_RULES.items():
        first = peak = None
        out[metric] = None
        for r in results:
            value = _rlhf(r).get(metric)
            if not _finite(value):
                continue
            if int(r["training_iteration"]) < after:  # the baseline, not yet a firing
                first = value if first is None else first
                peak = value if peak is None else max(peak, value)
                continue
            first = value if first is None else first
            peak = value if peak is None else max(peak, value)
            fired = {
                "below_first": value < x * first,
                "above_first": first > 0 and value > x * first,
                "outside": abs(value - 1.0) > x,
                "below_peak": peak > 0 and value < x * peak,
            }[kind]
            if fired:
                out[metric] = int(r["training_iteration"])
                break
    return out


def _mean_se(values: Sequence[float]) -> dict[str, float]:
    x = np.asarray(values, dtype=float)
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return {"mean": float(x.mean()), "se": se, "n": len(x)}


def summarise(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per variant, over its seeds: gold at the start, at the end and at its peak (mean and
    standard error over seeds), the peak's iteration, the fall from peak to end, the proxy at
    the end, and each monitor's firing iteration against the gold peak.

    Args:
        runs: ``{variant: [run, ...]}``, a run ``{"seed", "curve": Curve, "firing":
            {metric: iteration | None}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for variant, seeds in runs.items():
        golds = [[p["gold"] for p in run["curve"]] for run in seeds]
        peak_at = [
            int(run["curve"][int(np.argmax(g))]["updates"])
            for run, g in zip(seeds, golds, strict=True)
        ]
        out[variant] = {
            "start": _mean_se([g[0] for g in golds]),
            "final": _mean_se([g[-1] for g in golds]),
            "peak": _mean_se([max(g) for g in golds]),
            "fall": _mean_se([max(g) - g[-1] for g in golds]),
            "final_proxy": _mean_se([run["curve"][-1]["proxy"] for run in seeds]),
            "final_kl": _mean_se([run["curve"][-1]["kl"] for run in seeds]),
            "peak_at": peak_at,
            "firing_minus_peak": {
                metric: [
                    None if run["firing"].get(metric) is None else run["firing"][metric] - at
                    for run, at in zip(seeds, peak_at, strict=True)
                ]
                for metric in MONITOR_RULES
                if any(run["firing"].get(metric) is not None for run in seeds)
            },
        }
    return out


def _fmt(stat: Mapping[str, float]) -> str:
    se = "" if math.isnan(stat["se"]) else f" ± {stat['se']:.3f}"
    return f"{stat['mean']:+.3f}{se}"


def study_table(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown: one row per variant (gold mean ± standard error over seeds)."""
    lines = [
        "| reward | seeds | gold at start | gold at peak | gold at end | fall from peak | peak at update | proxy at end | KL at end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, s in summary.items():
        lines.append(
            f"| {variant} | {s['final']['n']} | {_fmt(s['start'])} | {_fmt(s['peak'])} | "
            f"{_fmt(s['final'])} | {_fmt(s['fall'])} | {', '.join(map(str, s['peak_at']))} | "
            f"{_fmt(s['final_proxy'])} | {s['final_kl']['mean']:.1f} |"
        )
    return lines


def plot_gao(path: Path, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """Gold (solid) and proxy (dashed, right axis) against KL per sequence, one panel per
    variant, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False)
    for ax, (variant, seeds) in zip(axes[0], runs.items(), strict=True):
        proxy_ax = ax.twinx()
        for i, run in enumerate(seeds):
            kl = [p["kl"] for p in run["curve"]]
            color = f"C{i}"
            ax.plot(kl, [p["gold"] for p in run["curve"]], "-o", ms=3, color=color,
                    label=f"seed {run['seed']} gold")  # fmt: skip
            proxy_ax.plot(kl, [p["proxy"] for p in run["curve"]], "--", color=color, alpha=0.6)
        ax.set_title(variant)
        ax.set_xlabel("KL to the reference (nats per sequence)")
        ax.set_ylabel("held-out gold (solid)")
        proxy_ax.set_ylabel("held-out proxy (dashed)")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
