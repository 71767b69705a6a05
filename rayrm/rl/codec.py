"""The run's prompt codec: how its prompts become token ids and its completions text
(``rayrm.models.tokenization.PromptCodec``), with the run's settings and its model's stop tokens.

The env, the held-out evaluation, the report, ``rayrm generate`` and ``rayrm explain`` all
encode prompts this one way.
"""

from __future__ import annotations

import os
from typing import Any

from rayrm.config import RLConfig
from rayrm.models.hf_files import stop_token_ids_of
from rayrm.models.tokenization import PromptCodec

__all__ = ["run_codec", "run_stop_token_ids"]


def run_stop_token_ids(cfg: RLConfig, model_dir: str | os.PathLike[str] | None = None) -> list[int]:
    """Ids that end a completion of a run: every EOS id the model declares (its
    ``generation_config.json`` and ``config.json`` in ``model_dir``, default ``model.path``;
    a checkpoint keeps copies) plus ``generation.stop_token_ids``. (The codec adds the
    tokenizer's own EOS.)"""
    declared = stop_token_ids_of(model_dir if model_dir is not None else cfg.model.path)
    return list(dict.fromkeys([*declared, *cfg.generation.stop_token_ids]))


def run_codec(
    cfg: RLConfig,
    tokenizer: Any,
    *,
    model_dir: str | os.PathLike[str] | None = None,
    max_prompt_tokens: int | None = None,
) -> PromptCodec:
    """The run's prompt codec around a loaded tokenizer, as its environments build it
    (``model_dir``: where the model's stop ids are read, default ``model.path``)."""
    return PromptCodec(
        tokenizer,
        max_prompt_tokens=max_prompt_tokens or cfg.data.max_prompt_tokens,
        chat_template=cfg.data.chat_template,
        stop_token_ids=run_stop_token_ids(cfg, model_dir),
        stop_strings=cfg.generation.stop_strings,
    )
