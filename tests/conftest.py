"""pytest's hooks, guards and fixtures: tiny local models, prompt files, a local Ray confined to
a temp dir; the checks that the tests leave nothing behind and sit where they belong.

The tests are laid out like the package: ``tests/unit/<subpackage>/`` holds the tests that
start no Ray (the fast tier, ``python -m pytest -q tests/unit``), ``tests/ray/<subpackage>/``
the slow ones, those that start Ray. Helpers the test modules share are in ``helpers.py``;
reward functions that Ray workers import by name in ``scorers.py``.
"""

from __future__ import annotations

import atexit
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, Workspace, worker_environment

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Every Ray the tests start (the fixture's, the CLI's in a subprocess, a test's own cluster)
# listens on 127.0.0.1 only, not on the machine's address: set before Ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# No core dumps from the tests' processes and their children (inherited): some of Ray's
# processes abort (SIGABRT) when their node is torn down, and where core dumps are on, each
# wrote a core file of hundreds of MB into its working folder, the checkout, which
# `ray job submit --working-dir .` (tests/ray/jobs/test_jobs.py) then could not upload (HTTP 413).
resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))

# W&B keeps caches, settings and debug logs under the home folder unless told otherwise: the
# tests' go to a temporary folder, set before any local Ray starts so that its workers (Ray's
# W&B logging actor) inherit it. One folder for the whole run, made by the process that
# imports this first and removed when it exits: xdist workers, Ray workers that import test
# modules (reward functions defined in tests) and nested test runs inherit it.
_WANDB_PREFIX = "rayrm-wandb-"
_WANDB_VARS = (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
               ("WANDB_DATA_DIR", "data"))  # fmt: skip
_WANDB_HOME: str | None = None  # made by this process
if not all(var in os.environ for var, _ in _WANDB_VARS):
    _WANDB_HOME = tempfile.mkdtemp(prefix=_WANDB_PREFIX)
    for _var, _sub in _WANDB_VARS:
        os.environ[_var] = os.path.join(_WANDB_HOME, _sub)
    atexit.register(shutil.rmtree, _WANDB_HOME, ignore_errors=True)  # a process not pytest's


_LEFT = pytest.StashKey[set[str] | None]()
RAY_RESULTS = Path("~/ray_results").expanduser()
"""Where Ray writes what it is not told to write elsewhere (Tune's and RLlib's default)."""


