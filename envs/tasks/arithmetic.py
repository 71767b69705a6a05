"""A tool task: multiply two numbers with a ``calculate`` tool, then answer.

Each row holds ``a``, ``b`` and ``answer`` (= a·b). The model may call ``calculate`` (Hermes
``<tool_call>`` JSON, as Qwen2.5 writes it); the turn without a call is its answer, paid 1.0
when it holds the product and 0.0 otherwise (``env/success``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from envs.protocol import Reply, ToolEnvironment

__all__ = ["Calculator", "calculate", "rows", "write_rows"]

INSTRUCTION = "Use the calculate tool for arithmetic."


def calculate(a: int, op: str, b: int) -> int:
    """Computes a op b for two integers.

    Args:
        a: The left operand.
        op: One of "+", "-", "*".
        b: The right operand.
    """
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}; use +, - or *")


class Calculator(ToolEnvironment):
    """What is a·b? Answered with the ``calculate`` tool (see the module docstring)."""

    tools = (calculate,)
    max_turns = 3

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__(row)
        self.a, self.b, self.answer = int(row["a"]), int(row["b"]), int(row["answer"])

    def reset(self) -> str:
        # One user message: Gemma's template refuses a system role.
        return f"{INSTRUCTION} What is {self.a} * {self.b}?"

    def score(self, answer: str) -> float:
        return 1.0 if str(self.answer) in re.findall(r"-?\d+", answer) else 0.0

    def step(self, text: str) -> Reply:
        reward = self.score(text)
        return Reply(reward=reward, done=True, info={"success": reward})


def rows(n: int, *, seed: int = 0, low: int = 11, high: int = 99) -> list[dict[str, int]]:
    """``n`` multiplications of two numbers from ``low`` to ``high``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        out.append({"a": a, "b": b, "answer": a * b})
    return out


def write_rows(path: str | Path, n: int, *, seed: int = 0) -> Path:
    """Writes :func:`rows` as a JSON Lines prompts file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed=seed)), encoding="utf-8")
    return path
