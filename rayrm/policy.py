"""The policy RLModule: a Hugging Face causal LM with a value head, plus the frozen reference.

What belongs here: loading Hugging Face models for RL (dropout off), the RLModule's forward
passes (training, values, reference log-probs) and the KV-cached decoding API that the env
runner drives. Losses live in ``rayrm.learner``; math in ``rayrm.core_algos``.

Observations are ``{"input_ids": (N, L), "length": (N, 1)}`` rows (see
``envs.text_generation``): prompt tokens then generated tokens, right-padded. A row's action
is the token that follows its ``length`` real tokens, so its logits sit at position
``length - 1``. Rows of the same completion are prefixes of one another, so — thanks to the
causal mask — ONE forward pass over a completion's longest row yields the logits and values
of all its rows exactly. Rows carry a ``seq_id`` column (added by the learner connector) that
says which rows share a completion; without it each row is its own sequence.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from rayrm.core_algos import entropy_from_logits, sample_tokens

SEQ_ID = "seq_id"
"""Batch column: integer id of the completion a token row belongs to (rows of one id share a
prefix, so one forward pass serves them all)."""

VF_PREDS = Columns.VF_PREDS
LOGP = "logp"
ENTROPY = "entropy"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _zero_dropout(config: Any) -> None:
    """Sets every dropout probability of a Hugging Face config to 0.

    Sampling runs in eval mode and training in train mode; with dropout on, the PPO ratio and
    the KL to the reference would be noisy even before any update.
    """
    for key, value in list(config.to_dict().items()):
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(config, key, 0.0)


def load_causal_lm(path: str, dtype: str = "float32") -> nn.Module:
    """Loads ``AutoModelForCausalLM`` from a local directory with dropout switched off."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    _zero_dropout(config)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=_DTYPES[dtype])
    return model.eval()


