"""``rayrm bench``'s command-line options: the benchmark's settings (``rayrm.bench.spec``) as
argparse arguments. Imports nothing heavy: every ``rayrm`` command builds the whole parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rayrm.bench.spec import (
    DEFAULT_LENGTHS,
    LEARN_ALGOS,
    PRESETS,
    SECTIONS,
    BenchSpec,
    LearnSettings,
)

__all__ = ["add_bench_arguments"]


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _choice_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated, non-empty subset of ``choices``."""

    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items or set(items) - set(choices):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices)}, got {text!r}"
            )
        return items

    return parse


_critic_list = _choice_list(("separate", "shared"))
_rollouts_list = _choice_list(("sync", "async"))


def _add_workload_arguments(parser: argparse.ArgumentParser, d: Any) -> None:
    """The benchmark's workload options; ``d`` is the default ``BenchSpec``."""

    g = parser.add_argument_group("workload")
    g.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="tiny",
        help="model size and completion length (mid: GPT-2 4x256, vocabulary 8000, 64 new "
        "tokens); the size flags below override it (default: %(default)s)",
    )
    g.add_argument("--n-layer", type=int, default=None, help=f"GPT-2 layers ({d.n_layer})")
    g.add_argument("--n-head", type=int, default=None, help=f"GPT-2 heads ({d.n_head})")
    g.add_argument("--n-embd", type=int, default=None, help=f"GPT-2 width ({d.n_embd})")
    g.add_argument("--vocab-size", type=int, default=None, help=f"({d.vocab_size}, >= 100)")
    g.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="prompts per iteration (%(default)s)"
    )
    g.add_argument("--max-new-tokens", type=int, default=None, help=f"({d.max_new_tokens})")
    g.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    g.add_argument("--num-epochs", type=int, default=d.num_epochs)
    g.add_argument("--num-minibatches", type=int, default=d.num_minibatches)
    g.add_argument("--kl-coef", type=float, default=d.kl_coef)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument(
        "--critics",
        type=_critic_list,
        default=["separate", "shared"],
        help="value models to run the default workload with, comma-separated: separate (a "
        "second GPT-2 trunk, as TRL's PPOTrainer) and/or shared (a head on the policy trunk, "
        "rayrm's default); the first one is used by the lengths section (default: %(default)s)",
    )
    g.add_argument("--seed", type=int, default=d.seed)


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Adds the benchmark's options (``rayrm bench`` and ``jobs/benchmark.py``) to ``parser``;
    returns its "run" group."""

    d = BenchSpec()
    _add_workload_arguments(parser, d)
    r = parser.add_argument_group("run")
    r.add_argument("--iterations", type=int, default=d.iterations, help="measured iterations")
    r.add_argument("--warmup", type=int, default=d.warmup, help="unmeasured first iterations")
    r.add_argument("--num-env-runners", type=int, default=d.num_env_runners)
    r.add_argument("--num-learners", type=int, default=d.num_learners)
    r.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of each configuration's local Ray (run.num_cpus; default: all cores, as "
        "rayrm train)",
    )
    r.add_argument(
        "--num-cpus-per-learner",
        type=float,
        default=None,
        help="resources.num_cpus_per_learner, hence the update's torch threads (default: "
        "rayrm train's, the cores the trial's other bundles leave on its local Ray)",
    )
    r.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the lockstep of the compared configurations this many times, alternating "
        "their order, and print the median, min and max of each figure (default: 1)",
    )
    r.add_argument(
        "--rollouts",
        type=_rollouts_list,
        default=["sync"],
        help="rayrm's rollouts in the default and learning sections, comma-separated: sync "
        "and/or async (algorithm.async_rollouts: the next batch sampled while the learner updates; "
        "without remote env runners in a second thread of the trial); the default section "
        "runs each in the same lockstep (default: sync)",
    )
    r.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    r.add_argument(
        "--lengths",
        type=_int_list,
        default=list(DEFAULT_LENGTHS),
        help="new-token counts of the length series (default: 16,32,64,128)",
    )
    r.add_argument(
        "--memory-vocab-sizes",
        type=_int_list,
        default=[100, 50_000],
        help="vocabulary sizes of the memory-per-step check (default: 100,50000)",
    )
    r.add_argument(
        "--learner-memory-vocab",
        type=int,
        default=151_936,
        help="vocabulary of the learner-update peak-memory check, chunked vs full logits "
        "(default: %(default)s, Qwen2.5's; 0 skips it)",
    )
    r.add_argument(
        "--samples-per-prompt",
        dest="group_samples",
        type=int,
        default=4,
        help="completions per prompt of the groups section's GRPO and RLOO (%(default)s)",
    )
    r.add_argument("--workdir", default=None, help="where models are built (default: a temp dir)")
    _add_learning_arguments(parser)
    _add_tools_arguments(parser)
    return r


def _add_learning_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's learning-section options."""

    ls = LearnSettings()
    learn = parser.add_argument_group("learning section")
    learn.add_argument(
        "--learning-iterations",
        type=int,
        default=ls.iterations,
        help=f"iterations of {ls.batch_size} completions per run (%(default)s)",
    )
    learn.add_argument(
        "--learning-seeds", type=_int_list, default=[0, 1, 2], help="(default: 0,1,2)"
    )
    learn.add_argument(
        "--learning-algos",
        type=_choice_list(LEARN_ALGOS),
        default=list(LEARN_ALGOS),
        help=f"comma-separated subset of {','.join(LEARN_ALGOS)} (default: all)",
    )
    learn.add_argument(
        "--learning-eval-samples",
        type=int,
        default=ls.eval_samples,
        help="completions per held-out row when a policy is evaluated (%(default)s)",
    )
    learn.add_argument(
        "--learning-demo-size",
        choices=("full", "smoke"),
        default=ls.demo_size,
        help="size of the demo task the runs start from (smoke: toy models, for tests)",
    )


def _add_tools_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's tools-section options (the rest are the shared workload options)."""
    tools = parser.add_argument_group("tools section")
    tools.add_argument(
        "--tools-model",
        default=None,
        help="starting policy of both trainers, a model directory whose chat template renders "
        "tools (default: a tiny random Qwen2 built in the workdir)",
    )
    tools.add_argument(
        "--tools-rows",
        default=None,
        help="Calculator rows (a, b, answer) as JSON Lines (default: 64 built in the workdir)",
    )
    tools.add_argument(
        "--tools-max-new-tokens", type=int, default=96, help="tokens per turn (%(default)s)"
    )
    tools.add_argument(
        "--tools-max-total-tokens",
        type=int,
        default=1152,
        help="tokens of a whole episode: opening, turns, tool results (%(default)s; the tools "
        "demo's model: 192)",
    )
    tools.add_argument(
        "--tools-max-prompt-tokens",
        type=int,
        default=768,
        help="longest opening: the tools' system prompt and the question (%(default)s; the "
        "tools demo's model: 64)",
    )
    tools.add_argument(
        "--tools-success-window",
        type=int,
        default=2,
        help="last iterations whose mean success rate is the final one (%(default)s)",
    )
