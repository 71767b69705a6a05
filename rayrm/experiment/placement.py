"""Custom Ray resource names that tie rayrm's roles to the node types of a cluster.

``cluster.yaml`` gives each node type as many units of its role's resource as processes of that
role it should hold (e.g. ``rayrm_learner: 1`` on a one-GPU learner node); rayrm asks for one
unit per learner, env runner or reward actor (``resources.custom_resources_per_learner``,
``resources.custom_resources_per_env_runner``, ``reward.custom_resources_per_actor``), so Ray
places each role on its node type and the autoscaler starts that type when one is missing.
``tests/unit/project/test_cluster_yaml.py`` checks that every name here exists in ``cluster.yaml``.
"""

DEFAULT_PLACEMENT_RESOURCES: dict[str, str] = {
    "learner": "rayrm_learner",
    "rollout": "rayrm_rollout",
    "reward": "rayrm_reward",
}
