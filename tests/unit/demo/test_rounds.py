"""Adversarial rounds (rayrm.demo.rounds): a round's new pairs are the round's policy's own
completions, labelled by the judge, and enter the next reward model's training set after the
old ones. The pairs are sampled and labelled for real; reward-model training and RL (Ray Train
and Tune, tested in tests/ray/) are stood in for by recorders, the round's "trained" policy by
one that writes only "z"."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import z_only_policy

from envs.builtin import BUILTIN_PROMPTS
from rayrm import metrics as M
from rayrm.data.prompts import write_prompts_jsonl
from rayrm.demo import rounds
from rayrm.demo.cache import StageResult
from rayrm.demo.overoptimise import OVEROPTIMISE


def test_updates_split_over_rounds() -> None:
    assert rounds.RoundSizes(rounds=3).updates(151) == [50, 50, 51]
    assert rounds.RoundSizes(rounds=2).updates(4) == [2, 2]


def test_new_pairs_are_the_policys_own_and_join_the_old(tmp_path, tiny_policy_dir, monkeypatch):
    data = tmp_path / "data"
    write_prompts_jsonl(data / "prompts.jsonl", BUILTIN_PROMPTS[:16])
    s = dataclasses.replace(
        OVEROPTIMISE["smoke"], judge="envs.builtin:vowel_reward", ppo_iterations=4,
        max_new_tokens=6, pair_min_margin=0.0,
    )  # fmt: skip
    trained = []  # the pairs each reward model was trained on
    policies = []  # the policy each round started from

    def reward_model(d: Path, s, sft_model: str, pairs: str, progress: bool) -> dict:
        trained.append(pq.read_table(pairs).to_pylist())
        return {"model": str(d), "eval_accuracy": 0.5}

    def round_rl(d: Path, s, *, policy, sft_model, reward_model, data, iterations) -> dict:
        assert (
            sft_model == tiny_policy_dir and Path(reward_model).parent == d.parent.parent / "stages"
        )
        policies.append(policy)
        trial = d / "trial"
        trial.mkdir(parents=True)
        rows = [
            {"training_iteration": i + 1, M.RLHF_RESULTS: {
                M.KL_SEQUENCE: 1.0 + i, M.EVAL_UPDATES: i, M.EVAL_GOLD_MEAN: 0.1 * i,
                M.EVAL_PROXY_MEAN: float(i)}}
            for i in range(iterations)
        ]  # fmt: skip
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"exp_dir": str(d), "policy": z_only_policy(tiny_policy_dir, d / "policy")}

    monkeypatch.setattr(rounds.ds, "build_reward_model", reward_model)
    monkeypatch.setattr(rounds, "_round_rl", round_rl)
    done = {
        "data": StageResult("data", "d" * 12, data, {}, True, 0.0),
        "sft": StageResult("sft", "s" * 12, tmp_path, {"model": tiny_policy_dir}, True, 0.0),
    }
    sizes = rounds.RoundSizes(rounds=2, first_pairs=6, new_pairs=6)
    out = rounds.run_rounds(tmp_path / "work", s, sizes, done, log=lambda _: None)

    first, second = trained
    assert len(first) == 6 and second[:6] == first  # the old pairs first, unchanged
    new = second[6:]
    assert len(new) == 6
    for row in new:  # the round's policy writes "zzzzzz", which has no vowel: rejected
        assert row["rejected"] == "zzzzzz" and row["chosen"] != "zzzzzz"
    assert policies[0] == tiny_policy_dir and policies[1].endswith("policy")
    assert [x["pairs"] for x in out["rounds"]] == [6, 12]
    assert [p["updates"] for p in out["curve"]] == [0, 1, 2, 3]  # one count across rounds
    assert out["curve"][2]["gold"] == pytest.approx(0.0)  # round 1's first evaluation
    # Cached: a second call trains nothing again.
    rounds.run_rounds(tmp_path / "work", s, sizes, done, log=lambda _: None)
    assert len(trained) == 2 and len(policies) == 2
