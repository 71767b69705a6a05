"""Helpers the tests share: the repository's paths, small valid run configs, training in this
process, episodes stepped by hand, what a quiet run's terminal may show.

Test modules import them from here (``from helpers import make_config``); pytest's hooks,
guards and fixtures live in ``conftest.py``. Both sit in ``tests/``, which the root conftest
puts on ``sys.path`` for every test module below it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    """A small valid RLConfig for tests; ``sections`` update individual sections."""
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
        "algorithm": {
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


# ---------------------------------------------- configs the tests of a kind of run share


def write_config(tiny_policy_dir: str, prompts_file: str, storage: Path, **sections) -> Path:
    """``make_config``'s config saved as ``storage/config.yaml``, for the CLI."""
    cfg = make_config(tiny_policy_dir, prompts_file, storage, **sections)
    path = storage / "config.yaml"
    cfg.save_yaml(path)
    return path


def write_tracking_config(tiny_policy_dir: str, prompts_file: str, tmp_path: Path, run: dict):
    """A 3-iteration run with its report, checkpointed at the end, ``run`` updating its section."""
    run = {"num_iterations": 3, "checkpoint_every": 3, **run}
    return write_config(tiny_policy_dir, prompts_file, tmp_path, run=run, eval={"report": True})


def async_config(tiny_policy_dir, prompts_file, tmp_path, **sections):
    """``make_config`` with pipelined rollouts (``algorithm.async_rollouts``)."""
    sections.setdefault("algorithm", {})
    sections["algorithm"] = {"async_rollouts": True, **sections["algorithm"]}
    return make_config(tiny_policy_dir, prompts_file, tmp_path, **sections)


def sweep_config(tiny_policy_dir, prompts_file, tmp_path, **tune_settings):
    """A small sweep (``rayrm tune``): 3 iterations, 2 samples per prompt, ``tune_settings``."""
    return make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        name="sweep",
        algorithm={"batch_size": 8},
        generation={"max_new_tokens": 6, "samples_per_prompt": 2},
        run={"num_iterations": 3, "checkpoint_every": 1},
        tune=tune_settings,
    )


