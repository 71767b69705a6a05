"""Faster kernels for the same model function, swapped in after loading.

GPT-2 and its relatives (GPT-J, CodeGen, Phi) use ``gelu_new``, the tanh approximation of
GELU, which ``transformers`` builds from eight elementwise tensor operations in Python
(``NewGELUActivation``): eight kernels and eight saved tensors forward, more backward.
``torch.nn.functional.gelu(x, approximate="tanh")`` computes the same function in one kernel
each way (``transformers`` calls it ``gelu_pytorch_tanh``; Gemma uses it). Swapping the module
changes no weight and no config: a saved model is the model that was loaded. The two differ
by rounding only (float32: a few units in the last place; in bfloat16 the fused kernel rounds
once instead of after every operation).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TanhGELU", "fuse_activations"]


class TanhGELU(nn.Module):
    """``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`` as torch's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: nn.Module) -> nn.Module:
    """Replaces every ``NewGELUActivation`` in ``model`` by :class:`TanhGELU`, in place.

    Returns:
        ``model``.
    """
    from transformers.activations import NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, TanhGELU())
    return model
