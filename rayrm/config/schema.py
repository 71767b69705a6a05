"""JSON Schema of the config files, for editors: ``rayrm config schema > rayrm.schema.json``.

With the YAML language server (VS Code's YAML extension and others), a first line
``# yaml-language-server: $schema=rayrm.schema.json`` in a config file gives completion,
hover documentation and checks as you type. The schema is generated from the same typed
sections that validate the configs, so it cannot drift from them.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from typing import Any

from rayrm.config.base import Section
from rayrm.config.run import RLConfig
from rayrm.config.stage import RMConfig, SFTConfig

__all__ = ["KINDS", "attribute_docs", "field_docs", "json_schema"]

KINDS: dict[str, type[Section]] = {"run": RLConfig, "sft": SFTConfig, "rm": RMConfig}
"""Config kinds: ``rayrm train``/``tune`` (run), ``rayrm sft``, ``rayrm train-rm`` (rm)."""


def json_schema(kind: str = "run") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a config kind, with every key's documentation.

    Raises:
        ValueError: An unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"config kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cls = KINDS[kind]
    schema: dict[str, Any] = cls.model_json_schema(mode="validation")
    _describe(schema, cls)
    for definition in schema.get("$defs", {}).values():
        section = _SECTIONS.get(definition.get("title", ""))
        if section is not None:
            _describe(definition, section)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _sections() -> dict[str, type[Section]]:
    found: dict[str, type[Section]] = {}
    todo: list[type[Section]] = list(KINDS.values())
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        for field in cls.model_fields.values():
            for candidate in (field.annotation, *typing.get_args(field.annotation)):
                if isinstance(candidate, type) and issubclass(candidate, Section):
                    if candidate.__name__ not in found:
                        todo.append(candidate)
    return found


def _describe(schema: dict[str, Any], cls: type[Section]) -> None:
    """Each property's ``description`` from the class docstring's ``Attributes:`` entry."""
    docs = field_docs(cls)
    schema["description"] = (cls.__doc__ or "").strip().split("\n\n")[0]
    for name, prop in schema.get("properties", {}).items():
        if name in docs:
            prop["description"] = docs[name]


def field_docs(cls: type[Section]) -> dict[str, str]:
    """``{field: text}`` for every documented field of ``cls``, each from the ``Attributes:``
    of the class that declares it (an inherited field keeps its parent's entry)."""
    out: dict[str, str] = {}
    for name in cls.model_fields:
        owner = next((c for c in cls.__mro__ if name in vars(c).get("__annotations__", {})), cls)
        text = attribute_docs(owner).get(name) or attribute_docs(cls).get(name)
        if text:
            out[name] = text
    return out


def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` of a Google-style ``Attributes:`` section, lines joined; an entry
    that names several fields (``loggers, mlflow, wandb: ...``) gives each the text."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    inside = False
    current: list[str] = []
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^ {4}(\w+(?:, \w+)*):\s*(.*)$", line)
        if entry:
            current = entry.group(1).split(", ")
            for name in current:
                out[name] = entry.group(2)
        elif line.strip():
            for name in current:
                out[name] += " " + line.strip()
    return out


def dumps(kind: str = "run") -> str:
    """:func:`json_schema` as indented JSON text."""
    return json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"


_SECTIONS = _sections()
