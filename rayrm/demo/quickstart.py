"""The quickstart workspace: a tiny local policy, prompts and a run config (nothing downloaded).

The models themselves are built by ``rayrm.models.tiny``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from envs.builtin import BUILTIN_PROMPTS
from rayrm.data.prompts import write_prompts_jsonl
from rayrm.models.tiny import build_tiny_policy

QUICKSTART_CONFIG = "config.yaml"


def write_quickstart(workdir: str | Path, *, num_iterations: int = 60) -> Path:
    """Builds a tiny policy and a prompt file in ``workdir`` and writes a run config for them.

    The run learns the built-in rule reward (``envs.builtin:vowel_reward``: the fraction of
    vowels in the completion) from a randomly initialised 2-layer GPT-2 on CPU.

    Returns:
        Path of the written YAML config.
    """

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
        "algorithm": {
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
