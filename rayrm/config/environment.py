"""The ``env`` section: an environment that answers back (multi-turn episodes).

A typed section only; ``envs.multi_turn`` runs the environment, ``envs.protocol`` says what one
is.
"""

from __future__ import annotations

from pydantic import Field

from rayrm.config.base import NonEmptyStr, Section

__all__ = ["EnvSettings"]


class EnvSettings(Section):
    """``env``: episodes of several turns against an environment built per prompt row.

    Without this section an episode is one completion of one prompt. With it, each episode
    builds ``environment`` from its row of ``data.prompts`` (every column), lets the policy
    and the environment take turns (tool results, game states, user messages), and trains on
    the policy's tokens only; ``generation.max_new_tokens`` is then the limit of one turn.

    Attributes:
        environment: ``"module:Class"`` of an ``envs.Environment`` subclass. Required.
        max_turns: Assistant turns per episode before it is truncated (a class's own
            ``max_turns`` wins).
        max_total_tokens: Longest whole sequence (opening, turns, replies); an episode that
            reaches it is truncated.
        tool_parser: How tool calls are read from an assistant turn (``envs.tools``):
            ``hermes`` (Qwen2.5, Hermes: ``<tool_call>{json}</tool_call>``) or a name
            registered with ``envs.tools.register_tool_parser``.
        tool_timeout_s: A tool call that runs longer answers with a timeout error (and is
            counted as ``env/tool_timeouts``); the episode goes on.
    """

    environment: NonEmptyStr
    max_turns: int = Field(4, ge=1)
    max_total_tokens: int = Field(512, ge=2)
    tool_parser: NonEmptyStr = "hermes"
    tool_timeout_s: float = Field(10.0, gt=0)
