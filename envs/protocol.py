"""Environments that answer back: the protocol a multi-turn text task implements.

An :class:`Environment` is built once per episode from its row of the prompts file (every
column, typed as Parquet or JSON gives them). It opens the conversation, then answers each
assistant turn with a :class:`Reply`: the next messages (a tool result, a game state, a user
message), a reward for the turn, and whether the episode is over::

    from envs import Environment, Reply

    class GuessTheNumber(Environment):
        max_turns = 6

        def __init__(self, row):
            self.secret = int(row["secret"])

        def reset(self):
            return "I picked a number from 1 to 20. Guess it: answer with the number only."

        def step(self, text):
            guess = int(text) if text.strip().isdigit() else None
            if guess == self.secret:
                return Reply(reward=1.0, done=True, info={"success": 1.0})
            hint = "higher" if guess is not None and guess < self.secret else "lower"
            return Reply(f"No, {hint}.", info={"success": 0.0})

A :class:`ToolEnvironment` offers plain typed Python functions as tools (through the chat
template's ``tools=``), runs the calls the model writes (parsed by the template's convention,
Hermes/Qwen ``<tool_call>`` JSON by default) and answers with their results; a tool that raises
or runs past ``env.tool_timeout_s`` answers with its error text. The turn without a tool call is
the answer, scored by :meth:`ToolEnvironment.score`.

The Gymnasium side (``envs.multi_turn``) turns this into one token per step and keeps the
tokens exactly as sampled; this module has no tokenizer, no Ray and no model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rayrm.models.tokenization import Conversation, check_conversation

__all__ = ["Environment", "Reply", "ToolEnvironment", "as_messages"]


@dataclass
class Reply:
    """The environment's answer to one assistant turn.

    Attributes:
        messages: What the environment says next: a text (a ``user`` message) or messages
            (roles ``user`` or ``tool``). Ignored when the episode is over.
        reward: The turn's reward, paid at the turn's last token.
        done: The episode is over (terminated: nothing to bootstrap).
        info: Numbers to log per episode (the last turn's values are kept, e.g. ``success``).
    """

    messages: str | Sequence[Mapping[str, str]] = ()
    reward: float = 0.0
    done: bool = False
    info: dict[str, float] = field(default_factory=dict)


def as_messages(value: str | Sequence[Mapping[str, str]], *, role: str = "user") -> Conversation:
    """A text as one ``role`` message; messages checked and copied."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return check_conversation([dict(m) for m in value], "the environment's messages")


class Environment:
    """A multi-turn text task (see the module docstring).

    Attributes:
        tools: Plain Python functions with type hints and docstrings, offered to the model
            (:class:`ToolEnvironment` runs them).
        max_turns: Assistant turns before the episode is truncated; None: ``env.max_turns``.
    """

    tools: ClassVar[Sequence[Callable[..., Any]]] = ()
    max_turns: ClassVar[int | None] = None

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row

    def reset(self) -> str | Sequence[Mapping[str, str]]:
        """The opening of the conversation: a user text, or messages (a system prompt
        included) rendered with the chat template."""
        raise NotImplementedError

    def step(self, text: str) -> Reply:
        """Answers the assistant's turn (its text, stop token left out)."""
        raise NotImplementedError


class ToolEnvironment(Environment):
    """An environment whose replies are the results of the tools the model calls.

    Each assistant turn is parsed for tool calls (``env.tool_parser``); each call runs (with
    ``env.tool_timeout_s``) and the episode goes on with one ``tool`` message per call. A turn
    without a call ends the episode, paid :meth:`score` of its text.
    """

    def score(self, answer: str) -> float:
        """The reward of the final answer (the turn without a tool call)."""
        raise NotImplementedError

    def step(self, text: str) -> Reply:  # the multi-turn env runs the tools itself
        return Reply(reward=float(self.score(text)), done=True)
