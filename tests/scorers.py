"""Reward functions the tests run inside reward actors, named ``"scorers:<function>"``.

A reward actor imports the module its function lives in: a test module imports torch, Ray,
RLlib and rayrm (about 4 s of CPU per actor on these machines), this one only the standard
library and the builtin rewards. Ray's workers find it because ``tests/`` is on their
``PYTHONPATH`` (``helpers.worker_environment``); the test modules, in subfolders of ``tests/``,
are not.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from envs.builtin import vowel_reward


def completion_length(prompts: list[str], completions: list[str]) -> list[float]:
    """Reward that encodes the input, so order mix-ups show in the scores."""
    return [float(len(c)) for c in completions]


RECORDED: list[tuple[str, str]] = []


def record_texts(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward function that remembers what it was given (run in-process by the tests)."""
    RECORDED.extend(zip(prompts, completions, strict=True))
    return [float(len(c)) for c in completions]


def slow_vowel_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """The vowel reward after a second: scoring long enough to see what runs alongside it."""
    time.sleep(1.0)
    return vowel_reward(prompts, completions)


def slow_length_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Reward = completion length, slowly (so a kill lands mid-batch)."""
    time.sleep(0.5)
    return [float(len(c)) for c in completions]


def one_prompt_informative(prompts: list[str], completions: list[str]) -> list[float]:
    """The vowel reward for ``the cat``'s completions, 1.0 for every other prompt's: the
    groups of the other prompts are uniform."""
    scores = vowel_reward(prompts, completions)
    return [s if p.startswith("the cat") else 1.0 for p, s in zip(prompts, scores, strict=True)]


# ------------------------------------------------------------------------- failing judges


def hang_once(prompts: list[str], completions: list[str]) -> list[float]:
    """Hangs (a stuck judge) the first time it sees its marker path, the prompt; then scores."""
    marker = Path(prompts[0])
    if not marker.exists():
        marker.write_text("hung")
        time.sleep(600)
    return [float(len(c)) for c in completions]


def hang_always(prompts: list[str], completions: list[str]) -> list[float]:
    time.sleep(600)
    return [0.0] * len(completions)


def crash_once_logging_ids(prompts: list[str], completions: list[str], ids: list[str]) -> list:
    """A judge with side effects: logs every (id, completion) it is asked about to the file
    named by the prompt, and its process dies the first time (marker next to the log)."""
    log = Path(prompts[0])
    with log.open("a") as f:
        f.write(json.dumps(list(zip(ids, completions, strict=True))) + "\n")
    marker = log.with_suffix(".crashed")
    if not marker.exists():
        marker.write_text("x")
        os._exit(1)  # the actor's process dies mid-chunk
    return [float(len(c)) for c in completions]


def always_resets(prompts: list[str], completions: list[str]) -> list[float]:
    raise ConnectionResetError("judge connection reset by peer")


def raises_on_text(prompts: list[str], completions: list[str]) -> list[float]:
    """Scores the preflight probe (empty completions), fails on the first real one."""
    for c in completions:
        if c:
            raise ValueError(f"cannot score {c[:10]!r}")
    return [0.0] * len(completions)


def nan_on_text(prompts: list[str], completions: list[str]) -> list[float]:
    """A NaN for every other real completion."""
    return [math.nan if c and i % 2 else 0.5 for i, c in enumerate(completions)]


_judge_calls = 0


def flaky_judge(prompts: list[str], completions: list[str], ids: Any = None) -> list[float]:
    """A judge whose connection drops on its first real call in each process; it wants the
    completions' stable ids (the preflight probe, in the driver, passes none)."""
    global _judge_calls
    if any(completions):
        _judge_calls += 1
        if _judge_calls == 1:
            raise ConnectionResetError("judge connection reset by peer")
        if ids is None or len(set(ids)) != len(ids) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"bad completion ids {ids!r}")
    return [float(len(c)) for c in completions]


def sum_answer(prompts: list[str], completions: list[str], answer: list[int]) -> list[float]:
    """The row's ``answer`` column, checked against its prompt ``"a+b="``: raises (failing the
    run) if a completion came with another row's answer."""
    for prompt, a in zip(prompts, answer, strict=True):
        x, y = prompt.strip().removesuffix("=").split("+")
        if int(x) + int(y) != a:
            raise ValueError(f"answer {a!r} is not that of prompt {prompt!r}")
    return [float(a) for a in answer]


def row_secret(prompts: list[str], completions: list[str], secret: list[int]) -> list[float]:
    """The guess game row's ``secret`` column: a gold scorer whose mean says which rows it was
    given."""
    return [float(s) for s in secret]


# ------------------------------ reward functions users get wrong (tests/unit/cli/test_failures.py)


def raises(prompts: list[str], completions: list[str]) -> list[float]:
    raise KeyError("score_table")


def wrong_length(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.0] * (len(completions) + 1)


def not_numbers(prompts: list[str], completions: list[str]) -> list[str]:
    return ["good"] * len(completions)


def returns_none(prompts: list[str], completions: list[str]) -> None:
    return None


def nan_scores(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.5, math.nan] + [0.5] * (len(completions) - 2)


def inf_scores(prompts: list[str], completions: list[str]) -> list[float]:
    return [math.inf] * len(completions)


def no_arguments() -> list[float]:
    return []


def nested(prompts: list[str], completions: list[str]) -> list[list[float]]:
    return [[1.0, 2.0] for _ in completions]


not_callable = 3
