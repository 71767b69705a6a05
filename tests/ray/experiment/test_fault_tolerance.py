"""Scale-out and failures: rollouts on distinct nodes, and each failure rayrm must survive."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from helpers import function_pool, make_config, trial_class, worker_environment
from ray import tune

from rayrm import metrics as M
from rayrm.config import RewardSettings
from rayrm.experiment.train import run_train
from rayrm.rewards import RewardPool
from rayrm.rewards import completion_records as records
from rayrm.rl.algorithm import RLHFPPO, build_algo_config


def _ping_when_back(actor, timeout_s: float = 60.0) -> bool:
    """The actor's ping once it has restarted: until then calls fail at once (the pool's
    actors have max_task_retries=0), with ActorUnavailableError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(actor.ping.remote())
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_reward_actor_killed_mid_batch_is_restarted_and_rescored(ray_local):
    pool = function_pool("scorers:slow_length_reward", num_actors=2, batch_size=3)
    try:
        completions = ["x" * i for i in range(12)]
        killer = threading.Timer(0.2, lambda: ray.kill(pool.actors[0], no_restart=False))
        killer.start()
        scores = pool.score(records(["p"] * len(completions), completions))
        killer.join()
        # Every completion scored exactly once, in order, despite the restart.
        np.testing.assert_array_equal(scores, np.arange(12, dtype=np.float32))
        assert pool.num_calls == 4
        assert _ping_when_back(pool.actors[0])  # the actor came back
    finally:
        pool.shutdown()


def test_shared_pool_is_one_set_of_actors(ray_local):
    reward = RewardSettings(
        source="function",
        function="envs.builtin:vowel_reward",
        num_actors=2,
        num_cpus_per_actor=0.25,
        batch_size=1,
    )
    kwargs = dict(max_inflight_per_actor=1, name="rayrm-test-shared")
    a, b = RewardPool(reward, **kwargs), RewardPool(reward, **kwargs)
    try:
        assert [x._actor_id for x in a.actors] == [x._actor_id for x in b.actors]
        # Back-pressure: 20 chunks through a window of 2 complete, in order.
        texts = ["a" * (i % 3) + "b" for i in range(20)]
        np.testing.assert_allclose(a.score(records(texts, texts)), b.score(records(texts, texts)))
        a.shutdown()  # a client leaving does not stop the shared actors
        assert b.score(records(["x"], ["a"]))[0] == 1.0
    finally:
        assert RewardPool.kill_shared("rayrm-test-shared", 2) == 2


def _runner_actors(algo):
    return list(algo.env_runner_group._worker_manager._actors.values())


# Every runner lost, pipelined (the harder case: the sampler thread is mid-batch). One runner
# lost synchronously: a lost node (test_spread_env_runners_survive_losing_a_node below) and a
# hung runner restarted and re-synced (tests/ray/rl/test_hangs.py) cover it.
@pytest.mark.parametrize(("victims", "pipelined"), [("all", True)])
def test_lost_env_runners_keep_the_batch_full(
    ray_local, tiny_policy_dir, prompts_file, tmp_path, victims, pipelined
):
    """Runners killed mid-run (a crash, a preempted node): every iteration still trains on
    algorithm.batch_size completions -- the survivors sample the missing share, or, with every
    runner gone, the iteration waits for Ray to restart one -- and the lost ones come back
    (probed, re-synced) while the metrics flag the degraded capacity. Also with pipelined
    rollouts, where the sampler thread restores them while an update may run."""
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 8, "async_rollouts": pipelined},
        generation={"max_new_tokens": 6},
        resources={"num_env_runners": 2, "num_cpus_per_env_runner": 0.5},
        run={"num_iterations": 1000},
    )
    algo = build_algo_config(cfg).build_algo()
    try:
        algo.train()
        actors = _runner_actors(algo)
        for victim in actors if victims == "all" else actors[1:]:
            ray.kill(victim, no_restart=False)  # Ray restarts the process; RLlib re-syncs it
        results = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            results.append(algo.train()[M.RLHF_RESULTS])
            if results[-1][M.ROLLOUT_HEALTHY_RUNNERS] == 2 and len(results) > 1:
                break
            time.sleep(0.5)
        assert all(r[M.ROLLOUT_COMPLETIONS] == cfg.algorithm.batch_size for r in results), results
        # Flagged while degraded (pipelined: the batch sampled before the kill comes first).
        assert results[int(pipelined)][M.ROLLOUT_HEALTHY_RUNNERS] < 2
        assert algo.env_runner_group.num_healthy_remote_workers() == 2
    finally:
        algo.stop()


