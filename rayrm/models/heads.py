"""Reading a causal LM in two halves: the trunk's hidden states, then the LM head in chunks.

PPO needs, per generated token, the log-prob of the sampled token, the entropy of the
next-token distribution and the value of the state. A Hugging Face causal LM's ``forward``
returns logits for *every* position over the *whole* vocabulary: at Qwen2.5's 151,936 tokens,
64 completions × 256 positions is ~10 GB of float32 for one such tensor, and a log-softmax copy
doubles it. Here instead:

* :func:`trunk_hidden` runs the model's trunk (``model.base_model``: embeddings, blocks and the
  final norm) and gathers the hidden state of the positions asked for, (N, H); the value head
  reads those directly, without the LM head.
* :func:`token_logp_entropy` applies the LM head to N hidden states a chunk of rows at a time
  (about :data:`LOGIT_CHUNK_ELEMENTS` logits each) and keeps, per row, the chosen token's
  log-prob and the entropy: O(N) memory out. Its backward is written out (the gradients of a
  log-prob and of an entropy with respect to the logits are closed-form) and recomputes one
  chunk's logits at a time, as activation checkpointing would, with at most two chunk-sized
  float32 tensors alive: memory no longer grows with N × V.

:func:`head_logits` applies the final-logit transforms some architectures put after the head
(Gemma 2's soft-capping, Cohere's ``logit_scale``, Granite's ``logits_scaling``; see
:class:`LogitTransform`);
:func:`check_head_path` verifies, once per loaded model, that trunk + head reproduce the model's
own logits, so an architecture with an unknown transform fails loudly instead of training on
wrong log-probs; :func:`check_causal_trunk` that a separate critic's trunk is causal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "LOGIT_CHUNK_ELEMENTS",
    "check_causal_trunk",
    "check_head_path",
    "head_logits",
    "rows_per_chunk",
    "token_logp",
    "token_logp_entropy",
    "trunk",
    "trunk_hidden",
]

LOGIT_CHUNK_ELEMENTS = 1 << 23
"""Logits materialised at once by :func:`token_logp_entropy` (8M: 32 MB in float32); at a
151,936-token vocabulary that is 55 rows per chunk."""


KEEP_SOFTMAX_ELEMENTS = 1 << 24
"""A minibatch's softmax of at most this many values (64 MB in float32) is kept from
:func:`token_logp_entropy`'s forward for its backward, which then needs no second pass of the
LM head; a larger one is recomputed a chunk at a time."""


def trunk(model: nn.Module) -> nn.Module:
    """The model without its LM head (``base_model``: GPT2Model, LlamaModel, ...)."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise ValueError(
            f"{type(model).__name__} exposes no trunk (base_model); rayrm needs a Hugging Face "
            "causal LM whose base_model returns last_hidden_state"
        )
    return base


