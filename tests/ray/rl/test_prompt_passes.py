"""Passes over the prompts through Ray: two env runners deal each row once per pass, and a
resumed run continues the pass where it stopped (the order itself:
tests/unit/rl/test_prompt_order.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from helpers import make_config

from rayrm import metrics as M
from rayrm.rl.algorithm import build_algo_config
from rayrm.rl.episodes import PROMPT_INDEX


def test_passes_over_two_runners_and_a_resume(ray_local, tiny_policy_dir, tmp_path):
    """Two env runners, groups of 2: every training prompt is sampled once per pass (as a
    group), the held-out ones never; a run restored to its checkpoint after its first
    iteration continues the pass from there (a restart of the pass would sample its first
    half twice; no restore, the undone iteration's second half), and ``run.num_epochs`` ends
    it after two passes."""
    from rayrm.data.prompts import write_prompts_jsonl

    words = "cat dog hat sun sea sky car bus cup pen box map".split()
    prompts = write_prompts_jsonl(tmp_path / "p.jsonl", [f"the {w} is" for w in words])
    cfg = make_config(
        tiny_policy_dir, str(prompts), tmp_path,
        generation={"samples_per_prompt": 2, "max_new_tokens": 4},
        algorithm={"batch_size": 8, "num_minibatches": 1, "num_epochs": 1,
             "advantage_estimator": "grpo"},
        resources={"num_env_runners": 2},
        eval={"every": 0, "report": True, "num_prompts": 4},  # rows 0-3 held out
        run={"num_epochs": 2.0},
    )  # fmt: skip
    sampled: list[Counter[int]] = []

    def recording(algo):
        score = algo._score

        def record(episodes):
            sampled.append(Counter(int(e.get_infos(0)[PROMPT_INDEX]) for e in episodes))
            return score(episodes)

        algo._score = record
        return algo

    epochs = []
    algo = recording(build_algo_config(cfg).build_algo())
    try:
        epochs.append(algo.train()[M.RLHF_RESULTS][M.ROLLOUT_EPOCH])
        algo.save_checkpoint(str(tmp_path / "ckpt"))
        algo.train()  # an iteration the restore undoes (the same runners, as a PBT exploit)
        algo.restore_from_path(str(tmp_path / "ckpt"))
        results = [algo.train() for _ in range(3)]
    finally:
        algo.stop()
    del sampled[1]  # the undone iteration's prompts
    epochs += [r[M.RLHF_RESULTS][M.ROLLOUT_EPOCH] for r in results]
    assert epochs == [0.5, 1.0, 1.5, 2.0]
    assert [r.get("done", False) for r in results] == [False, False, True]
    for first, second in (sampled[0:2], sampled[2:4]):  # a pass: each prompt once, 2 samples
        assert first + second == Counter({row: 2 for row in range(4, 12)})
    assert all(np.isin(list(c), range(4, 12)).all() for c in sampled)
