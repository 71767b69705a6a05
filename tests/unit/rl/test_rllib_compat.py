"""Every private RLlib/Ray name rayrm relies on, checked against the installed Ray.

``rayrm.rl.rllib_compat`` is the only module that touches them; when a Ray upgrade renames or
removes one, these tests say which, instead of a training run failing deep inside RLlib.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from helpers import make_config

from rayrm.rl import rllib_compat
from rayrm.rl.algorithm import build_algo_config


@pytest.mark.parametrize(
    ("name", "owner", "attribute"), rllib_compat.HOOKS, ids=[h[0] for h in rllib_compat.HOOKS]
)
def test_private_member_exists(name, owner, attribute):
    assert hasattr(owner(), attribute), (
        f"{name} is gone from the installed Ray: update rllib_compat"
    )


@pytest.mark.parametrize(
    ("name", "method", "attribute"),
    rllib_compat.INSTANCE_HOOKS,
    ids=[h[0] for h in rllib_compat.INSTANCE_HOOKS],
)
def test_private_instance_attribute_is_still_set(name, method, attribute):
    import re

    assert re.search(rf"self\.{attribute}\b\s*(:[^=]+)?=", inspect.getsource(method())), (
        f"{name} is no longer set by the installed Ray: update rllib_compat"
    )


def test_every_private_name_the_compat_module_uses_is_listed():
    """Each ``._private`` attribute the module reads of another object is named in HOOKS,
    INSTANCE_HOOKS or the module's docstring (its list of private names, some checked on
    built objects by the other tests here)."""
    import ast
    import re

    source = inspect.getsource(rllib_compat)
    tree = ast.parse(source)
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    }
    names = " ".join(h[0] for h in [*rllib_compat.HOOKS, *rllib_compat.INSTANCE_HOOKS])
    listed = set(re.findall(r"\b_[a-z][a-z_]*", names + " " + (rllib_compat.__doc__ or "")))
    assert used - listed == set()


def test_sample_hook_signature_matches_rllib():
    """RLlib calls ``_sample`` with these keywords; SampleHook must accept them all."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    rllib = set(inspect.signature(SingleAgentEnvRunner._sample).parameters) - {"self"}
    ours = set(inspect.signature(rllib_compat.SampleHook._sample).parameters) - {"self"}
    assert rllib <= ours, f"SingleAgentEnvRunner._sample takes {rllib - ours} now"


def test_synchronous_parallel_sample_keywords():
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

    params = inspect.signature(synchronous_parallel_sample).parameters
    assert {"_uses_new_env_runners", "_return_metrics", "worker_set"} <= set(params)


def test_instance_attributes_of_built_runner_learner_and_group(
    tiny_policy_dir, prompts_file, tmp_path
):
    """What ``__init__``/``build`` set: the runner's seed state and metrics key, the learner's
    connector pipeline and update counter, the local learner of a learner group (no Ray)."""
    from rayrm.rl.env_runner import RLHFEnvRunner

    algo_config = build_algo_config(
        make_config(
            tiny_policy_dir, prompts_file, tmp_path, resources={"env_runner_max_restarts": 5}
        )
    )
    # Ray's restart budget of each runner actor (EnvRunnerGroup's remote args) comes from here.
    assert algo_config.max_num_env_runner_restarts == 5 and algo_config.restart_failed_env_runners
    runner = RLHFEnvRunner(config=algo_config)
    try:
        assert rllib_compat.initial_reset_seed(runner) == rllib_compat.runner_seed(runner)
        assert rllib_compat.initial_reset_seed(runner) is None  # only the first reset is seeded
        assert hasattr(runner, "_metrics_num_env_steps_sampled")
        assert len(rllib_compat.sub_envs(runner)) == algo_config.num_envs_per_env_runner
    finally:
        runner.stop()
    learner_group = algo_config.build_learner_group(
        spaces={
            "default_policy": (runner.env.single_observation_space, runner.env.single_action_space)
        }
    )
    try:
        learner = rllib_compat.local_learner(learner_group)
        names = [type(c).__name__ for c in rllib_compat.learner_connector(learner).connectors]
        assert "RLHFAdvantages" in names
        assert rllib_compat.weights_seq_no(learner) >= 0
    finally:
        learner_group.shutdown()


def test_trainable_logdirs_under(tmp_path):
    """A Trainable built outside Tune (``build_algo()``) logs under the given folder, not in a
    new folder under ~/ray_results; the default comes back afterwards."""
    from ray import tune

    class Idle(tune.Trainable):
        def step(self):
            return {}

    module = rllib_compat._trainable_module()
    before = module.DEFAULT_STORAGE_PATH
    with rllib_compat.trainable_logdirs_under(tmp_path / "logs"):
        trainable = Idle(config={})
    try:
        assert Path(trainable.logdir).parent == tmp_path / "logs"
    finally:
        trainable.stop()
    assert module.DEFAULT_STORAGE_PATH == before


def test_mlflow_callback_keeps_its_trial_runs(tmp_path, monkeypatch):
    """``MLflowLoggerCallback._trial_runs``: a dict once the callback is set up."""
    pytest.importorskip("mlflow")
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    callback = MLflowLoggerCallback(
        tracking_uri=(tmp_path / "mlruns").as_uri(), experiment_name="e"
    )
    callback.setup()
    assert rllib_compat.mlflow_trial_runs(callback) == {}


def test_callbacks_counted_by_name_as_ray_counts_them_without_importing_mlflow():
    """Tune's usage tag of an experiment's callbacks: the same counts as Ray's own, and no
    import of Ray's MLflow or W&B integration (1.8 s of CPU per driver) to get them."""
    import subprocess
    import sys

    code = """
import sys
import ray.air._internal.usage as usage
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback
from rayrm.rl.rllib_compat import count_callbacks_by_name

class Mine(Callback): pass
class MyLogger(LoggerCallback): pass

callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), Mine(), Mine(), MyLogger(), "not one"]
count_callbacks_by_name()
count_callbacks_by_name()
ours = dict(usage._count_callbacks(callbacks))
usage.tag_callbacks(callbacks)
heavy = sorted(m for m in ("ray.air.integrations.mlflow", "ray.air.integrations.wandb",
                           "mlflow", "wandb") if m in sys.modules)
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
callbacks += [MLflowLoggerCallback(), WandbLoggerCallback(project="p")]
import importlib
ray_counts = dict(importlib.reload(usage)._count_callbacks(callbacks))
count_callbacks_by_name()
print(heavy, ray_counts == dict(usage._count_callbacks(callbacks)), ours, ray_counts)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out.startswith("[] True {'JsonLoggerCallback': 1, 'CSVLoggerCallback': 1, "
                          "'CustomCallback': 2, 'CustomLoggerCallback': 1}"), out  # fmt: skip
