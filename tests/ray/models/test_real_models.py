"""The whole RL loop on the kinds of models users bring, and mixed precision, through Ray.

Tiny random GPT-2 (byte-level BPE), Llama (SentencePiece-style tokenizer with ``<s>``), Qwen2
(ChatML template, two EOS ids, tied embeddings, grouped-query attention), Mistral (a sliding
window) and Gemma 2 (Gemma's tokenizer and chat template, soft-capped logits) sample, score,
update, save and restore; the reward reads exactly what the tokens decode to; bfloat16 runs
keep small updates (float32 master weights) and resume from checkpoints.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import CONVERSATIONS, make_config
from scorers import RECORDED
from transformers import AutoTokenizer

from rayrm import metrics as M
from rayrm.data.prompts import write_prompts_jsonl
from rayrm.rewards import pool_from_config
from rayrm.rl.algorithm import RLHFPPO, build_algo_config
from rayrm.rl.episodes import PROMPT_IDS
from rayrm.rl.rllib_compat import local_learner

torch.set_num_threads(1)


def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
    return [min(len(c), 20) / 20.0 for c in completions]


CONVERSATIONS_WITHOUT_SYSTEM = [[m for m in c if m["role"] != "system"] for c in CONVERSATIONS]
"""For Gemma, whose chat template refuses a system role."""


def _greedy(algo: RLHFPPO) -> list[list[int]]:
    """Greedy completions of the first prompts of the file (fixed, whatever the env's RNG)."""
    n = len(algo.env_runner.sub_envs)
    options = [{"prompt_index": i % len(CONVERSATIONS)} for i in range(n)]
    episodes = algo.env_runner.generate(explore=False, options=options)
    return [list(map(int, e.get_actions())) for e in episodes]


@pytest.mark.parametrize(
    ("arch", "estimator"),
    [
        ("gpt2", "gae"), ("llama", "grpo"), ("qwen2", "gae"), ("qwen2", "rloo"),
        ("mistral", "grpo"), ("gemma2", "gae"),
    ],
)  # fmt: skip
def test_whole_loop_on_each_architecture(ray_local, archs, prompts_file, tmp_path, arch, estimator):
    """Sample, score, update, save, restore: the restored policy decodes what it did. The
    critic-free cases sample groups of 2 (with Llama's and Mistral's BOS; with Qwen2's chat
    template); the value head is tested on GPT-2's, Qwen2's and Gemma 2's trunks (Gemma 2 in
    bfloat16). Prompt and completion outrun Mistral's and Gemma 2's sliding window."""
    prompts = prompts_file
    algorithm: dict = {"batch_size": 8}
    generation: dict = {"max_new_tokens": 8}
    if estimator != "gae":
        algorithm |= {"advantage_estimator": estimator, "kl_mode": "loss", "kl_estimator": "k3"}
        generation["samples_per_prompt"] = 2
    data: dict = {"max_prompt_tokens": 24}
    if arch in ("qwen2", "gemma2"):  # conversations through the chat template, two EOS ids
        chats = CONVERSATIONS if arch == "qwen2" else CONVERSATIONS_WITHOUT_SYSTEM
        prompts = str(write_prompts_jsonl(tmp_path / "chat.jsonl", chats, "messages"))
        data["max_prompt_tokens"] = 40
    cfg = make_config(
        archs[arch],
        prompts,
        tmp_path,
        data={**data, "prompts": prompts},
        algorithm=algorithm,
        generation=generation,
        model={"dtype": "bfloat16" if arch == "gemma2" else "float32"},  # as Gemma 2 ships
    )
    algo = build_algo_config(cfg).build_algo()
    try:
        env = algo.env_runner.sub_envs[0].unwrapped
        tok = AutoTokenizer.from_pretrained(archs[arch])
        second_eos = {"qwen2": "<|endoftext|>", "gemma2": "<end_of_turn>"}.get(arch)
        if second_eos is not None:
            assert env.codec.stop_token_ids == {
                tok.eos_token_id,
                tok.convert_tokens_to_ids(second_eos),
            }
        if arch in ("llama", "mistral", "gemma2"):  # one BOS (Gemma's template holds it)
            obs = env.reset(seed=0)[0]
            ids = obs["input_ids"][: int(obs["length"][0])].tolist()
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        results = [algo.train() for _ in range(2)]
        # Before any update the policy is its reference, and the sampler's log-probs (KV-cached
        # decoding) are the learner's (a full forward): the first batch's KL is zero.
        assert abs(results[0][M.RLHF_RESULTS][M.KL_TOKEN]) < 1e-3
        assert results[1][M.RLHF_RESULTS][M.KL_TOKEN] != 0.0  # the update moved the policy
        for r in results:
            rlhf = r[M.RLHF_RESULTS]
            assert rlhf[M.ROLLOUT_COMPLETIONS] == 8
            assert np.isfinite(rlhf[M.LOSS_POLICY]) and rlhf[M.LOSS_GRAD_NORM] > 0
            if estimator == "gae":
                assert np.isfinite(rlhf[M.LOSS_VALUE])
            else:  # no critic; 4 groups of 2
                assert M.LOSS_VALUE not in rlhf and np.isfinite(rlhf[M.ROLLOUT_GROUP_STD])
                assert np.isfinite(rlhf[M.LOSS_KL])
        before = _greedy(algo)
        ckpt = algo.save(str(tmp_path / "ckpt")).checkpoint.path
    finally:
        algo.stop()
    restored = RLHFPPO.from_checkpoint(ckpt)
    try:
        assert _greedy(restored) == before
        assert restored.training_iteration == 2
        restored.train()
    finally:
        restored.stop()


def test_reward_reads_exact_text_for_every_completion(ray_local, archs, prompts_file, tmp_path):
    """With a SentencePiece-style tokenizer, every completion of a batch reaches the reward as
    decode(prompt_ids + completion_ids) split at the prompt."""
    cfg = make_config(
        archs["llama"],
        prompts_file,
        tmp_path,
        reward={"source": "function", "function": "scorers:record_texts"},
        generation={"max_new_tokens": 8},
    )
    tok = AutoTokenizer.from_pretrained(archs["llama"])
    algo = build_algo_config(cfg).build_algo()
    try:
        algo.rewards.scorer.shutdown()
        algo.rewards.scorer = pool_from_config(cfg.reward, local=True)  # texts stay in-process
        episodes = algo.env_runner.generate()
        RECORDED.clear()
        algo._score(episodes)
        assert len(RECORDED) == len(episodes) == cfg.algorithm.batch_size
        spaced = 0
        for episode, (prompt_text, completion) in zip(episodes, RECORDED, strict=True):
            prompt_ids = episode.get_infos(0)[PROMPT_IDS].tolist()
            generated = list(map(int, episode.get_actions()))
            if episode.is_terminated:
                generated = generated[:-1]  # the stop token is not text
            full = tok.decode(prompt_ids + generated, skip_special_tokens=True)
            assert prompt_text == tok.decode(prompt_ids, skip_special_tokens=True)
            assert prompt_text + completion == full
            spaced += completion.startswith(" ")
        assert spaced > 0  # the case decoding completions alone gets wrong
    finally:
        algo.stop()


# --- mixed precision ------------------------------------------------------------------------------


def test_bfloat16_update_at_small_lr_changes_weights_and_resumes(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    """bf16 parameters, float32 masters: an update at lr 1e-5 moves the masters (the compute
    copies follow as the steps add up); checkpoint → restore keeps both exactly."""
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        model={"dtype": "bfloat16"},
        algorithm={"lr": 1e-5, "batch_size": 8},
        run={"num_iterations": 2},
    )
    algo = build_algo_config(cfg).build_algo()
    try:
        learner = local_learner(algo.learner_group)
        module = learner.module["default_policy"]
        optimizer = learner.get_optimizers_for_module("default_policy")[0][1]
        initial = [m.detach().clone() for m in optimizer.masters]
        assert module.lm.dtype == torch.bfloat16 and initial[0].dtype == torch.float32
        algo.train()
        moved = [(m.detach() - i).abs() for m, i in zip(optimizer.masters, initial, strict=True)]
        changed = sum(int((d > 0).sum()) for d in moved) / sum(d.numel() for d in moved)
        assert changed > 0.9  # nearly every weight moved by about lr
        assert max(float(d.max()) for d in moved) < 1e-3
        for p, m in zip(optimizer.model_params, optimizer.masters, strict=True):
            assert torch.equal(p.detach(), m.to(p.dtype))  # compute copies = rounded masters
        rlhf = algo.train()[M.RLHF_RESULTS]
        assert rlhf[M.LOSS_SKIPPED_STEPS] == 0 and np.isfinite(rlhf[M.LOSS_GRAD_NORM])
        ckpt = algo.save(str(tmp_path / "ckpt")).checkpoint.path
        masters = [m.detach().clone() for m in optimizer.masters]
        weights = {k: v.clone() for k, v in module.get_state().items()}
    finally:
        algo.stop()
    restored = RLHFPPO.from_checkpoint(ckpt)
    try:
        learner = local_learner(restored.learner_group)
        module = learner.module["default_policy"]
        optimizer = learner.get_optimizers_for_module("default_policy")[0][1]
        for a, b in zip(optimizer.masters, masters, strict=True):
            assert torch.equal(a, b)
        state = module.get_state()
        assert state["lm.transformer.wte.weight"].dtype == torch.bfloat16
        for key, value in weights.items():
            assert torch.equal(state[key], value), key
        restored.train()  # and training goes on
    finally:
        restored.stop()


@pytest.mark.learning  # 24 s of CPU; bf16 updates and resume: the tests around it
def test_quickstart_in_bfloat16_learns(ray_local, tmp_path):
    """``rayrm quickstart --set model.dtype=bfloat16`` finishes and its reward rises (the
    learning tier: ``-m learning``; bf16 updates, their effect and resume are in the default
    run, ``test_bfloat16_update_at_small_lr_changes_weights_and_resumes``, and so is a bf16
    LoRA run, tests/ray/models/test_lora.py)."""
    from rayrm.cli import main

    argv = ["quickstart", "--dir", str(tmp_path / "qs"), "--iterations", "30"]
    assert main([*argv, "--set", "model.dtype=bfloat16"]) == 0
    [result] = (tmp_path / "qs" / "runs" / "quickstart").glob("*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    rewards = [r[M.RLHF_RESULTS][M.REWARD_MEAN] for r in rows]
    assert len(rewards) == 30
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.15


def test_float16_run_scales_the_loss(ray_local, tiny_policy_dir, prompts_file, tmp_path):
    """float16 weights train with dynamic loss scaling: finite losses, the scale in use."""
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        model={"dtype": "float16"},
        algorithm={"batch_size": 8},
        run={"num_iterations": 2},
    )
    algo = build_algo_config(cfg).build_algo()
    try:
        for _ in range(2):
            rlhf = algo.train()[M.RLHF_RESULTS]
            assert np.isfinite(rlhf[M.LOSS_POLICY]) and np.isfinite(rlhf[M.LOSS_GRAD_NORM])
        learner = local_learner(algo.learner_group)
        optimizer = learner.get_optimizers_for_module("default_policy")[0][1]
        assert optimizer.dynamic_loss_scale and optimizer.loss_scale >= 1.0
        assert learner.module["default_policy"].lm.dtype == torch.float16
        assert optimizer.masters[0].dtype == torch.float32
    finally:
        algo.stop()
