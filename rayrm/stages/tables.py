"""Columns of data files for the stages and tools, with errors that name the config key.

The file reader is ``rayrm.data.tables.read_table`` (Parquet, JSON Lines, ``.txt``); this module turns
its errors and the columns' problems into one-line :class:`~rayrm.config.ConfigError` s naming
the key or option the file came from.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from rayrm.config import ConfigError
from rayrm.data.tables import TABLE_SUFFIXES, TEXT_COLUMN
from rayrm.data.tables import read_table as _read_table
from rayrm.models.tokenization import check_conversation

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "TABLE_SUFFIXES",
    "TEXT_COLUMN",
    "conversation_column",
    "read_table",
    "string_column",
    "tools_column",
]


def read_table(path: str | os.PathLike[str], *, key: str | None = None) -> pa.Table:
    """Reads a ``.parquet``, ``.jsonl``/``.json`` (JSON Lines) or ``.txt`` file as a table.

    Raises:
        ConfigError: The file is missing, has another extension or cannot be parsed; the
            message names ``key`` (the config key or option the path came from).
    """
    try:
        return _read_table(path, what=f"{key} file" if key else "file")
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc), key=key) from exc


def string_column(table: pa.Table, column: str, *, path: str, key: str | None = None) -> list[str]:
    """The values of a column of strings, checked.

    Args:
        table: From :func:`read_table`.
        column: Column name.
        path: File the table came from (for messages).
        key: Config key naming the column, named in errors.

    Raises:
        ConfigError: The column is missing or holds a null or a non-string.
    """
    if column not in table.column_names:
        raise ConfigError(
            f"{key + ': ' if key else ''}{path} has no column {column!r} "
            f"(columns: {', '.join(table.column_names) or 'none'})",
            key=key,
        )
    values = table.column(column).to_pylist()
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise ConfigError(
                f"{path}, column {column!r}, row {row}: expected a string, got "
                f"{type(value).__name__} ({value!r})",
                key=key,
            )
    return values


# ---------------------------------------------------------------------------------------------
# rayrm data inspect
# ---------------------------------------------------------------------------------------------


def conversation_column(
    table: pa.Table, column: str, *, path: str, key: str | None = None
) -> list[list[dict[str, str]]]:
    """The values of a column of conversations (lists of ``{role, content}``), checked.

    Raises:
        ConfigError: The column is missing or a row is not a list of role/content messages.
    """

    if column not in table.column_names:
        raise ConfigError(
            f"{key + ': ' if key else ''}{path} has no column {column!r} "
            f"(columns: {', '.join(table.column_names) or 'none'})",
            key=key,
        )
    out = []
    for row, value in enumerate(table.column(column).to_pylist()):
        try:
            out.append(check_conversation(value, f"{path}, column {column!r}, row {row}"))
        except ValueError as exc:
            raise ConfigError(str(exc), key=key) from exc
    return out


def tools_column(
    table: pa.Table, column: str, *, path: str, key: str | None = None
) -> list[list[dict[str, Any]] | None]:
    """The values of a column of tool lists: per row, JSON schemas of tools
    (``envs.tools.tool_schema``) as a list of objects or its JSON text; null or empty: none.

    Raises:
        ConfigError: A row is neither (row named).
    """
    out: list[list[dict[str, Any]] | None] = []
    for row, value in enumerate(table.column(column).to_pylist()):
        where = f"{path}, column {column!r}, row {row}"
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else None
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: the tools are not JSON ({exc})", key=key) from exc
        if value is not None and not (
            isinstance(value, list) and all(isinstance(t, dict) for t in value)
        ):
            raise ConfigError(
                f"{where}: expected a list of tool schemas (objects), got {value!r:.80}", key=key
            )
        out.append(value or None)
    return out
