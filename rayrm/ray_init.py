"""The one Ray start-up: join the cluster a job runs on, or start a local Ray in-process.

Under ``ray job submit`` (and wherever ``RAY_ADDRESS`` is set) ``ray.init()`` joins that
cluster; otherwise it starts a local Ray that lives as long as this process. Processes sharing
cores must not each start a full torch thread pool, so ``OMP_NUM_THREADS`` defaults to 1 for
the Ray workers this process starts; each of them then sets torch's threads to the CPUs it
reserves (:func:`rayrm.threads.use_reserved_cpus`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["init_ray", "owned_ray"]


def init_ray(
    num_cpus: int | None = None,
    *,
    temp_dir: str | None = None,
    log_to_driver: bool = True,
    env_vars: dict[str, str] | None = None,
) -> bool:
    """Joins ``RAY_ADDRESS``'s cluster or starts a local Ray; does nothing if Ray is up.

    Args:
        num_cpus: Logical CPUs of a local Ray (None: all); ignored when joining a cluster.
        temp_dir: Where a local Ray keeps its session files (default: Ray's).
        log_to_driver: Show the workers' output in this process's terminal.
        env_vars: Environment variables of every worker (a local Ray's runtime env).

    Returns:
        Whether it started a local Ray (this process's command has the machine to itself).
    """
    import ray  # deferred: configs are checked before Ray is imported

    if ray.is_initialized():
        return False
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": log_to_driver}
    if not os.environ.get("RAY_ADDRESS"):
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        if temp_dir is not None:
            kwargs["_temp_dir"] = temp_dir
        if env_vars:
            kwargs["runtime_env"] = {"env_vars": dict(env_vars)}
    ray.init(**kwargs)
    return not os.environ.get("RAY_ADDRESS")


@contextmanager
def owned_ray() -> Iterator[None]:
    """Shuts down, on leaving the block, a Ray that was not running when it began.

    A command that started a local Ray stops it before it returns, so that the workers' last
    words reach the run's log rather than the terminal; a Ray someone else started (a test's,
    a job's cluster) stays up.
    """
    import ray

    started = not ray.is_initialized()
    try:
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
