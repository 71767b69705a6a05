"""Checks of what a run config points at: directories, files, functions, models, tokenizers.

Run before Ray starts (by ``config_from_dict(..., check_paths=True)``), on a config whose paths
are absolute. Every problem is one :class:`~rayrm.config.base.ConfigError` naming the dotted key
and the file. Model checks read ``config.json`` with ``json`` and load the policy's tokenizer
(``transformers`` is imported only then); no ``torch`` weights are loaded.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from rayrm.config.base import ConfigError
from rayrm.config.reward import RewardSettings
from rayrm.config.run import RLConfig
from rayrm.models.hf_files import (
    TOKENIZER_FILES,
    chat_template_of,
    has_tokenizer,
    position_limit,
    vocab_rows,
)

__all__ = ["check_dir", "check_function", "validate_paths", "validate_reward_paths"]


def validate_reward_paths(reward: RewardSettings) -> None:
    """Reward-model directories exist and reward functions import, components included.

    Part of :func:`validate_paths`; on its own for reward-only configs (``rayrm serve-rm``).
    """
    sources: list[tuple[str, Any]] = [("reward", reward)]
    if reward.source == "composite":
        sources = [(f"reward.components[{i}]", c) for i, c in enumerate(reward.components)]
    for prefix, src in sources:
        if src.tokenizer_path is not None:
            check_dir(f"{prefix}.tokenizer_path", src.tokenizer_path, "a tokenizer directory")
        if src.source == "model" and src.path is not None:
            check_dir(f"{prefix}.path", src.path, "the reward-model directory")
        if src.source == "function" and src.function is not None:
            check_function(src.function, key=f"{prefix}.function")
        if src.source == "ensemble":
            for j, member in enumerate(src.members):
                check_dir(f"{prefix}.members[{j}]", member, "an ensemble reward-model directory")


def _check_references(cfg: RLConfig) -> None:
    """A reward that compares with references finds a reference column in its prompt files."""
    if not cfg.reward.needs_references:
        return
    # Imported by name, at use: `import rayrm.config.run` stays cheap, and mypy's strict check of
    # this module does not follow into the envs package.
    load_prompts_with_references = importlib.import_module(
        "rayrm.data.prompts"
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


def check_dir(key: str, path: str, what: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"{key} {path!r} does not exist ({what})", key=key)
    if not os.path.isdir(path):
        raise ConfigError(f"{key} {path!r} is not a directory ({what})", key=key)


def check_function(spec: str, key: str = "reward.function") -> None:
    """Imports ``module:function`` and checks it is callable (``rayrm.resolver``)."""
    import_function = importlib.import_module("rayrm.resolver").import_function
    try:
        import_function(spec)
    except ValueError as exc:
        raise ConfigError(f"{key} {exc}", key=key) from exc


def validate_paths(cfg: RLConfig) -> None:
    """Checks that the files and directories the config names exist, and the reward function.

    Args:
        cfg: A config that passed :meth:`RLConfig.validate`.

    Raises:
        ConfigError: Naming the key and the path (or ``module:function``) at fault.
    """
    model = cfg.model
    check_dir("model.path", model.path, "a local Hugging Face causal-LM directory")
    if not os.path.isfile(os.path.join(model.path, "config.json")):
        raise ConfigError(
            f"model.path {model.path!r} has no config.json "
            f"(expected a local Hugging Face causal-LM directory)",
            key="model.path",
        )
    if model.tokenizer_path is not None:
        check_dir("model.tokenizer_path", model.tokenizer_path, "the tokenizer directory")
    if model.critic == "separate" and model.critic_path is not None:
        check_dir("model.critic_path", model.critic_path, "the critic's model directory")
    if model.reference_path is not None:
        check_dir("model.reference_path", model.reference_path, "the reference model directory")

    prompts = cfg.data.prompts
    if not os.path.exists(prompts):
        raise ConfigError(f"data.prompts {prompts!r} does not exist", key="data.prompts")
    if not os.path.isfile(prompts):
        raise ConfigError(f"data.prompts {prompts!r} is not a file", key="data.prompts")

    if cfg.eval.prompts is not None and not os.path.isfile(cfg.eval.prompts):
        raise ConfigError(f"eval.prompts {cfg.eval.prompts!r} is not a file", key="eval.prompts")
    validate_reward_paths(cfg.reward)
    _check_references(cfg)
    conversations = _uses_conversations(cfg)
    _check_policy_model(cfg, conversations)
    _check_reward_tokenizers(cfg.reward, conversations)

    if cfg.eval.gold_function is not None:
        check_function(cfg.eval.gold_function, key="eval.gold_function")
    if cfg.env is not None:
        load_environment = importlib.import_module("envs.multi_turn").load_environment
        try:
            load_environment(cfg.env.environment)
        except ValueError as exc:
            raise ConfigError(str(exc), key="env.environment") from exc

    storage = cfg.run.storage_path
    if os.path.exists(storage) and not os.path.isdir(storage):
        raise ConfigError(
            f"run.storage_path {storage!r} exists and is not a directory",
            key="run.storage_path",
        )


# ---------------------------------------------------------------------------------------------
# Model and tokenizer checks
# ---------------------------------------------------------------------------------------------


def _uses_conversations(cfg: RLConfig) -> bool:
    """Whether prompts are rendered with a chat template (the flag, a messages column, or a
    multi-turn environment's conversation)."""
    if cfg.data.chat_template or cfg.env is not None:
        return True
    columns_of = importlib.import_module("rayrm.data.prompts").prompt_file_columns
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


def _check_policy_model(cfg: RLConfig, conversations: bool) -> None:
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
    ref = model.reference_path
    if ref is not None and (ref_rows := vocab_rows(ref)) != rows:
        raise ConfigError(
            f"model.reference_path {ref!r} embeds {ref_rows} tokens and model.path {rows} "
            f"(config.json vocab_size): the KL compares them token by token, so they must "
            f"share one vocabulary",
            key="model.reference_path",
        )
    if limit is not None and cfg.env is not None and cfg.max_seq_len > limit:
        raise ConfigError(
            f"env.max_total_tokens ({cfg.max_seq_len}) exceeds the position limit of "
            f"model.path ({limit}, config.json)",
            key="env.max_total_tokens",
        )
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


def _check_reward_tokenizers(reward: RewardSettings, conversations: bool) -> None:
    """Every reward model finds a tokenizer (its own or ``tokenizer_path``), with a chat
    template when the prompts are conversations."""
    sources: list[tuple[str, Any]] = [("reward", reward)]
    if reward.source == "composite":
        sources = [(f"reward.components[{i}]", c) for i, c in enumerate(reward.components)]
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
