"""The machinery of rayrm's typed configs: frozen pydantic sections and one-line errors.

Every config section is a :class:`Section`: a frozen pydantic v2 model that forbids unknown
keys and checks types strictly (``True`` is not an integer, ``"5"`` is not a number; an
integer is accepted for a float). Ranges are field constraints (``Field(ge=..., le=...)``), enum
values ``Literal`` types. :func:`build` turns pydantic's error list into the first problem, as
one :class:`ConfigError` line that names the dotted key (``algorithm.batch_size``) -- unknown keys
first, with the closest valid key suggested, then missing required keys, then wrong values.

This module must stay cheap to import: no ``ray``, no ``torch``.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

__all__ = [
    "REQUIRED",
    "ConfigError",
    "NonEmptyStr",
    "Section",
    "build",
    "join",
    "optional_section_type",
    "section_fields",
    "unknown_key",
]

REQUIRED = "???"
"""A value that marks a required key as not filled in yet (as written in example configs)."""

NonEmptyStr = Annotated[str, Field(min_length=1)]
"""A string config value; the empty string is a mistake, not a value."""

_S = TypeVar("_S", bound="Section")


class ConfigError(ValueError):
    """A problem with a config, explained in one line.

    Attributes:
        key: Dotted key the problem is about (e.g. ``"algorithm.batch_size"``), or None when the
            problem is with the file itself.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the cause said
        self.key = key


class Section(BaseModel):
    """A config section: frozen, unknown keys forbidden, types checked strictly."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
    renamed: ClassVar[dict[str, str]] = {}
    """Keys renamed since an earlier version, old -> new: naming an old one is refused in one
    line that gives the new one."""

    def to_dict(self) -> dict[str, Any]:
        """The section as plain nested dicts and lists (what YAML and Tune hold)."""
        return self.model_dump(mode="python")


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def section_fields(cls: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields of a section class, in definition order."""
    return dict(cls.model_fields)


def section_type(annotation: Any) -> type[Section] | None:
    """The :class:`Section` class a field holds (directly), or None for a value field."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def optional_section_type(annotation: Any) -> type[Section] | None:
    """The :class:`Section` class of an optional section (``LoraSettings | None``), or None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if type(None) in typing.get_args(annotation) and len(args) == 1:
        return section_type(args[0])
    return None


def unknown_key(key: str, name: str, owner: type[BaseModel], where: str = "") -> ConfigError:
    """The error for ``key`` (last part ``name``) in section ``owner``: the new name if it
    was renamed (``owner.renamed``), else the closest of its keys."""
    prefix = key[: len(key) - len(name)]
    renamed = getattr(owner, "renamed", {})
    if name in renamed:
        new = f"{prefix}{renamed[name]}"
        return ConfigError(f"{key}{where}: renamed to {new} (same keys inside)", key=key)
    valid = list(section_fields(owner))
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key {key}{where} ({hint})", key=key)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build(cls: type[_S], data: Any, prefix: str = "") -> _S:
    """Builds section ``cls`` from plain data, or raises the first problem as a ConfigError.

    What YAML and callers naturally write is accepted as it is meant: a section with every key
    commented out (``None``) means its defaults, ``os.PathLike`` values are paths, and a
    required key set to ``None`` or ``"???"`` is missing.
    """
    prepared = _prepare(cls, data, prefix)
    try:
        return cls.model_validate(prepared)
    except ValidationError as exc:
        errors = sorted(
            enumerate(exc.errors()), key=lambda e: (_PRIORITY.get(e[1]["type"], 2), e[0])
        )
        raise _translate(cls, errors[0][1], prefix) from None


_PRIORITY = {"extra_forbidden": 0, "model_type": 0, "model_attributes_type": 0, "missing": 1}


