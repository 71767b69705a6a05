"""Mixed precision the standard way: low-precision compute copies, float32 master weights.

rayrm keeps the policy, critic and reference model in ``model.dtype`` (bfloat16 or float16 on
GPUs): forwards and backwards run in that dtype, the weights synced to the env runners are
in it (half the bytes of float32) and the reference model's log-probs are computed exactly as
the policy's. What must not be low precision is the *update*: at lr 1e-5 an Adam step is often
smaller than half a bfloat16 step of the weight (``0.02 − 1e-5 == 0.02`` in bfloat16) and would
round away. So, as in Megatron-LM, DeepSpeed and FSDP's mixed precision (Micikevicius et al.
2018, https://arxiv.org/abs/1710.03740), :class:`MasterWeightAdam` keeps a float32 copy of
every low-precision parameter and runs Adam on the copies; after each step the compute copies
are refreshed from them. float32 parameters are their own masters (no copy, plain Adam).

float16 also needs loss scaling: small gradients underflow to zero. The learner multiplies the
loss by :attr:`MasterWeightAdam.loss_scale` before ``backward``; ``step`` divides it out in
float32, skips the step and halves the scale when a gradient overflowed, and doubles the scale
after ``growth_interval`` clean steps (dynamic loss scaling, as ``torch.amp.GradScaler``,
which cannot unscale float16 parameters' gradients itself).

The step also clips the global gradient norm (RLlib's ``global_norm`` formula, computed in
float32 after unscaling) and skips updates whose gradients are not finite, so no NaN reaches
the weights. The master weights, the loss scale and the skip counter are part of
``state_dict``: a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["MasterWeightAdam"]

MASTER_KEY = "master_param"
"""Per-parameter optimizer-state entry holding a float32 master weight in ``state_dict``."""


class MasterWeightAdam(torch.optim.Adam):
    """Adam on float32 master copies of (possibly low-precision) model parameters.

    ``param_groups`` hold the float32 masters (what Adam updates and what learning-rate setters
    reach); :attr:`model_params` are the module's parameters, whose ``.grad`` the backward pass
    fills. ``zero_grad`` clears those.

    Args:
        params: The module parameters to train (float32, bfloat16 or float16).
        lr, eps, betas: Adam's.
        max_grad_norm: Clip the global gradient norm to this; None disables clipping.
        dynamic_loss_scale: Scale the loss (float16); the scale adapts to overflows.
        init_scale, growth_interval: Initial loss scale and clean steps before it doubles.
        foreach: Adam's batched kernels.
        fused: Adam's fused kernel (CPU and CUDA; not with ``foreach``).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float = 1e-3,
        eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
        max_grad_norm: float | None = None,
        dynamic_loss_scale: bool = False,
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        self.model_params = list(params)
        masters = [
            p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_(True)
            for p in self.model_params
        ]
        super().__init__(masters, lr=lr, eps=eps, betas=betas, foreach=foreach, fused=fused)
        self.max_grad_norm = max_grad_norm
        self.dynamic_loss_scale = dynamic_loss_scale
        self.growth_interval = int(growth_interval)
        self.loss_scale = float(init_scale) if dynamic_loss_scale else 1.0
        self.clean_steps = 0
        self.skipped_steps = 0
        self.last_grad_norm = math.nan

    @property
    def masters(self) -> list[torch.Tensor]:
        return list(self.param_groups[0]["params"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the module parameters' gradients (and the masters')."""
        for p in self.model_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()
        super().zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Unscales, checks and clips the gradients, steps Adam on the masters, copies back.

        Returns:
            True when the weights were updated, False when the step was skipped.
        """
        if closure is not None:
            raise ValueError("MasterWeightAdam does not take a closure")
        pairs = [(p, m) for p, m in zip(self.model_params, self.masters, strict=True)]
        grads = [p.grad for p, _ in pairs if p.grad is not None]
        if not grads:
            return False
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)  # one batched kernel
        total = torch.linalg.vector_norm(torch.stack(norms)) / self.loss_scale
        self.last_grad_norm = float(total)
        if not math.isfinite(self.last_grad_norm):
            self.skipped_steps += 1
            self.clean_steps = 0
            if self.dynamic_loss_scale:
                self.loss_scale = max(self.loss_scale / 2.0, 1.0)
            self.zero_grad(set_to_none=True)
            return False
        coef = 1.0 / self.loss_scale
        if self.max_grad_norm is not None:
            # RLlib's global-norm clip: grad_clip / max(norm + 1e-6, grad_clip), at most 1.
            clip = self.max_grad_norm / max(self.last_grad_norm + 1e-6, self.max_grad_norm)
            coef *= min(clip, 1.0)
        for p, master in pairs:
            if p.grad is None:
                master.grad = None
            elif master is p:
                if coef != 1.0:
                    p.grad.mul_(coef)
            else:
                master.grad = p.grad.float().mul_(coef)
        super().step()
        for p, master in pairs:
            if master is not p:
                p.copy_(master)  # refresh the compute copy (rounded to its dtype)
                master.grad = None
        if self.dynamic_loss_scale:
            self.clean_steps += 1
            if self.clean_steps >= self.growth_interval:
                self.loss_scale *= 2.0
                self.clean_steps = 0
        return True

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Adam's state plus the float32 masters and the loss-scale bookkeeping."""
        state = super().state_dict()
        for index, (p, master) in enumerate(zip(self.model_params, self.masters, strict=True)):
            if master is not p:
                state["state"].setdefault(index, {})[MASTER_KEY] = master.detach().clone()
        for group in state["param_groups"]:
            # Plain numbers in the groups survive RLlib's optimizer-state round trip as they are.
            group["loss_scale"] = self.loss_scale
            group["clean_steps"] = self.clean_steps
            group["skipped_steps"] = self.skipped_steps
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores Adam's state, the masters (and so the compute copies) and the loss scale."""
        state_dict = {**state_dict, "state": dict(state_dict["state"])}
        masters_saved: dict[int, Any] = {}
        for index, entry in list(state_dict["state"].items()):
            if isinstance(entry, dict) and MASTER_KEY in entry:
                entry = dict(entry)
                masters_saved[int(index)] = entry.pop(MASTER_KEY)
                if entry:
                    state_dict["state"][index] = entry
                else:
                    del state_dict["state"][index]
        super().load_state_dict(state_dict)
        group = state_dict["param_groups"][0]
        self.loss_scale = float(group.get("loss_scale", self.loss_scale))
        self.clean_steps = int(group.get("clean_steps", 0))
        self.skipped_steps = int(group.get("skipped_steps", 0))
        with torch.no_grad():
            for index, (p, master) in enumerate(zip(self.model_params, self.masters, strict=True)):
                saved = masters_saved.get(index)
                if saved is None or master is p:
                    continue
                master.copy_(torch.as_tensor(saved, dtype=torch.float32, device=master.device))
                p.copy_(master)
