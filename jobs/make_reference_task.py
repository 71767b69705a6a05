"""Writes the last-word reference task: a random 2-layer GPT-2, prompts with references, a config.

    python jobs/make_reference_task.py rayrm-reference
    rayrm train rayrm-reference/config.yaml        # or: rayrm train jobs/configs/reference_task.yaml

Everything is built locally (nothing is downloaded). The written config is
jobs/configs/reference_task.yaml with DIR's absolute paths filled in. Prints the config path.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayrm.demo.reference_task import write_reference_task  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", help="workspace folder (created)")
    p.add_argument("--iterations", type=int, default=80, help="run.num_iterations")
    p.add_argument("--num-prompts", type=int, default=256)
    args = p.parse_args()
    print(
        write_reference_task(args.dir, num_prompts=args.num_prompts, num_iterations=args.iterations)
    )
