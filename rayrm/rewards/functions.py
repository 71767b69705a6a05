"""The reward-function actor: scores with a user's Python function.

Here, and only here, records (``rayrm.rewards.base.Completion``) become the parallel lists a
reward function takes: ``fn(prompts, completions, ...)`` plus the keywords it names.

Kept free of torch and transformers (so is ``rayrm.rewards.base``): a rule reward's actor
process imports only Ray, numpy and the user's module -- 0.8 s of CPU to start and 130 MB
resident instead of 2.7 s and 340 MB with torch and transformers (measured on a 2-core CPU
machine, 2026-12-02). A function whose module imports torch
gets it, with the threads its actor reserves (:func:`rayrm.threads.use_reserved_cpus`).
Same plain-class convention as :mod:`rayrm.rewards.actors`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rayrm.rewards.base import (
    LISTS,
    Columns,
    Completion,
    RewardActor,
    call_scorer,
    check_scores,
    lists_present,
    resolve_function,
    unpack,
)

__all__ = ["RewardFunctionActor"]


class RewardFunctionActor(RewardActor):
    """Scores with a Python function named by ``"module:function"``.

    Same interface as :class:`RewardModelActor`, so rule-based rewards (exact match, length,
    format checks) run in the same pool and scale out the same way.
    """

    def __init__(self, function: str) -> None:
        """Resolves the function in this process (so Ray workers import it themselves).

        Raises:
            RewardSourceError: see :func:`resolve_function`.
        """
        self.function = function
        self.fn = resolve_function(function)
        self.takes = [name for name in LISTS if _takes_keyword(self.fn, name)]
        self.parameters = _keyword_names(self.fn)
        super().__init__("function", function)

    def score(
        self, records: Sequence[Completion], present: frozenset[str] | None = None
    ) -> np.ndarray:
        """Calls the function once on the whole chunk, the records unpacked in their order.

        The function is called as ``fn(prompts, completions)``; one with a ``references``
        parameter as ``fn(prompts, completions, references=references)`` (None when no record
        of the batch has one: ``present``, which a pool decides once for all the chunks of a
        batch; None: these records); others get no references. The same for ``messages`` (the
        conversations of chat prompts) and ``ids`` (one stable id per completion: a
        chunk scored again after a crash or a timeout carries the same ids, so a scorer with
        side effects, e.g. a paid judge, can skip what it already did). Each other column of
        the prompts file (an ``answer``, test cases, a seed) goes to a function that names it
        as a parameter, or takes ``**kwargs``, as a list of the rows' values, typed as Parquet
        or JSON gives them (as TRL passes a dataset's columns); a column named like one of the
        arguments above is not passed.

        Returns:
            ``float32`` array of shape (N,), on CPU.

        Raises:
            RewardSourceError: the function returned something that is not N scalars.
        """
        self.num_calls += 1
        n = len(records)
        present = lists_present(records) if present is None else present
        extra: dict[str, Any] = {name: unpack(records, name, present) for name in self.takes}
        extra.update(_column_arguments([r.columns for r in records], self.parameters))
        what = f"reward function {self.function!r}"
        prompts = [r.prompt_text for r in records]
        out = call_scorer(self.fn, what, prompts, [r.completion for r in records], **extra)
        scores = check_scores(out, n, what)
        self.num_scored += n
        return scores


STANDARD_ARGUMENTS = frozenset({"prompts", "completions", "references", "messages", "ids"})
"""What a reward function is called with besides the prompts file's other columns."""


def _column_arguments(columns: Columns, parameters: frozenset[str] | None) -> dict[str, list[Any]]:
    """``{column: [value per item]}`` for the columns the function takes (``parameters``; None:
    it takes ``**kwargs``, so every column); an item without the column gets None."""
    if columns is None:
        return {}
    names: dict[str, None] = {}
    for row in columns:
        names.update(dict.fromkeys(row or ()))
    wanted = [
        c for c in names if c not in STANDARD_ARGUMENTS and (parameters is None or c in parameters)
    ]
    return {c: [None if row is None else row.get(c) for row in columns] for c in wanted}


def _keyword_names(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The names ``fn`` accepts as keywords; None when it takes ``**kwargs`` (any name)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in params if p.kind in keyword)


def _takes_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` accepts ``name=`` (a named parameter or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
