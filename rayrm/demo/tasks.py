"""The multi-turn demo tasks: their rows, their SFT traces and their tokenizer.

What belongs here: everything ``rayrm demo --task tools|game`` needs before a model exists,
built offline and deterministically from a seed. A :class:`Task` names its environment
(``envs.tasks``), writes its prompt rows, and writes SFT traces played against that same
environment (:func:`play_trace`), so the replies in the traces are the environment's own.

The traces are deliberately mediocre, so that RL has somewhere to go and the gain is the
environment's verdict, not the traces':

* ``tools`` (:class:`envs.tasks.arithmetic.Calculator`, what is a·b for a, b in 11..99):
  half the traces call ``calculate`` and answer with its result, half answer at once with a
  plausible wrong number. The SFT policy calls the tool about half the time; RL, paid 1 for
  the right product, can learn to always call it.
* ``game`` (:class:`envs.tasks.guess.QuickGuess`, a number from 1 to 8 in 3 guesses, told
  "Higher."/"Lower."): the traces guess uniformly among the numbers the hints leave, which
  wins 62% of games; halving the range (binary search) wins 7 of 8.

The tokenizer is byte-level BPE trained on the tasks' texts, with Qwen2.5's special tokens
(``<|im_start|>``, ``<|im_end|>`` as EOS, ``<|endoftext|>`` as pad: the policy declares both
as EOS) and a compact ChatML template (:data:`DEMO_TEMPLATE`) that lists tools in one line
(``tools: calculate(a, op, b)``): Qwen2.5's tool preamble is ~700 tokens with a tiny
vocabulary.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.multi_turn import load_environment
from envs.protocol import Environment, ToolEnvironment, as_messages
from envs.tasks import arithmetic, guess
from envs.tools import ToolCall, call_tool, parse_hermes, render_tool_calls, tool_schema
from rayrm.models.tokenization import Conversation

__all__ = [
    "DEMO_TEMPLATE",
    "TASKS",
    "Task",
    "build_task_tokenizer",
    "play_trace",
    "write_rows",
    "write_traces",
]

DEMO_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\ntools: ' }}"
    "{% for tool in tools %}{% if not loop.first %}{{ '; ' }}{% endif %}"
    "{{ tool['function']['name'] + '(' + (tool['function']['parameters']['properties'] | list"
    " | join(', ')) + ')' }}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') }}"
    "{% if message['role'] == 'assistant' and message.tool_calls %}"
    "{% for call in message.tool_calls %}"
    "{% if call.function is defined %}{% set call = call.function %}{% endif %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    '{{ \'<tool_call>\\n{"name": "\' + call.name + \'", "arguments": \' }}'
    "{{ call.arguments if call.arguments is string else call.arguments | tojson }}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML with tools listed in one system line by name and argument names; ``tool`` messages
are turns of their own role. An assistant message's structured ``tool_calls`` (as TRL's
``GRPOTrainer`` writes them) render after its content as the Hermes blocks the traces hold
(``envs.tools.render_tool_calls``); rayrm keeps the calls in the content as sampled.
Prefix-stable (``rayrm.models.turns``)."""

Policy = Callable[[Environment, list[dict[str, str]], random.Random], str]
"""A scripted trace writer: (the environment, the conversation so far, rng) -> next turn."""


@dataclass(frozen=True)
class Task:
    """A multi-turn demo task.

    Attributes:
        name: ``rayrm demo --task`` name.
        environment: ``"module:Class"`` of its environment.
        rows: ``(n, seed) -> rows``: the prompt rows (each builds one episode).
        policy: Writes the traces' assistant turns.
        max_new_tokens: Longest assistant turn (``generation.max_new_tokens``).
        max_total_tokens: Longest episode (``env.max_total_tokens``).
        max_prompt_tokens: Longest opening (``data.max_prompt_tokens``).
    """

    name: str
    environment: str
    rows: Callable[[int, int], list[dict[str, Any]]]
    policy: Policy
    max_new_tokens: int
    max_total_tokens: int
    max_prompt_tokens: int


# ---------------------------------------------------------------------------------------------
# Traces
# ---------------------------------------------------------------------------------------------


def play_trace(task: Task, row: dict[str, Any], rng: random.Random) -> Conversation:
    """One conversation of ``task.policy`` against the task's environment built from ``row``,
    answered as ``envs.multi_turn`` answers: tool calls run, other turns go to ``step``."""
    env = load_environment(task.environment)(dict(row))
    tools = {fn.__name__: fn for fn in env.tools}
    messages = as_messages(env.reset())
    for _ in range(env.max_turns or 1):
        text = task.policy(env, messages, rng)
        messages.append({"role": "assistant", "content": text})
        calls = parse_hermes(text) if isinstance(env, ToolEnvironment) else []
        if calls:
            results = [call_tool(tools, call, timeout_s=10.0) for call in calls]
            messages += [{"role": "tool", "content": r.content} for r in results]
            continue
        reply = env.step(text)
        if reply.done:
            break
        messages += as_messages(reply.messages)
    return messages