def _written_outside_temp() -> set[str] | None:
    """Files in the checkout that git neither tracks nor ignores, the entries of
    ~/ray_results and W&B folders of the tests in the temp folder but this run's own (None
    outside a git clone)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    found = {line[3:] for line in out.stdout.splitlines() if line.startswith("?? ")}
    if RAY_RESULTS.is_dir():
        found |= {str(entry) for entry in RAY_RESULTS.iterdir()}
    temp = Path(tempfile.gettempdir())
    wandb_home = Path(os.environ["WANDB_DATA_DIR"]).parent
    # Ours (rayrm-wandb-*) and W&B's own (wandb-<pid>-..., tmp...wandb-artifacts, -media).
    found |= {str(p) for p in temp.glob("*wandb-*") if p != wandb_home}
    return found


_OUTER = "RAYRM_TESTS_WATCHED"
"""Set by the outermost test run: runs it starts (xdist workers, the floor-version test's
pytest in another venv) inherit it and leave the watching to it, as what they would see
includes what the outer run's other tests are writing meanwhile (mypy's cache, say)."""


def pytest_sessionstart(session: pytest.Session) -> None:
    if _OUTER not in os.environ:  # the outermost run's main process
        os.environ[_OUTER] = "1"
        session.config.stash[_LEFT] = _written_outside_temp()


RAY_FIXTURES = frozenset({"ray_local", "ray_head", "rollout_cluster"})
"""Fixtures that start a Ray: a test using one is ``slow`` (Ray's own processes alone cost
several seconds of CPU per start)."""


LONGEST_FIRST = (
    "test_fault_tolerance.py", "test_sweep.py", "test_bench.py", "test_lora.py",
    "test_demo_smoke.py", "test_real_models.py", "test_training.py", "test_sft_workers.py",
    "test_jobs.py", "test_reward_ensemble_training.py", "test_failures_in_trial.py",
    "test_tracking.py", "test_runs.py", "test_hangs.py", "test_multi_turn_training.py",
    "test_resume.py", "test_reward_service.py", "test_floor_transformers.py",
    "test_multi_turn_demo_smoke.py", "test_threads.py", "test_reward_model_workers.py",
    "test_reference_rewards.py", "test_critic_free_training.py", "test_prompt_passes.py",
    "test_lint.py", "test_stop_when.py", "test_reward_retries.py", "test_async_rollouts.py",
)  # fmt: skip
"""The test files that take longest (wall seconds under ``-n 3``, measured with
``.ci/cpu_by_test.py`` on 2026-12-08, every file of 15 s or more), longest first: they start
first so that the workers finish together: scheduled this way, the measured times give the
three workers 781 s each, where the order before left one worker 70 s behind the others.
(xdist's own order, most tests first, left the longest file for last, running alone for over
a minute while the other workers idled.)"""

UNIT, RAY = REPO / "tests" / "unit", REPO / "tests" / "ray"
"""The two tiers: tests that start no Ray (the fast tier), tests that start Ray (``slow``)."""


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the files in our order
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under ``tests/ray/``, and every test that uses a Ray fixture, is marked
    ``slow``: ``python -m pytest -q tests/unit`` (the same tests as ``-m "not slow and not trl
    and not learning"``) is the inner-loop tier (docs/development.md). A test in the wrong
    folder fails the collection. The longest files come first (``LONGEST_FIRST``)."""
    misplaced = []
    for item in items:
        uses_ray = RAY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        tier = _tier(item)
        if tier == RAY or uses_ray:
            item.add_marker(pytest.mark.slow)
        if tier == UNIT and item.get_closest_marker("slow"):
            why = f"uses {sorted(uses_ray)}" if uses_ray else "is marked slow"
            misplaced.append(f"{item.nodeid} {why}: it belongs under tests/ray/")
        elif tier is None:
            misplaced.append(f"{item.nodeid}: tests live under tests/unit/ or tests/ray/")
    if misplaced:
        raise pytest.UsageError("\n".join(misplaced))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _tier(item: pytest.Item) -> Path | None:
    """``UNIT`` or ``RAY``: the folder the test's file is under (None: neither)."""
    path = item.path.resolve()
    return next((tier for tier in (UNIT, RAY) if path.is_relative_to(tier)), None)


_RAY_UP = pytest.StashKey[bool]()


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_RAY_UP] = _ray_up()


def pytest_runtest_teardown(item: pytest.Item) -> None:
    """A test under ``tests/unit/`` that starts a Ray in this process fails (one in a child
    process is not seen: the CLI's, say)."""
    if _tier(item) == UNIT and not item.stash.get(_RAY_UP, True) and _ray_up():
        pytest.fail(f"{item.nodeid} started Ray: it belongs under tests/ray/", pytrace=False)


def _remove_wandb_import_folders() -> None:
    """The two temp folders W&B makes when this process imports it."""
    import sys

    for module, owner, attr in (("wandb.sdk.data_types._private", None, "MEDIA_TMP"),
                                ("wandb.sdk.artifacts.artifact", "Artifact", "_TMP_DIR")):  # fmt: skip
        found = sys.modules.get(module)
        folder = getattr(getattr(found, owner, None) if owner else found, attr, None)
        if folder is not None:
            folder.cleanup()


def pytest_unconfigure(config: pytest.Config) -> None:
    """The W&B folder goes with the test run that made it (its process may end without
    running atexit handlers: some of Ray's do that, and so do xdist's workers), and so do the
    two temp folders W&B makes when a test process imports it."""
    _remove_wandb_import_folders()
    if _WANDB_HOME is not None:
        shutil.rmtree(_WANDB_HOME, ignore_errors=True)


