"""Ray Job entry point for reward-model training on Ray Train.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/train_rm.py RM.yaml

Inside a job, RAY_ADDRESS points at the cluster, so `rayrm train-rm` joins it instead of starting a
local Ray. Accepts the same flags as `rayrm train-rm` (--set KEY=VALUE, --resume).
"""

import sys
from pathlib import Path

# The submitted working directory's code is what runs, even where another rayrm is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayrm.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["train-rm", *sys.argv[1:]]))