def calculator_policy(env: Environment, messages: list[dict[str, str]], rng: random.Random) -> str:
    """Half the episodes: call ``calculate``, then answer with its result; the other half:
    answer at once with a wrong number near the product."""
    if not isinstance(env, arithmetic.Calculator):
        raise TypeError(f"calculator traces need a Calculator, got {type(env).__name__}")
    if messages[-1]["role"] == "tool":
        return messages[-1]["content"]
    if rng.random() < 0.5:
        call = ToolCall("calculate", {"a": env.a, "op": "*", "b": env.b})
        return render_tool_calls([call])
    return str(env.answer + rng.choice((-1, 1)) * rng.randint(1, 99) * 10)


def guessing_policy(env: Environment, messages: list[dict[str, str]], rng: random.Random) -> str:
    """A number drawn uniformly among those the hints so far leave."""
    if not isinstance(env, guess.GuessTheNumber):
        raise TypeError(f"guessing traces need a GuessTheNumber, got {type(env).__name__}")
    low, high = 1, env.high
    for said, heard in zip(messages[1::2], messages[2::2], strict=False):
        number = int(said["content"])
        if heard["content"].startswith("Higher"):
            low = max(low, number + 1)
        else:
            high = min(high, number - 1)
    return str(rng.randint(low, high))


TASKS: dict[str, Task] = {
    "tools": Task(
        name="tools",
        environment="envs.tasks.arithmetic:Calculator",
        rows=lambda n, seed: arithmetic.rows(n, seed=seed),
        policy=calculator_policy,
        max_new_tokens=64,
        max_total_tokens=192,
        max_prompt_tokens=64,
    ),
    "game": Task(
        name="game",
        environment="envs.tasks.guess:QuickGuess",
        rows=lambda n, seed: guess.rows(n, seed=seed, high=8),
        policy=guessing_policy,
        max_new_tokens=6,
        max_total_tokens=96,
        max_prompt_tokens=32,
    ),
}
"""The multi-turn demo tasks by ``--task`` name."""


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as a JSON Lines prompts file."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tool_schemas(task: Task) -> list[dict[str, Any]]:
    """JSON schemas of the task's tools, as the multi-turn env passes them to the template."""
    return [tool_schema(fn) for fn in load_environment(task.environment).tools]


def write_traces(path: Path, task: Task, rows: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """SFT traces, one per row: a JSON Lines file of ``messages`` and ``tools`` (JSON text of
    the schemas, or null), as ``rayrm sft`` reads conversations.

    Returns:
        ``{"traces", "tool_calls", "mean_turns"}``.
    """
    rng = random.Random(f"traces-{seed}")  # not the rows' stream: the guesses would be them
    tools = json.dumps(tool_schemas(task)) if tool_schemas(task) else None
    lines, calls, turns = [], 0, 0
    for row in rows:
        messages = play_trace(task, row, rng)
        calls += sum(m["role"] == "tool" for m in messages)
        turns += sum(m["role"] == "assistant" for m in messages)
        lines.append(json.dumps({"messages": messages, "tools": tools}) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return {"traces": len(rows), "tool_calls": calls, "mean_turns": turns / max(len(rows), 1)}


def build_task_tokenizer(traces: Path, task: Task, vocab_size: int, out_dir: Path) -> Any:
    """Byte-level BPE on the traces' texts with Qwen2.5's special tokens and
    :data:`DEMO_TEMPLATE` (see the module docstring), saved in ``out_dir``."""
    from rayrm.models.tiny import build_tokenizer, save_tokenizer

    head = []  # the template's tools line, roughly
    for schema in tool_schemas(task):
        f = schema["function"]
        head.append(f"system\ntools: {f['name']}({', '.join(f['parameters']['properties'])})")
    corpus = []
    for line in traces.read_text(encoding="utf-8").splitlines():
        corpus += head + [f"{m['role']}\n{m['content']}" for m in json.loads(line)["messages"]]
    tokenizer = build_tokenizer("qwen2", vocab_size=vocab_size, corpus=corpus)
    tokenizer.chat_template = DEMO_TEMPLATE
    save_tokenizer(tokenizer, out_dir, "qwen2")
    return tokenizer
