"""The rows' other columns through the RL loop on Ray: every completion is scored with its own
prompt's column by a remote reward actor, and the held-out evaluation's proxy and gold function
get the held-out rows' (the columns without Ray: tests/unit/rewards/test_reward_columns.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def test_columns_reach_remote_reward_actors_in_a_training_run(ray_local, archs, tmp_path: Path):
    """Through the RL loop: the env's infos, the episodes, the reward actor (a Ray actor): every
    completion is scored with its own prompt's ``answer`` (the function raises otherwise); the
    held-out evaluation's proxy and gold function get the held-out rows' answers."""
    from helpers import make_config, train_in_process

    from rayrm import metrics as M

    rows = [{"prompt": f"{a}+{b}=", "answer": a + b} for a in range(1, 7) for b in range(1, 3)]
    path = tmp_path / "sums.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    gold = "scorers:sum_answer"  # the answer itself, checked against the prompt
    cfg = make_config(
        archs["qwen2"],
        str(path),
        tmp_path,
        reward={"function": gold},
        algorithm={"batch_size": 8},
        generation={"max_new_tokens": 4},
        eval={"every": 1, "num_prompts": 4, "gold_function": gold},
    )
    (result,) = train_in_process(cfg, 1)
    held_out, trained = rows[:4], rows[4:]  # the first eval.num_prompts rows are held out
    assert result[M.ROLLOUT_COMPLETIONS] == 8
    # The iteration deals one pass over the 8 training rows: their answers' mean.
    assert result[M.REWARD_MEAN] == pytest.approx(np.mean([r["answer"] for r in trained]))
    expected = np.mean([r["answer"] for r in held_out])
    assert result[M.EVAL_PROXY_MEAN] == pytest.approx(expected)
    assert result[M.EVAL_GOLD_MEAN] == pytest.approx(expected)
