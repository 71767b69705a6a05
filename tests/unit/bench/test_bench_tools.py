"""The benchmark's tools section (rayrm.bench.trl_env): the Calculator task for TRL.

In the default suite: TRL's environment offers the same tool schema as rayrm's env, its reward
is ``Calculator.score`` of the same final answer, its prompts are the same questions, the tiny
ChatML template renders TRL's structured tool calls as rayrm's Hermes writer does, and rayrm's
side is a valid ``rayrm train`` config. With TRL installed (the ``bench`` extra): the section
end to end at a toy size.
"""

from __future__ import annotations

import json

import pytest

from envs.tasks import arithmetic
from envs.tasks.arithmetic import Calculator
from envs.tools import ToolCall, render_tool_calls, tool_schema
from rayrm.bench import trl_env
from rayrm.bench.trl_env import CalculatorToolEnv, ToolsSettings, calculator_reward, trl_dataset


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny Qwen2 (ChatML with tools) and 8 Calculator rows."""
    from rayrm.bench.support import BenchSpec

    spec = BenchSpec(n_embd=32, n_layer=1, n_head=2)
    return trl_env.default_inputs(tmp_path_factory.mktemp("tools"), spec)


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
    assert cfg.reward.source == "env" and cfg.ppo.advantage_estimator == "grpo"
    assert cfg.generation.samples_per_prompt == 4 and cfg.ppo.batch_size == 8


@pytest.mark.trl
@pytest.mark.timeout(600)
def test_tools_section_against_trl(inputs, tmp_path, capfd):
    """End to end with TRL 1.12: one measured iteration of each trainer, in lockstep."""
    from rayrm.bench import run as bench
    from rayrm.bench import trl as bench_trl
    from rayrm.cli import build_parser

    if bench_trl.trl_unavailable_reason() is not None:
        pytest.skip(bench_trl.trl_unavailable_reason())
    model, rows = inputs
    args = build_parser().parse_args(
        [
            "bench",
            "--sections", "tools",
            "--tools-model", model,
            "--tools-rows", rows,
            "--tools-max-new-tokens", "6",
            "--batch-size", "8",
            "--samples-per-prompt", "4",
            "--num-epochs", "1",
            "--iterations", "1",
            "--warmup", "1",
            "--workdir", str(tmp_path),
        ]
    )  # fmt: skip
    assert bench.main(args) == 0
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    by_kind = {line["bench"]: line for line in lines}
    assert set(by_kind) == {"tools_rayrm", "tools_trl", "tools_ratio"}, lines
    for kind in ("tools_rayrm", "tools_trl"):
        line = by_kind[kind]
        assert line["iterations"] == 1 and line["iteration_s_median"] > 0
        assert len(line["success_by_iteration"]) == 2  # the warm-up's and the measured one's
        assert 0.0 <= line["success_last"] <= 1.0 and line["episodes_seen"] == 16
        assert line["settings"]["max_new_tokens"] == 6
    assert (
        by_kind["tools_rayrm"]["resources"]["threads"]["update"] == by_kind["tools_trl"]["threads"]
    )
    ratio = by_kind["tools_ratio"]
    assert ratio["trl_over_rayrm_s_per_iteration"] > 0 and set(ratio["met"]) == {
        "speed",
        "success_gain",
    }


def test_tools_settings_take_the_episode_limits_from_the_command_line(tmp_path):
    """``--tools-max-total-tokens`` and ``--tools-max-prompt-tokens`` (the tools demo's model
    has 192 positions, under the defaults' 1152)."""
    from rayrm.bench.run import spec_from_args
    from rayrm.bench.trl_env import settings_from_args
    from rayrm.cli import build_parser

    argv = ["bench", "--sections", "tools", "--tools-model", "m", "--tools-rows", "r.jsonl",
            "--tools-max-new-tokens", "64", "--tools-max-total-tokens", "192",
            "--tools-max-prompt-tokens", "64", "--lr", "3e-4"]  # fmt: skip
    args = build_parser().parse_args(argv)
    s = settings_from_args(args, spec_from_args(args), tmp_path)
    assert (s.model, s.rows, s.lr) == ("m", "r.jsonl", 3e-4)
    assert (s.max_new_tokens, s.max_total_tokens, s.max_prompt_tokens) == (64, 192, 64)
    defaults = settings_from_args(
        build_parser().parse_args(argv[:7]), spec_from_args(args), tmp_path
    )
    assert (defaults.max_total_tokens, defaults.max_prompt_tokens) == (1152, 768)
