"""The one door to RLlib's and Ray's private internals.

rayrm extends RLlib through its public extension points wherever there is one (connector
pieces, ``Learner.compute_loss_for_module``, ``configure_optimizers_for_module``,
``compute_gradients``, ``apply_gradients``, the ``EnvRunner`` class). What has no public hook
is reached here and only here, each use a small named function or mixin, and
:data:`HOOKS` lists every private name with the RLlib/Ray object that must have it:
``tests/unit/rl/test_rllib_compat.py`` (and ``tests/ray/rl/test_rllib_compat_on_ray.py``, for
those that need a running Ray) checks each one against the installed Ray, so an upgrade that
moves one fails with a message naming it instead of somewhere deep in a training run.

Private names used (Ray 2.60):

* ``SingleAgentEnvRunner._sample`` -- the sampling loop ``sample()`` wraps (rayrm samples one
  whole completion per env); ``_increase_sampled_metrics``, ``_log_env_steps`` and
  ``_metrics_num_env_steps_sampled`` record what was sampled; ``_seed`` and
  ``_needs_initial_reset`` seed the first reset.
* ``Learner._create_iterator_if_necessary`` / ``_make_batch_if_necessary`` -- minibatches of
  whole completions; ``_learner_connector`` -- replacing PPO's GAE piece;
  ``_weights_seq_no`` -- a fresh shuffle seed per update; an env runner's copy, the version
  of the weights it samples with (``algorithm.async_rollouts``' lag).
* ``synchronous_parallel_sample(_uses_new_env_runners=..., _return_metrics=...)``.
* ``EnvRunnerGroup._worker_manager`` (its ``FaultTolerantActorManager``, whose ``_actors``
  maps ids to runner actors) and ``_ignore_ray_errors_on_env_runners`` -- sampling each
  runner with its own prompts, and restarting a hung one.
* ``ray._private.worker._global_node`` -- whether this process started the local Ray; and Ray
  Train V2's ``TorchTrainer._create_default_callbacks`` with its ``PlacementGroupCleaner``.
* :data:`MODULE_STATE_FILE` -- where an RLlib algorithm checkpoint keeps the learner's module
  state (read to export a policy without Ray).
* ``LearnerGroup._learner`` -- the in-process learner of a local learner group (tests and
  benchmarks inspect its optimizer and module).
* ``ray.autoscaler._private.util.prepare_config``/``validate_config`` -- Ray's own check of
  a cluster-launcher YAML (used by the test of ``cluster.yaml``).
* Ray's ``MLflowLoggerCallback._trial_runs`` (trial -> MLflow run id, set in its ``setup``) --
  a restored experiment logs into the trial's earlier MLflow run instead of opening another.
* ``ray.air._internal.usage._count_callbacks`` -- Tune's usage tag of an experiment's
  callbacks, counted here by class name without importing Ray's MLflow and W&B integrations
  (:func:`count_callbacks_by_name`).
* ``ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH`` -- where an algorithm built outside
  Tune (benchmarks, tests) makes its log folder; ``~/ray_results`` unless told otherwise.
* Tune's ``Trainable._storage`` (``trial_fs_path``, ``storage_filesystem``,
  ``current_checkpoint_index``), its counters ``_iteration``, ``_time_total``,
  ``_timesteps_total``, ``_episodes_total``, and ``ray.train._internal.session._TrainingResult``
  -- resuming from the newest complete checkpoint on disk, counters included, without
  overwriting a checkpoint Tune's experiment snapshot does not know of.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "HOOKS",
    "INSTANCE_HOOKS",
    "MODULE_STATE_FILE",
    "MinibatchHook",
    "SampleHook",
    "cluster_config_checks",
    "count_callbacks_by_name",
    "initial_reset_seed",
    "local_learner",
    "local_session_dir",
    "mlflow_trial_runs",
    "learner_connector",
    "record_sampled",
    "restored_path",
    "restart_env_runners",
    "sample_episodes",
    "restore_counted",
    "skip_checkpoint_indices",
    "started_ray_here",
    "sub_envs",
    "torch_trainer_class",
    "trainable_logdirs_under",
    "trial_dir",
    "tune_counters",
    "weights_seq_no",
]


def _env_runner_cls() -> Any:
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    return SingleAgentEnvRunner


def _learner_cls() -> Any:
    from ray.rllib.core.learner.learner import Learner

    return Learner


def _torch_trainer_cls() -> Any:
    from ray.train.torch import TorchTrainer

    return TorchTrainer


def _env_runner_group_cls() -> Any:
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    return EnvRunnerGroup


def _actor_manager_cls() -> Any:
    from ray.rllib.utils.actor_manager import FaultTolerantActorManager

    return FaultTolerantActorManager


def _learner_group_cls() -> Any:
    from ray.rllib.core.learner.learner_group import LearnerGroup

    return LearnerGroup


def _autoscaler_util() -> Any:
    import ray.autoscaler._private.util

    return ray.autoscaler._private.util


def _training_result_cls() -> Any:
    from ray.train._internal.session import _TrainingResult

    return _TrainingResult


def _session_module() -> Any:
    import ray.train._internal.session

    return ray.train._internal.session


def _trainable_module() -> Any:
    import ray.tune.trainable.trainable

    return ray.tune.trainable.trainable


def _air_usage_module() -> Any:
    import ray.air._internal.usage

    return ray.air._internal.usage


def _global_worker_module() -> Any:
    import ray._private.worker

    return ray._private.worker


MODULE_STATE_FILE = "learner_group/learner/rl_module/default_policy/module_state.pkl"
"""The learner module's state inside an algorithm checkpoint (pickled; RLlib's layout)."""

HOOKS: list[tuple[str, Callable[[], Any], str]] = [
    ("SingleAgentEnvRunner._sample", _env_runner_cls, "_sample"),
    (
        "SingleAgentEnvRunner._increase_sampled_metrics",
        _env_runner_cls,
        "_increase_sampled_metrics",
    ),
    ("SingleAgentEnvRunner._log_env_steps", _env_runner_cls, "_log_env_steps"),
    ("Learner._create_iterator_if_necessary", _learner_cls, "_create_iterator_if_necessary"),
    ("Learner._make_batch_if_necessary", _learner_cls, "_make_batch_if_necessary"),
    ("ray._private.worker._global_node", _global_worker_module, "_global_node"),
    ("TorchTrainer._create_default_callbacks", _torch_trainer_cls, "_create_default_callbacks"),
    ("ray.autoscaler._private.util.prepare_config", _autoscaler_util, "prepare_config"),
    ("ray.autoscaler._private.util.validate_config", _autoscaler_util, "validate_config"),
    ("ray.train._internal.session._TrainingResult", _session_module, "_TrainingResult"),
    ("ray.air._internal.usage._count_callbacks", _air_usage_module, "_count_callbacks"),
    (
        "ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH",
        _trainable_module,
        "DEFAULT_STORAGE_PATH",
    ),
]
"""``(name, owner, attribute)`` of every private class member rayrm relies on; instance
attributes set in ``__init__``/``build`` (``_seed``, ``_needs_initial_reset``,
``_metrics_num_env_steps_sampled``, ``_learner_connector``, ``_weights_seq_no``, a Trainable's
``_storage`` and counters) are checked on built objects by the tests."""

INSTANCE_HOOKS: list[tuple[str, Callable[[], Any], str]] = [
    ("EnvRunnerGroup._worker_manager", lambda: _env_runner_group_cls().__init__, "_worker_manager"),
    (
        "EnvRunnerGroup._ignore_ray_errors_on_env_runners",
        lambda: _env_runner_group_cls().__init__,
        "_ignore_ray_errors_on_env_runners",
    ),
    ("FaultTolerantActorManager._actors", lambda: _actor_manager_cls().__init__, "_actors"),
]
"""``(name, the method that sets it, attribute)`` of instance attributes used only on objects
that need a running Ray to build (checked in the method's source by the tests)."""


# ------------------------------------------------------------------------------ env runners
class SampleHook:
    """Mixin for a ``SingleAgentEnvRunner`` subclass: ``sample()`` (public, with RLlib's
    metrics and weight pulls around it) calls ``self.collect_episodes(explore=...)``."""

    def collect_episodes(self, *, explore: bool) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample(  # RLlib's private sampling loop
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool = True,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[Any]:
        return self.collect_episodes(explore=explore)


def sub_envs(env_runner: Any) -> list[Any]:
    """The individual Gymnasium envs of a runner's sync vector env (stepped directly)."""
    return list(env_runner.env.unwrapped.envs)


def initial_reset_seed(env_runner: Any) -> int | None:
    """The runner's seed on its first reset (then None: envs keep their own RNG state)."""
    seed = env_runner._seed if env_runner._needs_initial_reset else None
    env_runner._needs_initial_reset = False
    return seed


def runner_seed(env_runner: Any) -> int | None:
    """The seed RLlib gave this runner (``config.seed`` plus its index), or None."""
    return env_runner._seed


def record_sampled(env_runner: Any, num_steps: int, num_episodes: int) -> None:
    """RLlib's sampled-steps and episodes counters, as its own sampling loop records them."""
    env_runner._increase_sampled_metrics(num_steps, num_episodes)
    env_runner._log_env_steps(metric=env_runner._metrics_num_env_steps_sampled, num_steps=num_steps)


def sample_episodes(
    env_runner_group: Any,
    timeout_s: float | None = None,
    plan: Callable[[list[int]], dict[int, Any]] | None = None,
) -> tuple[list[Any], list[Any], list[int]]:
    """Every healthy runner's ``sample()`` in parallel: ``(episodes, metrics, silent)``.

    ``plan(ids)``, given the ids of the runners about to sample (0: the local runner), gives
    each its prompts, handed to its ``plan_prompts`` in the same remote call, before
    ``sample()``. ``silent`` are the ids of the runners that did not answer within
    ``timeout_s`` (hung: RLlib would leave them in and wait on them again next time);
    runners whose process died are marked unhealthy by RLlib as usual. Without remote
    runners the local one samples.
    """
    from ray.rllib.utils.actor_manager import FaultTolerantActorManager

    group = env_runner_group
    if group.num_remote_env_runners() == 0:
        local = group.local_env_runner
        if plan is not None:
            local.plan_prompts(plan([0])[0])
        return list(local.sample()), [local.get_metrics()], []
    manager = group._worker_manager
    asked = manager.healthy_actor_ids()
    if not asked:  # every runner lost (RLlib restores them): nothing to ask
        return [], [], []
    plans = plan(asked) if plan is not None else dict.fromkeys(asked)

    def sampler(rows: Any) -> Callable[[Any], Any]:
        def run(runner: Any) -> Any:
            if rows is not None:
                runner.plan_prompts(rows)
            return runner.sample(), runner.get_metrics()

        return run

    results = manager.foreach_actor(
        [sampler(plans[i]) for i in asked],
        remote_actor_ids=asked,
        healthy_only=True,
        timeout_seconds=timeout_s,
    )
    FaultTolerantActorManager.handle_remote_call_result_errors(
        results, ignore_ray_errors=group._ignore_ray_errors_on_env_runners
    )
    answered = {r.actor_id for r in results}
    episodes: list[Any] = []
    metrics: list[Any] = []
    for result in results.ignore_errors():
        sampled, stats = result.get()
        episodes.extend(sampled)
        metrics.append(stats)
    return episodes, metrics, [i for i in asked if i not in answered]


def restart_env_runners(env_runner_group: Any, runner_ids: list[int]) -> None:
    """Kills hung remote runners so Ray restarts their processes, and marks them unhealthy:
    ``Algorithm.restore_env_runners`` then probes them back and syncs the current weights."""
    import ray

    manager = env_runner_group._worker_manager
    for runner_id in runner_ids:
        ray.kill(manager._actors[runner_id], no_restart=False)
        manager.set_actor_state(runner_id, healthy=False)


# ------------------------------------------------------------------------------ learners
class MinibatchHook:
    """Mixin for a ``Learner`` subclass: the minibatch iterator of an update comes from
    ``self.minibatches(batch, num_epochs=...)`` (the whole batch, as a ``MultiAgentBatch``)."""

    def minibatches(self, batch: Any, *, num_epochs: int) -> Iterator[Any]:  # pragma: no cover
        raise NotImplementedError

    def _create_iterator_if_necessary(
        self, *, training_data: Any, num_epochs: int = 1, **kwargs: Any
    ) -> Any:
        batch = self._make_batch_if_necessary(training_data=training_data)  # type: ignore[attr-defined]
        return self.minibatches(batch, num_epochs=num_epochs)


def learner_connector(learner: Any) -> Any:
    """The learner's connector pipeline (built in ``Learner.build``)."""
    return learner._learner_connector


def local_learner(learner_group: Any) -> Any:
    """The in-process learner of a learner group with ``num_learners=0``."""
    learner = learner_group._learner
    if learner is None:
        raise ValueError("the learner group has remote learners; there is no local learner")
    return learner


def weights_seq_no(learner: Any) -> int:
    """How many weight updates a learner has made (a per-update counter); of an env runner,
    the learner's count when its weights were last synced (0: never)."""
    return int(learner._weights_seq_no)


def mlflow_trial_runs(callback: Any) -> dict[Any, str]:
    """Ray's ``MLflowLoggerCallback``'s map of trials to their MLflow run ids (after its
    ``setup``): the callback logs a trial's results into the run found here."""
    runs: dict[Any, str] = callback._trial_runs
    return runs


# ------------------------------------------------------------------------------ Ray, Ray Train
def started_ray_here() -> bool:
    """Whether this process started the Ray it is connected to (a local, in-process Ray)."""
    node = _global_worker_module()._global_node
    return node is not None and bool(getattr(node, "head", False))


def local_session_dir() -> str | None:
    """The session folder of the Ray this process started (None when it joined a cluster):
    every Ray system process of that session names it on its command line."""
    if not started_ray_here():
        return None
    return str(_global_worker_module()._global_node.get_session_dir_path())


@contextmanager
def trainable_logdirs_under(folder: str | Path) -> Iterator[None]:
    """Algorithms built meanwhile outside Tune (``config.build_algo()``) make their log folder
    under ``folder``. Ray 2.60's Trainable, given no Tune storage, makes an (empty) folder under
    ``~/ray_results`` for each one and has no argument to change that: the folder it uses is
    the module global ``ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH``, set here and
    restored on exit."""
    module = _trainable_module()
    saved = module.DEFAULT_STORAGE_PATH
    module.DEFAULT_STORAGE_PATH = str(folder)
    try:
        yield
    finally:
        module.DEFAULT_STORAGE_PATH = saved


def torch_trainer_class() -> type:
    """``TorchTrainer``, minus two helpers when Ray was started in-process.

    Ray Train V2's detached ``PlacementGroupCleaner`` polls the State API for the controller
    and removes the run's placement group when it is not found; the State API finds its server
    through ``RAY_ADDRESS`` or ``/tmp/ray/ray_current_cluster``, so with several Rays on one
    host it may ask *another*, miss the controller, and kill a healthy run's workers (seen
    here). An in-process Ray dies with its driver: nothing to clean. Its datasets callback
    starts a ``DatasetManager`` actor (2.6 s of CPU) even for a run given no Ray Datasets, as
    rayrm's stages are. On a cluster both are kept.
    """
    from ray.train.torch import TorchTrainer

    if not started_ray_here() or not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    class InProcessTorchTrainer(TorchTrainer):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            unused = (
                PlacementGroupCleanerCallback,
                *(() if self.datasets else (DatasetsCallback,)),
            )
            return [c for c in super()._create_default_callbacks() if not isinstance(c, unused)]

    return InProcessTorchTrainer


def cluster_config_checks() -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Ray's ``(prepare_config, validate_config)`` for cluster-launcher YAML."""
    util = _autoscaler_util()
    return util.prepare_config, util.validate_config


# ------------------------------------------------------------------------------ Tune
BUILT_IN_LOGGERS = ("WandbLoggerCallback", "MLflowLoggerCallback", "CometLoggerCallback",
                    "AimLoggerCallback")  # fmt: skip
"""Class names of the logger callbacks Ray ships outside ``ray.tune.logger``."""


def count_callbacks_by_name() -> None:
    """Tune's usage tag of an experiment's callbacks (``ray.air._internal.usage``), counted by
    class name: Ray imports its W&B, MLflow, Comet and Aim integrations only to read their class
    names, 1.8 s of CPU in every driver starting a Tune run where mlflow and wandb are
    installed. Same counts as Ray's (tested), without the imports. Idempotent."""
    usage = _air_usage_module()
    if getattr(usage._count_callbacks, "by_name", False):
        return

    def _count_callbacks(callbacks: list[Any] | None) -> dict[str, int]:
        from ray.tune import Callback
        from ray.tune.logger import LoggerCallback
        from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

        built_in = {*BUILT_IN_LOGGERS, *(cls.__name__ for cls in DEFAULT_CALLBACK_CLASSES)}
        counts: dict[str, int] = {}
        for callback in [c for c in callbacks or [] if isinstance(c, Callback)]:  # as Ray
            name = type(callback).__name__
            if name not in built_in:
                logger = isinstance(callback, LoggerCallback)
                name = "CustomLoggerCallback" if logger else "CustomCallback"
            counts[name] = counts.get(name, 0) + 1
        return counts

    _count_callbacks.by_name = True  # type: ignore[attr-defined]
    usage._count_callbacks = _count_callbacks


# ------------------------------------------------------------------------------ Tune trainables
TUNE_COUNTERS = {
    "training_iteration": "_iteration",
    "time_total_s": "_time_total",
    "timesteps_total": "_timesteps_total",
    "episodes_total": "_episodes_total",
}
"""Tune result key -> the ``Trainable`` attribute that counts it (restored with a checkpoint)."""


def trial_dir(trainable: Any) -> Path | None:
    """A Tune trainable's trial folder, when it is on the local filesystem (or a mount)."""
    storage = getattr(trainable, "_storage", None)
    if storage is None or storage.storage_filesystem.type_name != "local":
        return None
    return Path(storage.trial_fs_path)


def skip_checkpoint_indices(trainable: Any, highest: int) -> None:
    """The trainable's next checkpoint is ``checkpoint_{highest + 1}`` or later: one Tune's
    snapshot does not know of is never overwritten."""
    storage = trainable._storage
    storage.current_checkpoint_index = max(storage.current_checkpoint_index, highest)


def tune_counters(trainable: Any) -> dict[str, Any]:
    """The counters Tune restores with a checkpoint (iteration, time, timesteps, episodes)."""
    return {key: getattr(trainable, attr) for key, attr in TUNE_COUNTERS.items()}


def restore_counted(trainable: Any, path: Path, counters: dict[str, Any]) -> None:
    """``trainable.restore`` from a checkpoint folder, counters included (a plain path would
    restart the iteration count at 0)."""
    from ray.tune import Checkpoint

    result = _training_result_cls()(
        checkpoint=Checkpoint.from_directory(str(path)), metrics=dict(counters)
    )
    trainable.restore(result)


def restored_path(checkpoint: Any) -> Path | None:
    """The local folder of what Tune passes to ``Trainable.restore`` (a result, a
    ``Checkpoint`` or a path), None when it is not on the local filesystem."""
    checkpoint = getattr(checkpoint, "checkpoint", checkpoint)
    if isinstance(checkpoint, str | Path):
        return Path(checkpoint)
    if getattr(checkpoint.filesystem, "type_name", "local") != "local":
        return None
    return Path(checkpoint.path)
