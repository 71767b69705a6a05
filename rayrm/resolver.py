"""``"module:function"`` references: how configs name Python callables, resolved in one place.

A string names a function so that configs (YAML, Tune search spaces) can hold it and every Ray
worker imports it itself instead of unpickling a closure from the driver. The env's reward
function, reward-function actors, gold scorers, judges and the config checks all resolve
through :func:`import_function`; each caller prefixes its messages with what the reference
was for (``reward.function``, ``reward_fn`` ...).
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable
from typing import Any

__all__ = ["import_function"]


def import_function(spec: str) -> Callable[..., Any]:
    """Imports the callable ``spec`` names (``"pkg.module:function"``; the attribute may be
    dotted, ``"pkg.mod:Class.method"``).

    Raises:
        ValueError: One line naming ``spec``: malformed, the module does not import, it has no
            such attribute, or the attribute is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"{spec!r} must look like 'module:function'")
    module_name, attr = (part.strip() for part in spec.split(":"))
    if not module_name or not attr:
        raise ValueError(f"{spec!r} must look like 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's to see
        raise ValueError(
            f"{spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        fn = operator.attrgetter(attr)(module)
    except AttributeError as exc:
        raise ValueError(
            f"{spec!r}: module {module_name!r} has no {attr!r} (no attribute of that name)"
        ) from exc
    if not callable(fn):
        raise ValueError(
            f"{spec!r}: {attr!r} is a {type(fn).__name__}, so {spec!r} is not callable"
        )
    return fn  # type: ignore[no-any-return]
