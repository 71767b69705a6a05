"""Reading run configs from YAML, ``--set`` overrides, and the filesystem checks.

The schema and its pure checks live in :mod:`rayrm.config.run`; this module is the part that
touches files: parsing YAML (``1e-5`` reads as a float), applying ``dotted.key=value``
overrides against a dataclass schema, making paths absolute and checking that every directory,
file and ``module:function`` the config names exists. Like :mod:`rayrm.config.run` it must stay
cheap to import (no ``ray``, no ``torch``): the CLI validates before Ray starts.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rayrm.config.run import (
    ConfigError,
    RewardConfig,
    RunConfig,
    _unknown_key,
    config_from_dict,
)
from rayrm.models.hf_files import (
    TOKENIZER_FILES,
    chat_template_of,
    has_tokenizer,
    position_limit,
    vocab_rows,
)

__all__ = [
    "apply_override",
    "load_config",
    "resolve_paths",
    "validate_paths",
    "validate_reward_paths",
]

# ---------------------------------------------------------------------------------------------
# YAML files and --set overrides
# ---------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` as a float (YAML 1.1 needs ``1.0e-5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def apply_override(raw: dict[str, Any], override: str, root: type = RunConfig) -> None:
    """Sets ``dotted.key=value`` in ``raw`` after checking the key against ``root``'s schema.

    ``root`` is the dataclass the YAML fills (:class:`RunConfig` here; the SFT and reward-model
    stage configs use the same override syntax).
    """
    dotted, sep, text = override.partition("=")
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not sep or not all(parts):
        raise ConfigError(
            f"malformed override {override!r}: expected dotted.key=value, e.g. ppo.lr=3.0e-6"
        )
    try:
        value = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc

    cls: Any = root
    node = raw
    for i, name in enumerate(parts):
        key = ".".join(parts[: i + 1])
        fields = [f.name for f in dataclasses.fields(cls)]
        if name not in fields:
            raise _unknown_key(key, name, fields, where=f" in override {override!r}")
        tp = typing.get_type_hints(cls)[name]
        cls = tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None
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
) -> RunConfig:
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
    raw = read_yaml_with_overrides(path, overrides, RunConfig)
    return config_from_dict(raw, check_paths=check_paths)


# ---------------------------------------------------------------------------------------------
# Filesystem checks
# ---------------------------------------------------------------------------------------------


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _absolute_or_none(path: str | None) -> str | None:
    return None if path is None else _absolute(path)


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` with every path absolute (``~`` expanded, relative to the cwd)."""
    model, data, reward, run = cfg.model, cfg.data, cfg.reward, cfg.run
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            model,
            path=_absolute(model.path),
            tokenizer_path=_absolute_or_none(model.tokenizer_path),
            critic_path=_absolute_or_none(model.critic_path),
        ),
        data=dataclasses.replace(data, prompts=_absolute(data.prompts)),
        reward=dataclasses.replace(
            reward,
            path=_absolute_or_none(reward.path),
            tokenizer_path=_absolute_or_none(reward.tokenizer_path),
            members=[_absolute(m) for m in reward.members],
            components=[_resolve_component(c) for c in reward.components],
        ),
        run=dataclasses.replace(run, storage_path=_absolute(run.storage_path)),
        eval=dataclasses.replace(cfg.eval, prompts=_absolute_or_none(cfg.eval.prompts)),
    )


def _resolve_component(component: Mapping[str, Any]) -> dict[str, Any]:
    """A composite component with its ``path``, ``tokenizer_path`` and ``members`` absolute."""
    out = dict(component)
    for key in ("path", "tokenizer_path"):
        if isinstance(out.get(key), str):
            out[key] = _absolute(out[key])
    if isinstance(out.get("members"), list):
        out["members"] = [_absolute(m) if isinstance(m, str) else m for m in out["members"]]
    return out


