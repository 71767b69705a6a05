"""The policy RLModule: a Hugging Face causal LM with a value head, plus the frozen reference.

What belongs here: the RLModule's forward passes (training, values, reference log-probs) and
the KV-cached decoding API that the env runner drives. Model loading, the LM-head-in-chunks
log-probs and the decoding loop live in ``rayrm.models``; losses in ``rayrm.rl.learner``; math in
``rayrm.core_algos``.

Observations are ``{"input_ids": (N, L), "length": (N, 1)}`` rows (see
``envs.text_generation``): prompt tokens then generated tokens, right-padded. A row's action
is the token that follows its ``length`` real tokens, so its logits sit at position
``length - 1``. Rows of the same completion are prefixes of one another, so — thanks to the
causal mask — ONE forward pass over a completion's longest row yields the logits and values
of all its rows exactly; the LM head then runs only on the rows' positions, a chunk at a time
(``rayrm.models.heads``), so no (N, V) float32 tensor is held. Rows carry a ``seq_id`` column (added by the learner connector) that
says which rows share a completion; without it each row is its own sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from rayrm.core_algos import sample_tokens
from rayrm.models.decoding import decode_start, decode_step
from rayrm.models.heads import (
    check_causal_trunk,
    check_head_path,
    head_logits,
    token_logp,
    token_logp_entropy,
    trunk_hidden,
)
from rayrm.models.loading import hidden_size, load_causal_lm, load_critic
from rayrm.models.lora import adapters_disabled, add_lora, is_adapter_key

__all__ = [
    "ENTROPY",
    "LOGP",
    "REF_LOGP",
    "SEQ_ID",
    "VF_PREDS",
    "LMPolicyModule",
    "group_rows",
    "load_causal_lm",
    "take_rows",
]

SEQ_ID = "seq_id"
"""Batch column: integer id of the completion a token row belongs to (rows of one id share a
prefix, so one forward pass serves them all)."""

_SYNCED = ("lm",)
"""Top-level submodules whose trained weights every copy of the module must receive."""

VF_PREDS = Columns.VF_PREDS
LOGP = "logp"
REF_LOGP = "ref_logp"
ENTROPY = "entropy"


def group_rows(seq_id: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Picks one representative row (the longest) per completion.

    Args:
        seq_id: (N,) completion id of each row.
        length: (N,) number of real tokens of each row.

    Returns:
        ``(rep_rows, inverse)``: (G,) row index of each completion's longest row and (N,) the
        group index of every row.
    """
    _, inverse = torch.unique(seq_id, return_inverse=True)  # (N,)
    G = int(inverse.max().item()) + 1
    N = seq_id.shape[0]
    max_len = torch.zeros(G, dtype=length.dtype, device=length.device)
    max_len = max_len.scatter_reduce(0, inverse, length, reduce="amax", include_self=False)
    is_longest = length == max_len[inverse]  # (N,)
    rows = torch.arange(N, device=seq_id.device)
    rep = torch.full((G,), N, dtype=rows.dtype, device=rows.device)
    rep = rep.scatter_reduce(0, inverse[is_longest], rows[is_longest], reduce="amin")
    return rep, inverse


class LMPolicyModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    """Hugging Face causal LM policy with a value head (shared trunk or separate critic).

    ``model_config`` keys: ``path`` (HF directory), ``dtype``, ``critic`` ("shared" |
    "separate" | "none": no value model at all, for critic-free estimators), ``critic_path``,
    ``reference_path`` (the reference's directory; absent: ``path``),
    ``temperature``, ``top_k``, ``top_p``, ``gradient_checkpointing``, ``forward_batch_size``
    (completions per no-grad forward), ``lora`` (``model.lora`` as a dict, or None).

    The learner copy also holds ``ref_model``: the frozen reference policy, loaded from
    ``reference_path`` (by default the same initial weights), never trained (no grad, excluded from the optimizer) and saved with
    the module's state so a restored run keeps exactly the reference it started with. The
    env-runner copy (``inference_only``) holds the LM alone.

    With ``lora`` (``model.lora``) the LM carries LoRA adapters (``rayrm.models.lora``) and
    its base weights are frozen; there is no ``ref_model``: the reference is the LM with its
    adapters switched off. The state (syncs, checkpoints) then holds the adapters and the
    value model only; the base comes from ``path``.

    Parameters live in ``dtype`` (the value head in float32); the learner's optimizer keeps
    float32 master weights (``rayrm.models.precision``). ``get_state`` returns torch tensors,
    not numpy arrays (numpy has no bfloat16), so weight syncs and checkpoints carry the
    parameters in their own dtype.
    """

    def setup(self) -> None:
        mc = self.model_config
        dtype = mc.get("dtype", "float32")
        self.lm = load_causal_lm(mc["path"], dtype)
        self.lora = mc.get("lora")  # LoRA: adapters on self.lm, the base frozen
        if self.lora:
            add_lora(self.lm, self.lora)
        self.temperature = float(mc.get("temperature", 1.0))
        self.top_k = int(mc.get("top_k", 0))
        self.top_p = float(mc.get("top_p", 1.0))
        self.forward_batch_size = mc.get("forward_batch_size")
        if self.inference_only:
            return
        self._head_checked = False  # on the first learner forward, on the learner's device
        self._build_critic(mc.get("critic", "shared"), mc.get("critic_path") or mc["path"], dtype)
        if not self.lora:  # with LoRA the reference is self.lm with its adapters off
            self.ref_model = load_causal_lm(mc.get("reference_path") or mc["path"], dtype)
            self.ref_model.requires_grad_(False)
        if mc.get("gradient_checkpointing", False):
            # Activations are recomputed in backward, block by block.
            for model in (self.lm, getattr(self, "critic", None)):
                if model is not None:
                    _enable_checkpointing(model)

    def _build_critic(self, kind: str, path: str, dtype: str) -> None:
        """The value model: a head on the policy trunk, a separate trunk and head, or none."""
        if kind == "none":
            return
        score = None
        if kind == "separate":
            self.critic, score = load_critic(path, dtype)
            hidden = hidden_size(self.critic.config)
        else:
            hidden = hidden_size(self.lm.config)
        self.value_head = nn.Linear(hidden, 1)  # float32 whatever the model's dtype
        # Zero: a new head predicts 0 everywhere instead of noise of the hidden states' scale
        # (about 1 per token with a 1/sqrt(hidden) init), which GAE turned into unit-scale
        # advantages of random sign on every token of the first updates (after whitening):
        # enough, on a tool task, to break a tool-call format the SFT policy wrote reliably.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        if score is not None:  # a reward model: the critic starts as its scorer
            with torch.no_grad():
                self.value_head.weight.copy_(score.weight.float())
                if score.bias is not None:
                    self.value_head.bias.copy_(score.bias.float())

    @property
    def has_critic(self) -> bool:
        return hasattr(self, "value_head")

    def get_non_inference_attributes(self) -> list[str]:
        return ["value_head", "critic", "ref_model"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (everything but the reference model)."""
        return [p for p in self.parameters() if p.requires_grad]

    def get_state(
        self,
        components: Any = None,
        *,
        not_components: Any = None,
        inference_only: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The module's tensors on CPU in their own dtype (bfloat16 included).

        RLlib's default turns the state into numpy arrays, which cannot hold bfloat16. With
        ``inference_only`` the learner-only parts (value head, critic, reference) are left out:
        what the env runners receive is the LM's weights alone.
        """
        skip = (
            self.get_non_inference_attributes()
            if inference_only and not self.inference_only
            else []
        )
        return {
            key: value.detach().cpu()
            for key, value in self.state_dict().items()
            if not any(key == a or key.startswith(a + ".") for a in skip)
            and not self._frozen_base(key)
        }

    def _frozen_base(self, key: str) -> bool:
        """A base weight of a LoRA policy: never trained, never synced or saved (it is read
        from ``path`` again)."""
        return bool(self.lora) and key.startswith("lm.") and not is_adapter_key(key)

    def set_state(self, state: dict[str, Any]) -> None:
        """Loads ``state``; a LoRA policy's state (adapters, heads) leaves its base as is."""
        if not self.lora:
            super().set_state(state)
            return
        tensors = {k: torch.as_tensor(v) for k, v in state.items()}
        missing, _ = self.load_state_dict(tensors, strict=False)
        lost = [k for k in missing if not self._frozen_base(k) and k.split(".")[0] in _SYNCED]
        if self.inference_only and lost:
            raise ValueError(f"the state lacks the policy's trained weights {lost[:3]}")

    @contextmanager
    def _reference(self) -> Iterator[nn.Module]:
        """The frozen reference policy: ``ref_model``, or under LoRA ``lm`` with its adapters
        switched off (no second copy)."""
        if self.lora:
            with adapters_disabled(self.lm) as base:
                yield base
        else:
            yield self.ref_model

    # ----------------------------------------------------------------- one-pass forwards
    def batch_rows(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids (N, L), length (N,), seq_id (N,))`` of a batch's token rows (seq ids
        default to one completion per row)."""
        obs = batch[Columns.OBS]
        input_ids = obs["input_ids"].long()  # (N, L)
        length = obs["length"].reshape(-1).long()  # (N,)
        seq_id = batch.get(SEQ_ID)
        if seq_id is None:
            seq_id = torch.arange(input_ids.shape[0], device=input_ids.device)
        return input_ids, length, seq_id.reshape(-1).long()

    def _hidden(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """(N, H) final hidden state at each row's position ``length - 1``: ONE trunk forward
        per completion, over its longest row."""
        input_ids, length, seq_id = self.batch_rows(batch)
        rep, inverse = group_rows(seq_id, length)
        L = int(length[rep].max().item())
        return trunk_hidden(model, input_ids[rep, :L], inverse, length - 1)

    def _logp_entropy(
        self, model: nn.Module, batch: dict[str, Any], hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        actions = batch[Columns.ACTIONS].reshape(-1)
        return token_logp_entropy(model, hidden, actions, temperature=self.temperature)

    def _logp(self, model: nn.Module, batch: dict[str, Any], hidden: torch.Tensor) -> torch.Tensor:
        """Log-probs alone, no graph: no softmax over the vocabulary."""
        actions = batch[Columns.ACTIONS].reshape(-1)
        return token_logp(model, hidden, actions, temperature=self.temperature)

    def value_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N,) float32 value predictions from (N, H) hidden states (the value head)."""
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()

    def _check_head(self) -> None:
        """Once: trunk + chunked head reproduce the model's logits (``check_head_path``), and
        a separate critic's trunk is causal (``check_causal_trunk``)."""
        if not self._head_checked:
            check_head_path(self.lm)
            critic = getattr(self, "critic", None)
            if critic is not None:
                mc = self.model_config
                check_causal_trunk(critic, name=f"critic {mc.get('critic_path') or mc['path']}")
            self._head_checked = True

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        self._check_head()
        hidden = self._hidden(self.lm, batch)  # (N, H)
        logp, entropy = self._logp_entropy(self.lm, batch, hidden)
        out = {LOGP: logp, ENTROPY: entropy}
        if self.has_critic:
            critic = getattr(self, "critic", None)
            value_hidden = hidden if critic is None else self._hidden(critic, batch)
            out[VF_PREDS] = self.value_of(value_hidden)
        return out

    @torch.no_grad()
    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """V(s_t) for every row, (N,).

        Raises:
            ValueError: the module has no value model (a critic-free estimator).
        """
        if not self.has_critic:
            raise ValueError(
                "this policy has no value model (algorithm.advantage_estimator is critic-free)"
            )
        return self.rollout_outputs(batch, logp=False, ref_logp=False)[VF_PREDS]

    @torch.no_grad()
    def compute_ref_logp(self, batch: dict[str, Any]) -> torch.Tensor:
        """log π_ref(a_t|s_t) of each row's action under the frozen reference model, (N,)."""
        return self.rollout_outputs(batch, logp=False, values=False)[REF_LOGP]

    @torch.no_grad()
    def rollout_outputs(
        self,
        batch: dict[str, Any],
        *,
        logp: bool = True,
        values: bool = True,
        ref_logp: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The no-grad forwards the learner connector needs, in minibatches of completions.

        ``forward_batch_size`` completions go through the models at a time, so the reference
        and value passes over a whole learner batch never hold more activations than a
        training minibatch. With a shared critic, one trunk pass gives log-probs and values.

        Returns:
            (N,) tensors under ``LOGP`` (current policy), ``VF_PREDS`` and ``REF_LOGP``, as
            asked.
        """
        self._check_head()
        _, _, seq_id = self.batch_rows(batch)
        ids = torch.unique(seq_id)
        step = int(self.forward_batch_size or len(ids))
        out: dict[str, torch.Tensor] = {}
        for lo in range(0, len(ids), step):
            rows = torch.nonzero(torch.isin(seq_id, ids[lo : lo + step])).squeeze(-1)  # (n,)
            part = take_rows(batch, rows)
            for key, value in self._rollout_outputs(part, logp, values, ref_logp).items():
                if key not in out:
                    out[key] = torch.empty(len(seq_id), dtype=value.dtype, device=value.device)
                out[key][rows] = value
        return out

    def _rollout_outputs(
        self, batch: dict[str, Any], logp: bool, values: bool, ref_logp: bool
    ) -> dict[str, torch.Tensor]:
        out = {}
        critic = getattr(self, "critic", None)
        values = values and self.has_critic
        if logp or (values and critic is None):
            hidden = self._hidden(self.lm, batch)
            if logp:
                out[LOGP] = self._logp(self.lm, batch, hidden)
            if values and critic is None:
                out[VF_PREDS] = self.value_of(hidden)
        if values and critic is not None:
            out[VF_PREDS] = self.value_of(self._hidden(critic, batch))
        if ref_logp:
            with self._reference() as ref:
                out[REF_LOGP] = self._logp(ref, batch, self._hidden(ref, batch))
        return out

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Generic RLlib path (one row = one state): next-token logits per row."""
        logits = head_logits(self.lm, self._hidden(self.lm, batch)) / self.temperature
        return {Columns.ACTION_DIST_INPUTS: logits}

    def get_inference_action_dist_cls(self) -> type[TorchCategorical]:
        return TorchCategorical

    def get_exploration_action_dist_cls(self) -> type[TorchCategorical]:
        return TorchCategorical

    def get_train_action_dist_cls(self) -> type[TorchCategorical]:
        return TorchCategorical

    # ----------------------------------------------------------------- KV-cached decoding
    def decode_start(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        """See :func:`decode_start` (runs the policy LM)."""
        return decode_start(self.lm, input_ids, attention_mask)

    def decode_step(
        self, tokens: torch.Tensor, cache: Any, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        """See :func:`decode_step` (runs the policy LM)."""
        return decode_step(self.lm, tokens, cache, attention_mask)

    def sample_next(
        self,
        logits: torch.Tensor,
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples (B,) tokens from (B, V) logits with the configured sampling settings."""
        return sample_tokens(
            logits,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            greedy=greedy,
            generator=generator,
        )


def _enable_checkpointing(model: nn.Module) -> None:
    """Hugging Face activation (gradient) checkpointing, non-reentrant; train mode, in which
    HF checkpoints (dropout is off, so nothing else changes). transformers 5 renamed the API."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()


def take_rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The observation, action and seq-id columns of the given rows."""
    obs = batch[Columns.OBS]
    out = {
        Columns.OBS: {k: v[rows] for k, v in obs.items()},
        Columns.ACTIONS: batch[Columns.ACTIONS][rows],
    }
    if batch.get(SEQ_ID) is not None:
        out[SEQ_ID] = batch[SEQ_ID][rows]
    return out
