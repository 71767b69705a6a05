"""The benchmark's tools section (rayrm.bench.trl_env): the Calculator task for TRL.

In the default suite: TRL's environment offers the same tool schema as rayrm's env, its reward
is ``Calculator.score`` of the same final answer, its prompts are the same questions, the tiny
ChatML template renders TRL's structured tool calls as rayrm's Hermes writer does, and rayrm's
side is a valid ``rayrm train`` config. (With TRL installed, the section end to end at a toy
size: tests/ray/bench/test_against_trl.py.)
"""

from __future__ import annotations

import pytest

from envs.tasks import arithmetic
from envs.tasks.arithmetic import Calculator
from envs.tools import ToolCall, render_tool_calls, tool_schema
from rayrm.bench import trl_env
from rayrm.bench.trl_env import CalculatorToolEnv, ToolsSettings, calculator_reward, trl_dataset


def test_trl_environment_offers_the_calculate_tool_with_its_schema():
    """TRL reads a tool's schema from the bound method as transformers does for a function:
    the prompt lists the same ``calculate`` rayrm's env lists."""
    from transformers.utils import get_json_schema

    env = CalculatorToolEnv()
    assert get_json_schema(env.calculate) == tool_schema(arithmetic.calculate)
    assert env.calculate(12, "*", 34) == arithmetic.calculate(12, "*", 34) == 408


def test_trl_reward_is_the_calculators_score():
    row = {"a": 12, "b": 34, "answer": 408}
    answers = ["It is 408.", "408", "4080", "", "-408 or 407"]
    envs = [CalculatorToolEnv() for _ in answers]
    for env in envs:
        env.reset(prompt=[], **row)
    episodes = [
        [
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]},
            {"role": "tool", "name": "calculate", "content": "408"},
            {"role": "assistant", "content": text},
        ]
        for text in answers
    ]
    expected = [Calculator(row).score(text) for text in answers]
    assert calculator_reward(episodes, envs) == expected == [1.0, 1.0, 0.0, 0.0, 0.0]
    # Episodes that end on a tool call or a tool result (turns or tokens ran out) pay 0, as
    # rayrm's truncated episodes do, even when the product is in the text.
    ended = [
        [{"role": "assistant", "content": "408", "tool_calls": [{"type": "function"}]}],
        episodes[0][:2],
    ]
    assert calculator_reward(ended, envs[:2]) == [0.0, 0.0]


def test_trl_prompts_are_the_calculators_questions():
    rows = arithmetic.rows(3, seed=1)
    data = trl_dataset(rows)
    assert data["prompt"] == [[{"role": "user", "content": Calculator(r).reset()}] for r in rows]
    assert data["a"] == [r["a"] for r in rows] and data["answer"] == [r["answer"] for r in rows]


def test_chatml_renders_structured_tool_calls_as_hermes_text(inputs):
    """TRL keeps an assistant turn's calls as ``tool_calls``; the tiny ChatML renders them as
    the text rayrm's Hermes writer gives (what the policy writes in rayrm's episodes)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(inputs[0])
    call = ToolCall("calculate", {"a": 12, "op": "*", "b": 34})
    fn = {"name": call.name, "arguments": call.arguments}
    user = {"role": "user", "content": "What is 12 * 34?"}
    structured = [user, {"role": "assistant", "content": "", "tool_calls": [{"function": fn}]}]
    text = [user, {"role": "assistant", "content": render_tool_calls([call])}]
    render = tokenizer.apply_chat_template
    assert render(structured, tokenize=False) == render(text, tokenize=False)


def test_rayrm_side_is_a_multi_turn_grpo_config(inputs, tmp_path):
    model, rows = inputs
    s = ToolsSettings(model=model, rows=rows, batch_size=8, samples_per_prompt=4)
    cfg = trl_env.rayrm_config(s, str(tmp_path))
    assert cfg.env.environment == trl_env.ENVIRONMENT
    assert cfg.env.max_turns == Calculator.max_turns == s.max_turns
    assert cfg.reward.source == "env" and cfg.algorithm.advantage_estimator == "grpo"
    assert cfg.generation.samples_per_prompt == 4 and cfg.algorithm.batch_size == 8


def test_tools_settings_take_the_episode_limits_from_the_command_line(tmp_path):
    """``--tools-max-total-tokens`` and ``--tools-max-prompt-tokens`` (the tools demo's model
    has 192 positions, under the defaults' 1152)."""
    from rayrm.bench.run import spec_from_args
    from rayrm.bench.trl_env import settings_from_args
    from rayrm.cli import build_parser

    argv = ["bench", "--sections", "tools", "--tools-model", "m", "--tools-rows", "r.jsonl",
            "--tools-max-new-tokens", "64", "--tools-max-total-tokens", "192",
            "--tools-max-prompt-tokens", "64", "--lr", "3e-4", "--tools-success-window", "5"]  # fmt: skip
    args = build_parser().parse_args(argv)
    s = settings_from_args(args, spec_from_args(args), tmp_path)
    assert (s.model, s.rows, s.lr) == ("m", "r.jsonl", 3e-4)
    assert (s.max_new_tokens, s.max_total_tokens, s.max_prompt_tokens) == (64, 192, 64)
    assert s.success_window == 5
    defaults = settings_from_args(
        build_parser().parse_args(argv[:7]), spec_from_args(args), tmp_path
    )
    assert (defaults.max_total_tokens, defaults.max_prompt_tokens) == (1152, 768)
    assert defaults.success_window == 2


def test_tools_repeats_change_the_seed_and_order_and_summarise_per_seed(monkeypatch):
    """``--repeats N`` in the tools section: repeat r runs seed s.seed + r with TRL first in
    odd repeats, its lines tagged; the summary's spreads are over the repeats' lines and the
    targets are judged on the medians."""
    from rayrm.bench import repeats

    calls = []

    def fake(s, *, trl_first):  # the section's three lines, figures made from the seed
        calls.append((s.seed, trl_first))
        yield {"bench": "tools_rayrm", "iteration_s_median": 1.0 + s.seed, "success_first": 0.2,
               "success_last": 0.7, "success_gain": 0.5}  # fmt: skip
        yield {"bench": "tools_trl", "iteration_s_median": 4.0, "success_first": 0.2,
               "success_last": 0.6 + 0.1 * s.seed, "success_gain": 0.4 + 0.1 * s.seed}  # fmt: skip
        yield {"bench": "tools_ratio", "trl_over_rayrm_s_per_iteration": 4.0 / (1.0 + s.seed),
               "rayrm_minus_trl_success_gain": 0.1 - 0.1 * s.seed}  # fmt: skip

    monkeypatch.setattr(repeats, "measure_tools", fake)
    lines = list(repeats.measure_tools_repeated(ToolsSettings(model="m", rows="r", seed=5), 3))
    assert calls == [(5, False), (6, True), (7, False)]
    assert [x.get("seed") for x in lines[:3]] == [5, 5, 5] and lines[3]["repeat"] == 2
    summary = lines[-1]
    assert summary["bench"] == "tools_summary" and summary["seeds"] == [5, 6, 7]
    speed = summary["trl_over_rayrm_s_per_iteration"]
    assert speed["runs"] == [4 / 6, 4 / 7, 4 / 8] and speed["median"] == 4 / 7
    assert summary["trl_success_gain"]["median"] == pytest.approx(1.0)
    assert summary["met"] == {"speed": False, "success_gain": False}
    assert len(list(repeats.measure_tools_repeated(ToolsSettings(model="m", rows="r"), 1))) == 3