def _prepare(cls: type[Section], data: Any, prefix: str) -> Any:
    """The data with sections defaulted, paths as strings and placeholders removed."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        what = f"section {prefix}" if prefix else "the config"
        raise ConfigError(
            f"{what} must be a mapping of keys to values (got {type(data).__name__} {data!r})",
            key=prefix or None,
        )
    out: dict[Any, Any] = {}
    fields = section_fields(cls)
    for name, value in data.items():
        field = fields.get(name) if isinstance(name, str) else None
        if field is None:
            out[name] = value
            continue
        sub = section_type(field.annotation)
        if sub is not None:
            out[name] = _prepare(sub, value, join(prefix, name))
        elif field.is_required() and (value is None or value == REQUIRED):
            continue  # reported as missing
        else:
            out[name] = _plain(field.annotation, value, join(prefix, name))
    for name, field in fields.items():
        if name not in out and field.is_required() and section_type(field.annotation):
            out[name] = {}  # a missing section reports its first missing key
    return out


def _plain(annotation: Any, value: Any, key: str) -> Any:
    """Paths become strings; lists of sections are prepared item by item."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = _list_item_section(annotation)
    if item is not None and isinstance(value, list):
        return [
            _prepare(item, v, f"{key}[{i}]") if isinstance(v, Mapping) or v is None else v
            for i, v in enumerate(value)
        ]
    return value


def _list_item_section(annotation: Any) -> type[Section] | None:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args:
        return section_type(args[0])
    return None


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


def _key(loc: Sequence[Any], prefix: str) -> str:
    key = prefix
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            key = join(key, str(part))
    return key


def _field_at(cls: type[Section], loc: Sequence[Any]) -> tuple[type[Section], FieldInfo | None]:
    """The section holding the last named part of ``loc``, and that field's info."""
    owner: type[Section] = cls
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int) or part == "[key]":
            continue
        field = section_fields(owner).get(str(part))
        if field is None:
            return owner, None
        nested = (
            section_type(field.annotation)
            or optional_section_type(field.annotation)  # model.lora, ensemble
            or _list_item_section(field.annotation)
        )
        if nested is not None and part != loc[-1]:
            owner = nested
    return owner, field


def _optional(field: FieldInfo | None) -> bool:
    annotation = field.annotation if field is not None else None
    return type(None) in typing.get_args(annotation)


def _bounds_rule(field: FieldInfo | None) -> str:
    ge = gt = le = None
    for m in field.metadata if field is not None else []:
        if isinstance(m, annotated_types.Ge):
            ge = m.ge
        elif isinstance(m, annotated_types.Gt):
            gt = m.gt
        elif isinstance(m, annotated_types.Le):
            le = m.le
    low = gt if gt is not None else ge
    if low is not None and le is not None:
        return f"in {'(' if gt is not None else '['}{low:g}, {le:g}]"
    if le is not None:
        return f"<= {le:g}"
    return f"{'>' if gt is not None else '>='} {low:g}"


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "string_type": "a non-empty string",
    "string_too_short": "a non-empty string",
}


def _translate(cls: type[Section], error: Any, prefix: str) -> ConfigError:
    """One pydantic error as the one-line message rayrm's configs have always given."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    if "[key]" in loc:  # a mapping's key that is not a string: name the mapping
        loc, kind = loc[: loc.index("[key]") - 1], "dict_type"
    key = _key(loc, prefix)
    owner, field = _field_at(cls, loc)
    or_null = " or null" if _optional(field) else ""
    got = f"got {type(value).__name__} {value!r}"
    if kind == "extra_forbidden":
        return unknown_key(key, str(loc[-1]), owner)
    if kind == "missing":
        return ConfigError(f"{key} is required", key=key)
    if kind in ("model_type", "model_attributes_type"):
        return ConfigError(f"section {key} must be a mapping of keys to values ({got})", key=key)
    if kind == "dict_type":
        return ConfigError(f"{key} must be a mapping with string keys ({got})", key=key)
    if kind == "literal_error":
        choices = _literal_choices(field) or str(error.get("ctx", {}).get("expected"))
        return ConfigError(f"{key} must be one of {choices}{or_null} ({got})", key=key)
    if kind == "finite_number":
        return ConfigError(f"{key} must be finite ({got})", key=key)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return ConfigError(f"{key} must be {_bounds_rule(field)}{or_null} (got {value!r})", key=key)
    if kind in _TYPE_WORDS:
        return ConfigError(f"{key} must be {_TYPE_WORDS[kind]}{or_null} ({got})", key=key)
    return ConfigError(f"{key}: {error['msg']} ({got})", key=key)


def _literal_choices(field: FieldInfo | None) -> str:
    """``a, b`` for a ``Literal["a", "b"]`` (or ``Literal[...] | None``) field."""
    annotation = field.annotation if field is not None else None
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is Literal:
            return ", ".join(str(a) for a in typing.get_args(candidate))
    return ""
