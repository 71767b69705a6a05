"""A game: guess the host's number; the host answers "higher" or "lower".

Each row holds ``secret`` (1..``high``) and ``high``. A turn is a guess (the first integer in
the text). The right guess ends the episode with reward 1.0 (``env/success`` 1); every other
turn pays ``-step_cost``; a turn without a number is answered with the rules again.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from envs.protocol import Environment, Reply

__all__ = ["GuessTheNumber", "QuickGuess", "rows", "write_rows"]


class GuessTheNumber(Environment):
    """The number-guessing game (see the module docstring)."""

    max_turns = 6
    step_cost = 0.05

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__(row)
        self.secret, self.high = int(row["secret"]), int(row.get("high", 16))

    def reset(self) -> str:
        return f"Guess my number from 1 to {self.high}. Answer with one number."

    def step(self, text: str) -> Reply:
        found = re.search(r"\d+", text)
        if found is None:
            return Reply(
                f"Answer with one number from 1 to {self.high}.",
                -self.step_cost,
                info={"success": 0.0},
            )
        guess = int(found.group())
        if guess == self.secret:
            return Reply(reward=1.0, done=True, info={"success": 1.0})
        hint = "Higher." if guess < self.secret else "Lower."
        return Reply(hint, -self.step_cost, info={"success": 0.0})


class QuickGuess(GuessTheNumber):
    """The game in 3 guesses (``rayrm demo --task game``, from 1 to 8): halving the range
    wins 7 games of 8, guessing at random among the numbers the hints leave 62%."""

    max_turns = 3


def rows(n: int, *, seed: int = 0, high: int = 16) -> list[dict[str, int]]:
    """``n`` games with secrets drawn uniformly from 1..``high``."""
    rng = random.Random(seed)
    return [{"secret": rng.randint(1, high), "high": high} for _ in range(n)]


def write_rows(path: str | Path, n: int, *, seed: int = 0, high: int = 16) -> Path:
    """Writes :func:`rows` as a JSON Lines prompts file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows(n, seed=seed, high=high))
    path.write_text(text, encoding="utf-8")
    return path
