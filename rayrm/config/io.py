"""Reading configs: YAML files, ``--set`` overrides, absolute paths.

One reader and one ``--set`` for every command: :func:`read_yaml_with_overrides` parses the
YAML (``1e-5`` reads as a float) and applies ``dotted.key=value`` overrides checked against the
config class's fields; :func:`load_config`/:func:`config_from_dict` build the run config and,
with ``check_paths``, make every path absolute and check the files it names
(``rayrm.config.checks``). Cheap to import: no ``ray``, no ``torch``.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rayrm.config.base import (
    ConfigError,
    Section,
    build,
    optional_section_type,
    section_fields,
    section_type,
    unknown_key,
)
from rayrm.config.checks import validate_paths
from rayrm.config.reward import RewardComponent, RewardSettings
from rayrm.config.run import RLConfig
from rayrm.models.hf_files import ensemble_members

__all__ = [
    "absolute",
    "absolute_or_none",
    "apply_override",
    "config_from_dict",
    "load_config",
    "read_yaml_with_overrides",
    "resolve_paths",
]

_R = TypeVar("_R", RewardSettings, RewardComponent)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` as a float (YAML 1.1 needs ``1.0e-5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def apply_override(raw: dict[str, Any], override: str, root: type[Section] = RLConfig) -> None:
    """Sets ``dotted.key=value`` in ``raw`` after checking the key against ``root``'s schema.

    ``root`` is the config class the YAML fills (:class:`RLConfig`, or the SFT and
    reward-model stage configs: one ``--set`` for every command).
    """
    dotted, sep, text = override.partition("=")
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not sep or not all(parts):
        raise ConfigError(
            f"malformed override {override!r}: expected dotted.key=value, e.g. algorithm.lr=3.0e-6"
        )
    try:
        value = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc

    cls: Any = root
    node = raw
    for i, name in enumerate(parts):
        key = ".".join(parts[: i + 1])
        fields = section_fields(cls)
        if name not in fields:
            raise unknown_key(key, name, cls, where=f" in override {override!r}")
        annotation = fields[name].annotation
        # An optional section (model.lora) is a section here: a dotted key into it creates it
        # with its defaults for the keys not given.
        cls = section_type(annotation) or optional_section_type(annotation)
        if i == len(parts) - 1:
            if cls is not None and isinstance(value, Mapping):
                value = _merged(node.get(name), value)
            node[name] = value
        else:
            if cls is None:
                raise ConfigError(
                    f"unknown key {dotted} in override {override!r}: {key} is a value, "
                    f"not a section",
                    key=dotted,
                )
            child = node.get(name)
            if child is None:
                child = node[name] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"section {key} must be a mapping of keys to values "
                    f"(got {type(child).__name__} {child!r})",
                    key=key,
                )
            node = child


def _merged(base: Any, update: Mapping[str, Any]) -> Any:
    """``update`` laid over ``base`` key by key, recursing into mappings."""
    if not isinstance(base, Mapping):
        return dict(update)
    out = dict(base)
    for k, v in update.items():
        out[k] = _merged(out.get(k), v) if isinstance(v, Mapping) else v
    return out


def read_yaml_with_overrides(
    path: str | Path, overrides: Sequence[str], root: type
) -> dict[str, Any]:
    """The YAML mapping in ``path`` with ``--set`` overrides applied (checked against ``root``).

    Raises:
        ConfigError: The file is missing, unreadable, not YAML or not a mapping, or an
            override names an unknown key.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from exc
    try:
        raw = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from exc
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"{type(raw).__name__} {raw!r}"
        raise ConfigError(f"{path}: top level must be a mapping of sections (got {got})")
    raw = copy.deepcopy(raw)
    for override in overrides:
        apply_override(raw, override, root)
    return raw


def load_config(
    path: str | Path, overrides: Sequence[str] = (), *, check_paths: bool = True
) -> RLConfig:
    """Reads a YAML run config, applies ``--set`` overrides, validates and resolves paths.

    Args:
        path: The YAML file.
        overrides: ``"dotted.key=value"`` strings applied in order; each value is parsed as
            YAML, so numbers, ``true``/``false`` and ``null`` work.
        check_paths: Make every path absolute (relative to the working directory) and check
            it with :func:`validate_paths`.

    Returns:
        The validated config.

    Raises:
        ConfigError: Naming the file or the dotted key of the first problem found.
    """
    raw = read_yaml_with_overrides(path, overrides, RLConfig)
    return config_from_dict(raw, check_paths=check_paths)


def config_from_dict(d: Mapping[str, Any], *, check_paths: bool = False) -> RLConfig:
    """Builds and checks a :class:`RLConfig` from plain nested mappings.

    Args:
        d: Sections and values, as in the YAML file (e.g. from :meth:`RLConfig.to_dict`).
        check_paths: Also make paths absolute and check them with
            :func:`rayrm.config.checks.validate_paths`. Leave False where the filesystem is
            not the user's (e.g. in Ray workers).

    Returns:
        The validated config.

    Raises:
        ConfigError: On the first problem found.
    """
    cfg = build(RLConfig, d)
    cfg.check()
    if check_paths:
        cfg = resolve_paths(cfg)
        validate_paths(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def absolute_or_none(path: str | None) -> str | None:
    return None if path is None else absolute(path)


def resolve_paths(cfg: RLConfig) -> RLConfig:
    """A copy of ``cfg`` with every path absolute (``~`` expanded, relative to the cwd)."""
    model, reward = cfg.model, cfg.reward
    return cfg.model_copy(
        update={
            "model": model.model_copy(
                update={
                    "path": absolute(model.path),
                    "tokenizer_path": absolute_or_none(model.tokenizer_path),
                    "critic_path": absolute_or_none(model.critic_path),
                    "reference_path": absolute_or_none(model.reference_path),
                }
            ),
            "data": cfg.data.model_copy(update={"prompts": absolute(cfg.data.prompts)}),
            "reward": _resolve_reward_paths(reward).model_copy(
                update={"components": [_resolve_reward_paths(c) for c in reward.components]}
            ),
            "run": cfg.run.model_copy(update={"storage_path": absolute(cfg.run.storage_path)}),
            "eval": cfg.eval.model_copy(update={"prompts": absolute_or_none(cfg.eval.prompts)}),
        }
    )


def _resolve_reward_paths(src: _R) -> _R:
    """A reward section or component with its model and tokenizer paths absolute; an
    ensemble given as a directory (``path``, written by ``rayrm train-rm --members k``) gets
    its members from the directory's ``ensemble.json``."""
    path, members = absolute_or_none(src.path), [absolute(m) for m in src.members]
    if src.source == "ensemble" and path is not None and not members:
        key = "reward.path" if isinstance(src, RewardSettings) else "reward.components.path"
        try:
            members = ensemble_members(path)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from exc
    return src.model_copy(
        update={
            "path": path,
            "tokenizer_path": absolute_or_none(src.tokenizer_path),
            "members": members,
        }
    )