def validate_reward_paths(reward: RewardConfig) -> None:
    """Reward-model directories exist and reward functions import, components included.

    Part of :func:`validate_paths`; on its own for reward-only configs (``rayrm serve-rm``).
    """
    sources: list[tuple[str, Any]] = [("reward", reward)]
    if reward.source == "composite":
        sources = [(f"reward.components[{i}]", c) for i, c in enumerate(reward.component_configs)]
    for prefix, src in sources:
        if src.tokenizer_path is not None:
            _check_dir(f"{prefix}.tokenizer_path", src.tokenizer_path, "a tokenizer directory")
        if src.source == "model" and src.path is not None:
            _check_dir(f"{prefix}.path", src.path, "the reward-model directory")
        if src.source == "function" and src.function is not None:
            _check_function(src.function, key=f"{prefix}.function")
        if src.source == "ensemble":
            for j, member in enumerate(src.members):
                _check_dir(f"{prefix}.members[{j}]", member, "an ensemble reward-model directory")


def _check_references(cfg: RunConfig) -> None:
    """A reward that compares with references finds a reference column in its prompt files."""
    if not cfg.reward.needs_references:
        return
    # Imported by name, at use: `import rayrm.config.run` stays cheap, and mypy's strict check of
    # this module does not follow into the envs package.
    load_prompts_with_references = importlib.import_module(
        "envs.prompts"
    ).load_prompts_with_references
    files = [("data.prompts", cfg.data.prompts)]
    if cfg.eval.every and cfg.eval.prompts is not None:
        files.append(("eval.prompts", cfg.eval.prompts))
    column = cfg.data.reference_column
    for key, path in files:
        try:
            _, references = load_prompts_with_references(path, cfg.data.prompt_column, column)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from exc
        if references is None:
            raise ConfigError(
                f"data.reference_column {column!r}: {key} {path!r} has no such column, but "
                f"the reward (reward.source={cfg.reward.source}) has a metric that compares "
                f"completions with references",
                key="data.reference_column",
            )


def _check_dir(key: str, path: str, what: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"{key} {path!r} does not exist ({what})", key=key)
    if not os.path.isdir(path):
        raise ConfigError(f"{key} {path!r} is not a directory ({what})", key=key)