def trunk_hidden(
    model: nn.Module, input_ids: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Final hidden states at chosen real positions of right-padded sequences.

    The trunk runs without an attention mask: in a causal model a real position of a
    right-padded row attends only to the real positions before it, and its position id is its
    index either way, so its hidden state is the one a padding mask gives. The attention then
    takes the kernels' plain causal path, with no (G, 1, L, L) mask built per forward (the CPU
    benchmark's iterations ran 2–4% faster). What the padding's own positions read is never
    used. :func:`check_head_path` verifies this per loaded model.

    Args:
        model: A causal LM (its trunk runs) or a trunk (``AutoModel``) itself.
        input_ids: (G, L) right-padded token ids.
        rows: (N,) which sequence each output row reads.
        positions: (N,) which position of it, each before that row's padding.

    Returns:
        (N, H) hidden states after the trunk's final norm, in the model's dtype.
    """
    body = model if _is_trunk(model) else trunk(model)
    out = body(input_ids=input_ids, use_cache=False)
    return out.last_hidden_state[rows, positions]  # (N, H)


def _is_trunk(model: nn.Module) -> bool:
    """An ``AutoModel`` trunk (no LM head) rather than a ``...ForCausalLM``."""
    getter = getattr(model, "get_output_embeddings", None)
    return getter is None or getter() is None


@dataclass(frozen=True)
class LogitTransform:
    """What an architecture does to ``hidden @ W_head`` before the softmax, and the sampling
    temperature: ``z = cap · tanh(scale · z0 / cap) / temperature`` (each part optional)."""

    scale: float = 1.0
    cap: float | None = None
    temperature: float = 1.0

    @classmethod
    def of(cls, model: nn.Module, temperature: float = 1.0) -> LogitTransform:
        config = model.config
        scale = 1.0
        logit_scale = getattr(config, "logit_scale", None)  # Cohere multiplies
        if isinstance(logit_scale, int | float) and not isinstance(logit_scale, bool):
            scale *= float(logit_scale)
        divide = getattr(config, "logits_scaling", None)  # Granite divides
        if isinstance(divide, int | float) and not isinstance(divide, bool) and divide:
            scale /= float(divide)
        cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2
        return cls(scale=scale, cap=float(cap) if cap else None, temperature=float(temperature))

    def __call__(self, z0: torch.Tensor) -> torch.Tensor:
        """(..., V) float32 raw head outputs -> the sampling distribution's logits."""
        z = z0 * self.scale if self.scale != 1.0 else z0
        if self.cap is not None:
            z = torch.tanh(z / self.cap) * self.cap
        return z / self.temperature if self.temperature != 1.0 else z

    def chain(self, z: torch.Tensor | None) -> torch.Tensor | float:
        """dz/dz0 elementwise, from the transformed logits ``z`` (not needed without a cap)."""
        factor: torch.Tensor | float = self.scale / self.temperature
        if self.cap is not None:
            if z is None:
                raise ValueError("soft-capped logits: the chain rule needs them")
            capped = z * (self.temperature / self.cap)  # tanh(scale · z0 / cap)
            factor = (1.0 - capped * capped) * factor
        return factor


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 next-token logits of hidden states, as ``model.forward`` would compute them.

    Args:
        model: The causal LM whose output embeddings (LM head) to apply.
        hidden: (..., H) final hidden states.

    Returns:
        (..., V) float32 logits, final-logit transforms of the architecture applied.
    """
    head = model.get_output_embeddings()
    return LogitTransform.of(model)(head(hidden.to(head.weight.dtype)).float())


def rows_per_chunk(vocab_size: int) -> int:
    """Rows of logits per chunk so a chunk holds about :data:`LOGIT_CHUNK_ELEMENTS` values."""
    return max(1, LOGIT_CHUNK_ELEMENTS // max(1, vocab_size))


def token_logp_entropy(
    model: nn.Module,
    hidden: torch.Tensor,
    actions: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each row's action and the entropy, without an (N, V) tensor at once.

    The distribution is ``softmax(head_logits / temperature)`` (the sampling distribution).

    Args:
        model: The causal LM whose head to apply.
        hidden: (N, H) final hidden states.
        actions: (N,) token ids.
        temperature: > 0.
        chunk_rows: Rows per chunk; default :func:`rows_per_chunk` of the vocabulary.

    Returns:
        ``(logp, entropy)``, both (N,) float32, differentiable with respect to ``hidden`` and
        the head's weight (and bias).
    """
    head = model.get_output_embeddings()
    step = chunk_rows or rows_per_chunk(head.weight.shape[0])
    transform = LogitTransform.of(model, temperature)
    logp, entropy = _HeadLogpEntropy.apply(
        hidden, head.weight, head.bias, actions.long(), transform, step
    )
    return logp, entropy


@torch.no_grad()
def token_logp(
    model: nn.Module,
    hidden: torch.Tensor,
    actions: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """:func:`token_logp_entropy`'s log-probs alone, without a graph (the reference's and the
    old policy's): no softmax over the vocabulary, one log-sum-exp per row.

    Returns:
        (N,) float32.
    """
    head = model.get_output_embeddings()
    step = chunk_rows or rows_per_chunk(head.weight.shape[0])
    transform = LogitTransform.of(model, temperature)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for lo in range(0, hidden.shape[0], step):
        z = transform(_linear(hidden[lo : lo + step], head.weight, head.bias))  # (C, V)
        chosen = z.gather(-1, actions[lo : lo + step, None].long()).squeeze(-1)
        out[lo : lo + step] = chosen - torch.logsumexp(z, dim=-1)
    return out


class _HeadLogpEntropy(torch.autograd.Function):
    """``logp(a)`` and ``H`` of ``softmax(transform(hidden @ W^T + b))``, a chunk of rows at a
    time, with the gradient written out (no autograd graph over (N, V) tensors).

    With ``z`` the logits of a row, ``p = softmax(z)``, ``lse = log Σ exp z`` and
    ``E[z] = Σ p z``: ``logp(a) = z_a − lse``, ``H = lse − E[z]``, ``∂logp(a)/∂z = onehot(a) − p``
    and ``∂H/∂z = −p ⊙ (z − E[z])``. Backward recomputes each chunk's logits from the saved
    hidden states (as activation checkpointing would) and keeps at most two (rows, V) float32
    tensors of one chunk alive.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        actions: torch.Tensor,
        transform: LogitTransform,
        step: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        N = hidden.shape[0]
        out = torch.empty(4, N, dtype=torch.float32, device=hidden.device)  # logp, H, lse, E[z]
        keep = N * weight.shape[0] <= KEEP_SOFTMAX_ELEMENTS and transform.cap is None
        kept = []  # each chunk's softmax, for a backward without the entropy's gradient
        for lo in range(0, N, step):
            z = transform(_linear(hidden[lo : lo + step], weight, bias))  # (C, V) float32
            lse = torch.logsumexp(z, dim=-1)  # (C,)
            logp = z.gather(-1, actions[lo : lo + step, None]).squeeze(-1) - lse
            p = torch.sub(z, lse[:, None]).exp_()  # (C, V) softmax, from the lse at hand
            ez = torch.linalg.vecdot(p, z)  # (C,) E_p[z]
            out[:, lo : lo + step] = torch.stack([logp, lse - ez, lse, ez])
            if keep:
                kept.append(p)
        ctx.save_for_backward(hidden, weight, bias, actions, out[2].clone(), out[3].clone())
        ctx.transform, ctx.step, ctx.kept = transform, step, kept if keep else None
        # An output the loss does not use (the entropy, without an entropy bonus) gets None in
        # backward, not zeros: its (C, V) terms are skipped.
        ctx.set_materialize_grads(False)
        return out[0], out[1]

    @staticmethod
    def backward(ctx: Any, g_logp: torch.Tensor, g_ent: torch.Tensor) -> Any:  # type: ignore[override]
        hidden, weight, bias, actions, lse, ez = ctx.saved_tensors
        transform, step = ctx.transform, ctx.step
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        )
        grad_b = (
            torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
            if want_b
            else None
        )
        # Without the entropy's gradient (and no soft-capping) the kept softmax is all that is
        # needed; it is used up (a second backward recomputes).
        kept = ctx.kept if g_ent is None else None
        ctx.kept = None
        for index, lo in enumerate(range(0, hidden.shape[0], step)):
            h, sl = hidden[lo : lo + step], slice(lo, lo + step)
            if kept is not None:
                z, chain, p = None, transform.chain(None), kept[index]
                kept[index] = None  # freed as soon as used
            else:
                z = transform(_linear(h, weight, bias))  # (C, V)
                chain = transform.chain(z)
                p = torch.sub(z, lse[sl, None]).exp_()  # (C, V) softmax, recomputed
            # g_H · ∂H/∂z − g_logp · p; then + g_logp at the action.
            if g_ent is not None:  # in z's storage
                grad_z = z.sub_(ez[sl, None]).mul_(p).mul_(-g_ent[sl, None])
                if g_logp is not None:
                    grad_z.sub_(p.mul_(g_logp[sl, None]))
            else:  # in p's storage
                grad_z = p.mul_(-g_logp[sl, None])
            del p
            if g_logp is not None:
                rows = torch.arange(grad_z.shape[0], device=grad_z.device)
                grad_z[rows, actions[sl]] += g_logp[sl]
            grad_z = grad_z.mul_(chain).to(weight.dtype)  # ∂/∂(h @ W^T + b)
            if grad_h is not None:
                grad_h[lo : lo + step] = (grad_z @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w.add_((grad_z.t() @ h.to(weight.dtype)).float())
            if grad_b is not None:
                grad_b.add_(grad_z.float().sum(0))
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return grad_h, cast(grad_w, weight), cast(grad_b, weight), None, None, None


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``h @ W^T (+ b)`` in the weight's dtype, returned in float32."""
    return torch.nn.functional.linear(h.to(weight.dtype), weight, bias).float()


@torch.no_grad()
def check_head_path(model: nn.Module, *, num_tokens: int = 6) -> None:
    """Raises when trunk + :func:`head_logits` do not reproduce ``model(...).logits``.

    Runs two short sequences both ways (a few milliseconds even for large models): a full one,
    and one right-padded by two tokens, which :func:`trunk_hidden` reads without a mask and
    the model's own forward with one.

    Raises:
        ValueError: Naming the architecture, when the two differ.
    """
    param = next(model.parameters())
    V = model.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(2 * num_tokens, device=param.device) * 7919 % V).view(2, num_tokens)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # (2, T): the second row right-padded
    expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    rows, positions = mask.nonzero(as_tuple=True)  # the real positions
    expected = expected[rows, positions]
    got = head_logits(model, trunk_hidden(model, ids, rows, positions))
    tol = 1e-4 if param.dtype == torch.float32 else 5e-2 * max(1.0, float(expected.abs().max()))
    if not torch.allclose(got, expected, atol=tol, rtol=1e-3):
        diff = float((got - expected).abs().max())
        raise ValueError(
            f"{type(model).__name__}: its trunk plus LM head do not reproduce its logits (max "
            f"difference {diff:.3g}); the architecture transforms logits in a way rayrm does "
            "not know, or its attention is not causal, so its log-probs would be wrong"
        )


@torch.no_grad()
def check_causal_trunk(model: nn.Module, *, name: str, num_tokens: int = 6) -> None:
    """Raises when a position's hidden state from :func:`trunk_hidden` depends on later tokens.

    Two rows share their first ``num_tokens - 2`` tokens and differ after them, as a row and
    its right padding would; a causal trunk gives the shared positions the same hidden states.
    A separate critic needs this (its value of a state must not see the completion's future):
    a bidirectional encoder (BERT, DeBERTa reward models) fails here.

    Raises:
        ValueError: Naming ``name``, when the shared positions differ.
    """
    param = next(model.parameters())
    V = model.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(num_tokens, device=param.device) * 7919 % V).repeat(2, 1)  # (2, T)
    ids[1, -2:] = (ids[1, -2:] + 1) % V
    shared = num_tokens - 2
    rows = torch.arange(2, device=ids.device).repeat_interleave(shared)
    positions = torch.arange(shared, device=ids.device).repeat(2)
    hidden = trunk_hidden(model, ids, rows, positions).float().view(2, shared, -1)
    scale = max(1.0, float(hidden.abs().max()))
    tol = 1e-4 * scale if param.dtype == torch.float32 else 2e-2 * scale
    if not torch.allclose(hidden[0], hidden[1], atol=tol, rtol=0):
        raise ValueError(
            f"{name} ({type(model).__name__}): a position's hidden state depends on later tokens "
            "(its attention is not causal); a value model must read each state without its "
            "future: use a causal LM or its reward model as the critic"
        )
