"""Tiny local models and a quickstart workspace: nothing is downloaded, everything is real.

The quickstart, the tests and the benchmarks build their models here from small configs and
``save_pretrained`` them, so the code under test loads them exactly as users load theirs
(``from_pretrained`` on a local directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

QUICKSTART_CONFIG = "config.yaml"


def build_tiny_policy(
    out_dir: str | Path,
    tokenizer: Any = None,
    *,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 128,
    seed: int = 0,
) -> str:
    """Writes a randomly initialised GPT-2 causal LM (plus tokenizer) to ``out_dir``.

    Args:
        out_dir: target directory (created).
        tokenizer: a Hugging Face tokenizer; default: the built-in character tokenizer.
        n_layer, n_head, n_embd, n_positions: GPT-2 size.
        seed: torch seed for the initial weights.

    Returns:
        ``out_dir`` as a string.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from envs.builtin import build_char_tokenizer

    tokenizer = tokenizer or build_char_tokenizer()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def write_quickstart(workdir: str | Path, *, num_iterations: int = 60) -> Path:
    """Builds a tiny policy and a prompt file in ``workdir`` and writes a run config for them.

    The run learns the built-in rule reward (``envs.builtin:vowel_reward``: the fraction of
    vowels in the completion) from a randomly initialised 2-layer GPT-2 on CPU.

    Returns:
        Path of the written YAML config.
    """
    from envs.builtin import BUILTIN_PROMPTS
    from envs.prompts import write_prompts_jsonl

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "policy"
    if not (policy / "config.json").exists():
        build_tiny_policy(policy)
    prompts = work / "prompts.jsonl"
    write_prompts_jsonl(prompts, BUILTIN_PROMPTS)
    config = {
        "name": "quickstart",
        "seed": 0,
        "model": {"path": str(policy)},
        "data": {"prompts": str(prompts), "max_prompt_tokens": 24},
        "generation": {"max_new_tokens": 16},
        "reward": {
            "source": "function",
            "function": "envs.builtin:vowel_reward",
            "num_cpus_per_actor": 0.5,
        },
        "ppo": {
            "batch_size": 32,
            "num_minibatches": 2,
            "num_epochs": 2,
            "lr": 3.0e-4,
            "vf_coef": 0.5,
            "kl_coef": 0.05,
            "adaptive_kl": True,
            "target_kl": 3.0,
            "kl_horizon": 1000,
        },
        "resources": {"num_env_runners": 0},
        "run": {
            "num_iterations": num_iterations,
            "checkpoint_every": 10,
            "storage_path": str(work / "runs"),
        },
    }
    path = work / QUICKSTART_CONFIG
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
