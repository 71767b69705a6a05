"""Multi-turn episodes through RLlib: env runners, the learner connector, PPO and GRPO."""

from __future__ import annotations

import pytest
from helpers import make_config, train_in_process


@pytest.fixture(scope="module")
def game(tmp_path_factory):
    """A tiny Qwen2 (ChatML, two EOS ids) and the number-guessing game's rows."""
    from envs.tasks import guess
    from rayrm.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("game")
    model = build_tiny_model(root / "qwen2", arch="qwen2", hidden=32, heads=4, positions=256)
    return model, str(guess.write_rows(root / "games.jsonl", 32, high=8))


def game_config(model_dir: str, rows: str, storage, **sections):
    base = {
        "data": {"prompts": rows, "max_prompt_tokens": 64},
        "generation": {"max_new_tokens": 4},
        "env": {"environment": "envs.tasks.guess:GuessTheNumber", "max_total_tokens": 160},
        "reward": {"source": "env"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return make_config(model_dir, rows, storage, **base)


def test_multi_turn_episodes_train_without_a_critic_on_two_runners_and_learners(
    ray_local, game, tmp_path
):
    """Games of several turns train without a critic: GRPO groups of 4 episodes of one row,
    LoRA adapters (the reference: adapters off), two remote env runners feeding replies
    through their own KV caches, two data-parallel learners training on whole groups; every
    episode's rows are rebuilt with its replies (the learner connector checks them against the
    stored lengths) and the environment's statistics are published. (With a critic, through
    ``rayrm train``: the next test.)"""

    model, rows = game
    cfg = game_config(
        model, rows, tmp_path,
        algorithm={"batch_size": 8, "advantage_estimator": "grpo", "kl_mode": "loss"},
        generation={"max_new_tokens": 4, "samples_per_prompt": 4},
        model={"path": model, "lora": {"r": 4, "alpha": 8.0}},
        resources={"num_env_runners": 2, "num_learners": 2, "num_cpus_per_env_runner": 0.5,
                   "num_cpus_per_learner": 0.5},
    )  # fmt: skip
    _check_training(train_in_process(cfg, 2))


def _check_training(results: list[dict]) -> None:
    from rayrm import metrics as M

    for result in results:
        assert result[M.ROLLOUT_COMPLETIONS] == 8
        assert 1.0 <= result["env/turns"] <= 6.0
        assert "env/success" in result and "env/return" in result
        assert result["env/turns"] > 1.0  # replies were spliced in and sampled after


def test_multi_turn_run_evaluates_held_out_rows_and_reports_conversations(
    ray_local, game, tmp_path
):
    """``rayrm train`` (PPO with a critic: GAE over the policy's tokens) with an env section and
    the evaluation on: episodes train as in the test above, and before each update the policy
    plays one episode per held-out row (the file's first ``eval.num_prompts`` rows, never
    trained on), published as ``eval/success`` (± its standard error), ``eval/return`` and
    ``eval/turns``; the report gives held-out success before and after and whole conversations,
    replies included."""
    import json
    from pathlib import Path

    import numpy as np

    from rayrm import metrics as M
    from rayrm.cli import main

    model, rows = game
    cfg = game_config(
        model, rows, tmp_path,
        algorithm={"batch_size": 8},
        eval={"every": 1, "num_prompts": 8, "report": True, "report_samples": 2,
              "gold_function": "scorers:row_secret"},
        run={"num_iterations": 2, "checkpoint_every": 2},
    )  # fmt: skip
    path = tmp_path / "config.yaml"
    cfg.save_yaml(path)
    assert main(["train", str(path)]) == 0
    secrets = [json.loads(line)["secret"] for line in Path(rows).read_text().splitlines()]
    (result_file,) = (tmp_path / "test").glob("*/result.json")
    results = [json.loads(line)[M.RLHF_RESULTS] for line in result_file.read_text().splitlines()]
    _check_training(results)
    assert [r[M.EVAL_UPDATES] for r in results] == [0.0, 1.0]
    for r in results:
        p, se = r[M.EVAL_SUCCESS], r[M.EVAL_SUCCESS_SE]
        assert 0.0 <= p <= 1.0 and se == pytest.approx((p * (1 - p) / 8) ** 0.5)
        assert 1.0 <= r[M.EVAL_TURNS] <= 6.0 and M.EVAL_RETURN in r
        # reward.source env: the proxy is the episode's return, as training counts it.
        assert r[M.EVAL_PROXY_MEAN] == pytest.approx(r[M.EVAL_RETURN])
        # The gold scorer got each held-out row's columns: rows 0-7 of the file, in order.
        assert r[M.EVAL_GOLD_MEAN] == pytest.approx(np.mean(secrets[:8]))
    text = (tmp_path / "test" / "report.md").read_text()
    assert "held-out success, 8 episodes each: before" in text
    assert "held-out GOLD: before" in text
    assert "## Conversations before and after training" in text
    assert text.count("### Held-out row") == 2 and text.count("**After**") == 2
    assert "user: " in text and "assistant: " in text
    assert (tmp_path / "test" / "success.png").stat().st_size > 1000
