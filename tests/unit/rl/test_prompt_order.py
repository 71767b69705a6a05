"""Prompts are drawn in shuffled passes without replacement (epochs), dealt to env runners so
that each is used once per pass whatever the runners and groups, the held-out rows are never
trained on, and a restored order continues the pass (through Ray, two runners and a resume:
tests/ray/rl/test_prompt_passes.py)."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import make_config
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rayrm.config import ConfigError
from rayrm.rl.episodes import GROUP, PROMPT_INDEX
from rayrm.rl.prompt_order import (
    PromptOrder,
    deal_prompts,
    held_out_count,
    held_out_prompts,
    planned_iterations,
    take_planned,
    training_rows,
)


def test_each_pass_is_a_fresh_permutation_of_the_rows():
    rows = list(range(3, 13))
    order = PromptOrder(rows, seed=7)
    passes = [order.take(10) for _ in range(3)]
    assert all(sorted(p) == rows for p in passes)  # every row once per pass
    assert passes[0] != passes[1] != passes[2]  # reshuffled each pass
    assert order.epochs_done() == 3.0
    # Batches that straddle passes: still each row once per pass.
    order = PromptOrder(rows, seed=7)
    flat = [r for _ in range(5) for r in order.take(6)]  # 30 = 3 passes
    assert flat == [r for p in passes for r in p]


def test_a_restored_order_continues_the_pass():
    whole = PromptOrder(range(17), seed=3)
    expected = [whole.take(5) for _ in range(8)]
    first = PromptOrder(range(17), seed=3)
    got = [first.take(5) for _ in range(3)]
    state = first.get_state()
    second = PromptOrder(range(17), seed=3)
    second.set_state(state)
    got += [second.take(5) for _ in range(5)]
    assert got == expected
    assert second.epochs_done() == pytest.approx(40 / 17)


def _group(row: int, n: int, group: str | None) -> list[SingleAgentEpisode]:
    info = {PROMPT_INDEX: row, **({GROUP: group} if group else {})}
    return [
        SingleAgentEpisode(
            observations=[0, 0],
            actions=[0],
            rewards=[0.0],
            infos=[info, {}],
            len_lookback_buffer=0,
        )  # fmt: skip
        for _ in range(n)
    ]


def test_a_lost_runners_prompts_go_to_the_others_once():
    """Three runners of 2 groups each; one is lost: the other two are dealt its prompts and
    repeats to fill their envs, and only one group per needed prompt is kept."""
    needed = Counter([5, 6, 7, 8, 9, 10])
    plan = deal_prompts(list(needed.elements()), [1, 2, 3], 2)
    assert plan == {1: [5, 6], 2: [7, 8], 3: [9, 10]}
    sampled = [e for r in (1, 3) for row in plan[r] for e in _group(row, 2, f"{r}-{row}")]
    kept = take_planned(sampled, needed)  # runner 2 lost
    assert len(kept) == 8 and needed == Counter([7, 8])
    plan = deal_prompts(list(needed.elements()), [1, 3], 2)
    assert plan == {1: [7, 8], 3: [7, 8]}  # runner 3 repeats them: more envs than prompts
    sampled = [e for r in (1, 3) for row in plan[r] for e in _group(row, 2, f"b{r}-{row}")]
    kept = take_planned(sampled, needed)
    assert [e.get_infos(0)[GROUP] for e in kept] == ["b1-7", "b1-7", "b1-8", "b1-8"]
    assert not needed
    # Without groups a completion is its own unit.
    needed = Counter([1, 1, 2])
    kept = take_planned([e for row in (1, 2, 1, 2) for e in _group(row, 1, None)], needed)
    assert [e.get_infos(0)[PROMPT_INDEX] for e in kept] == [1, 2, 1] and not needed


def test_held_out_rows_and_planned_iterations(tiny_policy_dir, prompts_file, tmp_path):
    from rayrm.data.prompts import write_prompts_jsonl

    # The built-in prompts file has 64 rows; evaluation and report use data.prompts' first
    # eval.num_prompts (32), at most half the file, and training the rest.
    cfg = make_config(tiny_policy_dir, prompts_file, tmp_path, eval={"every": 5})
    assert held_out_count(cfg, 64) == 32 and training_rows(cfg) == list(range(32, 64))
    prompts, _ = held_out_prompts(cfg, references=False)
    assert len(prompts) == 32
    cfg = make_config(tiny_policy_dir, prompts_file, tmp_path)  # no evaluation, no report
    assert training_rows(cfg) == list(range(64))
    cfg = make_config(
        tiny_policy_dir, prompts_file, tmp_path, eval={"num_prompts": 50, "report": True}
    )
    assert training_rows(cfg) == list(range(32, 64))  # half the file at most
    one = write_prompts_jsonl(tmp_path / "one.jsonl", ["the cat is"])
    cfg = make_config(tiny_policy_dir, str(one), tmp_path, eval={"report": True})
    with pytest.raises(ConfigError) as err:
        training_rows(cfg)
    assert err.value.key == "eval.prompts"
    # 1.5 passes over 32 prompts, 8 prompts x 2 samples per iteration: 6 iterations.
    cfg = make_config(
        tiny_policy_dir, prompts_file, tmp_path, eval={"report": True},
        run={"num_epochs": 1.5}, generation={"samples_per_prompt": 2},
        algorithm={"advantage_estimator": "grpo"},
    )  # fmt: skip
    assert planned_iterations(cfg, len(training_rows(cfg))) == 6
