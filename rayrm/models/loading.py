"""Loading Hugging Face models and tokenizers for RL: local directories, dtype, dropout off.

What belongs here: every ``from_pretrained`` of a policy, critic trunk or tokenizer that the
RL loop and the tools use, so dtype handling, dropout and stop tokens are decided once.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from rayrm.models.fused import fuse_activations

__all__ = [
    "load_critic",
    "DTYPES",
    "hidden_size",
    "load_causal_lm",
    "load_tokenizer",
    "load_trunk",
    "zero_dropout",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``model.dtype`` names and their torch dtypes."""


def zero_dropout(config: Any) -> None:
    """Sets every dropout probability of a Hugging Face config to 0, nested configs too.

    Sampling runs in eval mode and training in train mode; with dropout on, the PPO ratio and
    the KL to the reference would be noisy even before any update.
    """
    for key, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(config, key, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):
            zero_dropout(value)  # a nested config (text_config of multimodal checkpoints)


def load_causal_lm(path: str, dtype: str = "float32") -> nn.Module:
    """``AutoModelForCausalLM`` from a local directory, parameters in ``dtype``, dropout off,
    fused activation kernels (``rayrm.models.fused``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    zero_dropout(config)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=DTYPES[dtype])
    return fuse_activations(model).eval()


def load_trunk(path: str, dtype: str = "float32") -> nn.Module:
    """``AutoModel`` (no LM head) for a separate critic, parameters in ``dtype``, dropout off,
    fused activation kernels."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    zero_dropout(config)
    model = AutoModel.from_pretrained(path, config=config, dtype=DTYPES[dtype])
    return fuse_activations(model).eval()


def load_critic(path: str, dtype: str = "float32") -> tuple[nn.Module, nn.Linear | None]:
    """A separate critic's start: ``(trunk, score head or None)``.

    A reward-model directory (``*ForSequenceClassification``, one label) gives its trunk AND
    its score head, so the critic starts out predicting the reward model's score, as
    InstructGPT and TRL start the value model from the reward model; any other directory (a
    causal LM, a bare trunk) gives its trunk and no head.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path)
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return load_trunk(path, dtype), None
    if getattr(config, "num_labels", 1) != 1:
        raise ValueError(
            f"critic {path!r}: a reward model needs one label, it has {config.num_labels}"
        )
    zero_dropout(config)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, dtype=DTYPES[dtype]
    )
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ValueError(
            f"critic {path!r}: no one-output linear score head found ({type(head).__name__})"
        )
    return fuse_activations(model.base_model).eval(), head


def hidden_size(config: Any) -> int:
    """Width of the final hidden states (the value head's input)."""
    text = getattr(config, "text_config", None) or config
    for key in ("hidden_size", "n_embd", "d_model"):
        if hasattr(text, key):
            return int(getattr(text, key))
    raise ValueError(f"cannot find the hidden size in {type(config).__name__}")


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """``AutoTokenizer`` from a local directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.fspath(path))
