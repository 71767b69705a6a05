"""CPU time by test while pytest runs under xdist (Linux /proc): which tests the CPU goes to.

    python .ci/cpu_by_test.py OUT.txt -- python -m pytest -q -n 3 --dist loadfile

Runs the command with this folder on PYTHONPATH and ``-p cpu_by_test`` added, so every pytest
process writes when each test (setup to teardown) starts and ends on it. Once a second it reads
every process's CPU time and files the increase under the xdist worker it descends from (Ray
starts its processes from the driver: a test's local Ray, its workers and actors all descend
from the test's worker), then gives each second's increase to the test running on that worker.
Processes shorter than a second are missed; those that outlive their parent (reparented) are
filed under "(other)". Writes ``OUT.txt``: CPU seconds and wall seconds per test file and per
test, most CPU first; exits with the command's status.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

from cpu_by_process import processes  # this folder: the script's, or -p's PYTHONPATH

TIMELINE = "RAYRM_TEST_TIMELINE"


# --- the pytest plugin (``-p cpu_by_test``) --------------------------------------------------
_RECORD = [False]  # in the process that runs the tests (an xdist worker, or pytest without it)


def pytest_configure(config):  # pragma: no cover - runs inside pytest
    _RECORD[0] = hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", 0)


def pytest_runtest_logfinish(nodeid, location):  # pragma: no cover - runs inside pytest
    path = os.environ.get(TIMELINE)
    if path and _RECORD[0]:
        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "test": nodeid, "end": time.time()}) + "\n")


def pytest_runtest_logstart(nodeid, location):  # pragma: no cover - runs inside pytest
    path = os.environ.get(TIMELINE)
    if path and _RECORD[0]:
        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "test": nodeid, "start": time.time()}) + "\n")


# --- the sampler ------------------------------------------------------------------------------
def _worker_of(pid: str, procs: dict, workers: set[str]) -> str | None:
    seen = 0
    while pid in procs and seen < 64:
        if pid in workers:
            return pid
        pid, seen = procs[pid][0], seen + 1
    return None


def main() -> int:
    out, command = sys.argv[1], sys.argv[sys.argv.index("--") + 1 :]
    timeline = tempfile.mktemp(prefix="timeline-", suffix=".jsonl")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, **{TIMELINE: timeline})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([*command, "-p", "cpu_by_test"], env=env)
    last: dict[tuple[str, str], float] = {}
    samples: list[tuple[float, dict[str, float]]] = []  # (time, worker pid -> CPU increase)
    first = True
    while True:
        done = proc.poll() is not None
        procs = {p: (ppid, cpu, start) for p, (_, ppid, cpu, start) in processes().items()}
        now = time.time()
        main_pid = str(proc.pid)
        # xdist workers are the pytest process's children; without xdist, pytest itself.
        workers = {p for p, (ppid, _, _) in procs.items() if ppid == main_pid} or {main_pid}
        by_worker: dict[str, float] = collections.Counter()
        for pid, (_, cpu, start) in procs.items():
            key = (pid, start)
            before = last.get(key, cpu if first else 0.0)
            last[key] = cpu
            if cpu > before:
                by_worker[_worker_of(pid, procs, workers) or "(other)"] += cpu - before
        samples.append((now, dict(by_worker)))
        first = False
        if done:
            break
        time.sleep(1.0)
    _report(out, timeline, samples)
    return proc.returncode


def _report(out: str, timeline: str, samples: list) -> None:
    spans: dict[str, list[tuple[float, float, str]]] = collections.defaultdict(list)
    starts: dict[tuple[int, str], float] = {}
    if os.path.exists(timeline):
        with open(timeline) as f:
            for line in f:
                ev = json.loads(line)
                if "start" in ev:
                    starts[(ev["pid"], ev["test"])] = ev["start"]
                elif (ev["pid"], ev["test"]) in starts:
                    start = starts.pop((ev["pid"], ev["test"]))
                    spans[str(ev["pid"])].append((start, ev["end"], ev["test"]))
    for s in spans.values():
        s.sort()
    cpu_by_test: dict[str, float] = collections.Counter()
    wall_by_test: dict[str, float] = collections.Counter()
    for s in spans.values():
        for start, end, test in s:
            wall_by_test[test] += end - start
    for now, by_worker in samples:
        for worker, cpu in by_worker.items():
            s = spans.get(worker, [])
            i = bisect.bisect_right(s, (now, float("inf"), "")) - 1
            if i >= 0 and s[i][0] <= now <= s[i][1] + 1.0:
                cpu_by_test[s[i][2]] += cpu
            else:
                cpu_by_test[f"(between tests: {worker if s else 'other'})"] += cpu
    by_file: dict[str, float] = collections.Counter()
    wall_by_file: dict[str, float] = collections.Counter()
    for test, cpu in cpu_by_test.items():
        by_file[test.split("::")[0]] += cpu
    for test, wall in wall_by_test.items():
        wall_by_file[test.split("::")[0]] += wall
    lines = [f"{sum(cpu_by_test.values()):9.1f} CPU s in all"]
    lines += ["", "  CPU s   wall s  file"]
    lines += [f"{c:7.1f} {wall_by_file.get(k, 0):8.1f}  {k}" for k, c in by_file.most_common()]
    lines += ["", "  CPU s   wall s  test"]
    lines += [f"{c:7.1f} {wall_by_test.get(k, 0):8.1f}  {k}" for k, c in cpu_by_test.most_common()]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
