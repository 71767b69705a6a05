"""LoRA adapters on a Hugging Face causal LM (peft), switched off for the reference model.

The adapters are injected into the model in place (``peft.inject_adapter_in_model``): the
model keeps its class and module tree, so the chunked LM head, the KV-cached decoding and the
one-pass forwards work on it unchanged. Every base weight is frozen; only the adapters train.
:func:`adapters_disabled` runs the base model (the reference policy) on the same weights.
For export, :func:`peft_model` rebuilds a ``PeftModel`` around a fresh base with the trained
adapter weights (to merge them, or to save a peft adapter directory); the SFT and reward-model
stages save :func:`merged_copy` and resume from :func:`trained_state`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "LORA_MARK",
    "adapters_disabled",
    "add_lora",
    "is_adapter_key",
    "lora_config",
    "merged_copy",
    "peft_model",
    "trained_state",
]

LORA_MARK = "lora_"
"""What every adapter parameter's name contains (``...q_proj.lora_A.default.weight``)."""


def is_adapter_key(key: str) -> bool:
    """Whether a parameter or state key belongs to a LoRA adapter."""
    return LORA_MARK in key


def lora_config(settings: dict[str, Any]) -> Any:
    """A ``peft.LoraConfig`` from ``model.lora`` (a dict of :class:`LoraSettings` fields)."""
    from peft import LoraConfig

    targets = settings.get("target_modules")
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=int(settings["r"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(
    model: nn.Module, settings: dict[str, Any], *, also_train: tuple[str, ...] = ()
) -> nn.Module:
    """Injects adapters into ``model`` in place and freezes every other weight (but those of
    the submodules named in ``also_train``, e.g. a reward model's fresh ``score`` head);
    returns it.

    The adapters start as the identity (``B = 0``): the model computes what the base does.
    Adapter weights take the model's dtype.
    """
    from peft import inject_adapter_in_model

    dtype = next(model.parameters()).dtype
    model = inject_adapter_in_model(lora_config(settings), model)
    for name, param in model.named_parameters():
        head = any(name.startswith(f"{m}.") for m in also_train)
        param.requires_grad_(is_adapter_key(name) or head)
        if is_adapter_key(name) and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return model


def _tuner_layers(model: nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Runs ``model`` as its base model inside the block (the adapters contribute nothing)."""
    layers = _tuner_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that train (adapters, heads), on CPU: what a LoRA checkpoint keeps."""
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter merged into its base layer and removed: a plain
    Hugging Face model of the same class (``save_pretrained`` writes no adapter)."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    model = copy.deepcopy(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model


def peft_model(base: nn.Module, settings: dict[str, Any], adapters: dict[str, Any]) -> Any:
    """A ``PeftModel`` of ``base`` holding the trained ``adapters`` (keys as in
    :func:`is_adapter_key` names in the model's own tree): ``merge_and_unload()`` gives the merged model, ``save_pretrained``
    a peft adapter directory.

    Raises:
        ValueError: an adapter weight has no place in the model, or one is missing.
    """
    from peft import get_peft_model

    wrapped = get_peft_model(base, lora_config(settings))
    inner = wrapped.base_model.model  # the HF model with the adapters injected, same tree
    expected = {k for k in inner.state_dict() if is_adapter_key(k)}
    if set(adapters) != expected:
        missing, extra = sorted(expected - set(adapters)), sorted(set(adapters) - expected)
        raise ValueError(
            f"the checkpoint's LoRA adapters do not fit model.lora on this model "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    inner.load_state_dict({k: torch.as_tensor(v) for k, v in adapters.items()}, strict=False)
    return wrapped
