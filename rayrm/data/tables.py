"""Reading data files as Arrow tables: the one reader of prompts, corpora and preference pairs.

``.parquet``; ``.jsonl``/``.json`` (newline-delimited JSON: one object per line, not an array);
``.txt`` (one row per non-empty line, column ``text``). Errors are single lines that name the
file; callers say what the file was for (``what``) and which suffixes they accept.
``pyarrow`` is imported inside the function so that ``import envs`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TABLE_SUFFIXES", "TEXT_COLUMN", "read_table"]

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".txt")
TEXT_COLUMN = "text"
"""The one column of a ``.txt`` file (a row per non-empty line)."""


def read_table(
    path: str | os.PathLike[str],
    *,
    what: str = "data file",
    suffixes: tuple[str, ...] = TABLE_SUFFIXES,
) -> pa.Table:
    """The file as an Arrow table (reader chosen by suffix); an empty JSON file has no rows.

    Raises:
        FileNotFoundError: ``"{what} not found: {path}"``.
        ValueError: An unsupported suffix, or a file that does not parse.
    """
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise ValueError(
            f"{what} {path} has unsupported extension {suffix!r}; supported: {', '.join(suffixes)}"
        )
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            return pa.table({TEXT_COLUMN: [line for line in lines if line.strip()]})
        if path.stat().st_size == 0:
            return pa.table({})
        return pj.read_json(path)
    except pa.ArrowException as e:
        kind = "Parquet" if suffix == ".parquet" else "newline-delimited JSON (one object per line)"
        raise ValueError(f"could not read {what} {path} as {kind}: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"could not read {what} {path} as UTF-8 text: {e}") from e
