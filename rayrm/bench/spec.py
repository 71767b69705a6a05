"""The benchmark's settings and their defaults, without its machinery: what ``rayrm``'s
argument parser needs (every command builds it, so this module imports nothing heavy; the
benchmark's modules import torch, transformers and RLlib).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envs.tasks.arithmetic import Calculator

__all__ = [
    "DEFAULT_LENGTHS",
    "GROUP_ALGOS",
    "LEARN_ALGOS",
    "PRESETS",
    "SECTIONS",
    "BenchSpec",
    "LearnSettings",
    "ToolsSettings",
]

SECTIONS = ("default", "lengths", "memory", "trl", "groups", "learning", "turns", "tools")
"""``rayrm bench --sections``: every section, in the order they run."""
DEFAULT_LENGTHS = (16, 32, 64, 128)
"""New-token counts of the lengths section's series."""
GROUP_ALGOS = ("grpo", "rloo")
"""The critic-free estimators compared with TRL's trainers of the same name."""
LEARN_ALGOS = ("ppo", *GROUP_ALGOS)
"""The learning section's algorithms."""


@dataclass
class BenchSpec:
    """One configuration: model size, batch, lengths, PPO shape and Ray resources."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = 100
    batch_size: int = 32
    max_new_tokens: int = 20
    max_prompt_tokens: int = 32
    iterations: int = 20
    warmup: int = 2
    num_env_runners: int = 0
    num_learners: int = 0
    num_epochs: int = 2
    num_minibatches: int = 2
    kl_coef: float = 0.05
    lr: float = 1.0e-5
    critic: str = "separate"
    seed: int = 0
    estimator: str = "gae"
    samples_per_prompt: int = 1
    async_rollouts: bool = False
    num_cpus: int | None = None
    """``run.num_cpus``: CPUs of the local Ray (None: all cores, as ``rayrm train``)."""
    num_cpus_per_learner: float | None = None
    """``resources.num_cpus_per_learner`` (None: ``rayrm train``'s, the cores the trial's
    other bundles leave on its local Ray)."""
    matched_threads: int = 1
    """torch threads of the TRL steps run at rayrm's thread count: those of the update of
    rayrm's synchronous trial on this machine (set by the benchmark, see
    ``rayrm.bench.run.update_threads``)."""


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "mid": {"n_layer": 4, "n_head": 4, "n_embd": 256, "vocab_size": 8000, "max_new_tokens": 64},
}
"""``rayrm bench --preset``: :class:`BenchSpec` fields that differ from the tiny defaults."""


@dataclass(frozen=True)
class LearnSettings:
    """The learning section's workload (besides the task, which is the demo's)."""

    iterations: int = 30
    batch_size: int = 32
    samples_per_prompt: int = 4
    max_new_tokens: int = 20
    max_prompt_tokens: int = 16
    num_epochs: int = 2
    num_minibatches: int = 2
    lr: float = 1.0e-4
    kl_coef: float = 0.05
    eval_samples: int = 2
    demo_size: str = "full"
    num_cpus: int | None = None
    """``run.num_cpus`` of rayrm's runs (None: all cores, as ``rayrm train``)."""
    num_cpus_per_learner: float | None = None
    """``resources.num_cpus_per_learner`` of rayrm's runs (None: ``rayrm train``'s)."""


@dataclass(frozen=True)
class ToolsSettings:
    """The tools section's workload: the policy, the rows and the shapes both trainers share.

    Attributes:
        model: The starting policy (a Hugging Face directory whose tokenizer has a chat template
            that renders tools and Hermes tool calls), e.g. the tools demo's SFT model.
        rows: The prompts file: rows of ``a``, ``b``, ``answer`` (``arithmetic.write_rows``).
        max_new_tokens: Tokens per assistant turn.
        max_total_tokens: Tokens of a whole episode (opening, turns, tool results).
        max_prompt_tokens: Longest opening (the tools' system prompt and the question).
        success_window: Last iterations whose success rate is the final one.
    """

    model: str
    rows: str
    batch_size: int = 16
    samples_per_prompt: int = 4
    max_new_tokens: int = 96
    max_total_tokens: int = 1152
    max_prompt_tokens: int = 768
    num_epochs: int = 1
    num_minibatches: int = 2
    lr: float = 1.0e-5
    kl_coef: float = 0.05
    warmup: int = 1
    iterations: int = 4
    success_window: int = 2
    seed: int = 0
    num_cpus: int | None = None
    num_cpus_per_learner: float | None = None
    matched_threads: int = 1
    """torch threads of TRL: those of rayrm's update (set by :func:`measure_tools`)."""

    @property
    def max_turns(self) -> int:
        return int(Calculator.max_turns or 1)