def test_hung_reward_actor_is_restarted_and_rescored(ray_local, tmp_path):
    pool = function_pool("scorers:hang_once", batch_size=4, timeout_s=3)
    try:
        start = time.monotonic()
        scores = pool.score(records([str(tmp_path / "hung")] * 6, ["x" * i for i in range(6)]))
        np.testing.assert_array_equal(scores, np.arange(6, dtype=np.float32))
        assert pool.num_timeouts == 1 and time.monotonic() - start < 60
    finally:
        pool.shutdown()


def test_reward_actor_that_keeps_hanging_times_out(ray_local):
    from rayrm.errors import TimedOut

    pool = function_pool("scorers:hang_always", timeout_s=1, max_restarts=1)
    try:
        with pytest.raises(TimedOut, match=r"reward.timeout_s=1s, 2 times"):
            pool.score(records(["p"], ["x"]))
    finally:
        pool.shutdown()


class _KillTrialOnce(tune.Callback):
    """Kills the trial's process (its Ray actor) once, right after iteration ``at``.

    ``rayrm train`` restores a crashed run with ``Tuner.restore``, which unpickles its own copy
    of this callback: "once" is kept in a marker file, which also holds β at the kill.
    """

    def __init__(self, at: int, marker: Path) -> None:
        self.at, self.marker = at, marker

    @property
    def killed(self) -> bool:
        return self.marker.exists()

    @property
    def beta_at_kill(self) -> float:
        return float(self.marker.read_text())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.killed and result["training_iteration"] == self.at:
            self.marker.write_text(repr(float(result[M.RLHF_RESULTS][M.KL_COEF])))
            ray.kill(trial.temporary_state.ray_actor)


def test_killed_trial_restores_from_checkpoint(ray_local, tiny_policy_dir, prompts_file, tmp_path):
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 8, "adaptive_kl": True, "target_kl": 0.05, "kl_horizon": 20},
        generation={"max_new_tokens": 6},
        run={"num_iterations": 6, "checkpoint_every": 2, "max_failures": 1},
    )
    killer = _KillTrialOnce(at=3, marker=tmp_path / "killed")
    exp_dir, last = run_train(cfg, callbacks=[killer])
    assert killer.killed
    assert last["training_iteration"] == 6
    (trial_dir,) = exp_dir.glob("RLHFPPO_*")
    assert (trial_dir / "error.txt").exists()  # the trial really died
    results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    # Tune restored checkpoint 2 and re-ran iteration 3 onward: the iteration count continued
    # instead of starting over (whether the pre-crash line for iteration 3 stays in the log
    # depends on when the crash lands relative to Tune's log write).
    iterations = [r["training_iteration"] for r in results]
    assert iterations in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 3, 4, 5, 6])
    after_restore = [r for r in results if r["training_iteration"] == 3][-1]
    beta = after_restore[M.RLHF_RESULTS][M.KL_COEF]
    assert beta == pytest.approx(killer.beta_at_kill)  # adaptive β came back with it
    assert beta != pytest.approx(results[0][M.RLHF_RESULTS][M.KL_COEF])  # ... and had moved


ROLLOUT = "rayrm_rollout"


@pytest.fixture(scope="module")
def rollout_cluster():
    """A head and two rollout nodes on one machine: ``(cluster, [rollout nodes])``.

    A rollout node has room for exactly two env runners (1 CPU and two ``rayrm_rollout``; a
    runner takes 0.5 CPU and one ``rayrm_rollout``), so the strategy alone decides where they
    go, and deterministically: Ray places a group's custom-resource bundles (the runners)
    first; PACK then adds the second runner to the first one's node, SPREAD puts it on the
    other rollout node. Under SPREAD the trial process and the reward actor (1 CPU each) then
    fit on the head only (a rollout node holding a runner has 0.5 CPU left): losing a rollout
    node loses one runner and nothing else. (Under PACK either may take the empty rollout
    node; the runners' node is what that test checks.)"""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="rayrm-", dir="/tmp")
    cluster = None
    with pytest.MonkeyPatch.context() as mp:
        # Cluster writes its address file under $RAY_TMPDIR/ray (default /tmp/ray, which need
        # not exist on a fresh machine): keep it in this test's folder.
        mp.setenv("RAY_TMPDIR", temp_dir)
        os.makedirs(os.path.join(temp_dir, "ray"), exist_ok=True)
        try:
            # No metrics export: after a node is lost, the driver's exporter would spend 10 s
            # timing out in ray.shutdown().
            head = {"num_cpus": 2, "temp_dir": temp_dir}
            head["_system_config"] = {"enable_metrics_collection": False}
            with worker_environment():
                cluster = Cluster(initialize_head=True, head_node_args=head)
                workers = [cluster.add_node(num_cpus=1, resources={ROLLOUT: 2}) for _ in range(2)]
            ray.init(address=cluster.address)
            yield cluster, workers
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _two_runner_config(tiny_policy_dir, prompts_file, tmp_path, strategy):
    return make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 8},
        generation={"max_new_tokens": 6},
        reward={"num_cpus_per_actor": 1},
        resources={
            "num_env_runners": 2,
            "num_cpus_per_env_runner": 0.5,
            "custom_resources_per_env_runner": {ROLLOUT: 1},
            "placement_strategy": strategy,
        },
    )