CONVERSATIONS = [
    [{"role": "user", "content": "say hello"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat said"}],
    [{"role": "user", "content": "what is two plus two?"}],
    [{"role": "user", "content": "review: the steak was"}],
]
"""Chat prompts (one with a system turn) for the models users bring."""

FLOOR = "4.56.2"
"""The ``transformers`` the floor-version test installs (pyproject: ``transformers>=4.56``)."""


# ------------------------------------------------------- Ray Train stages: data and configs


def copy_corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Prompts ``copy xyz =`` with responses `` xyz``: a pattern a tiny GPT-2 picks up fast."""
    import random

    rng = random.Random(seed)
    prompts, responses = [], []
    for _ in range(n):
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
        prompts.append(f"copy {word} =")
        responses.append(f" {word}")
    return prompts, responses


def write_corpus(path: Path, n: int = 320, seed: int = 0) -> str:
    """``copy_corpus(n, seed)`` as a Parquet table of prompts and responses at ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts, responses = copy_corpus(n, seed)
    pq.write_table(pa.table({"prompt": prompts, "response": responses}), path)
    return str(path)


def vowel_pairs(n: int, seed: int) -> dict[str, list[str]]:
    """Pairs of random completions; chosen has at least two more vowels than rejected."""
    import random

    from envs.builtin import BUILTIN_PROMPTS, VOWELS

    letters = string.ascii_lowercase + " "
    rng = random.Random(seed)
    rows: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    while len(rows["prompt"]) < n:
        a, b = ("".join(rng.choice(letters) for _ in range(rng.randint(6, 12))) for _ in "ab")
        va, vb = (sum(c in VOWELS for c in s) for s in (a, b))
        if abs(va - vb) < 2:
            continue
        rows["prompt"].append(rng.choice(BUILTIN_PROMPTS) + " ")
        rows["chosen"].append(a if va > vb else b)
        rows["rejected"].append(b if va > vb else a)
    return rows


def _stage_dict(name: str, model: str, data: dict, train: dict, out: Path, sections: dict) -> dict:
    """A stage config on two workers of one CPU each, writing to ``out`` and ``out/../runs``."""
    d = {
        "name": name,
        "model": {"path": model},
        "data": data,
        "train": train,
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "output": {"dir": str(out), "storage_path": str(out.parent / "runs")},
    }
    for section, values in sections.items():
        d[section] = {**d.get(section, {}), **values}
    return d


def sft_dict(policy: str, data_path: str, tmp: Path, **sections: dict) -> dict:
    """An SFT stage config (3 epochs) on ``data_path``; ``sections`` update its sections."""
    data = {"path": data_path, "max_length": 32}
    train = {"lr": 3e-3, "epochs": 3, "batch_size": 16, "eval_fraction": 0.2, "seed": 0}
    return _stage_dict("sft-test", policy, data, train, tmp / "sft-out", sections)


def rm_dict(model: str, data_path: str, tmp: Path, **sections: dict) -> dict:
    """A reward-model stage config (4 epochs) on ``data_path``; ``sections`` update it."""
    data = {"path": data_path, "max_length": 64}
    train = {"lr": 1e-3, "epochs": 4, "batch_size": 16, "eval_fraction": 0.2, "seed": 0}
    return _stage_dict("rm-test", model, data, train, tmp / "rm-out", sections)


# ------------------------------------ the CLI on a workspace that a failure case breaks


@dataclass
class Workspace:
    """A valid run (config dict, files); a case breaks one thing in it."""

    root: Path
    policy: str
    reward_model: str
    prompts: str
    cfg: dict[str, Any] = field(default_factory=dict)
    config_name: str = "run.yaml"

    def write(self, name: str, text: str) -> str:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def copy_model(self, source: str, name: str) -> Path:
        out = self.root / name
        shutil.copytree(source, out)
        return out


RAY_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(.* pid=\d+\)")
"""How a Ray worker's forwarded output line starts: ``(ActorName pid=123)``, maybe coloured."""


def run_cli(ws: Workspace, capfd: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """``rayrm train`` on the workspace's config, in this process: its exit code and stderr
    (no traceback allowed anywhere)."""
    import yaml

    from rayrm.cli import main

    written = ws.root / "run.yaml"
    if not written.exists():
        written.write_text(yaml.safe_dump(ws.cfg), encoding="utf-8")
    capfd.readouterr()  # what earlier tests left
    code = main(["train", str(ws.root / ws.config_name), *extra])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, err
    return code, _without_other_tests_workers(err, ws.root)


def _without_other_tests_workers(err: str, root: Path) -> str:
    """``err`` less the lines an earlier test's Ray worker printed late, through the local Ray
    the tests share (its log monitor forwards them after that test's run ended): a worker's
    prefixed line naming another test's folder. A CLI run is one process with its own Ray."""
    tmp = str(root.parent)
    return "\n".join(
        line
        for line in err.splitlines()
        if not (RAY_WORKER_LINE.match(line) and tmp in line and str(root) not in line)
    )


def function_pool(function: str, *, name: str | None = None, **reward: Any) -> Any:
    """A ``RewardPool`` of Ray actors serving the reward function ``function`` on a quarter CPU
    each; ``reward`` sets other keys of its ``reward`` section (``num_actors``, ``timeout_s``...),
    ``name`` makes it shared."""
    from rayrm.config import RewardSettings
    from rayrm.rewards import RewardPool

    section = {"num_cpus_per_actor": 0.25, **reward}
    return RewardPool(RewardSettings(source="function", function=function, **section), name=name)


# What Ray workers run by reference (tests/ is on their path, the test folders are not):
def torch_threads(_: object) -> int:
    """torch's thread count in the process that runs it."""
    import torch

    return torch.get_num_threads()


def trial_threads(algo: Any) -> tuple[int, list[int], list[int]]:
    """Threads of a trial process, its remote env runners and its reward actors."""
    import ray
    import torch

    runners = algo.env_runner_group.foreach_env_runner(torch_threads, local_env_runner=False)
    actors = algo.rewards.scorer.actors
    return (
        torch.get_num_threads(),
        runners,
        ray.get([a.__ray_call__.remote(torch_threads) for a in actors]),
    )


class ThreadProbe:
    """An actor (``ray.remote(ThreadProbe)``) that sets its threads from its reservation."""

    def threads(self) -> int | None:
        from rayrm.threads import use_reserved_cpus

        return use_reserved_cpus()


def z_only_policy(tiny_policy_dir: str, out: Path) -> str:
    """The tiny policy made to write "z" and nothing else: every position's hidden state is
    the final layer norm's bias, pointed at a lengthened "z" embedding (tied to the head)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    z = tokenizer.convert_tokens_to_ids("z")
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte[z] *= 10
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(10 * wte[z])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
