"""Runs through the real entry points: sampled log-probs, reward models, resume, export, generate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, check_quiet_output, make_config
from ray.rllib.core.columns import Columns

from envs.builtin import build_char_tokenizer
from rayrm import metrics as M
from rayrm.console import LOG_NAME
from rayrm.models.tiny import build_tiny_reward_model
from rayrm.rl.algorithm import build_algo_config
from rayrm.rl.episodes import PROMPT_IDS
from rayrm.rl.rllib_compat import local_learner


def test_sampled_logp_equals_full_forward(ray_local, tiny_policy_dir, prompts_file, tmp_path):
    """Every token the KV-cached runner samples carries the log-prob a fresh full forward gives."""
    cfg = make_config(tiny_policy_dir, prompts_file, tmp_path, generation={"temperature": 0.7})
    algo = build_algo_config(cfg).build_algo()
    try:
        episodes = algo.env_runner.sample()
        lm = algo.env_runner.module.lm
        for episode in episodes:
            prompt = episode.get_infos(0)[PROMPT_IDS]  # stored once; the tokens are the actions
            prompt_len = len(prompt)
            ids = torch.as_tensor(np.concatenate([prompt, episode.get_actions()]))[None]
            length = ids.shape[1]  # (1, length): the whole sequence
            with torch.no_grad():
                logits = lm(input_ids=ids).logits[0].float() / 0.7  # (length, V)
            logp = torch.log_softmax(logits, -1)
            actions = torch.as_tensor(episode.get_actions())  # (T,)
            positions = torch.arange(prompt_len - 1, length - 1)  # (T,)
            expected = logp[positions, actions].numpy()
            sampled = episode.get_extra_model_outputs(Columns.ACTION_LOGP)
            np.testing.assert_allclose(sampled, expected, atol=1e-5)
    finally:
        algo.stop()


def test_reward_model_separate_critic_normalised(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
):
    rm_dir = build_tiny_reward_model(tmp_path / "rm", build_char_tokenizer())
    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        model={"critic": "separate", "critic_path": tiny_policy_dir},
        reward={"source": "model", "path": rm_dir, "num_actors": 2, "normalize": True, "clip": 1.5},
    )
    algo = build_algo_config(cfg).build_algo()
    try:
        for _ in range(2):
            stats = algo.train()[M.RLHF_RESULTS]
        assert np.isfinite(stats[M.LOSS_VALUE]) and np.isfinite(stats[M.LOSS_POLICY])
        assert abs(stats[M.REWARD_MEAN]) <= 1.5
        assert algo.rewards.moments.count == 2 * cfg.algorithm.batch_size
        assert algo.rewards.scorer.stats()["num_scored"] == 2 * cfg.algorithm.batch_size
        learner_module = local_learner(algo.learner_group).module["default_policy"].unwrapped()
        assert learner_module.critic is not None
    finally:
        algo.stop()


def _results(exp_dir: Path) -> list[dict]:
    (result_file,) = exp_dir.glob("*/result.json")
    return [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]


ITERATIONS = 8  # the interrupt lands after the second checkpoint (iteration 4)


@pytest.mark.slow  # starts Ray
def test_interrupt_resume_export_generate(tiny_policy_dir, prompts_file, tmp_path, capsys):
    """`rayrm train` interrupted (Ctrl-C) resumes from its last checkpoint and finishes; the
    result exports to a Hugging Face directory and generates text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_config(
        tiny_policy_dir,
        prompts_file,
        tmp_path,
        algorithm={"batch_size": 8},
        generation={"max_new_tokens": 6},
        run={"num_iterations": ITERATIONS, "checkpoint_every": 2, "keep_checkpoints": None},
    )
    config = tmp_path / "config.yaml"
    cfg.save_yaml(config)
    ray_tmp = tempfile.mkdtemp(prefix="rayrm-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "rayrm.cli", "train", str(config)]
    exp_dir = tmp_path / "test"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(exp_dir.glob("*/checkpoint_000001")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and len(err.strip().splitlines()) == 1, err
    interrupted_at = len(_results(exp_dir))
    assert 4 <= interrupted_at < ITERATIONS

    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    iterations = [r["training_iteration"] for r in _results(exp_dir)]
    assert iterations[-1] == ITERATIONS
    # The resumed process restored a checkpoint taken before the interruption: it neither
    # started from scratch nor skipped iterations.
    first_resumed = iterations[interrupted_at]
    assert 1 < first_resumed <= interrupted_at + 1
    # The terminal showed the preflight summary, a line per iteration and the result; Ray's
    # and RLlib's output went to the run folder's log.
    counts = check_quiet_output(resumed.stdout, resumed.stderr)
    assert counts == {**dict.fromkeys(counts, 0), "prompts": 1, "iter": ITERATIONS + 1 - first_resumed,
                      "done": 1}, resumed.stdout  # fmt: skip
    assert "Started a local Ray instance" in (exp_dir / LOG_NAME).read_text()

    from rayrm.cli import main

    out = tmp_path / "exported"
    assert main(["export", str(exp_dir), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer)
    capsys.readouterr()
    assert main(["generate", str(exp_dir), "--prompt", "once upon", "--num-samples", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("once upon") for line in lines)
