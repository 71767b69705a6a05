"""Prompt datasets: reading a column of prompt strings from a Parquet or JSON Lines file.

Environments receive a file path in ``env_config`` (a plain, serializable value) and each
environment worker reads the prompts itself. Errors here are raised at environment
construction, often inside a remote worker, so each one is a single line that names the file,
the column and what was wrong -- enough to fix the config without a debugger.

``pyarrow`` is imported inside the functions so that ``import envs`` stays fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayrm.data.tables import read_table
from rayrm.models.tokenization import Prompt, check_conversation

if TYPE_CHECKING:
    import pyarrow as pa

PARQUET_SUFFIXES = (".parquet",)
JSON_SUFFIXES = (".jsonl", ".json")
SUPPORTED_SUFFIXES = PARQUET_SUFFIXES + JSON_SUFFIXES


def load_prompts(path: str | os.PathLike[str], column: str = "prompt") -> list[str]:
    """Reads the prompt column of a ``.parquet`` or newline-delimited ``.jsonl``/``.json`` file.

    Args:
        path: The dataset file. The suffix selects the reader; ``.json`` files must also be
            newline-delimited (one JSON object per line), not a single JSON array.
        column: Name of the column (JSON key) that holds the prompt strings.

    Returns:
        The prompts, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the suffix is unsupported, the file cannot be parsed, the column is
            missing, the dataset has no rows, or a value is not a string (nulls included).
    """
    return load_prompts_with_references(path, column, None)[0]


def load_prompts_with_references(
    path: str | os.PathLike[str],
    column: str = "prompt",
    reference_column: str | None = "reference",
    *,
    table: pa.Table | None = None,
) -> tuple[list[str], list[str] | None]:
    """Reads the prompts and, when the file has one, the reference column (one file read).

    Reference-based rewards (chrF, BLEU) compare each completion with its prompt's reference
    text, row by row.

    Args:
        path, column: As :func:`load_prompts`.
        reference_column: Column holding one reference text per prompt; None skips it.
        table: The file already read (by :func:`load_prompt_rows`).

    Returns:
        ``(prompts, references)``; ``references`` is None when the file has no such column.

    Raises:
        FileNotFoundError, ValueError: As :func:`load_prompts`, for either column.
    """
    if table is None:
        table = _read_table(path)
    if column not in table.column_names:
        raise ValueError(
            f"prompts file {path} has no column {column!r}; columns present: {table.column_names}"
        )
    prompts = _string_column(table, path, column)
    if reference_column is None or reference_column not in table.column_names:
        return prompts, None
    return prompts, _string_column(table, path, reference_column)


def load_prompt_rows(
    path: str | os.PathLike[str],
    column: str = "prompt",
    reference_column: str | None = "reference",
    messages_column: str | None = "messages",
) -> tuple[list[Prompt], list[str] | None]:
    """Reads plain prompts, or conversations when the file has no prompt column.

    A file with ``column`` holds plain prompt strings. A file without it but with
    ``messages_column`` holds one conversation per row (a list of ``{"role", "content"}``
    messages, the common shape of public chat datasets), rendered later with the policy
    tokenizer's chat template.

    Returns:
        ``(prompts, references)``; each prompt is a string or a list of messages.

    Raises:
        FileNotFoundError, ValueError: As :func:`load_prompts`; a malformed conversation names
            its row.
    """
    table = _read_table(path)
    names = table.column_names
    if column in names or messages_column is None or messages_column not in names:
        return load_prompts_with_references(path, column, reference_column, table=table)
    prompts: list[Prompt] = [
        check_conversation(value, f"prompts file {path}, column {messages_column!r}, row {row}")
        for row, value in enumerate(table.column(messages_column).to_pylist())
    ]
    if reference_column is None or reference_column not in names:
        return prompts, None
    return prompts, _string_column(table, path, reference_column)


def other_columns(
    path: str | os.PathLike[str], used: Iterable[str | None]
) -> list[dict[str, Any]] | None:
    """Each row's columns besides ``used`` (the prompt, messages and reference columns), typed
    as Parquet or JSON gives them: what a reward function receives besides the prompt and the
    reference (an answer, test cases, a game seed). None when the file has no other column.
    """
    table = _read_table(path)
    names = [n for n in table.column_names if n not in set(used)]
    if not names:
        return None
    return table.select(names).to_pylist()


def prompt_file_columns(path: str | os.PathLike[str]) -> list[str]:
    """Column names of a prompts file without reading its rows: the Parquet schema, or the keys
    of the first JSON line.

    Raises:
        FileNotFoundError, ValueError: As :func:`load_prompts`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except pa.ArrowException as e:
            raise ValueError(f"could not read prompts file {path} as Parquet: {e}") from e
    if suffix not in JSON_SUFFIXES:
        raise ValueError(
            f"prompts file {path} has unsupported extension {suffix!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
    except UnicodeDecodeError as e:
        raise ValueError(f"could not read prompts file {path} as UTF-8 text: {e}") from e
    try:
        row = json.loads(first) if first else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"prompts file {path}, line 1: not a JSON object ({e})") from e
    return list(row) if isinstance(row, dict) else []


def _read_table(path: str | os.PathLike[str]) -> pa.Table:
    """The prompts file as an Arrow table, with at least one row."""
    table = read_table(path, what="prompts file", suffixes=SUPPORTED_SUFFIXES)
    if table.num_rows == 0:
        raise ValueError(f"prompts file {path} has no rows")
    return table


def _string_column(table: pa.Table, path: str | os.PathLike[str], column: str) -> list[str]:
    """The column's values, each checked to be a string (nulls included)."""
    values: list[str] = table.column(column).to_pylist()
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(
                f"prompts file {path}, column {column!r}, row {row}: expected a string, "
                f"got {type(value).__name__} ({value!r})"
            )
    return values


def write_prompts_jsonl(
    path: str | os.PathLike[str], prompts: Iterable[Prompt], column: str = "prompt"
) -> Path:
    """Writes prompts as JSON Lines, one ``{column: prompt}`` object per line.

    The counterpart of ``load_prompts`` for tests and for turning an in-memory prompt list into
    a file that remote environment workers can read.

    Args:
        path: Destination file; parent directories are created.
        prompts: The prompt strings (or conversations, written under ``column="messages"``).
        column: The key to store each prompt under.

    Returns:
        The path written, as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for prompt in prompts:
            f.write(json.dumps({column: prompt}, ensure_ascii=False) + "\n")
    return path
