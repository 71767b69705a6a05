"""``rayrm data inspect``: rows, columns and length statistics of a dataset file."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from rayrm.config import ConfigError
from rayrm.stages.tables import read_table

__all__ = ["format_inspection", "inspect_dataset", "inspect_main"]


def _summary(values: Sequence[float]) -> dict[str, float]:
    """min / mean / p50 / p95 / max of a non-empty list."""
    s = sorted(values)

    def pct(q: float) -> float:
        return float(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)])

    return {
        "min": float(s[0]),
        "mean": float(sum(s) / len(s)),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": float(s[-1]),
    }


def inspect_dataset(
    path: str | os.PathLike[str], tokenizer: Any = None, *, max_rows: int | None = None
) -> dict[str, Any]:
    """Row count, columns and per-column length statistics of a dataset file.

    Args:
        path: A file :func:`read_table` reads.
        tokenizer: A Hugging Face tokenizer or a directory holding one; adds token-length
            statistics (``add_special_tokens=False``, as rayrm encodes prompts and texts).
        max_rows: Only measure the first this many rows (the row count stays exact).

    Returns:
        ``{"path", "rows", "columns": {name: {"type", "nulls", "chars"?, "tokens"?,
        "values"?}}}``; ``chars``/``tokens`` (string columns) and ``values`` (numeric columns)
        hold ``min``/``mean``/``p50``/``p95``/``max``.
    """
    import pyarrow as pa

    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    table = read_table(path)
    measured = table if max_rows is None else table.slice(0, max_rows)
    columns: dict[str, Any] = {}
    for name in table.column_names:
        col = measured.column(name)
        info: dict[str, Any] = {"type": str(col.type), "nulls": int(col.null_count)}
        values = [v for v in col.to_pylist() if v is not None]
        if values and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            info["chars"] = _summary([len(v) for v in values])
            if tokenizer is not None:
                ids = tokenizer(values, add_special_tokens=False)["input_ids"]
                info["tokens"] = _summary([len(x) for x in ids])
        elif values and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            info["values"] = _summary([float(v) for v in values])
        columns[name] = info
    return {"path": str(path), "rows": table.num_rows, "columns": columns}


def format_inspection(stats: dict[str, Any]) -> str:
    """Renders :func:`inspect_dataset`'s result as an aligned text table."""

    def fmt(s: dict[str, float] | None) -> str:
        if not s:
            return "-"
        return " / ".join(f"{s[k]:.4g}" if k == "mean" else f"{s[k]:g}" for k in _STAT_KEYS)

    rows = [("column", "type", "nulls", "chars", "tokens", "values")]
    for name, info in stats["columns"].items():
        rows.append(
            (
                name,
                info["type"],
                str(info["nulls"]),
                fmt(info.get("chars")),
                fmt(info.get("tokens")),
                fmt(info.get("values")),
            )
        )
    keep = [i for i in range(6) if i < 3 or any(r[i] != "-" for r in rows[1:])]
    widths = [max(len(r[i]) for r in rows) for i in keep]
    lines = [
        f"{stats['path']}: {stats['rows']:,} rows, {len(stats['columns'])} columns "
        f"(lengths: {' / '.join(_STAT_KEYS)})"
    ]
    for r in rows:
        lines.append("  ".join(r[i].ljust(w) for i, w in zip(keep, widths, strict=True)).rstrip())
    return "\n".join(lines)


_STAT_KEYS = ("min", "mean", "p50", "p95", "max")


def inspect_main(args: argparse.Namespace) -> int:
    """``rayrm data inspect``; ConfigError propagates (the CLI turns it into exit code 2)."""
    if args.tokenizer is not None and not os.path.isdir(args.tokenizer):
        raise ConfigError(f"--tokenizer {args.tokenizer!r} is not a directory", key="tokenizer")
    stats = inspect_dataset(args.path, args.tokenizer, max_rows=args.max_rows)
    print(json.dumps(stats, indent=2) if args.json else format_inspection(stats))
    return 0
