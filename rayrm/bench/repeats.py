"""``rayrm bench --repeats N``: the compared configurations' lockstep run N times, summarised.

What belongs here: the order of each repeat (the lockstep's start and turn order alternates,
so no configuration always runs first or last) and the ``repeat_summary`` lines -- per rayrm
configuration the median, minimum and maximum over the repeats of its throughput, its update's
utilisation and every ratio its ``ratio`` lines carry, with each repeat's value. One lockstep
keeps the ratios within it fair under a shared machine's load; the spread over repeats is how
far they move from one run to the next. The tools section's repeats also change the seed
(:func:`measure_tools_repeated`): its success gains are then one per seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from rayrm.bench.trl import RAYRM_OVER_TRL_NO_GC_TARGET, RAYRM_OVER_TRL_STOCK_TARGET
from rayrm.bench.trl_env import SPEED_TARGET, ToolsSettings, measure_tools

__all__ = ["in_order", "measure_tools_repeated", "repeat_summary", "spread", "tools_summary"]

TARGETS = {
    "rayrm_over_trl_stock": RAYRM_OVER_TRL_STOCK_TARGET,
    "rayrm_over_trl_no_gc": RAYRM_OVER_TRL_NO_GC_TARGET,
    "rayrm_over_trl_no_gc_default": RAYRM_OVER_TRL_NO_GC_TARGET,
}


def in_order(turns: list[tuple[str, str]], repeat: int) -> list[tuple[str, str]]:
    """The lockstep's turns (and the order its servers start in) in repeat ``repeat``
    (counted from 0): as given in even repeats, reversed in odd ones."""
    return list(turns) if repeat % 2 == 0 else list(reversed(turns))


def spread(values: list[float]) -> dict[str, Any]:
    """``median``, ``min``, ``max`` of ``values`` and the values themselves (``runs``)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def _ratio_keys(line: dict[str, Any]) -> list[str]:
    return [
        k
        for k, v in line.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and (k.startswith(("rayrm_over_", "median_step_ratio_")) or k.endswith("_tokens_per_s"))
    ]


def repeat_summary(lines: list[dict[str, Any]], repeats: int) -> list[dict[str, Any]]:
    """One ``repeat_summary`` line per rayrm configuration of ``lines`` (every repeat's lines,
    each with its ``repeat``): its figures' spread over the repeats, and the TRL targets met
    by the median ratio. A configuration that failed in some repeat is summarised over the
    repeats it ran (``repeats_ok``)."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if line.get("bench") == "rayrm":
            by_config.setdefault(line["config"], []).append(line)
    out = []
    for name, runs in by_config.items():
        ratios = [r for r in lines if r.get("bench") == "ratio" and r.get("rayrm_config") == name]
        summary: dict[str, Any] = {
            "bench": "repeat_summary",
            "rayrm_config": name,
            "repeats": repeats,
            "repeats_ok": len(runs),
            "what": "median, min and max over repeated locksteps (start order alternated)",
            "resources": runs[0].get("resources"),
            "tokens_per_s": spread([r["tokens_per_s"] for r in runs]),
            "iteration_s_median": spread([r["iteration_s_median"] for r in runs]),
        }
        mfu = [r["flops"]["mfu"]["update"] for r in runs if "mfu" in r.get("flops", {})]
        if mfu:
            summary["update_mfu"] = spread(mfu)
        if ratios:
            for key in _ratio_keys(ratios[0]):
                summary[key] = spread([r[key] for r in ratios])
            summary["targets"] = TARGETS
            summary["met_by_median"] = {
                k: summary[k]["median"] >= t for k, t in TARGETS.items() if k in summary
            }
        out.append(summary)
    return out


def measure_tools_repeated(s: ToolsSettings, repeats: int) -> Iterator[dict[str, Any]]:
    """The tools section ``repeats`` times: repeat ``r`` (from 0) with seed ``s.seed + r`` and
    TRL first in odd repeats; every line gets ``repeat`` and ``seed`` when ``repeats > 1``,
    and a :func:`tools_summary` line follows."""
    lines = []
    for repeat in range(repeats):
        run = replace(s, seed=s.seed + repeat)
        for line in measure_tools(run, trl_first=repeat % 2 == 1):
            if repeats > 1:
                line = {**line, "repeat": repeat + 1, "seed": run.seed}
            lines.append(line)
            yield line
    if repeats > 1:
        yield tools_summary(lines, repeats)


def tools_summary(lines: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """``tools_summary``: over the repeats' ``tools_ratio`` lines (one per seed), the spread of
    TRL's seconds per iteration over rayrm's and of each trainer's success gain; the targets
    judged on the medians."""
    ratios = [x for x in lines if x.get("bench") == "tools_ratio"]
    by = {k: [x for x in lines if x.get("bench") == f"tools_{k}"] for k in ("rayrm", "trl")}
    out: dict[str, Any] = {
        "bench": "tools_summary",
        "what": "median, min and max over repeats (seed s.seed + r, start order alternated)",
        "repeats": repeats,
        "repeats_ok": len(ratios),
        "seeds": [x["seed"] for x in ratios],
    }
    if not ratios:
        return out
    for k in ("trl_over_rayrm_s_per_iteration", "rayrm_minus_trl_success_gain"):
        out[k] = spread([x[k] for x in ratios])
    for name, runs in by.items():
        for k in ("iteration_s_median", "success_first", "success_last", "success_gain"):
            out[f"{name}_{k}"] = spread([x[k] for x in runs])
    speed = out["trl_over_rayrm_s_per_iteration"]["median"]
    gain = out["rayrm_minus_trl_success_gain"]["median"]
    out["met"] = {"speed": speed >= SPEED_TARGET, "success_gain": gain >= 0}
    return out
