"""Ray Job entry point for supervised fine-tuning on Ray Train.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/sft.py SFT.yaml

Inside a job, RAY_ADDRESS points at the cluster, so `rayrm sft` joins it instead of starting a
local Ray. Accepts the same flags as `rayrm sft` (--set KEY=VALUE, --resume).
"""

import sys
from pathlib import Path

# The submitted working directory's code is what runs, even where another rayrm is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayrm.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["sft", *sys.argv[1:]]))
