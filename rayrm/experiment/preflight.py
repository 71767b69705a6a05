"""Preflight: open and try everything a run config points at, in the driver, before Ray starts.

The config checks (``rayrm.config.checks``) make sure the files exist and the models have
tokenizers; preflight reads and tries them: the prompts files parse, hold strings and no empty
prompt; the policy tokenizer encodes the first prompts (chat template included); a reward
function and the gold function are called once on a small batch of those prompts and must
return one finite number each; a reward model's config says one label; the run folder's
storage is writable. Every failure is one :class:`~rayrm.config.ConfigError` naming the key and
the file or row (exit code 2), where it would otherwise fail inside a trial, be retried and
print a page of tracebacks.

What it learns goes into one line, e.g. ``prompts: 72 (prompts.jsonl), 7.1 tokens on average,
max 12; 0 longer than data.max_prompt_tokens=24``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from envs.multi_turn import MultiTurnTextEnv
from rayrm.config import ConfigError, RLConfig
from rayrm.data.prompts import load_prompt_rows, other_columns
from rayrm.models.hf_files import read_json
from rayrm.models.loading import load_tokenizer
from rayrm.models.tokenization import Prompt, PromptCodec
from rayrm.rewards.base import Completion, RewardSourceError, completion_records
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rl.codec import run_codec
from rayrm.rl.prompt_order import training_rows
from rayrm.tracking import check_tracking

__all__ = ["check_storage", "preflight"]

PROBE_PROMPTS = 2
"""Prompts a reward or gold function is called on in preflight (with empty completions)."""


def preflight(cfg: RLConfig) -> str:
    """Reads and tries what ``cfg`` (paths already checked) names; returns a summary line.

    Raises:
        ConfigError: One line naming the key and the file or row at fault.
    """
    check_tracking(cfg.run)  # a logger's package installed
    if cfg.model.lora is not None and importlib.util.find_spec("peft") is None:
        raise ConfigError(
            "model.lora needs the peft package, which is not installed: pip install 'rayrm[lora]'",
            key="model.lora",
        )
    if cfg.env is not None:
        summary = _episode_openings(cfg)
        check_storage(cfg.run.storage_path)
        return summary
    codec = run_codec(cfg, load_tokenizer(cfg.model.resolved_tokenizer_path))
    prompts, references = _prompts(cfg, "data.prompts", cfg.data.prompts)
    summary = _encode_summary(cfg, codec, prompts)
    held = len(prompts) - len(training_rows(cfg, len(prompts)))  # none left: ConfigError
    if held:
        summary += f"; the first {held} held out for evaluation, never trained on"
    if cfg.eval.every and cfg.eval.prompts is not None:
        _encode_summary(cfg, codec, _prompts(cfg, "eval.prompts", cfg.eval.prompts)[0])
    probe_prompts = [codec.texts(codec.encode(p), [])[0] for p in prompts[:PROBE_PROMPTS]]
    data = cfg.data
    used = (data.prompt_column, data.reference_column, data.messages_column)
    columns = other_columns(cfg.data.prompts, used)
    n = len(probe_prompts)
    probe = completion_records(  # empty completions, with the rows' references and columns
        probe_prompts,
        [""] * n,
        references=references[:n] if references else None,
        columns=columns[:n] if columns else None,
    )
    _probe_reward(cfg, probe)
    if cfg.eval.gold_function is not None:
        _probe_gold(cfg.eval.gold_function, probe)
    check_storage(cfg.run.storage_path)
    return summary


def _episode_openings(cfg: RLConfig) -> str:
    """A multi-turn run's environment built on the first rows (up to 1,000) of its prompts
    file, each episode opened as the env runners open it; their lengths summarised."""
    from rayrm.rl.settings import environment_of

    env_config = environment_of(cfg, vocab_size=None)[1]
    key = "env.environment"
    try:
        env = MultiTurnTextEnv(**env_config)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"{key}: {exc}", key=key) from exc
    lengths = []
    for row in range(min(len(env.rows), 1000)):
        try:
            obs, _ = env.reset(options={"prompt_index": row})
        except Exception as exc:  # the user's environment, its template or its tokenizer
            message = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(
                f"{key} {cfg.env.environment!r} on data.prompts row {row}: "
                f"{type(exc).__name__}: {message}",
                key=key,
            ) from exc
        lengths.append(int(obs["length"][0]))
    measured = "" if len(lengths) == len(env.rows) else f" (first {len(lengths)} opened)"
    return (
        f"prompts: {len(env.rows)} ({Path(cfg.data.prompts).name}){measured}, episodes of "
        f"{cfg.env.environment}: openings {np.mean(lengths):.1f} tokens on average, max "
        f"{max(lengths)} (data.max_prompt_tokens={cfg.data.max_prompt_tokens})"
    )


def _prompts(cfg: RLConfig, key: str, path: str) -> tuple[list[Prompt], list[str] | None]:
    data = cfg.data
    try:
        prompts, references = load_prompt_rows(
            path, data.prompt_column, data.reference_column, data.messages_column
        )
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"{key}: {exc}", key=key) from exc
    for row, prompt in enumerate(prompts):
        if isinstance(prompt, str) and not prompt.strip():
            raise ConfigError(
                f"{key}: {path}, row {row}: the prompt is empty (a completion needs something "
                "to answer)",
                key=key,
            )
    return prompts, references


def _encode_summary(cfg: RLConfig, codec: PromptCodec, prompts: list[Prompt]) -> str:
    """Encodes the prompts (at most the first 1,000) and summarises their token lengths."""
    sample = prompts[:1000]
    lengths = []
    for row, prompt in enumerate(sample):
        try:
            text = codec.render(prompt)
            lengths.append(len(codec.tokenizer(text, add_special_tokens=False)["input_ids"]))
        except Exception as exc:  # a template or tokenizer that cannot take this row
            raise ConfigError(
                f"data.prompts row {row}: the policy tokenizer cannot encode it "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                key="data.prompts",
            ) from exc
    limit = cfg.data.max_prompt_tokens
    longer = sum(n > limit for n in lengths)
    measured = "" if len(sample) == len(prompts) else f" (first {len(sample)} measured)"
    return (
        f"prompts: {len(prompts)} ({Path(cfg.data.prompts).name}){measured}, "
        f"{np.mean(lengths):.1f} tokens on average, max {max(lengths)}; {longer} longer than "
        f"data.max_prompt_tokens={limit} (cut from the left)"
    )


def _probe_reward(cfg: RLConfig, probe: list[Completion]) -> None:
    """Reward functions called once, as their actors call them (the rows' references and other
    columns included); reward models' configs read."""
    reward = cfg.reward
    sources: list[tuple[str, Any]] = [("reward", reward)]
    if reward.source == "composite":
        sources = [(f"reward.components[{i}]", c) for i, c in enumerate(reward.components)]
    for prefix, src in sources:
        if src.source == "function" and src.function is not None:
            key = f"{prefix}.function"
            try:
                actor = RewardFunctionActor(src.function)
                scores = actor.score(probe)
            except (RewardSourceError, ValueError) as exc:
                raise ConfigError(f"{key}: {exc}", key=key) from exc
            _check_finite(scores, key, src.function)
        if src.source == "model" and src.path is not None:
            _check_reward_model(src.path, f"{prefix}.path")
        for j, member in enumerate(src.members if src.source == "ensemble" else []):
            _check_reward_model(member, f"{prefix}.members[{j}]")


def _probe_gold(spec: str, probe: list[Completion]) -> None:
    """The gold function called once, as held-out evaluation calls it (as a reward function,
    with the rows' references and other columns)."""
    key = "eval.gold_function"
    try:
        gold = RewardFunctionActor(spec)
        scores = gold.score(probe)
    except (RewardSourceError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}", key=key) from exc
    _check_finite(scores, key, spec)


def _check_finite(scores: np.ndarray, key: str, spec: str) -> None:
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ConfigError(
            f"{key} {spec!r} returned {scores[bad[0]]} for item {int(bad[0])} of a probe batch "
            "(prompts with empty completions); scores must be finite numbers",
            key=key,
        )


def _check_reward_model(path: str, key: str) -> None:
    config = read_json(Path(path) / "config.json")
    labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1))
    if labels != 1:
        raise ConfigError(
            f"{key} {path!r} has {labels} labels; a reward model needs a single scalar head "
            "(num_labels=1)",
            key=key,
        )


def check_storage(storage: str) -> None:
    """The storage folder exists (or can be made) and takes a file."""
    try:
        os.makedirs(storage, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=storage, prefix=".rayrm-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"run.storage_path {storage!r} is not writable ({exc.strerror or exc})",
            key="run.storage_path",
        ) from exc
