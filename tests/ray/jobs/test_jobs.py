"""Ray Jobs: docs/operations.md's `ray job submit` command against a real local head.

The head is a `ray start --head --block` subprocess in its own session, confined to a temp dir,
with its own auth token file and every port it opens on 127.0.0.1. It is stopped by signalling
exactly the processes of that session (and their descendants, e.g. the job driver, which Ray
starts in a session of its own): never `ray stop`, which stops every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import REPO

RAY = shutil.which("ray") or "ray"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, state letter) of every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # Fields after the command name, which is in parentheses and may contain anything.
        state, ppid, _pgrp, sid = stat[stat.rindex(")") + 2 :].split()[:4]
        table[int(name)] = (int(ppid), int(sid), state)
    return table


def _session_pids(sid: int) -> list[int]:
    """Running (not zombie) processes of session ``sid`` and all their descendants: the job
    driver, which Ray starts in a session of its own, is a descendant of a worker of ours."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (_, s, _) in table.items() if s == sid}
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return sorted(pid for pid in found if table[pid][2] != "Z")


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class LocalHead:
    """A Ray head node on 127.0.0.1 that this test owns, started and stopped precisely."""

    def __init__(self) -> None:
        # Short path: Ray puts Unix sockets under it (108-byte limit).
        self.dir = Path(tempfile.mkdtemp(prefix="rayrm-", dir="/tmp"))
        token = self.dir / "auth_token"
        token.write_text(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token",  # the job CLI sends the token only in this mode
            RAY_AUTH_TOKEN_PATH=str(token),  # not ~/.ray/auth_token
            RAY_USAGE_STATS_ENABLED="0",
            OMP_NUM_THREADS="1",
        )
        self.client_env = env  # for `ray job ...` commands
        self.token = token.read_text()
        self.dashboard_port = _free_port()
        head_env = {
            **env,
            # Local-only node: binds GCS, raylet and agents to 127.0.0.1 instead of the host IP.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # Fixed defaults (44217/44227) would collide with other heads on this machine.
            "AUTOSCALER_METRIC_PORT": str(_free_port()),
            "DASHBOARD_METRIC_PORT": str(_free_port()),
        }
        cmd = [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={_free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
            "--num-cpus=4",
            "--object-store-memory=200000000",
            f"--temp-dir={self.dir / 'ray'}",
            "--disable-usage-stats",
        ]
        self.log = open(self.dir / "head.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            env=head_env,
            cwd=self.dir,  # what its processes write in their working folder stays in the temp dir
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def head_log(self) -> str:
        return (self.dir / "head.log").read_text(errors="replace")[-3000:]

    def api(self, path: str) -> dict:
        req = urllib.request.Request(
            self.address + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Waits until the job server (a dashboard module) answers."""
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ray start exited with {self.proc.returncode}:\n{self.head_log()}")
            try:
                self.api("/api/version")
                return
            except (OSError, ValueError) as exc:  # URLError/HTTPError are OSErrors
                error = exc
                time.sleep(0.5)
        pytest.fail(f"job server not up after {timeout:.0f} s ({error!r}):\n{self.head_log()}")

    def job(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Runs ``ray job ARGS --address ...`` the way a user would."""
        return subprocess.run(
            [RAY, "job", args[0], "--address", self.address, *args[1:]],
            env=self.client_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> list[str]:
        """SIGTERM to every process of the head's session (as `ray stop` does, but only
        these), then SIGKILL to what still runs. Returns descriptions of survivors."""
        sid = self.proc.pid
        _signal_all(_session_pids(sid), signal.SIGTERM)
        # `ray start --block` ignores SIGTERM and the raylet takes ~15 s to drain: don't wait.
        deadline = time.monotonic() + 5
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        _signal_all(_session_pids(sid), signal.SIGKILL)  # a fresh scan: late-started workers too
        try:
            self.proc.wait(timeout=10)  # reap our child; its zombie children go to init
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while (survivors := _session_pids(sid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return [f"{pid} {_comm(pid)}" for pid in survivors]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


@pytest.fixture(scope="module")
def ray_head():
    head = LocalHead()
    try:
        head.wait_ready()
        yield head
    finally:
        survivors = head.stop()
    assert not survivors, f"processes of the test's Ray head still running: {survivors}"


def _write_sft_inputs(root: Path, policy: Path) -> Path:
    """An SFT corpus and its stage config, for the stage job."""
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"the cat said {w}\n" for w in ("hi", "yes", "no", "aha") * 8))
    sft = {
        "name": "sft-job",
        "model": {"path": str(policy)},
        "data": {"path": str(corpus)},
        "train": {"epochs": 1, "batch_size": 8},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "output": {"dir": str(root / "sft-out"), "storage_path": str(root / "runs")},
    }
    config = root / "sft.yaml"
    config.write_text(yaml.safe_dump(sft))
    return config


def test_train_and_stage_jobs_via_cli(ray_head: LocalHead):
    """jobs/train.py (an RL run: a Tune experiment) and jobs/sft.py (a Ray Train stage),
    submitted together as a cluster user would."""
    root = ray_head.dir / "tiny"
    made = subprocess.run(
        [sys.executable, "jobs/make_tiny.py", str(root), "--iterations", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    run_config = made.stdout.strip().splitlines()[-1]
    assert Path(run_config).is_file(), made.stdout
    jobs = {
        "train": ["jobs/train.py", run_config],
        "sft": ["jobs/sft.py", str(_write_sft_inputs(root, root / "policy"))],
    }
    ids = {name: f"rayrm-{name}-{uuid.uuid4().hex[:8]}" for name in jobs}
    for name, argv in jobs.items():
        submit = ray_head.job(
            "submit", "--submission-id", ids[name], "--working-dir", ".", "--no-wait", "--",
            "python", *argv,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout + submit.stderr
    status = dict.fromkeys(jobs, "PENDING")
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and not all(s in TERMINAL for s in status.values()):
        for name in jobs:
            try:
                status[name] = ray_head.api(f"/api/jobs/{ids[name]}")["status"]
            except (OSError, ValueError):  # a busy dashboard may time out once
                pass
        time.sleep(2)
    logs = {name: ray_head.job("logs", ids[name]) for name in jobs}
    out = {name: logs[name].stdout for name in jobs}
    for name in jobs:
        if status[name] not in TERMINAL:
            ray_head.job("stop", ids[name])
    for name in jobs:
        assert status[name] == "SUCCEEDED", f"{name} job {status[name]}:\n{out[name][-3000:]}"
        assert logs[name].returncode == 0, logs[name].stderr
    assert "done: 2 iterations" in out["train"], out["train"][-4000:]
    # Both jobs joined the head's cluster: the RL trial and the SFT worker ran as actors of these
    # jobs there (a job that started a private Ray of its own would leave no trace in the head's
    # state).
    drivers = {name: ray_head.api(f"/api/jobs/{ids[name]}")["job_id"] for name in jobs}
    actors = ray_head.api("/api/v0/actors?limit=10000")["data"]["result"]["result"]
    by_job = {a["job_id"] for a in actors if a.get("class_name", "").startswith("RLHFPPO")}
    assert by_job == {drivers["train"]}, (drivers, actors)
    workers = {a["job_id"] for a in actors if a.get("class_name", "") == "RayTrainWorker"}
    assert workers == {drivers["sft"]}, (drivers, actors)
    # The run folders named in the configs received the results.
    assert (root / "runs" / "quickstart").is_dir()
    assert (root / "sft-out" / "config.json").is_file(), out["sft"][-3000:]