_WANDB_SERVICE = re.compile(r".*/wandb-(\d+)-(\d+)-\d+")
"""The socket folder of a W&B service process (``wandb-core``), ``wandb-<parent>-<service>-<n>``
by its parent's process id and its own: the service removes it when it ends, which it does on
its own a second or two after its parent (a test process or Ray worker that logged to W&B) is
gone; CI once checked before that (2026-12-07)."""
_WANDB_IMPORT = re.compile(r".*/tmp\w+wandb-(media|artifacts)")
"""The two folders W&B makes when a process imports it, removed when that process exits
normally: a Ray worker that imported W&B and was stopped by its node's shutdown leaves them."""


def _without_wandb_leftovers(new: set[str], wait_s: float = 30.0) -> set[str]:
    """``new`` less W&B's own temp folders: once the W&B services that own socket folders in
    it have ended (at most ``wait_s``), those left by processes that ended without cleaning
    up (killed Ray workers, services) are removed. A service still running stays in it."""
    services = [m[2] for m in map(_WANDB_SERVICE.fullmatch, new) if m]
    deadline = time.monotonic() + wait_s
    while any(Path(f"/proc/{pid}").exists() for pid in services) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = set()
    for path in new:
        service = _WANDB_SERVICE.fullmatch(path)
        if service and Path(f"/proc/{service[2]}").exists():
            left.add(path)
        elif service or _WANDB_IMPORT.fullmatch(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            left.add(path)
    return left


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The tests leave nothing in the checkout or ~/ray_results: they write to temp folders."""
    before = session.config.stash.get(_LEFT, None)
    if before is not None:  # this process's own (a run without xdist imports W&B here)
        _remove_wandb_import_folders()
    after = _written_outside_temp() if before is not None else None
    if before is not None and after is not None:
        after = _without_wandb_leftovers(after - before) | (after & before)
    if before is None or after is None or not (left := sorted(after - before)):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"the tests left files outside their temp folders: {', '.join(left[:10])}"
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("=", message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _algorithm_logdirs(tmp_path_factory: pytest.TempPathFactory):
    """Algorithms the tests build outside Tune log under a temp folder, not ~/ray_results."""
    from rayrm.rl.rllib_compat import trainable_logdirs_under

    with trainable_logdirs_under(tmp_path_factory.mktemp("ray_results")):
        yield


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random GPT-2 (2 layers, width 64) with the built-in char tokenizer, saved to disk."""
    from rayrm.models.tiny import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="session")
def archs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random models of the kinds users bring, each with its kind of tokenizer, saved to
    disk: GPT-2 (byte-level BPE), Llama (SentencePiece-style Metaspace, byte fallback, ``<s>``),
    Qwen2 (ChatML template, two EOS ids, tied embeddings, grouped-query attention), Mistral
    (Llama's tokenizer kind, a sliding window) and Gemma 2 (Gemma's tokenizer kind and chat
    template, two EOS ids, soft-capped logits, sliding-window layers)."""
    from rayrm.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("archs")
    return {
        arch: build_tiny_model(root / arch, arch=arch, hidden=32, heads=4, positions=96)
        for arch in ("gpt2", "llama", "qwen2", "mistral", "gemma2")
    }


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    from envs.builtin import BUILTIN_PROMPTS
    from rayrm.data.prompts import write_prompts_jsonl

    return str(
        write_prompts_jsonl(tmp_path_factory.mktemp("data") / "prompts.jsonl", BUILTIN_PROMPTS)
    )


# ------------------------- fixtures of the tests split between tests/unit/ and tests/ray/


@pytest.fixture(scope="module")
def failure_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A tiny Qwen2 policy (byte-level BPE, chat template) and a one-label reward model."""
    from transformers import AutoTokenizer

    from rayrm.models.tiny import build_tiny_model, build_tiny_reward_model

    root = tmp_path_factory.mktemp("failure-models")
    policy = build_tiny_model(root / "policy", arch="qwen2", hidden=32, positions=256)
    rm = build_tiny_reward_model(root / "rm", AutoTokenizer.from_pretrained(policy))
    return policy, rm


