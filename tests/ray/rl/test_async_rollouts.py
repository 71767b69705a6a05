"""Pipelined rollouts (``algorithm.async_rollouts``): the next batch is sampled and scored while the
learner updates on this one; every batch is trained on exactly once, by weights exactly one
update newer than the ones that sampled it, and PPO still learns the rule reward."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

import pytest
import torch
from helpers import SEEDS, assert_reward_rises, make_config, train_in_process
from helpers import async_config as _async_config
from ray.rllib.core import DEFAULT_MODULE_ID

from rayrm import metrics as M
from rayrm.rl.algorithm import build_algo_config
from rayrm.rl.episodes import WEIGHTS_VERSION
from rayrm.rl.rllib_compat import local_learner, weights_seq_no


def test_each_batch_trained_once_one_update_late(ray_local, archs, prompts_file, tmp_path):
    """On Llama (SentencePiece-style tokenizer with BOS) in bfloat16."""
    cfg = _async_config(
        archs["llama"],
        prompts_file,
        tmp_path,
        model={"dtype": "bfloat16"},
        run={"num_iterations": 4},
    )
    algo = build_algo_config(cfg).build_algo()
    sampled: list[list[str]] = []  # episode ids of each batch, in sampling order
    trained: list[tuple[list[str], list[int], int]] = []  # ids, versions, learner's before
    spans: dict[str, list[tuple[float, float]]] = {"sample": [], "update": []}
    threads: set[str] = set()
    torch_threads: set[tuple[str, int]] = set()  # each sampling thread's count
    rollout, update = algo._rollout, algo._update

    def spy_rollout():
        start = time.perf_counter()
        result = rollout()
        spans["sample"].append((start, time.perf_counter()))
        threads.add(threading.current_thread().name)
        torch_threads.add((threading.current_thread().name, torch.get_num_threads()))
        sampled.append([e.id_ for e in result.episodes])
        return result

    def spy_update(episodes):
        before = weights_seq_no(local_learner(algo.learner_group))
        versions = [int(e.get_infos(0)[WEIGHTS_VERSION]) for e in episodes]
        trained.append(([e.id_ for e in episodes], versions, before))
        start = time.perf_counter()
        stats = update(episodes)
        spans["update"].append((start, time.perf_counter()))
        return stats

    algo._rollout, algo._update = spy_rollout, spy_update
    loan, apply_points = algo.threads, Counter()  # the update's methods that took the loan
    loan_apply = loan.apply

    def spy_apply() -> int:
        apply_points[sys._getframe(2).f_code.co_name] += 1  # the caller of take_threads
        return loan_apply()

    loan.apply = spy_apply
    try:
        results = [algo.train()[M.RLHF_RESULTS] for _ in range(4)]
        learner = local_learner(algo.learner_group)
        assert learner.module[DEFAULT_MODULE_ID].unwrapped().lm.dtype == torch.bfloat16
    finally:
        algo.stop()
    # Every batch sampled is trained on, once; none after the last iteration is sampled.
    assert len(sampled) == len(trained) == 4
    assert [ids for ids, _, _ in trained] == sampled
    all_ids = [i for ids in sampled for i in ids]
    assert len(set(all_ids)) == len(all_ids) == 4 * cfg.algorithm.batch_size
    # The first batch is on-policy; every later one was sampled by the weights one update
    # older than those its update starts from (and it is said so in the results).
    assert trained[0][1] == [0] * cfg.algorithm.batch_size and trained[0][2] == 0
    for k, (_, versions, before) in enumerate(trained[1:], start=1):
        assert before == k and set(versions) == {k - 1}, (k, before, set(versions))
    assert [r[M.ROLLOUT_POLICY_LAG] for r in results] == [0, 1, 1, 1]
    # Batches 2..4 were sampled in the sampler thread, while updates 1..3 ran.
    assert "rayrm-sampler_0" in threads
    for (s_start, s_end), (u_start, u_end) in zip(
        spans["sample"][1:], spans["update"][:-1], strict=True
    ):
        assert s_start < u_end and u_start < s_end, "sampling did not overlap the update"
    assert all(r[M.TIMER_WAIT] >= 0 for r in results)
    # The learner (this thread) borrowed the sampler thread's CPU only while that idled: at the
    # start of an iteration; its update began while the next batch was being sampled.
    assert loan is local_learner(algo.learner_group).thread_loan and (loan.own, loan.lent) == (1, 1)
    # The first batch is sampled here, with both CPUs; the others by the sampler, on its one.
    assert torch_threads == {("MainThread", 2), ("rayrm-sampler_0", 1)}
    assert set(loan.applied) <= {1, 2}
    assert loan.applied[2] >= 4 and loan.applied[1] >= 3, loan.applied
    # It asks before the forwards of each update, each minibatch and each backward (the sampler
    # may have finished during that minibatch's forward).
    steps = 4 * cfg.algorithm.num_minibatches * cfg.algorithm.num_epochs
    assert apply_points["minibatches"] == apply_points["compute_gradients"] == steps


@pytest.mark.parametrize("seed", SEEDS)
def test_async_ppo_raises_rule_reward(ray_local, tiny_policy_dir, prompts_file, tmp_path, seed):
    """PPO with pipelined rollouts learns the vowel reward for any seed (as synchronous PPO
    does in test_training)."""
    cfg = _async_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 32},
        run={"num_iterations": 30, "checkpoint_every": 30},
    ).model_copy(update={"seed": seed})
    results = train_in_process(cfg, 30)
    assert_reward_rises(results)
    assert {r[M.ROLLOUT_POLICY_LAG] for r in results[1:]} == {1}


def test_weight_sync_to_the_local_runner_skips_the_object_store(
    ray_local, tiny_policy_dir, prompts_file, tmp_path, monkeypatch
):
    """With no remote env runners the learner's weights and their version reach the local
    runner directly (RLlib's sync would first ``ray.put`` them for runners that are not
    there)."""
    import ray
    from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

    from rayrm.rl.env_runner import sync_weights

    cfg = make_config(tiny_policy_dir, prompts_file, tmp_path)
    algo = build_algo_config(cfg).build_algo()
    try:
        learner = local_learner(algo.learner_group)
        policy = learner.module[DEFAULT_MODULE_ID].unwrapped()
        runner = algo.env_runner_group.local_env_runner
        with torch.no_grad():
            for p in policy.lm.parameters():
                p.add_(torch.randn_like(p))
        learner.set_state({WEIGHTS_SEQ_NO: 3})  # as if three updates had run

        def no_put(*args, **kwargs):
            raise AssertionError("the weights went through the object store")

        monkeypatch.setattr(ray, "put", no_put)
        sync_weights(algo.env_runner_group, algo.learner_group)
        monkeypatch.undo()
        for ours, theirs in zip(
            runner.module.lm.state_dict().values(), policy.lm.state_dict().values(), strict=True
        ):
            assert torch.equal(ours, theirs)
        assert weights_seq_no(runner) == weights_seq_no(learner) == 3
    finally:
        algo.stop()
