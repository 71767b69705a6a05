"""What a Hugging Face model directory says about itself, read from its JSON files.

Config checks run before Ray starts and must stay cheap, so this module reads
``config.json``, ``generation_config.json`` and ``tokenizer_config.json`` with ``json`` alone:
no ``torch``, no ``transformers``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "ENSEMBLE_FILE",
    "TOKENIZER_FILES",
    "chat_template_of",
    "ensemble_members",
    "has_tokenizer",
    "position_limit",
    "read_json",
    "stop_token_ids_of",
    "vocab_rows",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
"""Files one of which a directory needs for ``AutoTokenizer.from_pretrained`` to load it."""

_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from a file; {} when the file does not exist.

    Raises:
        ValueError: The file is not a JSON object (one line naming it).
    """
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{p} is not a JSON object")
    return data


def _text_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json``, or its ``text_config`` for multimodal wrappers (Gemma 3, Llava)."""
    config = read_json(Path(model_dir) / "config.json")
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def position_limit(model_dir: str | os.PathLike[str]) -> int | None:
    """The longest sequence the model's position embeddings cover, or None if not stated."""
    config = _text_config(model_dir)
    for key in _POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def vocab_rows(model_dir: str | os.PathLike[str]) -> int | None:
    """``vocab_size`` of the model (its embedding rows), or None if not stated."""
    value = _text_config(model_dir).get("vocab_size")
    return value if isinstance(value, int) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def stop_token_ids_of(model_dir: str | os.PathLike[str]) -> list[int]:
    """Every EOS id the model declares: ``generation_config.json``'s ``eos_token_id`` (an int
    or a list: chat models stop on several) and ``config.json``'s, in that order."""
    generation = read_json(Path(model_dir) / "generation_config.json")
    ids = _ids(generation.get("eos_token_id")) + _ids(_text_config(model_dir).get("eos_token_id"))
    return list(dict.fromkeys(ids))


def has_tokenizer(directory: str | os.PathLike[str]) -> bool:
    """Whether the directory holds tokenizer files ``AutoTokenizer`` can load."""
    d = Path(directory)
    return d.is_dir() and any((d / name).is_file() for name in TOKENIZER_FILES)


def chat_template_of(directory: str | os.PathLike[str]) -> str | None:
    """The tokenizer's chat template (``chat_template.jinja`` or tokenizer_config), if any."""
    d = Path(directory)
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = read_json(d / "chat_template.json").get("chat_template")
    if template is None:
        template = read_json(d / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template else None


ENSEMBLE_FILE = "ensemble.json"
"""In a reward-model ensemble's directory (``rayrm train-rm --members k``): ``{"members": [the
members' directories, relative to it], ...}``."""


def ensemble_members(directory: str | os.PathLike[str]) -> list[str]:
    """The member directories (absolute) of the ensemble written in ``directory``.

    Raises:
        ValueError: No ``ensemble.json`` there, or one without a ``members`` list (one line
            naming the file).
    """
    file = Path(directory) / ENSEMBLE_FILE
    members = read_json(file).get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ValueError(
            f"{file} lists no members: an ensemble directory is written by "
            f"rayrm train-rm --members k"
        )
    return [str(Path(directory, m).resolve()) for m in members]