def _check_function(spec: str, key: str = "reward.function") -> None:
    """Imports ``module:function`` and checks the attribute is callable."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's to see
        raise ConfigError(
            f"{key} {spec!r}: cannot import module {module_name} ({type(exc).__name__}: {exc})",
            key=key,
        ) from exc
    if not hasattr(module, attr):
        raise ConfigError(f"{key} {spec!r}: module {module_name} has no {attr!r}", key=key)
    if not callable(getattr(module, attr)):
        raise ConfigError(f"{key} {spec!r}: {attr} is not callable", key=key)


def validate_paths(cfg: RunConfig) -> None:
    """Checks that the files and directories the config names exist, and the reward function.

    Args:
        cfg: A config that passed :meth:`RunConfig.validate`.

    Raises:
        ConfigError: Naming the key and the path (or ``module:function``) at fault.
    """
    model = cfg.model
    _check_dir("model.path", model.path, "a local Hugging Face causal-LM directory")
    if not os.path.isfile(os.path.join(model.path, "config.json")):
        raise ConfigError(
            f"model.path {model.path!r} has no config.json "
            f"(expected a local Hugging Face causal-LM directory)",
            key="model.path",
        )
    if model.tokenizer_path is not None:
        _check_dir("model.tokenizer_path", model.tokenizer_path, "the tokenizer directory")
    if model.critic == "separate" and model.critic_path is not None:
        _check_dir("model.critic_path", model.critic_path, "the critic's model directory")

    prompts = cfg.data.prompts
    if not os.path.exists(prompts):
        raise ConfigError(f"data.prompts {prompts!r} does not exist", key="data.prompts")
    if not os.path.isfile(prompts):
        raise ConfigError(f"data.prompts {prompts!r} is not a file", key="data.prompts")

    validate_reward_paths(cfg.reward)
    _check_references(cfg)
    conversations = _uses_conversations(cfg)
    _check_policy_model(cfg, conversations)
    _check_reward_tokenizers(cfg.reward, conversations)

    if cfg.eval.prompts is not None and not os.path.isfile(cfg.eval.prompts):
        raise ConfigError(f"eval.prompts {cfg.eval.prompts!r} is not a file", key="eval.prompts")
    if cfg.eval.gold_function is not None:
        _check_function(cfg.eval.gold_function, key="eval.gold_function")

    storage = cfg.run.storage_path
    if os.path.exists(storage) and not os.path.isdir(storage):
        raise ConfigError(
            f"run.storage_path {storage!r} exists and is not a directory",
            key="run.storage_path",
        )


# ---------------------------------------------------------------------------------------------
# Model and tokenizer checks
# ---------------------------------------------------------------------------------------------


def _uses_conversations(cfg: RunConfig) -> bool:
    """Whether prompts are rendered with a chat template (the flag, or a messages column)."""
    if cfg.data.chat_template:
        return True
    columns_of = importlib.import_module("envs.prompts").prompt_file_columns
    data = cfg.data
    files = [("data.prompts", data.prompts)]
    if cfg.eval.prompts is not None:
        files.append(("eval.prompts", cfg.eval.prompts))
    for key, path in files:
        try:
            columns = columns_of(path)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from exc
        if data.prompt_column not in columns and data.messages_column in columns:
            return True
    return False


def _check_policy_model(cfg: RunConfig, conversations: bool) -> None:
    """Tokenizer present and within the embedding, sequences within the position limit, a
    chat template when prompts are conversations."""
    model = cfg.model
    key = "model.tokenizer_path" if model.tokenizer_path is not None else "model.path"
    tokenizer_dir = model.resolved_tokenizer_path
    if not has_tokenizer(tokenizer_dir):
        raise ConfigError(
            f"{key} {tokenizer_dir!r} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "set model.tokenizer_path to the policy's tokenizer directory",
            key=key,
        )
    try:
        limit, rows = position_limit(model.path), vocab_rows(model.path)
    except ValueError as exc:
        raise ConfigError(f"model.path: {exc}", key="model.path") from exc
    if limit is not None and cfg.max_seq_len > limit:
        raise ConfigError(
            f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + generation.max_new_tokens "
            f"({cfg.generation.max_new_tokens}) = {cfg.max_seq_len} tokens exceeds the position "
            f"limit of model.path ({limit}, config.json)",
            key="generation.max_new_tokens",
        )
    transformers = importlib.import_module("transformers")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    except Exception as exc:  # any load failure is the user's to see, in one line
        raise ConfigError(
            f"{key} {tokenizer_dir!r}: the tokenizer does not load ({type(exc).__name__}: {exc})",
            key=key,
        ) from exc
    if rows is not None and len(tokenizer) > rows:
        raise ConfigError(
            f"{key} {tokenizer_dir!r}: the tokenizer has {len(tokenizer)} tokens but model.path "
            f"embeds only {rows} (config.json vocab_size); is it the model's own tokenizer?",
            key=key,
        )
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"{key} {tokenizer_dir!r}: the tokenizer has no EOS token; completions need one "
            "to end (or set generation.stop_token_ids and give the tokenizer an eos_token)",
            key=key,
        )
    if conversations and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"{key} {tokenizer_dir!r}: the tokenizer has no chat template, but the prompts are "
            f"conversations (data.chat_template, or a {cfg.data.messages_column!r} column)",
            key="data.chat_template" if cfg.data.chat_template else "data.prompts",
        )


def _check_reward_tokenizers(reward: RewardConfig, conversations: bool) -> None:
    """Every reward model finds a tokenizer (its own or ``tokenizer_path``), with a chat
    template when the prompts are conversations."""
    sources: list[tuple[str, Any]] = [("reward", reward)]
    if reward.source == "composite":
        sources = [(f"reward.components[{i}]", c) for i, c in enumerate(reward.component_configs)]
    for prefix, src in sources:
        paths = [(f"{prefix}.path", src.path)] if src.source == "model" else []
        if src.source == "ensemble":
            paths = [(f"{prefix}.members[{j}]", m) for j, m in enumerate(src.members)]
        shared = src.tokenizer_path or reward.tokenizer_path
        for key, path in paths:
            tokenizer_dir = path if shared is None else shared
            if not has_tokenizer(tokenizer_dir):
                raise ConfigError(
                    f"{key} {path!r} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
                    f"set {prefix}.tokenizer_path to the tokenizer the reward model was trained "
                    "with",
                    key=key,
                )
            if conversations and chat_template_of(tokenizer_dir) is None:
                raise ConfigError(
                    f"{key} {path!r}: its tokenizer ({tokenizer_dir}) has no chat template, but "
                    f"the prompts are conversations and a reward model reads them through its "
                    f"own template; set {prefix}.tokenizer_path to a tokenizer with one",
                    key=key,
                )
