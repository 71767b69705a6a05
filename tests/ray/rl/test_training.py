"""Training-loop tests: whole completions trained, save/restore, DDP learners, learning, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SEEDS, make_config
from helpers import write_config as _write_config
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED,
    NUM_MODULE_STEPS_TRAINED,
)

from envs.builtin import BUILTIN_PROMPTS
from rayrm import metrics as M
from rayrm.models.decoding import sample_completions
from rayrm.models.loading import load_causal_lm
from rayrm.models.tokenization import PromptCodec
from rayrm.rl.algorithm import RLHFPPO, build_algo_config
from rayrm.rl.checkpoint import load_policy, load_reference
from rayrm.rl.rllib_compat import local_learner

PROMPTS = BUILTIN_PROMPTS[:8]


def _greedy(algo) -> list[list[int]]:
    episodes = algo.env_runner.generate(explore=False, options=[{"prompt": p} for p in PROMPTS * 2])
    return [list(map(int, e.get_actions())) for e in episodes]


def _ref_state(algo) -> dict[str, torch.Tensor]:
    module = local_learner(algo.learner_group).module[DEFAULT_MODULE_ID].unwrapped()
    return {k: v.detach().clone() for k, v in module.ref_model.state_dict().items()}


def test_every_sampled_completion_is_trained(ray_local, tiny_policy_dir, prompts_file, tmp_path):
    cfg = make_config(tiny_policy_dir, prompts_file, tmp_path, algorithm={"num_epochs": 2})
    algo = build_algo_config(cfg).build_algo()
    try:
        episodes = algo.env_runner.sample()
        assert len(episodes) == cfg.algorithm.batch_size
        assert all(e.is_done for e in episodes)
        # A random policy rarely emits EOS: most completions run to the length limit, and all
        # of them come back (no "first to finish" bias).
        lengths = [len(e) for e in episodes]
        assert max(lengths) == cfg.generation.max_new_tokens
        assert sum(e.is_truncated for e in episodes) >= cfg.algorithm.batch_size // 4

        algo.train()  # its sample metrics include the probe above; the next one is clean
        result = algo.train()
        sampled = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED]
        trained = result[LEARNER_RESULTS][DEFAULT_MODULE_ID][NUM_MODULE_STEPS_TRAINED]
        assert trained == cfg.algorithm.num_epochs * sampled
        learner = result[LEARNER_RESULTS][DEFAULT_MODULE_ID]
        assert learner[M.NUM_COMPLETIONS] == cfg.algorithm.batch_size
        assert result[M.RLHF_RESULTS][M.ROLLOUT_COMPLETIONS] == cfg.algorithm.batch_size
        for key in (
            M.REWARD_MEAN,
            M.KL_TOKEN,
            M.KL_SEQUENCE,
            M.LOSS_POLICY,
            M.LOSS_VALUE,
            M.LOSS_ENTROPY,
            M.MONITOR_DISTINCT_2,
            M.MONITOR_LENGTH_RATIO,
            M.THROUGHPUT_TOKENS_PER_S,
            M.TIMER_UPDATE,
        ):
            assert np.isfinite(result[M.RLHF_RESULTS][key]), key
    finally:
        algo.stop()


def _timed(obj, name: str) -> list[tuple[float, float]]:
    """Wraps ``obj.name`` to log each call's start and end (monotonic) into the list returned."""
    log, fn = [], getattr(obj, name)

    def timed(*args, **kwargs):
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            log.append((start, time.monotonic()))

    setattr(obj, name, timed)
    return log


def test_learner_forwards_run_while_the_batch_is_scored(ray_local, archs, prompts_file, tmp_path):
    """Synchronous iterations with a local learner: the learner connector's no-grad forwards
    (reference log-probs, values) run while the reward actor scores, once per iteration, and
    the update takes them: the same training as with the forwards inside the update. On Qwen2
    (byte-level BPE, ChatML, two EOS ids: completions end at either, or at the length cap)."""
    cfg = make_config(
        archs["qwen2"],
        prompts_file,
        tmp_path,
        reward={"function": "scorers:slow_vowel_reward"},
    )
    published = []
    for alongside in (True, False):
        algo = build_algo_config(cfg).build_algo()
        try:
            if not alongside:
                algo.forwards_alongside = None  # the forwards then run in the update
            module = local_learner(algo.learner_group).module[DEFAULT_MODULE_ID].unwrapped()
            forwards, scoring = _timed(module, "rollout_outputs"), _timed(algo, "_score")
            published.append([algo.train()[M.RLHF_RESULTS] for _ in range(2)])
        finally:
            algo.stop()
        assert len(scoring) == 2 and len(forwards) == 2, (scoring, forwards)  # one each
        for (f_start, f_end), (s_start, s_end) in zip(forwards, scoring, strict=True):
            assert (s_start < f_start and f_end < s_end) is alongside, (forwards, scoring)
    keys = (M.KL_TOKEN, M.LOSS_POLICY, M.LOSS_VALUE, M.REWARD_MEAN)
    for with_, without in zip(*published, strict=True):
        assert [with_[k] for k in keys] == pytest.approx([without[k] for k in keys], rel=1e-6)


