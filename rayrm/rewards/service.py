"""A reward service: one detached, named reward pool on a Ray cluster that many jobs share.

``rayrm serve-rm CONFIG`` starts the reward actors that the ``reward`` section of CONFIG
describes (a model, an ensemble, a composite's model and function components) as *detached*
actors named after ``reward.pool_name`` (or ``--name``) in the ``rayrm`` Ray namespace, and
returns; the actors keep running after the command and after every job that uses them, until
``rayrm serve-rm --stop NAME``.

A training job uses the service by having the same ``reward`` section plus
``reward.pool_name: NAME`` (e.g. the same config file, or ``--set reward.pool_name=NAME``):
its :func:`rayrm.rewards.pool_from_config` then joins the running actors by name instead of
starting its own, and reserves no reward resources for them. A job whose reward section names
another model than the one served fails at start-up with a one-line error instead of silently
scoring with the service's model. Metric sources (chrF, BLEU) have no actors: every job scores
them in its own process.

Where is the cluster? ``serve-rm`` connects to a RUNNING Ray cluster, never starts one (a
detached actor must outlive the command): ``--address`` if given, else ``RAY_ADDRESS``
(set inside ``ray job submit`` jobs and by ``ray start``'s hint), else ``"auto"`` -- the
cluster that ``ray start --head`` started on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from rayrm.config import (
    ConfigError,
    RewardSettings,
    config_from_dict,
    resolve_paths,
    validate_reward_paths,
)
from rayrm.rewards import POOL_NAMESPACE, pool_from_config
from rayrm.rewards.compose import kill_shared_pools, shared_actor_names


def load_reward_config(path: str | Path, name: str | None = None) -> RewardSettings:
    """Reads the ``reward`` section of a run config (or of a file that holds only that).

    Other sections are not read, so a training job's own config serves as the service config.

    Args:
        path: YAML file with a ``reward`` section.
        name: service name; overrides ``reward.pool_name``.

    Returns:
        The validated reward config with absolute paths and ``pool_name`` set.

    Raises:
        ConfigError: unreadable file, no reward section, an invalid reward, or no name.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("reward"), dict):
        raise ConfigError(f"{path}: needs a `reward` section to serve", key="reward")
    reward = dict(raw["reward"])
    if name is not None:
        reward["pool_name"] = name
    # The other sections only need to be well-formed for the reward checks to run.
    placeholder = {"model": {"path": "unused"}, "data": {"prompts": "unused.jsonl"}}
    cfg = resolve_paths(config_from_dict({**placeholder, "reward": reward}))
    validate_reward_paths(cfg.reward)
    if not cfg.reward.pool_name:
        raise ConfigError(
            "the service needs a name: set reward.pool_name in the config or pass --name",
            key="reward.pool_name",
        )
    return cfg.reward


def connect(address: str | None = None) -> None:
    """Joins the running cluster (see the module docstring); never starts a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(
            f"no running Ray cluster at {address!r}: start one with `ray start --head` or set "
            f"RAY_ADDRESS ({exc})"
        ) from exc


def serve(
    cfg_path: str | Path, *, name: str | None = None, address: str | None = None
) -> dict[str, Any]:
    """Starts (or finds) the named reward service; returns once its actors are ready.

    Starting a service that is already running is a no-op that reports the running actors
    (the actors are created with ``get_if_exists``), and fails if the running service serves
    another reward source.

    Returns:
        ``{"name": ..., "actors": [actor names], "stats": pool stats}``.
    """

    reward = load_reward_config(cfg_path, name)
    connect(address)
    pool = pool_from_config(reward, name=reward.pool_name)
    try:
        stats = pool.stats()
    finally:
        pool.shutdown()  # drops this client's handles; shared (detached) actors keep running
    actors = shared_actor_names(str(reward.pool_name), POOL_NAMESPACE)
    return {"name": reward.pool_name, "actors": actors, "stats": stats}


def stop(name: str, *, address: str | None = None) -> int:
    """Stops every actor of the service ``name``; returns how many were running."""

    connect(address)
    return kill_shared_pools(name)


def main(args: argparse.Namespace) -> int:
    """``rayrm serve-rm``. ConfigError propagates (the CLI turns it into exit code 2)."""
    if (args.config is None) == (args.stop is None):
        raise ConfigError("give either CONFIG (start a service) or --stop NAME, not both")
    if args.stop is not None:
        killed = stop(args.stop, address=args.address)
        if not killed:
            print(f"rayrm: no reward service named {args.stop!r} is running", file=sys.stderr)
            return 1
        print(f"stopped reward service {args.stop!r} ({killed} actors)")
        return 0
    info = serve(args.config, name=args.name, address=args.address)
    if not info["actors"]:
        print(
            f"reward service {info['name']!r}: this reward has no actors to serve (metric "
            f"sources score in each job's own process)"
        )
        return 0
    print(f"reward service {info['name']!r} is running: {', '.join(info['actors'])}")
    print(f"jobs use it with: --set reward.pool_name={info['name']} (same reward section)")
    print(f"stop it with:     rayrm serve-rm --stop {info['name']}")
    return 0
