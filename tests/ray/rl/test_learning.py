"""Multi-turn RL learns: PPO and GRPO raise the tool task's held-out success, on 3 seeds.

The ``rayrm demo --task tools`` pipeline at its full size: rows, traces, the task's tokenizer
and one SFT policy (shared), then RL against the ``Calculator`` environment with each algorithm
and RL seed, and both policies playing the same held-out rows with the real multi-turn sampler
(:func:`rayrm.demo.multi_turn.evaluate_policies`). Each run must raise held-out success by
``MIN_Z`` standard errors of the difference.

Marked ``learning``: not in the default run (about 15 minutes on 2 cores); select with
``python -m pytest -m learning``. docs/development.md says when it last ran.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

pytestmark = pytest.mark.learning

MIN_Z = 3.0
"""Required gain of held-out success, in standard errors of the difference."""
RL_ITERATIONS = 20
"""RL iterations per run (the demo's 30 gain about 12 standard errors with PPO, seed 0)."""


@pytest.fixture(scope="module")
def tools_sft(ray_local, tmp_path_factory):
    """The tools task's data, tokenizer and SFT policy, built once for every run."""
    from rayrm.demo.multi_turn import TASK_SIZES, build_data, build_sft
    from rayrm.demo.tasks import TASKS, build_task_tokenizer

    task, sizes = TASKS["tools"], TASK_SIZES["full"]
    root = tmp_path_factory.mktemp("tools")
    data, tok = root / "data", root / "tokenizer"
    build_data(data, task, sizes)
    build_task_tokenizer(data / "sft.jsonl", task, sizes.vocab_size, tok)
    sft = build_sft(root / "sft", task, sizes, data, tok)
    return task, sizes, data, sft["model"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_raises_tool_task_success(tools_sft, tmp_path, algo, seed):
    """The RL policy beats the SFT policy on the held-out rows by ``MIN_Z`` standard errors."""
    from rayrm.demo.multi_turn import build_rl

    task, sizes, data, sft_model = tools_sft
    s = dataclasses.replace(sizes, algo=algo, seed=seed, rl_iterations=RL_ITERATIONS)
    rl = build_rl(tmp_path / "rl", task, s, sft_model, data)
    a, b = rl["sft"], rl["rl"]
    line = (
        f"{algo} seed {seed}: SFT {a['success']:.3f} ± {a['se']:.3f} -> "
        f"{b['success']:.3f} ± {b['se']:.3f}, z = {rl['z']:.1f} ({rl['rl_seconds']:.0f} s RL)"
    )
    print(line)
    assert a["n"] == b["n"] == sizes.heldout_rows
    assert rl["z"] >= MIN_Z, line
    assert math.isclose(rl["difference"], b["success"] - a["success"])
