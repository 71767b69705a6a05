"""Helpers the tests share: the repository's paths, small valid run configs, training in this
process, episodes stepped by hand, what a quiet run's terminal may show.

Test modules import them from here (``from helpers import make_config``); pytest's hooks,
guards and fixtures live in ``conftest.py``. Both sit in ``tests/``, which the root conftest
puts on ``sys.path`` for every test module below it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
"""The repository's root (``tests/`` is below it)."""
PYTHONPATH = os.pathsep.join([str(REPO), str(REPO / "tests")])
"""For Ray workers: the repo and the test modules (reward functions defined in tests)."""


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """The environment of the Ray processes started in the block (Ray's workers inherit their
    node's): one torch thread, the repo and test modules importable, and a temp folder of the
    test run's (W&B makes folders in it on import and when it starts its service; a worker Ray
    kills leaves them behind, in /tmp otherwise). Not a job runtime env,
    which ``rayrm train`` does not use either: a worker Ray starts ahead of time (one per CPU)
    is started without it and would then serve nothing (measured: 0 of 4 reused, ~3 s of CPU
    per Ray start wasted)."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PYTHONPATH", "TMPDIR")}
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["TMPDIR"] = str(Path(os.environ["WANDB_DATA_DIR"]).parent / "tmp")
    os.makedirs(os.environ["TMPDIR"], exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHONPATH, saved["PYTHONPATH"]) if p)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trial_class() -> type:
    """``RLHFPPO`` for a test that starts it as a Ray actor, as Tune starts a trial: Tune gives
    a trial its folder; here ``__init__(logs=...)`` takes the folder for its log folder (else
    the actor makes an empty one under ~/ray_results, outside the session's temp folders)."""
    from rayrm.rl.algorithm import RLHFPPO
    from rayrm.rl.rllib_compat import trainable_logdirs_under

    class Trial(RLHFPPO):
        def __init__(self, *, logs: str, **kwargs):
            with trainable_logdirs_under(logs):
                super().__init__(**kwargs)

    return Trial


def episode_of(env: Any, tokens: list[int], options: dict[str, Any] | None = None) -> Any:
    """Steps ``env`` (reset with ``options``, seed 0) through ``tokens`` until it ends,
    recording an RLlib episode."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    obs, info = env.reset(seed=0, options=options)
    episode = SingleAgentEpisode()
    episode.add_env_reset(observation=obs, infos=info)
    for token in tokens:
        obs, reward, terminated, truncated, info = env.step(token)
        episode.add_env_step(obs, token, reward, infos=info, terminated=terminated,
                             truncated=truncated)  # fmt: skip
        if terminated or truncated:
            return episode
    raise AssertionError("the completion did not end")


def make_config(tiny_policy_dir: str, prompts_file: str, storage: Path, **sections: dict):
    """A small valid RunConfig for tests; ``sections`` update individual sections."""
    from rayrm.config import config_from_dict

    d = {
        "name": "test",
        "seed": 0,
        "model": {"path": tiny_policy_dir},
        "data": {"prompts": prompts_file, "max_prompt_tokens": 16},
        "generation": {"max_new_tokens": 10},
        "reward": {
            "source": "function",
            "function": "envs.builtin:vowel_reward",
            "num_cpus_per_actor": 0.25,
        },
        "ppo": {
            "batch_size": 16,
            "num_minibatches": 2,
            "num_epochs": 2,
            "lr": 3e-4,
            "kl_coef": 0.02,
            "vf_coef": 0.5,
        },
        "resources": {"num_env_runners": 0},
        "run": {"num_iterations": 3, "checkpoint_every": 1, "storage_path": str(storage)},
        "eval": {"every": 0, "report": False},  # tests that need them turn them on
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            d[name] = {**d.get(name, {}), **values}
        else:
            d[name] = values
    return config_from_dict(d, check_paths=True)


SEEDS = (
    0,
    pytest.param(1, marks=pytest.mark.learning),
    pytest.param(2, marks=pytest.mark.learning),
)
"""Seeds of the tests that training learns on the tiny task: seed 0 in the default run, all
three in the ``learning`` tier (``-m learning``: each learning test on seeds 1 and 2 too, so
that a pass is not one seed's luck; docs/development.md)."""


def train_in_process(cfg, iterations: int) -> list[dict]:
    """Builds ``cfg``'s algorithm in this process, trains ``iterations`` times and returns
    each iteration's ``result["rlhf"]``."""
    from rayrm import metrics as M
    from rayrm.rl.algorithm import build_algo_config

    algo = build_algo_config(cfg).build_algo()
    try:
        return [algo.train()[M.RLHF_RESULTS] for _ in range(iterations)]
    finally:
        algo.stop()


def assert_reward_rises(results: list[dict], margin: float = 0.1) -> None:
    """The mean reward of the last 5 iterations beats the first 5 by ``margin``."""
    import numpy as np

    from rayrm import metrics as M

    rewards = [r[M.REWARD_MEAN] for r in results]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + margin, (first, last)


# What the terminal may show of a run (rayrm.console): live lines, stage lines, results.
LIVE_LINES = {
    "prompts": r"prompts: \d+ \(",
    "stage": r"stage: \w+ -> ",
    "done": r"done: ",
    "cached": r"cached: \w+ \(",
    "epoch": r"(sft|rm) epoch \d+/\d+ \| ",
    "iter": r"iter +\d+(/\d+)? \| reward ",
    "headline": r"(training reward|held-out |KL per sequence|reward model held-out|wall time: )",
    "report": r"report: ",
    "workspace": r"quickstart workspace: ",
}
NOISE = (
    "WARNING", "INFO", "ERROR", "Deprecat", "deprecated", "Loading weights", "pid=",
    "Traceback", "╭", "LOAD REPORT", "PreemptionWatcher", "Reporting training result",
    "View detailed results", "it/s]", "tensorboard", "Trial ",
)  # fmt: skip


def check_quiet_output(out: str, err: str) -> dict[str, int]:
    """Asserts a quiet run's terminal held only known lines (none on stderr, no known noise);
    returns how many lines of each kind it held."""
    import re

    assert not err.strip(), err
    counts = dict.fromkeys(LIVE_LINES, 0)
    for line in out.splitlines():
        assert not any(n in line for n in NOISE), line
        kinds = [k for k, pattern in LIVE_LINES.items() if re.match(pattern, line)]
        assert kinds, f"unexpected line: {line!r}"
        counts[kinds[0]] += 1
    return counts
