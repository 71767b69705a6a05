"""cluster.yaml: Ray's own cluster-config schema, plus the relations that schema does not check.

Ray's ``validate_config`` expects a config whose defaults are already filled in; on the file as
written it fails with a misleading "Ray version running in the cluster is greater than ..."
message. ``prepare_config`` fills them in offline (it merges ``ray/autoscaler/aws/defaults.yaml``;
the AWS calls happen later, in ``ray up``'s bootstrap), so it runs here without credentials.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from helpers import REPO

from rayrm.experiment.placement import DEFAULT_PLACEMENT_RESOURCES
from rayrm.rl.rllib_compat import cluster_config_checks

CLUSTER_YAML = REPO / "cluster.yaml"


def load_cluster_yaml() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text(encoding="utf-8"))


def ray_schema_problems(config: dict[str, Any]) -> list[str]:
    """Ray's own validation: defaults filled in by ``prepare_config``, then ``validate_config``."""
    prepare_config, validate_config = cluster_config_checks()
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as exc:  # jsonschema.ValidationError, ValueError, ...
        return [f"Ray's cluster-config validation: {type(exc).__name__}: {exc}"]
    return []


def relation_problems(config: dict[str, Any]) -> list[str]:
    """What Ray's schema does not check, and what rayrm needs from the cluster."""
    problems = []
    types = config.get("available_node_types", {})
    head = config.get("head_node_type")
    global_max = config.get("max_workers", 0)
    if head not in types:
        problems.append(
            f"head_node_type {head!r} is not one of available_node_types {sorted(types)}"
        )

    def max_workers(name: str) -> int:  # Ray's defaults: 0 for the head, else the global max
        return types[name].get("max_workers", 0 if name == head else global_max)

    for name, node_type in types.items():
        lo, hi = node_type.get("min_workers", 0), max_workers(name)
        if lo > hi:
            problems.append(
                f"node type {name}: min_workers ({lo}) > max_workers ({hi}), "
                "the autoscaler could never reach its minimum"
            )
        if not node_type.get("node_config", {}).get("ImageId"):
            problems.append(
                f"node type {name}: node_config has no ImageId, so Ray would use its built-in "
                "AMI (Deep Learning AMI, Ubuntu 18.04), too old for rayrm"
            )
    sum_min = sum(t.get("min_workers", 0) for t in types.values())
    if global_max < sum_min:
        problems.append(
            f"global max_workers ({global_max}) < sum of per-type min_workers ({sum_min}): "
            "the minimum cluster could never be started"
        )

    for role, resource in DEFAULT_PLACEMENT_RESOURCES.items():
        offered_by = [
            name
            for name, t in types.items()
            if t.get("resources", {}).get(resource, 0) > 0 and (name == head or max_workers(name))
        ]
        if not offered_by:
            problems.append(
                f"no node type that can be started offers resource {resource!r}, which rayrm "
                f"requests for every {role} process: no {role} process could ever be placed"
            )
    return problems


def all_problems(config: dict[str, Any]) -> list[str]:
    """Ray's validation first; the relations are only meaningful on a config that passes it."""
    return ray_schema_problems(config) or relation_problems(config)


def test_cluster_yaml_is_valid(monkeypatch: pytest.MonkeyPatch):
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("validating cluster.yaml tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    config = load_cluster_yaml()
    assert config["provider"]["type"] == "aws"
    assert all_problems(config) == []


def test_validate_config_alone_needs_defaults():
    """Why ``prepare_config`` comes first: without it, Ray blames a version mismatch."""
    _, validate_config = cluster_config_checks()
    with pytest.raises(RuntimeError, match="cluster_synced_files"):
        validate_config(load_cluster_yaml())


TYPES = "available_node_types"


def _schema(c: dict) -> None:
    c["max_workers"] = "many"


def _min_gt_max(c: dict) -> None:
    c[TYPES]["rayrm.learner.gpu"].update(min_workers=3, max_workers=2)


def _global_max_lt_sum_min(c: dict) -> None:
    c["max_workers"] = 3
    c[TYPES]["rayrm.rollout.cpu"]["min_workers"] = 4


def _unknown_head(c: dict) -> None:
    c["head_node_type"] = "rayrm.nohead"


def _placement_resource_missing(c: dict) -> None:
    del c[TYPES]["rayrm.reward.gpu"]["resources"]["rayrm_reward"]


def _placement_resource_unstartable(c: dict) -> None:
    c[TYPES]["rayrm.learner.gpu"]["max_workers"] = 0


def _no_image(c: dict) -> None:
    del c[TYPES]["rayrm.rollout.cpu"]["node_config"]["ImageId"]


@pytest.mark.parametrize(
    "mutate, check, expected",
    [
        pytest.param(
            _schema,
            ray_schema_problems,
            "Ray's cluster-config validation: ValidationError",
            id="schema",
        ),
        pytest.param(
            _min_gt_max,
            relation_problems,
            "rayrm.learner.gpu: min_workers (3) > max_workers (2)",
            id="min_gt_max",
        ),
        pytest.param(
            _global_max_lt_sum_min,
            relation_problems,
            "global max_workers (3) < sum of per-type",
            id="global_max_lt_sum_min",
        ),
        pytest.param(
            _unknown_head,
            relation_problems,
            "head_node_type 'rayrm.nohead' is not one of",
            id="unknown_head",
        ),
        pytest.param(
            _placement_resource_missing,
            relation_problems,
            "offers resource 'rayrm_reward'",
            id="placement_resource_missing",
        ),
        pytest.param(
            _placement_resource_unstartable,
            relation_problems,
            "offers resource 'rayrm_learner'",
            id="placement_resource_unstartable",
        ),
        pytest.param(
            _no_image,
            relation_problems,
            "rayrm.rollout.cpu: node_config has no ImageId",
            id="no_image",
        ),
    ],
)
def test_each_check_catches_its_mistake(
    mutate: Callable[[dict], None], check: Callable[[dict], list[str]], expected: str
):
    config = load_cluster_yaml()
    assert check(config) == []
    broken = copy.deepcopy(config)
    mutate(broken)
    problems = check(broken)
    assert any(expected in p for p in problems), problems