def test_save_restore_keeps_policy_and_reference(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"adaptive_kl": True, "target_kl": 0.5, "kl_horizon": 100},
    )
    algo = build_algo_config(cfg).build_algo()
    try:
        for _ in range(2):
            algo.train()
        ckpt = tmp_path / "ckpt"
        algo.save_checkpoint(str(ckpt))
        before_greedy, before_ref, before_beta = _greedy(algo), _ref_state(algo), algo.kl_ctl.value
    finally:
        algo.stop()
    assert before_beta != cfg.algorithm.kl_coef  # the adaptive controller moved

    restored = RLHFPPO.from_checkpoint(str(ckpt))
    try:
        assert _greedy(restored) == before_greedy
        after_ref = _ref_state(restored)
        assert restored.kl_ctl.value == pytest.approx(before_beta)
        assert restored.training_iteration == 2
    finally:
        restored.stop()
    initial = load_causal_lm(tiny_policy_dir).state_dict()
    for name, tensor in before_ref.items():
        torch.testing.assert_close(after_ref[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(tensor, initial[name], rtol=0, atol=0)  # never trained

    # The exported policy (no Ray, no original model dir needed) decodes the same greedy tokens.
    model, tokenizer, _, _ = load_policy(ckpt)
    codec = PromptCodec(tokenizer, max_prompt_tokens=cfg.data.max_prompt_tokens)
    texts = sample_completions(
        model, codec, PROMPTS * 2, greedy=True, max_new_tokens=cfg.generation.max_new_tokens
    )
    eos = tokenizer.eos_token_id
    expected = [tokenizer.decode([t for t in g if t != eos]) for g in before_greedy]
    assert texts == expected
    ref = load_reference(ckpt).state_dict()
    for name, tensor in before_ref.items():
        torch.testing.assert_close(ref[name], tensor, rtol=0, atol=0)


def _trained(algo) -> list[np.ndarray]:
    """Every learner's trainable parameters (learner 0's, which DDP keeps equal to the rest)."""
    params = algo.learner_group.foreach_learner(
        lambda learner: [
            p.detach().double().cpu().numpy().copy()
            for p in learner.module[DEFAULT_MODULE_ID].unwrapped().trainable_parameters()
        ]
    )
    return [x.get() if hasattr(x, "get") else x for x in params]


def test_two_learners_update_as_one_learner(ray_local, tiny_policy_dir, prompts_file, tmp_path):
    """One update of two data-parallel learners on a batch gives the weights one learner's
    update on the same batch gives (each completion weighed alike: per-completion means;
    advantages whitened with the whole batch's moments; DDP averages the shards' gradients),
    and both replicas stay equal."""
    sections = {
        "algorithm": {"batch_size": 8, "num_minibatches": 1, "num_epochs": 1, "lr": 1e-3,
                "loss_aggregation": "seq_mean_token_mean"},
        "generation": {"max_new_tokens": 6},
    }  # fmt: skip
    one = build_algo_config(make_config(tiny_policy_dir, prompts_file, tmp_path, **sections))
    two = build_algo_config(
        make_config(
            tiny_policy_dir,
            prompts_file,
            tmp_path,
            **sections,
            resources={"num_learners": 2, "num_cpus_per_learner": 1},
        )  # fmt: skip
    )
    single, ddp = one.build_algo(), two.build_algo()
    try:
        module = "learner/rl_module"
        ddp.learner_group.set_state(single.learner_group.get_state(components=module))
        (start,) = _trained(single)
        replicas = _trained(ddp)
        for a, b in zip(start, replicas[0], strict=True):
            np.testing.assert_array_equal(a, b)  # the same starting weights (value head too)
        episodes, _, _ = single._sample_batch()
        single._score(episodes)
        single._update(episodes)
        ddp._update(episodes)  # dealt 4 and 4 to the two learners
        (after_one,) = _trained(single)
        after_two = _trained(ddp)
    finally:
        single.stop()
        ddp.stop()
    for a, b in zip(after_two[0], after_two[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)  # replicas equal
    moved = max(float(np.abs(a - s).max()) for a, s in zip(after_one, start, strict=True))
    assert moved > 1e-4  # the update did something
    for a, b, s in zip(after_two[0], after_one, start, strict=True):
        np.testing.assert_allclose(a - s, b - s, rtol=1e-3, atol=1e-6)


def _results(exp_dir: Path) -> list[dict]:
    (result_file,) = exp_dir.glob("*/result.json")
    return [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("seed", SEEDS)
def test_train_raises_rule_reward(ray_local, tiny_policy_dir, prompts_file, tmp_path, seed):
    """End to end through `rayrm train` (Tune): the vowel reward clearly rises, for any seed."""
    from rayrm.cli import main

    path = _write_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 32},
        run={"num_iterations": 40, "checkpoint_every": 20},
        eval={"every": 5, "report": True},
    )
    gold = "envs.builtin:vowel_reward"  # the rule itself: a gold scorer with a known answer
    assert (
        main(["train", str(path), "--set", f"seed={seed}", "--set", f"eval.gold_function={gold}"])
        == 0
    )
    results = _results(tmp_path / "test")
    rewards = [r[M.RLHF_RESULTS][M.REWARD_MEAN] for r in results]
    assert len(rewards) == 40
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.1, (first, last)
    # Held-out evaluations every 5 updates; the gold curve rises with the proxy here.
    gold_curve = [r[M.RLHF_RESULTS][M.EVAL_GOLD_MEAN] for r in results[::5]]
    assert len(gold_curve) == 8 and gold_curve[-1] > gold_curve[0]
    report = tmp_path / "test" / "report.md"
    text = report.read_text()
    assert "held-out GOLD" in text and "| prompt | before |" in text
    for png in ("reward.png", "heldout.png", "kl.png", "length.png"):
        assert (tmp_path / "test" / png).stat().st_size > 1000