@pytest.fixture
def ws(failure_models: tuple[str, str], tmp_path: Path) -> Workspace:
    """A valid run in ``tmp_path`` for the failure cases to break (tests/unit/cli/test_failures.py,
    tests/ray/cli/test_failures_in_trial.py)."""
    from envs.builtin import BUILTIN_PROMPTS
    from rayrm.data.prompts import write_prompts_jsonl

    policy, rm = failure_models
    prompts = str(write_prompts_jsonl(tmp_path / "prompts.jsonl", BUILTIN_PROMPTS[:8]))
    w = Workspace(tmp_path, policy, rm, prompts)
    w.cfg = {
        "name": "broken",
        "model": {"path": policy},
        "data": {"prompts": prompts, "max_prompt_tokens": 32},
        "generation": {"max_new_tokens": 4},
        "reward": {"source": "function", "function": "envs.builtin:vowel_reward"},
        "algorithm": {"batch_size": 4, "num_minibatches": 2, "num_epochs": 1},
        "run": {"num_iterations": 2, "storage_path": str(tmp_path / "runs"), "num_cpus": 2},
        "eval": {"every": 0, "report": False},
    }
    return w


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Qwen2 (ChatML with tools) and 8 Calculator rows: the benchmark's tools section
    (tests/unit/bench/test_bench_tools.py, tests/ray/bench/test_against_trl.py)."""
    from rayrm.bench import trl_env
    from rayrm.bench.support import BenchSpec

    spec = BenchSpec(n_embd=32, n_layer=1, n_head=2)
    return trl_env.default_inputs(tmp_path_factory.mktemp("tools"), spec)


_SHARED_RAY: dict[str, str] = {}
"""The temp folder of the local Ray this test process shares between its modules, if up."""


RAY_OWN_NAMESPACES = frozenset({"AutoscalingCoordinator"})
"""Named actors Ray keeps for the session (Ray Train's autoscaling coordinator, 0 CPU)."""


def _ray_is_clean(ray: Any, timeout_s: float = 10.0) -> bool:
    """Whether a module left the shared Ray as it found it: every resource free again (actors
    and placement groups end asynchronously: waits up to ``timeout_s``) and no named actors
    but Ray's own."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        held = {k: v for k, v in total.items() if free.get(k, 0.0) < v - 1e-6}
        named = ray.util.list_named_actors(all_namespaces=True)
        if not held and all(a["namespace"] in RAY_OWN_NAMESPACES for a in named):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _stop_shared_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if "temp_dir" in _SHARED_RAY:
        shutil.rmtree(_SHARED_RAY.pop("temp_dir"), ignore_errors=True)


@pytest.fixture(scope="session")
def _shared_ray() -> Iterator[None]:
    """Stops the shared local Ray when the test process's session ends."""
    yield
    _stop_shared_ray()


@pytest.fixture(scope="module")
def ray_local(_shared_ray: None):
    """A local Ray (4 logical CPUs on the 2-core box) whose files live in a temp dir.

    One Ray serves every module this test process runs (each start and stop of Ray's own
    processes costs ~6 s of CPU): it is started on first use, and again after a module that
    shut it down (a test's own cluster) or left it unclean (resources still held, a named
    actor still up), so that each module begins with all 4 CPUs free and no actors."""
    import ray
    import torch

    torch.set_num_threads(1)
    if ray.is_initialized() and "temp_dir" not in _SHARED_RAY:
        ray.shutdown()  # someone else's Ray
    if not ray.is_initialized():
        _stop_shared_ray()
        _SHARED_RAY["temp_dir"] = tempfile.mkdtemp(prefix="rayrm-", dir="/tmp")
        with worker_environment():
            ray.init(num_cpus=4, include_dashboard=False, _temp_dir=_SHARED_RAY["temp_dir"])
    yield ray
    if not ray.is_initialized() or not _ray_is_clean(ray):
        _stop_shared_ray()
