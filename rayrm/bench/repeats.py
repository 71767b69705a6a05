"""``rayrm bench --repeats N``: the compared configurations' lockstep run N times, summarised.

What belongs here: the order of each repeat (the lockstep's start and turn order alternates,
so no configuration always runs first or last) and the ``repeat_summary`` lines -- per rayrm
configuration the median, minimum and maximum over the repeats of its throughput, its update's
utilisation and every ratio its ``ratio`` lines carry, with each repeat's value. One lockstep
keeps the ratios within it fair under a shared machine's load; the spread over repeats is how
far they move from one run to the next.
"""

from __future__ import annotations

import statistics
from typing import Any

from rayrm.bench.trl import RAYRM_OVER_TRL_NO_GC_TARGET, RAYRM_OVER_TRL_STOCK_TARGET

__all__ = ["in_order", "repeat_summary", "spread"]

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
