"""The multi-turn demos (``rayrm demo --task tools|game``): SFT traces rendered exactly as RL
renders the episode, the episode evaluator against a scripted policy, SFT's tools column and
the demo's template (a smoke-size run of each task:
tests/ray/demo/test_multi_turn_demo_smoke.py)."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from envs.multi_turn import MultiTurnTextEnv
from envs.tools import ToolCall, render_tool_calls
from rayrm.demo.tasks import TASKS, build_task_tokenizer, play_trace, tool_schemas, write_traces
from rayrm.rl.env_evaluation import play_episodes, success_rate
from rayrm.stages.sft import IGNORE_INDEX, encode_conversations


@pytest.fixture(scope="module", params=sorted(TASKS))
def task_files(request, tmp_path_factory):
    """A task, its traces for 40 rows and its demo tokenizer."""
    task = TASKS[request.param]
    d = tmp_path_factory.mktemp(task.name)
    rows = task.rows(40, 0)
    write_traces(d / "sft.jsonl", task, rows, 0)
    tok = build_task_tokenizer(d / "sft.jsonl", task, 320, d / "tok")
    return task, rows, tok


def test_sft_examples_are_the_episodes_rl_samples(task_files):
    """Every trace's SFT example (rendered with the task's tools) holds, token for token, the
    sequence the multi-turn env builds when a policy writes the trace's assistant turns: the
    same opening (the SFT prompt ids = the env's first observation), the same replies, and the
    labels are exactly the policy's tokens (a turn through its stop token, and the newline
    after it that the env appends as the closing)."""
    task, rows, tok = task_files
    env = MultiTurnTextEnv(
        environment=task.environment, prompts=rows, tokenizer=tok,
        max_prompt_tokens=task.max_prompt_tokens, max_new_tokens=task.max_new_tokens,
        max_total_tokens=task.max_total_tokens,
    )  # fmt: skip
    schemas = tool_schemas(task) or None
    turns_seen = 0
    for index, row in enumerate(rows):
        messages = play_trace(task, row, random.Random(index))
        [(ids, labels)], _ = encode_conversations(
            tok, [messages], max_length=10_000, tools=[schemas]
        )
        obs, _ = env.reset(options={"prompt_index": index})
        opening = obs["input_ids"][: int(obs["length"][0])].tolist()
        assert ids[: len(opening)].tolist() == opening
        assert (labels[: len(opening)] == IGNORE_INDEX).all()
        learned = np.flatnonzero(labels != IGNORE_INDEX)
        over = False
        for at in learned:  # the policy writes the labelled tokens, the env the rest
            if len(env.ids) > at:
                continue  # the closing's newline: the env appended it with the reply
            assert env.ids == ids[:at].tolist()
            *_, terminated, truncated, _ = env.step(int(ids[at]))
            over = terminated or truncated
            if over:
                break
        assert over and env.ids == ids[: len(env.ids)].tolist()
        turns_seen += sum(m["role"] == "assistant" for m in messages)
    assert turns_seen > len(rows)  # some traces have several turns


class Bigram(torch.nn.Module):
    """A scripted policy for ``decode_batch``: the next token's logits depend on the last
    token only (a lookup table), so its greedy play is known."""

    def __init__(self, vocab: int, after: dict[int, int]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))
        with torch.no_grad():
            for last, nxt in after.items():
                self.table[last, nxt] = 10.0

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=None)


def test_evaluator_plays_whole_episodes_with_replies():
    """A policy that always guesses 7 (greedy): it wins the games whose secret is 7 in one
    turn (return 1) and loses the others after the 3 turns the game allows (3 hints fed back,
    return -0.15); the success rate's standard error is sqrt(p(1-p)/n)."""
    from rayrm.models.tiny import build_tokenizer

    tok = build_tokenizer("qwen2")
    newline = tok.encode("\n", add_special_tokens=False)[-1]
    seven = tok.encode("7", add_special_tokens=False)
    assert len(seven) == 1
    end = tok.convert_tokens_to_ids("<|im_end|>")
    model = Bigram(len(tok), {newline: seven[0], seven[0]: end})
    secrets = [7, 3, 7, 5, 1, 7, 8, 2]
    rows = [{"secret": s, "high": 8} for s in secrets]

    def make_env():
        return MultiTurnTextEnv(
            environment="envs.tasks.guess:QuickGuess", prompts=rows, tokenizer=tok,
            max_prompt_tokens=100, max_new_tokens=4, max_total_tokens=300,
        )  # fmt: skip

    outcomes = play_episodes(model, make_env, range(len(rows)), batch_size=3, greedy=True)
    assert [o.prompt_index for o in outcomes] == list(range(len(rows)))
    for o, secret in zip(outcomes, secrets, strict=True):
        won = secret == 7
        assert o.success == float(won) and o.turns == (1 if won else 3)
        assert o.truncated == (not won)
        assert o.episode_return == pytest.approx(1.0 if won else -0.15)
    summary = success_rate(outcomes)
    assert summary["success"] == 3 / 8 and summary["n"] == 8
    assert summary["se"] == pytest.approx(np.sqrt(3 / 8 * 5 / 8 / 8))


def test_sft_reads_a_tools_column(task_files, tmp_path, monkeypatch):
    """``rayrm sft`` passes each row's ``tools`` (JSON text) to the chat template: the tools
    task's examples open with the tools line, the game's (null tools) without it; a bad value
    names its row."""
    from rayrm.config import ConfigError
    from rayrm.config.stage import SFTConfig, stage_config_from_dict
    from rayrm.stages import sft
    from rayrm.stages.sft import load_examples

    monkeypatch.setattr(sft, "_position_limit", lambda path: None)  # no model at /m
    task, rows, tok = task_files
    path = tmp_path / "sft.jsonl"
    write_traces(path, task, rows[:4], 0)
    raw = {"model": {"path": "/m"}, "data": {"path": str(path)}, "output": {"dir": "/o"}}
    cfg = stage_config_from_dict(SFTConfig, raw)
    examples, info = load_examples(cfg, tok)
    assert info["format"] == "messages" and len(examples) == 4
    text = tok.decode(examples[0][0].tolist())
    assert ("tools: calculate(a, op, b)" in text) == (task.name == "tools"), text
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                "tools": "{not json"}) + "\n")  # fmt: skip
    with pytest.raises(ConfigError, match="row 0: the tools are not JSON"):
        load_examples(cfg, tok)


def test_demo_template_renders_structured_tool_calls_as_the_traces_text(task_files):
    """TRL's ``GRPOTrainer`` keeps an assistant turn's calls as ``tool_calls`` (and checks that
    the template renders them): the demo template writes them as the Hermes text the traces and
    rayrm's episodes hold, after any content; tool messages with a ``name`` render as before."""
    _, _, tok = task_files
    call = ToolCall("calculate", {"a": 12, "op": "*", "b": 34})
    fn = {"name": call.name, "arguments": call.arguments}
    user = {"role": "user", "content": "What is 12 * 34?"}
    tool = {"role": "tool", "name": "calculate", "content": "408"}
    for content in ("", "Let me compute."):
        structured = [
            user,
            {
                "role": "assistant",
                "content": content,
                "tool_calls": [{"type": "function", "function": fn}] * 2,
            },
            tool,
        ]
        text = render_tool_calls([call, call])
        as_text = [user, {"role": "assistant",
                          "content": f"{content}\n{text}" if content else text}, tool]  # fmt: skip
        render = tok.apply_chat_template
        assert render(structured, tokenize=False) == render(as_text, tokenize=False)
