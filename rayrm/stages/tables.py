"""Columns of data files for the stages and tools, with errors that name the config key.

The file reader is ``envs.tables.read_table`` (Parquet, JSON Lines, ``.txt``); this module turns
its errors and the columns' problems into one-line :class:`~rayrm.config.ConfigError` s naming
the key or option the file came from.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from envs.tables import TABLE_SUFFIXES, TEXT_COLUMN
from envs.tables import read_table as _read_table
from envs.tokenization import check_conversation
from rayrm.config import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "TABLE_SUFFIXES",
    "TEXT_COLUMN",
    "conversation_column",
    "read_table",
    "string_column",
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
