"""The ``model.lora`` section: train low-rank adapters (peft's LoRA) instead of every weight.

A typed section only; ``rayrm.models.lora`` builds the adapters.
"""

from __future__ import annotations

from pydantic import Field

from rayrm.config.base import NonEmptyStr, Section

__all__ = ["LoraSettings"]


class LoraSettings(Section):
    """``model.lora``: LoRA adapters on the policy (Hu et al. 2021, https://arxiv.org/abs/2106.09685).

    The policy trains its adapters only (and the value head, or the separate critic, as
    without LoRA); the reference log-probs come from the same model with its adapters
    switched off, so no second copy of the policy is loaded. Weight syncs send the adapters
    alone; checkpoints hold the adapters (the base weights are read from ``model.path``
    again); ``rayrm export`` writes the merged model, or the adapter with ``--adapter``.

    Attributes:
        r: Rank of each adapter.
        alpha: Scale numerator: the update is ``alpha / r * B @ A``.
        dropout: Dropout on the adapters' input during the update (``rayrm sft`` and
            ``rayrm train-rm``; RL training refuses it, as it switches every dropout of the
            policy off so that PPO's ratio and the KL are exact).
        target_modules: Names (or name suffixes) of the linear layers that get adapters;
            None: peft's choice for the architecture (e.g. ``q_proj``, ``v_proj`` for Llama
            and Qwen2, ``c_attn`` for GPT-2); ``[all-linear]``: every linear layer but the
            output head.
    """

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[NonEmptyStr] | None = None
