"""The ``rayrm`` command line: every command's arguments, in one place.

Commands: ``train``, ``tune``, ``quickstart``, ``demo``, ``sft``, ``train-rm``, ``data
inspect``, ``data pairs``, ``serve-rm``, ``explain``, ``generate``, ``export``, ``bench``,
``config schema``, ``config reference``. Each handler imports what it runs when it runs (torch,
transformers and Ray take seconds to import), so ``rayrm --help`` and config mistakes are
instant.

User mistakes (bad config, missing paths, nothing to resume) exit with code 2 and one line on
stderr naming the key or file; everything else is a real error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rayrm.config import ConfigError
from rayrm.console import LOG_NAME, quiet, say, warn

Handler = Callable[[argparse.Namespace], int]


def add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    """The one ``--set KEY=VALUE`` option (repeatable; values are YAML)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: show Ray's, RLlib's and transformers' output, not just rayrm's lines."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show everything Ray, RLlib and transformers print (default: in the run's rayrm.log)",
    )


def _config_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
    config_help: str,
    example: str,
) -> argparse.ArgumentParser:
    """A command run from one YAML config: ``CONFIG [--set ...] [--resume]``."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("config", help=config_help)
    add_overrides(p, example)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    add_verbose(p)
    return p


def _add_training(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _config_command(
        sub, "train", "run one training (a one-trial Tune experiment)", "YAML run config",
        "algorithm.lr=1e-5",
    )  # fmt: skip
    _config_command(
        sub, "tune", "hyperparameter sweep (the config's `tune` section) as one Tune experiment",
        "YAML run config with a `tune` section", "tune.num_samples=8",
    )  # fmt: skip
    q = sub.add_parser(
        "quickstart", help="build a tiny local model and prompt set, then train it (CPU, minutes)"
    )
    q.add_argument(
        "--dir", default="rayrm-quickstart", help="workspace folder (default: %(default)s)"
    )
    q.add_argument("--iterations", type=int, default=60)
    add_verbose(q)
    add_overrides(q, "model.dtype=bfloat16")
    d = sub.add_parser("demo", help="the three RLHF stages end to end, offline on CPU (minutes)")
    d.add_argument("--dir", default="rayrm-demo", help="workspace folder (default: %(default)s)")
    d.add_argument(
        "--size",
        choices=("full", "smoke"),
        default="full",
        help="full: the demo (minutes on 2 CPU cores); smoke: toy sizes (default: %(default)s)",
    )
    d.add_argument(
        "--algo",
        choices=("ppo", "grpo"),
        default="ppo",
        help="the RL stage: PPO with a value head, or critic-free GRPO (default: %(default)s)",
    )
    d.add_argument(
        "--task",
        choices=("sentiment", "tools", "game", "overoptimise"),
        default="sentiment",
        help="sentiment: SFT, reward model, PPO against it, judged by VADER; tools, game: "
        "SFT on traces, then multi-turn RL paid by the environment; overoptimise: the "
        "sentiment task without a KL penalty, one reward model against an ensemble, over "
        "--seeds (default: %(default)s)",
    )
    d.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="--task overoptimise: seeds 0..N-1, each its own data, models and runs "
        "(default: %(default)s)",
    )
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_verbose(d)


def _add_stages(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, help_text, config_help, example in (
        ("sft", "supervised fine-tuning on Ray Train",
         "YAML SFT config (see jobs/configs/sft_example.yaml)", "train.lr=1e-4"),
        ("train-rm", "reward-model training on preference pairs (Ray Train)",
         "YAML reward-model config (see jobs/configs/rm_example.yaml)", "train.epochs=3"),
    ):  # fmt: skip
        p = _config_command(sub, name, help_text, config_help, example)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "train-rm":
            p.add_argument(
                "--members",
                type=int,
                default=None,
                metavar="K",
                help="train K reward models as one ensemble (ensemble.members=K): each its own "
                "seed and bootstrap resample, ensemble.json in output.dir for reward.source: "
                "ensemble",
            )
    data = sub.add_parser("data", help="inspect datasets, build preference pairs")
    dsub = data.add_subparsers(dest="data_command", required=True)
    i = dsub.add_parser("inspect", help="rows, columns, lengths")
    i.add_argument("path", help="dataset file (.parquet, .jsonl, .json, .txt)")
    i.add_argument(
        "--tokenizer", default=None, help="tokenizer (or model) directory: adds token lengths"
    )
    i.add_argument("--max-rows", type=int, default=None, help="measure only the first N rows")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p = dsub.add_parser("pairs", help="sample two completions per prompt, label with a judge")
    p.add_argument(
        "--policy", required=True, help="Hugging Face causal-LM dir, or a rayrm run/checkpoint"
    )
    p.add_argument("--prompts", required=True, help="prompts file (.parquet/.jsonl)")
    p.add_argument(
        "--judge", required=True, help="'module:function' scoring fn(prompts, completions)"
    )
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument(
        "--num-pairs", type=int, default=None, help="pairs wanted (default: one try per prompt)"
    )
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-prompt-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--min-margin", type=float, default=0.0, help="drop pairs whose scores differ by <= this"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--against",
        default=None,
        help="a second policy (as --policy) that samples the other completion of each pair "
        "(default: both from --policy)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_using(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("serve-rm", help="start (or --stop) a shared, named reward service")
    s.add_argument("config", nargs="?", help="YAML with a `reward` section (a run config works)")
    s.add_argument("--name", help="service name (default: the config's reward.pool_name)")
    s.add_argument("--stop", metavar="NAME", help="stop the service NAME instead")
    s.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else 'auto')")
    e = sub.add_parser("explain", help="per-token reward attribution and KL to the reference")
    e.add_argument("--prompt", required=True, help="prompt text")
    e.add_argument(
        "--completion", help="completion text (default: the --run policy's greedy completion)"
    )
    e.add_argument("--reward-model", help="reward-model directory (default: the run's reward.path)")
    e.add_argument("--run", help="run folder or checkpoint: adds the per-token KL")
    e.add_argument("--eos", action="store_true", help="the completion ended with EOS")
    e.add_argument("--html", metavar="FILE", help="also write an HTML page")
    e.add_argument("--no-color", action="store_true", help="plain terminal output")
    g = sub.add_parser("generate", help="sample from a trained policy")
    g.add_argument("run", help="run folder, trial folder or checkpoint")
    g.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    x = sub.add_parser("export", help="write the policy as a Hugging Face model directory")
    x.add_argument("run", help="run folder, trial folder or checkpoint")
    x.add_argument("out_dir")
    x.add_argument(
        "--adapter",
        action="store_true",
        help="a LoRA run's adapter as a peft directory instead of the merged model",
    )
    c = sub.add_parser("config", help="config tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    schema = csub.add_parser(
        "schema", help="print the JSON Schema of the config files (for editors' completion)"
    )
    schema.add_argument(
        "--kind",
        choices=("run", "sft", "rm"),
        default="run",
        help="run (train/tune), sft or rm (train-rm) configs (default: %(default)s)",
    )
    csub.add_parser(
        "reference",
        help="print the configuration reference (Markdown; docs/configuration-reference.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``rayrm`` argument parser (every command)."""
    from rayrm.bench.options import add_bench_arguments

    p = argparse.ArgumentParser(
        prog="rayrm",
        description="RLHF on Ray: RLlib PPO against reward models, run as Tune experiments.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_training(sub)
    _add_stages(sub)
    _add_using(sub)
    bench = sub.add_parser("bench", help="throughput and memory benchmark, optionally vs TRL's PPO")
    add_verbose(add_bench_arguments(bench))
    return p


# ------------------------------------------------------------------------------ handlers
def _checked(args: argparse.Namespace) -> None:
    """A bad config or path fails in one line before Tune and RLlib are imported (seconds):
    the run loads the config again, then at the cost of a dictionary's validation."""
    from rayrm.config import load_config

    load_config(args.config, args.overrides)


def _train(args: argparse.Namespace) -> int:
    _checked(args)
    from rayrm.experiment.train import main_train

    return main_train(args.config, args.overrides, args.resume, args.verbose)


def _tune(args: argparse.Namespace) -> int:
    _checked(args)
    from rayrm.experiment.sweep import main_tune

    return main_tune(args.config, args.overrides, args.resume, args.verbose)


def _quickstart(args: argparse.Namespace) -> int:
    from rayrm.demo.quickstart import write_quickstart
    from rayrm.experiment.train import main_train

    with quiet(Path(args.dir) / LOG_NAME, verbose=args.verbose):  # the tiny model's build
        path = write_quickstart(args.dir, num_iterations=args.iterations)
    say(f"quickstart workspace: {path.parent} (config: {path})")
    resume = (path.parent / "runs" / "quickstart").exists()
    return main_train(str(path), args.overrides, resume, args.verbose)


def _demo(args: argparse.Namespace) -> int:
    from rayrm.demo.run import main

    return main(args)


def _stage(args: argparse.Namespace) -> int:
    from rayrm.stages.commands import stage_main

    overrides = list(args.overrides)
    if getattr(args, "members", None) is not None:
        overrides.append(f"ensemble.members={args.members}")
    return stage_main(
        args.command, args.config, overrides, args.resume, args.no_progress, args.verbose
    )


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "inspect":
        from rayrm.analysis.inspect import inspect_main

        return inspect_main(args)
    from rayrm.stages.preference_data import pairs_main

    return pairs_main(args)


def _serve_rm(args: argparse.Namespace) -> int:
    from rayrm.rewards.service import main

    return main(args)


def _explain(args: argparse.Namespace) -> int:
    from rayrm.analysis.explain import main

    return main(args)


def _bench(args: argparse.Namespace) -> int:
    from rayrm.bench.run import main

    return main(args)


def _generate(args: argparse.Namespace) -> int:
    from rayrm.rl.checkpoint import generate

    for prompt, completions in generate(
        args.run,
        args.prompt,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        greedy=args.greedy,
        seed=args.seed,
    ):
        for c in completions:
            print(f"{prompt}\x1b[1m{c}\x1b[0m" if sys.stdout.isatty() else f"{prompt}{c}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from rayrm.rl.checkpoint import export_policy

    out = export_policy(args.run, args.out_dir, adapter=args.adapter)
    print(f"exported {'adapter' if args.adapter else 'policy'} to {out}")
    return 0


def _config(args: argparse.Namespace) -> int:
    if args.config_command == "reference":
        from rayrm.config.reference import markdown

        sys.stdout.write(markdown())
        return 0
    from rayrm.config.schema import dumps

    sys.stdout.write(dumps(args.kind))
    return 0


HANDLERS: dict[str, Handler] = {
    "train": _train,
    "tune": _tune,
    "quickstart": _quickstart,
    "demo": _demo,
    "sft": _stage,
    "train-rm": _stage,
    "data": _data,
    "serve-rm": _serve_rm,
    "explain": _explain,
    "bench": _bench,
    "generate": _generate,
    "export": _export,
    "config": _config,
}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except ConfigError as exc:
        warn(f"rayrm: error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