def load_trunk(path: str, dtype: str = "float32") -> nn.Module:
    """Loads ``AutoModel`` (no LM head) for a separate critic, dropout off."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    _zero_dropout(config)
    return AutoModel.from_pretrained(path, config=config, dtype=_DTYPES[dtype]).eval()


def _hidden_size(config: Any) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        if hasattr(config, key):
            return int(getattr(config, key))
    raise ValueError(f"cannot find the hidden size in {type(config).__name__}")


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
    "separate"), ``critic_path``, ``temperature``, ``top_k``, ``top_p``.

    The learner copy also holds ``ref_model``: the frozen reference policy, loaded from the
    same initial weights, never trained (no grad, excluded from the optimizer) and saved with
    the module's state so a restored run keeps exactly the reference it started with. The
    env-runner copy (``inference_only``) holds the LM alone.
    """

    def setup(self) -> None:
        mc = self.model_config
        self.lm = load_causal_lm(mc["path"], mc.get("dtype", "float32"))
        self.temperature = float(mc.get("temperature", 1.0))
        self.top_k = int(mc.get("top_k", 0))
        self.top_p = float(mc.get("top_p", 1.0))
        if self.inference_only:
            return
        if mc.get("critic", "shared") == "separate":
            self.critic = load_trunk(
                mc.get("critic_path") or mc["path"], mc.get("dtype", "float32")
            )
            hidden = _hidden_size(self.critic.config)
        else:
            hidden = _hidden_size(self.lm.config)
        self.value_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.value_head.bias)
        self.ref_model = load_causal_lm(mc["path"], mc.get("dtype", "float32"))
        self.ref_model.requires_grad_(False)

    def get_non_inference_attributes(self) -> list[str]:
        return ["value_head", "critic", "ref_model"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (everything but the reference model)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- one-pass forwards
    def _rows(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs = batch[Columns.OBS]
        input_ids = obs["input_ids"].long()  # (N, L)
        length = obs["length"].reshape(-1).long()  # (N,)
        seq_id = batch.get(SEQ_ID)
        if seq_id is None:
            seq_id = torch.arange(input_ids.shape[0], device=input_ids.device)
        return input_ids, length, seq_id.reshape(-1).long()

    def _sequence_outputs(
        self, model: nn.Module, batch: dict[str, Any], *, want_hidden: bool, want_logits: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Runs ``model`` once per completion and gathers each row's position.

        Returns:
            ``(logits, hidden)``: (N, V) tempered logits and (N, H) last hidden states at each
            row's position ``length - 1`` (None when not requested).
        """
        input_ids, length, seq_id = self._rows(batch)
        rep, inverse = group_rows(seq_id, length)
        rep_len = length[rep]  # (G,)
        L = int(rep_len.max().item())
        ids = input_ids[rep, :L]  # (G, L)
        mask = torch.arange(L, device=ids.device)[None, :] < rep_len[:, None]  # (G, L)
        out = model(
            input_ids=ids,
            attention_mask=mask.long(),
            output_hidden_states=want_hidden,
            use_cache=False,
        )
        pos = length - 1  # (N,)
        logits = hidden = None
        if want_logits:
            logits = out.logits[inverse, pos].float() / self.temperature  # (N, V)
        if want_hidden:
            states = (
                out.hidden_states if hasattr(out, "hidden_states") and out.hidden_states else None
            )
            last = states[-1] if states is not None else out.last_hidden_state
            hidden = last[inverse, pos]  # (N, H)
        return logits, hidden

    def _values_from(self, batch: dict[str, Any], hidden: torch.Tensor | None) -> torch.Tensor:
        if getattr(self, "critic", None) is not None or hidden is None:
            trunk = getattr(self, "critic", None) or self.lm
            _, hidden = self._sequence_outputs(trunk, batch, want_hidden=True, want_logits=False)
        assert hidden is not None
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        shared = getattr(self, "critic", None) is None
        logits, hidden = self._sequence_outputs(
            self.lm, batch, want_hidden=shared, want_logits=True
        )
        assert logits is not None
        logp_all = torch.log_softmax(logits, dim=-1)  # (N, V)
        actions = batch[Columns.ACTIONS].long().reshape(-1, 1)
        return {
            LOGP: logp_all.gather(-1, actions).squeeze(-1),  # (N,)
            ENTROPY: entropy_from_logits(logits),  # (N,)
            VF_PREDS: self._values_from(batch, hidden if shared else None),  # (N,)
        }

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """V(s_t) for every row, (N,)."""
        return self._values_from(batch, None)

    @torch.no_grad()
    def compute_ref_logp(self, batch: dict[str, Any]) -> torch.Tensor:
        """log π_ref(a_t|s_t) of each row's action under the frozen reference model, (N,)."""
        logits, _ = self._sequence_outputs(
            self.ref_model, batch, want_hidden=False, want_logits=True
        )
        assert logits is not None
        actions = batch[Columns.ACTIONS].long().reshape(-1, 1)
        return torch.log_softmax(logits, dim=-1).gather(-1, actions).squeeze(-1)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Generic RLlib path (one row = one state): next-token logits per row."""
        logits, _ = self._sequence_outputs(self.lm, batch, want_hidden=False, want_logits=True)
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


@torch.no_grad()
def decode_start(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Runs the prompts through ``model`` and returns next-token logits plus the KV cache.

    Args:
        model: a Hugging Face causal LM.
        input_ids: (B, P) LEFT-padded prompt ids.
        attention_mask: (B, P) 1 for real tokens.

    Returns:
        ``(logits, cache)``: (B, V) float32 logits at the last position, and the cache.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
    )
    return out.logits[:, -1].float(), _cache_of(out)


@torch.no_grad()
def decode_step(
    model: nn.Module, tokens: torch.Tensor, cache: Any, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Feeds one token per row through the cache: cost per token independent of length.

    Args:
        model: the model that built ``cache``.
        tokens: (B,) the tokens just sampled.
        cache: the cache from the previous call.
        attention_mask: (B, P + t) mask INCLUDING the new tokens.

    Returns:
        ``(logits, cache)``: (B, V) next-token logits and the grown cache.
    """
    position_ids = attention_mask.sum(-1, keepdim=True) - 1  # (B, 1)
    out = model(
        input_ids=tokens[:, None],
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **{_cache_kwarg(model): cache},
    )
    return out.logits[:, -1].float(), _cache_of(out)


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.2x renamed ``past_key_values`` to ``cache``; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