@contextlib.contextmanager
def _trial(cfg):
    """The algorithm run as Tune runs a trial, without Tune: the placement group of
    ``RLHFPPO.default_resource_request``, the algorithm as an actor in its first bundle, and
    everything it starts (env runners, reward actors) captured in the group. (``build_algo()``
    in this process would use no placement group: ``placement_strategy`` would not apply.)"""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # A placement group is removed asynchronously: wait until the previous trial's is gone,
    # or best-effort SPREAD may find one rollout node still taken and place both runners on
    # the other.
    deadline = time.monotonic() + 60
    while ray.available_resources().get(ROLLOUT, 0) < ray.cluster_resources().get(ROLLOUT, 0):
        assert time.monotonic() < deadline, "the previous trial's resources were not released"
        time.sleep(0.2)
    config = build_algo_config(cfg)
    pgf = RLHFPPO.default_resource_request(config)
    pg = pgf.to_placement_group()
    actor = None
    try:
        ray.get(pg.ready(), timeout=60)
        head = dict(pgf.bundles[0])
        actor = (
            ray.remote(trial_class())
            .options(
                num_cpus=head.pop("CPU", 0),
                num_gpus=head.pop("GPU", 0),
                resources=head,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
                ),
            )
            .remote(config=config, logs=str(Path(cfg.run.storage_path) / "logs"))
        )
        yield actor
    finally:
        if actor is not None:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(actor.stop.remote(), timeout=60)
            ray.kill(actor)
        ray.util.remove_placement_group(pg)


def _train(actor) -> tuple[dict, set[str]]:
    """One iteration: its ``rlhf`` results and the nodes of the env runners that sampled."""
    result = ray.get(actor.train.remote(), timeout=300)[M.RLHF_RESULTS]
    return result, set(ray.get(actor.__ray_call__.remote(lambda algo: algo.rollout_node_ids)))


def test_pack_keeps_env_runners_on_one_node(
    rollout_cluster, tiny_policy_dir, prompts_file, tmp_path
):
    """PACK: both env runners share one rollout node (either one: each has room for both)."""
    _, workers = rollout_cluster
    cfg = _two_runner_config(tiny_policy_dir, prompts_file, tmp_path, "PACK")
    with _trial(cfg) as actor:
        result, nodes = _train(actor)
    assert result[M.ROLLOUT_NUM_NODES] == 1
    assert len(nodes) == 1 and nodes <= {w.node_id for w in workers}
    assert result[M.ROLLOUT_COMPLETIONS] == cfg.algorithm.batch_size


def test_spread_env_runners_survive_losing_a_node(
    rollout_cluster, tiny_policy_dir, prompts_file, tmp_path
):
    """SPREAD: each env runner on its own rollout node. When one node is lost mid-run for good
    (no spare capacity to restart its runner on), every iteration still trains on
    algorithm.batch_size completions -- the surviving runner samples the missing share -- without
    hanging on the lost runner, and the metrics flag the lost capacity. (Runs after the PACK
    test: it takes a node out of the shared cluster.)"""
    cluster, workers = rollout_cluster
    cfg = _two_runner_config(tiny_policy_dir, prompts_file, tmp_path, "SPREAD")
    with _trial(cfg) as actor:
        result, nodes = _train(actor)
        assert result[M.ROLLOUT_NUM_NODES] == 2
        assert nodes == {w.node_id for w in workers}
        assert result[M.ROLLOUT_HEALTHY_RUNNERS] == 2
        # Take the spare runner slot of both rollout nodes: the lost runner's bundle cannot be
        # rescheduled on the survivor, so that runner stays down.
        filler = ray.util.placement_group([{ROLLOUT: 1}] * 2, strategy="STRICT_SPREAD")
        try:
            ray.get(filler.ready(), timeout=60)
            cluster.remove_node(workers[0])
            after = [_train(actor) for _ in range(2)]
        finally:
            ray.util.remove_placement_group(filler)
    for result, nodes in after:
        assert result[M.ROLLOUT_COMPLETIONS] == cfg.algorithm.batch_size, result
        assert result[M.ROLLOUT_HEALTHY_RUNNERS] == 1  # flagged while degraded
        assert result[M.ROLLOUT_NUM_NODES] == 1 and nodes == {workers[1].node_id}
