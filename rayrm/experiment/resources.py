"""What a trial asks of the cluster, against what the cluster has.

Tune waits for a trial's placement group for as long as it takes: a request the cluster can
never meet (a GPU on a CPU-only machine, more CPUs or a custom resource than exist) would wait
forever without a word. :func:`wait_for_resources` compares the trial's bundles (trial
process, learners, env runners, reward actors: ``RLHFPPO.default_resource_request``) with the
*capacity* of the cluster's live nodes -- not what is free now; Tune waits for busy resources
as it should -- and gives nodes ``run.pending_timeout_s`` to appear (an autoscaling cluster
adds them on demand) before it ends the run with one line saying what was asked and what the
cluster has.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rayrm.config import ConfigError, RLConfig
from rayrm.rl.algorithm import RLHFPPO, build_algo_config

__all__ = ["claim_local_cores", "trial_bundles", "unmet", "wait_for_resources"]

Bundle = dict[str, float]
_EPS = 1e-9


def trial_bundles(cfg: RLConfig) -> tuple[list[Bundle], str]:
    """The bundles of one trial of ``cfg`` and their placement strategy, as Tune requests them."""
    pgf = RLHFPPO.default_resource_request(build_algo_config(cfg))
    bundles = [{k: float(v) for k, v in b.items() if v} for b in pgf.bundles]
    return bundles, pgf.strategy


def claim_local_cores(cfg: RLConfig, local_cpus: float) -> RLConfig:
    """A lone trial on a local Ray of ``local_cpus`` CPUs: its local learner reserves what the
    other bundles (env runners, reward actors, a pipelined sampler) leave, at least one CPU,
    unless ``resources.num_cpus_per_learner`` was given or learners are remote. Its update
    then runs on that many torch threads (``use_reserved_cpus``)."""
    res = cfg.resources
    if res.num_learners or "num_cpus_per_learner" in res.model_fields_set:
        return cfg
    bundles, _ = trial_bundles(cfg)
    others = sum(b.get("CPU", 0.0) for b in bundles) - res.num_cpus_per_learner
    cpus = float(max(1, int(local_cpus - others + _EPS)))
    if cpus == res.num_cpus_per_learner:
        return cfg
    claimed = res.model_copy(update={"num_cpus_per_learner": cpus})
    return cfg.model_copy(update={"resources": claimed})


def _fits(need: Bundle, node: Bundle) -> bool:
    return all(node.get(k, 0.0) + _EPS >= v for k, v in need.items())


def _total(bundles: list[Bundle]) -> Bundle:
    out: Counter[str] = Counter()
    for b in bundles:
        out.update(b)
    return dict(out)


def _fmt(resources: Bundle, keys: Any) -> str:
    return ", ".join(f"{k} {resources.get(k, 0.0):g}" for k in keys)


def unmet(bundles: list[Bundle], strategy: str, nodes: list[Bundle]) -> str | None:
    """Why ``nodes`` (each node's total resources) can never hold ``bundles``, or None."""
    need, have = _total(bundles), _total(nodes)
    short = [k for k, v in need.items() if have.get(k, 0.0) + _EPS < v]
    if short:
        return f"not enough {', '.join(short)} in the whole cluster"
    for b in bundles:
        if not any(_fits(b, node) for node in nodes):
            return f"no node can hold the bundle {{{_fmt(b, b)}}}"
    if strategy == "STRICT_PACK" and not any(_fits(need, node) for node in nodes):
        return "STRICT_PACK needs one node to hold every bundle"
    if strategy == "STRICT_SPREAD" and len(nodes) < len(bundles):
        return (
            f"STRICT_SPREAD needs a node per bundle ({len(bundles)}), the cluster has {len(nodes)}"
        )
    return None


def _live_nodes() -> list[Bundle]:
    import ray

    return [
        {k: float(v) for k, v in node["Resources"].items()}
        for node in ray.nodes()
        if node.get("Alive")
    ]


def wait_for_resources(cfg: RLConfig, *, poll_s: float = 1.0) -> None:
    """Returns once the cluster could place a trial of ``cfg``; waits ``run.pending_timeout_s``.

    Raises:
        ConfigError: The request still cannot be met after the wait (one line: what the trial
            asks, what the cluster has, why it does not fit).
    """
    bundles, strategy = trial_bundles(cfg)
    timeout = cfg.run.pending_timeout_s
    deadline = time.monotonic() + timeout
    while True:
        nodes = _live_nodes()
        problem = unmet(bundles, strategy, nodes)
        if problem is None:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    need, have = _total(bundles), _total(nodes)
    keys = list(dict.fromkeys(["CPU", "GPU", *need]))
    raise ConfigError(
        f"resources: a trial asks for {_fmt(need, keys)} ({len(bundles)} bundles, {strategy}); "
        f"the cluster's {len(nodes)} node(s) have {_fmt(have, keys)}: {problem}. Waited "
        f"run.pending_timeout_s={timeout:g}s for nodes (on an autoscaling cluster that is the "
        "time nodes have to come up: raise it to wait longer); otherwise lower the request in "
        "the resources and reward sections",
        key="resources",
    )
