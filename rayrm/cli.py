"""The ``rayrm`` command line: train, tune, quickstart, sft, train-rm, data, generate, export.

User mistakes (bad config, missing paths, nothing to resume) exit with code 2 and one line on
stderr naming the key or file; everything else is a real error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rayrm.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rayrm",
        description="RLHF on Ray: RLlib PPO against reward models, run as Tune experiments.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run one training (a one-trial Tune experiment)")
    t.add_argument("config", help="YAML run config")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set ppo.lr=1e-5 (repeatable)",
    )
    t.add_argument("--resume", action="store_true", help="continue an interrupted run")

    s = sub.add_parser(
        "tune", help="hyperparameter sweep (the config's `tune` section) as one Tune experiment"
    )
    s.add_argument("config", help="YAML run config with a `tune` section")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep")

    q = sub.add_parser(
        "quickstart", help="build a tiny local model and prompt set, then train it (CPU, minutes)"
    )
    q.add_argument(
        "--dir", default="rayrm-quickstart", help="workspace folder (default: %(default)s)"
    )
    q.add_argument("--iterations", type=int, default=60)
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    from rayrm.analysis import explain as explain
    from rayrm.bench import run as bench
    from rayrm.demo import run as demo
    from rayrm.rewards import service as serve
    from rayrm.stages import preference_data as data_tools
    from rayrm.stages import reward_model as reward_training
    from rayrm.stages import sft as sft

    demo.add_arguments(
        sub.add_parser("demo", help="the three RLHF stages end to end, offline on CPU (minutes)")
    )

    sft.add_arguments(sub.add_parser("sft", help="supervised fine-tuning on Ray Train"))
    reward_training.add_arguments(
        sub.add_parser("train-rm", help="reward-model training on preference pairs (Ray Train)")
    )
    data = sub.add_parser("data", help="inspect datasets, build preference pairs")
    dsub = data.add_subparsers(dest="data_command", required=True)
    data_tools.add_inspect_arguments(dsub.add_parser("inspect", help="rows, columns, lengths"))
    data_tools.add_pairs_arguments(
        dsub.add_parser("pairs", help="sample two completions per prompt, label with a judge")
    )

    serve.add_arguments(
        sub.add_parser("serve-rm", help="start (or --stop) a shared, named reward service")
    )
    explain.add_arguments(
        sub.add_parser("explain", help="per-token reward attribution and KL to the reference")
    )

    bench.add_arguments(
        sub.add_parser("bench", help="throughput and memory benchmark, optionally vs TRL's PPO")
    )

    g = sub.add_parser("generate", help="sample from a trained policy")
    g.add_argument("run", help="run folder, trial folder or checkpoint")
    g.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--seed", type=int, default=0)

    c = sub.add_parser("config", help="config tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser(
        "schema", help="print the JSON Schema of the config files (for editors' completion)"
    )
    cs.add_argument(
        "--kind",
        choices=("run", "sft", "rm"),
        default="run",
        help="run (train/tune), sft or rm (train-rm) configs (default: %(default)s)",
    )

    e = sub.add_parser("export", help="write the policy as a Hugging Face model directory")
    e.add_argument("run", help="run folder, trial folder or checkpoint")
    e.add_argument("out_dir")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            from rayrm.experiment.train import main_train

            return main_train(args.config, args.overrides, args.resume)
        if args.command == "tune":
            from rayrm.experiment.sweep import main_tune

            return main_tune(args.config, args.overrides, args.resume)
        if args.command == "quickstart":
            from rayrm.demo.quickstart import write_quickstart
            from rayrm.experiment.train import main_train

            path = write_quickstart(args.dir, num_iterations=args.iterations)
            print(f"quickstart workspace: {path.parent} (config: {path})", flush=True)
            resume = (path.parent / "runs" / "quickstart").exists()
            return main_train(str(path), args.overrides, resume)
        if args.command == "demo":
            from rayrm.demo import run as demo

            return demo.main(args)
        if args.command == "sft":
            from rayrm.stages import sft as sft

            return sft.main(args)
        if args.command == "train-rm":
            from rayrm.stages import reward_model as reward_training

            return reward_training.main(args)
        if args.command == "data":
            from rayrm.stages import preference_data as data_tools

            if args.data_command == "inspect":
                return data_tools.inspect_main(args)
            return data_tools.pairs_main(args)
        if args.command == "serve-rm":
            from rayrm.rewards import service as serve

            return serve.main(args)
        if args.command == "explain":
            from rayrm.analysis import explain as explain

            return explain.main(args)
        if args.command == "bench":
            from rayrm.bench import run as bench

            return bench.main(args)
        if args.command == "generate":
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
        if args.command == "config":
            from rayrm.config.schema import dumps

            sys.stdout.write(dumps(args.kind))
            return 0
        if args.command == "export":
            from rayrm.rl.checkpoint import export_policy

            out = export_policy(args.run, args.out_dir)
            print(f"exported policy to {out}")
            return 0
    except ConfigError as exc:
        print(f"rayrm: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
