"""Using a trained policy: load it from a checkpoint, export it, sample from it.

A rayrm checkpoint holds the RLlib state plus ``rayrm_config.yaml``, ``tokenizer/`` and
``hf_config/`` (the policy's original Hugging Face config), so loading needs neither Ray nor
the original model directory: the policy is rebuilt from its config and given the trained
weights (the ``lm.`` part of the learner's RLModule state).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from rayrm.algorithm import HF_CONFIG_DIR, POLICY_STATE_FILE, TOKENIZER_DIR
from rayrm.config import ConfigError, RunConfig, load_config
from rayrm.core_algos import sample_tokens
from rayrm.env_runner import left_pad
from rayrm.train import CHECKPOINT_MARKER, find_checkpoint

LM_PREFIX = "lm."
REF_PREFIX = "ref_model."


def _module_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / POLICY_STATE_FILE
    if not path.exists():
        raise ConfigError(f"{ckpt}: not a complete rayrm checkpoint (missing {POLICY_STATE_FILE})")
    with open(path, "rb") as f:
        return pickle.load(f)


def _build(ckpt: Path, state: dict[str, Any], prefix: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ckpt / HF_CONFIG_DIR)
    model = AutoModelForCausalLM.from_config(config)
    weights = {
        k[len(prefix) :]: torch.as_tensor(v) for k, v in state.items() if k.startswith(prefix)
    }
    model.load_state_dict(weights, strict=True)
    return model.eval()


def load_policy(run_or_checkpoint: str | Path) -> tuple[torch.nn.Module, Any, RunConfig, Path]:
    """Loads the trained policy LM.

    Returns:
        ``(model, tokenizer, run_config, checkpoint_dir)``.
    """
    from transformers import AutoTokenizer

    ckpt = find_checkpoint(run_or_checkpoint)
    state = _module_state(ckpt)
    model = _build(ckpt, state, LM_PREFIX)
    tokenizer = AutoTokenizer.from_pretrained(ckpt / TOKENIZER_DIR)
    cfg = load_config(ckpt / CHECKPOINT_MARKER, check_paths=False)
    return model, tokenizer, cfg, ckpt


def load_reference(run_or_checkpoint: str | Path) -> torch.nn.Module:
    """The frozen reference model stored in a checkpoint."""
    ckpt = find_checkpoint(run_or_checkpoint)
    return _build(ckpt, _module_state(ckpt), REF_PREFIX)


def export_policy(run_or_checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Writes the policy as a Hugging Face model directory (weights, config, tokenizer)."""
    model, tokenizer, _, _ = load_policy(run_or_checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    max_prompt_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
) -> list[str]:
    """Samples one completion per prompt with the KV cache (stops at EOS or the limit)."""
    from rayrm.policy import decode_start, decode_step

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False)["input_ids"][-max_prompt_tokens:] or [eos]
        encoded.append(torch.tensor(ids).numpy())
    ids, mask = left_pad(encoded, pad)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    logits, cache = decode_start(model, ids, mask)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        tokens, _ = sample_tokens(
            logits,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            generator=generator,
        )
        for i, t in enumerate(tokens.tolist()):
            if not done[i]:
                done[i] = t == eos
                if not done[i]:
                    out[i].append(t)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = decode_step(model, tokens, cache, mask)
    return [tokenizer.decode(o, skip_special_tokens=True) for o in out]


def generate(
    run_or_checkpoint: str | Path,
    prompts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int | None = None,
    greedy: bool = False,
    seed: int = 0,
) -> list[tuple[str, list[str]]]:
    """``rayrm generate``: completions per prompt from a trained policy (run's sampling settings)."""
    model, tokenizer, cfg, _ = load_policy(run_or_checkpoint)
    g = cfg.generation
    results = []
    for prompt in prompts:
        completions = sample_completions(
            model,
            tokenizer,
            [prompt] * num_samples,
            max_new_tokens=max_new_tokens or g.max_new_tokens,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            greedy=greedy,
            seed=seed,
        )
        results.append((prompt, completions))
    return results
