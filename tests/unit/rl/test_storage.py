"""Compact episode storage: what a sampled completion costs, and the rows rebuilt from it.

Episodes keep per step only what the step adds (the row's length, the action, its reward and
log-prob); the prompt's ids go once into the first info. The learner connector rebuilds the
env's observation rows from them, which must be exactly the rows the env emitted.
"""

from __future__ import annotations

import itertools
import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import make_config

from rayrm.bench.support import BenchSpec, build_workload, run_config
from rayrm.models.tiny import build_tiny_model
from rayrm.rl.algorithm import build_algo_config
from rayrm.rl.env_runner import RLHFEnvRunner
from rayrm.rl.episodes import PROMPT_IDS, token_rows


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tiny Llama with its SentencePiece-style tokenizer (BOS, byte fallback)."""
    root = tmp_path_factory.mktemp("storage")
    return build_tiny_model(root / "llama", arch="llama", hidden=32, heads=4, positions=96)


def test_rebuilt_rows_equal_the_rows_the_env_emitted(llama_dir, prompts_file, tmp_path):
    stops = list(range(3, 80))  # a stop token about every fifth step: completions of all lengths
    generation = {"max_new_tokens": 12, "stop_token_ids": stops}
    cfg = make_config(llama_dir, prompts_file, tmp_path, generation=generation)
    runner = RLHFEnvRunner(config=build_algo_config(cfg))
    try:
        episodes = runner.generate()
        env = runner.sub_envs[0]
        expected_ids, expected_len = [], []
        for episode in episodes:  # replay each completion through the env, keeping its rows
            obs, info = env.reset(options={"prompt_index": episode.get_infos(0)["prompt_index"]})
            prompt = episode.get_infos(0)[PROMPT_IDS]
            np.testing.assert_array_equal(obs["input_ids"][: obs["length"][0]], prompt)
            for action in episode.get_actions():
                expected_ids.append(obs["input_ids"][: obs["length"][0]])
                expected_len.append(int(obs["length"][0]))
                obs, *_ = env.step(int(action))
    finally:
        runner.stop()
    lens = [len(e) for e in episodes]
    assert len(set(lens)) > 2 and all(e.is_terminated for e in episodes if len(e) < 12)
    actions = torch.as_tensor(np.concatenate([e.get_actions() for e in episodes]))
    rows = token_rows([e.get_infos(0)[PROMPT_IDS] for e in episodes], actions, lens)
    assert rows["length"].reshape(-1).tolist() == expected_len
    assert rows["input_ids"].shape == (len(expected_len), max(expected_len))
    for row, ids, n in zip(rows["input_ids"], expected_ids, expected_len, strict=True):
        assert row[:n].tolist() == ids.tolist() and not row[n:].any()
    # Stored per step: the row's length alone, not its (max_prompt + max_new) padded ids.
    assert all(set(e.get_observations(0)) == {"length"} for e in episodes)


def test_rows_from_read_only_prompts():
    """Prompt ids deserialized from Ray's object store are read-only arrays: the rows are
    built from copies, without PyTorch's warning about non-writable arrays."""
    prompts = [np.array([5, 6, 7]), np.array([9])]
    for prompt in prompts:
        prompt.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = token_rows(prompts, torch.tensor([1, 2, 3]), [2, 1])
    assert rows["input_ids"].tolist() == [[5, 6, 7, 0], [5, 6, 7, 1], [9, 0, 0, 0]]
    assert rows["length"].reshape(-1).tolist() == [3, 4, 1]


def test_storage_per_completion_grows_linearly_in_its_length(tmp_path):
    """Bytes of sampled episodes (pickled, as the object store carries them) per completion at
    T = 8, 16, 32, 64 new tokens (the benchmark policy never stops early): equal increments per
    token, each a small constant, where padded per-step rows made them grow with P + T."""
    per_completion = {}
    for new_tokens in (8, 16, 32, 64):
        spec = BenchSpec(batch_size=4, max_new_tokens=new_tokens, max_prompt_tokens=32)
        workload = build_workload(
            tmp_path / f"t{new_tokens}", spec, n_positions=96, reward_model=False
        )
        runner = RLHFEnvRunner(config=build_algo_config(run_config(spec, workload, str(tmp_path))))
        try:
            episodes = runner.sample()
        finally:
            runner.stop()
        assert [len(e) for e in episodes] == [new_tokens] * 4
        per_completion[new_tokens] = len(pickle.dumps(episodes)) / len(episodes)
    steps = sorted(per_completion)
    slopes = [
        (per_completion[b] - per_completion[a]) / (b - a) for a, b in itertools.pairwise(steps)
    ]
    assert max(slopes) < 1.1 * min(slopes), (per_completion, slopes)
    # One padded int64 row at the shortest length is already 8 * (P + T) >= 8 * 40 bytes.
    assert max(slopes) < 8 * 40, (per_completion, slopes)
