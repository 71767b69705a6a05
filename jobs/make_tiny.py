"""Writes a tiny job workspace: a random 2-layer GPT-2, a prompt file and a run config.

    python jobs/make_tiny.py /shared/tiny --iterations 5
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train.py /shared/tiny/config.yaml

Everything is built locally (nothing is downloaded); put DIR on storage every node can read,
since the config names the policy, prompts and run folder by absolute path. Prints the config path.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayrm.demo.quickstart import write_quickstart  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", help="workspace folder (created)")
    p.add_argument("--iterations", type=int, default=10, help="run.num_iterations")
    args = p.parse_args()
    print(write_quickstart(args.dir, num_iterations=args.iterations))
