"""CPU time by kind of process while a command runs (Linux /proc): where a test run's CPU goes.

    python .ci/cpu_by_process.py OUT.txt -- python -m pytest -q -n 3 --dist loadfile

Samples every process once a second; a process is counted from its CPU when first seen (0 for
those started after this) to its last sample, and filed under its kind: Ray names its worker
processes ``ray::<Actor>`` (the kind of actor), the rest by what they run. Processes shorter
than a second are missed. Writes ``OUT.txt`` (CPU seconds, process count, kind) every 10 s
and at the end; exits with the command's status.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
KINDS = (  # (text in the command line, kind): first match wins
    ("pytest", "pytest"),
    ("execnet", "pytest"),
    ("rayrm.cli", "rayrm CLI"),
    ("dashboard/agent.py", "ray dashboard agent"),
    ("runtime_env/agent", "ray runtime-env agent"),
    ("dashboard/dashboard.py", "ray dashboard"),
    ("log_monitor", "ray log monitor"),
    ("autoscaler/_private/monitor.py", "ray monitor"),
    ("jobs/", "ray job driver"),
)


def kind_of(pid: str, comm: str) -> str:
    if comm.startswith("ray::") or comm in ("raylet", "gcs_server"):
        return comm
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = ""
    return next((kind for text, kind in KINDS if text in cmd), f"{comm}: {cmd[:50]}")


def processes() -> dict[str, tuple[str, str, float, str]]:
    """Every process now: pid -> (command name, parent pid, CPU seconds, start time)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[pid] = (comm, fields[1], (int(fields[11]) + int(fields[12])) / HZ, fields[19])
    return out


def sample(seen: dict, first: bool) -> None:
    for pid, (comm, _, cpu, start) in processes().items():
        key = (pid, start)  # pid and start time: a reused pid is another process
        entry = seen.get(key)
        if entry is None:
            seen[key] = [kind_of(pid, comm), cpu if first else 0.0, cpu]
        else:
            if comm.startswith("ray::") and comm != "ray::IDLE":
                entry[0] = comm  # an idle worker that became an actor
            entry[2] = cpu


def write(seen: dict, out: str) -> None:
    total, count = collections.Counter(), collections.Counter()
    for kind, start, last in seen.values():
        total[kind] += last - start
        count[kind] += 1
    with open(out, "w") as f:
        f.write(f"{sum(total.values()):9.1f}       all\n")
        for kind, cpu in total.most_common(60):
            f.write(f"{cpu:9.1f} {count[kind]:5d} {kind}\n")


def main() -> int:
    out, command = sys.argv[1], sys.argv[sys.argv.index("--") + 1 :]
    seen: dict = {}
    sample(seen, first=True)
    proc = subprocess.Popen(command)
    last_write = time.monotonic()
    while proc.poll() is None:
        time.sleep(1)
        sample(seen, first=False)
        if time.monotonic() - last_write > 10:
            write(seen, out)
            last_write = time.monotonic()
    write(seen, out)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
