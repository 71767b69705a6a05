"""The checkpoint layout, and using a trained policy: find, load, export, sample.

A rayrm checkpoint is RLlib's algorithm checkpoint plus what the named constants below say:
the resolved run config (:data:`RESOLVED_CONFIG_FILE`, which also marks a directory as a rayrm
checkpoint), the tokenizer (:data:`TOKENIZER_DIR`) and the policy's original Hugging Face
config and generation config (:data:`HF_CONFIG_DIR`); the algorithm's own state (β, reward
moments) is under :data:`RAYRM_STATE` in RLlib's state. So loading needs neither Ray nor the
original model directory: the policy is rebuilt from its config and given the trained weights
(the ``lm.`` part of the learner's module state, ``rllib_compat.MODULE_STATE_FILE``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from envs.tokenization import PromptCodec
from rayrm.config import ConfigError, RunConfig, load_config
from rayrm.models.decoding import sample_completions
from rayrm.models.hf_files import stop_token_ids_of
from rayrm.models.loading import DTYPES
from rayrm.rl.rllib_compat import MODULE_STATE_FILE

RESOLVED_CONFIG_FILE = "rayrm_config.yaml"
"""The run config a checkpoint was trained with, paths absolute; marks a rayrm checkpoint."""
TOKENIZER_DIR = "tokenizer"
HF_CONFIG_DIR = "hf_config"
"""The policy's ``config.json`` (dropout as published) and ``generation_config.json``."""
RAYRM_STATE = "rayrm_state"
"""Key of the algorithm's own state (KL controller, reward moments) in RLlib's state."""
LM_PREFIX = "lm."
REF_PREFIX = "ref_model."


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint, a trial folder or an experiment folder.

    Picks the newest checkpoint when given a run folder.

    Raises:
        ConfigError: nothing rayrm-made under ``path``.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ConfigError(f"{p}: no such run or checkpoint")
    if (p / RESOLVED_CONFIG_FILE).exists():
        return p
    found = sorted(
        (c.parent for c in p.rglob(RESOLVED_CONFIG_FILE)),
        key=lambda c: (c.stat().st_mtime, c.name),
    )
    if not found:
        raise ConfigError(f"{p}: no rayrm checkpoint found (looked for */{RESOLVED_CONFIG_FILE})")
    return found[-1]


def write_rayrm_files(checkpoint_dir: str | Path, cfg: RunConfig, tokenizer: Any) -> None:
    """What a rayrm checkpoint holds beside RLlib's state (see the module docstring)."""
    from transformers import AutoConfig, GenerationConfig

    ckpt = Path(checkpoint_dir)
    cfg.save_yaml(ckpt / RESOLVED_CONFIG_FILE)
    tokenizer.save_pretrained(str(ckpt / TOKENIZER_DIR))
    hf_dir = str(ckpt / HF_CONFIG_DIR)
    AutoConfig.from_pretrained(cfg.model.path).save_pretrained(hf_dir)
    if (Path(cfg.model.path) / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(cfg.model.path).save_pretrained(hf_dir)


def _module_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / MODULE_STATE_FILE
    if not path.exists():
        raise ConfigError(f"{ckpt}: not a complete rayrm checkpoint (missing {MODULE_STATE_FILE})")
    with open(path, "rb") as f:
        return pickle.load(f)


def _build(ckpt: Path, state: dict[str, Any], prefix: str, dtype: str) -> torch.nn.Module:
    """The causal LM under ``prefix`` of the module state, in ``dtype`` (the run's)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ckpt / HF_CONFIG_DIR)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    weights = {
        k[len(prefix) :]: torch.as_tensor(v) for k, v in state.items() if k.startswith(prefix)
    }
    model.load_state_dict(weights, strict=True)
    return model.eval()


def load_policy(run_or_checkpoint: str | Path) -> tuple[torch.nn.Module, Any, RunConfig, Path]:
    """Loads the trained policy LM, in the run's ``model.dtype``.

    Returns:
        ``(model, tokenizer, run_config, checkpoint_dir)``.
    """
    from transformers import AutoTokenizer

    ckpt = find_checkpoint(run_or_checkpoint)
    state = _module_state(ckpt)
    cfg = load_config(ckpt / RESOLVED_CONFIG_FILE, check_paths=False)
    model = _build(ckpt, state, LM_PREFIX, cfg.model.dtype)
    tokenizer = AutoTokenizer.from_pretrained(ckpt / TOKENIZER_DIR)
    return model, tokenizer, cfg, ckpt


def load_reference(run_or_checkpoint: str | Path) -> torch.nn.Module:
    """The frozen reference model stored in a checkpoint."""
    ckpt = find_checkpoint(run_or_checkpoint)
    cfg = load_config(ckpt / RESOLVED_CONFIG_FILE, check_paths=False)
    return _build(ckpt, _module_state(ckpt), REF_PREFIX, cfg.model.dtype)


def checkpoint_codec(
    ckpt: Path, cfg: RunConfig, tokenizer: Any, *, max_prompt_tokens: int | None = None
) -> PromptCodec:
    """The run's prompt codec, its stop ids read from the checkpoint (no model.path needed)."""
    declared = stop_token_ids_of(ckpt / HF_CONFIG_DIR)
    return PromptCodec(
        tokenizer,
        max_prompt_tokens=max_prompt_tokens or cfg.data.max_prompt_tokens,
        chat_template=cfg.data.chat_template,
        stop_token_ids=[*declared, *cfg.generation.stop_token_ids],
        stop_strings=cfg.generation.stop_strings,
    )


def export_policy(run_or_checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Writes the policy as a Hugging Face model directory (weights in the run's dtype, config,
    generation config, tokenizer)."""
    from transformers import GenerationConfig

    model, tokenizer, _, ckpt = load_policy(run_or_checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if (ckpt / HF_CONFIG_DIR / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(ckpt / HF_CONFIG_DIR).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def generate(
    run_or_checkpoint: str | Path,
    prompts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int | None = None,
    greedy: bool = False,
    seed: int = 0,
) -> list[tuple[str, list[str]]]:
    """``rayrm generate``: completions per prompt from a trained policy (run's sampling settings,
    special tokens, chat template and stop tokens)."""
    model, tokenizer, cfg, ckpt = load_policy(run_or_checkpoint)
    codec = checkpoint_codec(ckpt, cfg, tokenizer)
    g = cfg.generation
    results = []
    for prompt in prompts:
        completions = sample_completions(
            model,
            codec,
            [prompt] * num_samples,
            max_new_tokens=max_new_tokens or g.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            greedy=greedy,
            seed=seed,
        )
        results.append((prompt, completions))
    return results
