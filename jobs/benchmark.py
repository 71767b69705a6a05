"""Benchmark entry point: rayrm's throughput, time per phase and memory, optionally against TRL.

    python jobs/benchmark.py                         # default workload, lengths, memory, TRL
    python jobs/benchmark.py --sections default --iterations 20 --num-env-runners 2

Prints one JSON line per configuration on stdout (see ``rayrm.bench.run`` for the keys). The TRL
comparison runs when ``trl==1.12.0`` is installed (``pip install -e '.[bench]'``).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run the submitted code

from rayrm.bench import run as bench  # noqa: E402
from rayrm.bench.options import add_bench_arguments  # noqa: E402
from rayrm.cli import add_verbose  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmark.py", description=bench.__doc__.splitlines()[0])
    add_verbose(add_bench_arguments(parser))
    raise SystemExit(bench.main(parser.parse_args()))
