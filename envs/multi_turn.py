"""The multi-turn RLHF environment: one token per step, environment replies spliced in as ids.

:class:`MultiTurnTextEnv` runs an :class:`envs.protocol.Environment` (built per episode from its
prompt row) one policy token per step. When an assistant turn ends (a stop token, a stop
string, ``max_new_tokens`` tokens for the turn), the turn's text goes to the environment (or,
when it calls tools, to the tools); the reply is rendered by the chat template into ids
(:class:`rayrm.models.turns.TurnCodec`: the turn's closing tokens once, the reply's messages, the next
generation prompt) and appended to the sequence as context. Token-in/token-out: the sequence
is the opening's ids, then the sampled ids and the replies' ids in order; nothing is
re-tokenised from text.

Only policy tokens are steps (actions). A reply appears in the info of the step that ended the
turn (``REPLY_IDS``) so that the sampler feeds it through its KV cache, and every reply of the
episode, with the action it follows, in the last info (``INSERTS``) so that the learner
rebuilds the exact sequence. The turn's reward is the reward of its last token's step.

Limits: ``max_turns`` assistant turns, ``max_new_tokens`` per turn, ``max_total_tokens`` for the
whole sequence; reaching one truncates the episode (recorded in ``EPISODE_STATS``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import tools as tool_calls
from envs.protocol import Environment, Reply, as_messages
from envs.text_generation import resolve_tokenizer
from envs.tools import call_tool, tool_schema
from rayrm.data.tables import read_table
from rayrm.models.tokenization import PromptCodec
from rayrm.models.turns import TurnCodec
from rayrm.resolver import import_function

__all__ = [
    "EPISODE_STATS",
    "INSERTS",
    "REPLY_IDS",
    "MultiTurnTextEnv",
    "load_environment",
    "load_rows",
]

REPLY_IDS = "reply_ids"
"""Key of a step's info: the ids of the environment's reply, appended after this step's token."""
INSERTS = "inserts"
"""Key of an episode's last info: ``[(action index, reply ids), ...]``, every reply with the
index of the action it follows."""
EPISODE_STATS = "episode_stats"
"""Key of an episode's last info: ``turns``, ``tool_calls``, ``tool_errors``,
``tool_timeouts``, ``truncated`` and the environment's own ``info`` numbers."""

Observation = dict[str, np.ndarray]


def load_environment(spec: str) -> type[Environment]:
    """The :class:`Environment` subclass a ``"module:Class"`` string names.

    Raises:
        ValueError: One line naming ``spec`` when it does not import or is not an Environment.
    """
    try:
        cls = import_function(spec)
    except ValueError as exc:
        raise ValueError(f"env.environment {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ValueError(f"env.environment {spec!r} is not a subclass of envs.protocol.Environment")
    return cls


def load_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row of a prompts file, every column, typed as Parquet or JSON gives them."""
    rows: list[dict[str, Any]] = read_table(path).to_pylist()
    if not rows:
        raise ValueError(f"{os.fspath(path)}: the prompts file has no rows")
    return rows


class MultiTurnTextEnv(gym.Env[Observation, int]):
    """Runs one multi-turn episode of an :class:`Environment`, one policy token per step.

    Args:
        environment: ``"module:Class"`` of an :class:`envs.protocol.Environment` subclass.
        prompts: The prompts file: one row per episode's start, passed whole to the class.
        tokenizer: A path for ``AutoTokenizer.from_pretrained`` or a tokenizer object; it
            needs a chat template.
        max_prompt_tokens: Longest opening (rendered with the chat template) in tokens.
        max_new_tokens: Longest assistant turn in tokens.
        max_turns: Assistant turns per episode (a class's own ``max_turns`` wins).
        max_total_tokens: Longest whole sequence (opening, turns, replies).
        stop_token_ids: Ids besides the tokenizer's EOS that end a turn.
        stop_strings: Texts that end a turn once it contains them.
        tool_parser: Name of the tool-call parser (``envs.tools``), e.g. ``hermes``.
        tool_timeout_s: A tool call running longer answers with a timeout error.
        vocab_size: Size of the action space; defaults to ``len(tokenizer)``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        *,
        environment: str | type[Environment],
        prompts: str | os.PathLike[str] | Sequence[dict[str, Any]],
        tokenizer: Any = None,
        max_prompt_tokens: int = 256,
        max_new_tokens: int = 64,
        max_turns: int = 4,
        max_total_tokens: int = 1024,
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        tool_parser: str = "hermes",
        tool_timeout_s: float = 10.0,
        vocab_size: int | None = None,
    ) -> None:
        if min(max_prompt_tokens, max_new_tokens, max_turns) < 1:
            raise ValueError("max_prompt_tokens, max_new_tokens and max_turns must be >= 1")
        if max_total_tokens <= max_prompt_tokens:
            raise ValueError(
                f"max_total_tokens ({max_total_tokens}) must exceed max_prompt_tokens "
                f"({max_prompt_tokens}): the opening leaves no room for a turn"
            )
        self.env_class = (
            environment if isinstance(environment, type) else load_environment(environment)
        )
        self.rows = load_rows(prompts) if isinstance(prompts, str | os.PathLike) else list(prompts)
        self.prompts = self.rows  # what the env runner's prompt order counts
        self.tokenizer = resolve_tokenizer(tokenizer)
        self.codec = PromptCodec(
            self.tokenizer,
            max_prompt_tokens=max_total_tokens,  # openings are checked against the limit here
            chat_template=True,
            stop_token_ids=stop_token_ids,
            stop_strings=stop_strings,
        )
        self.eos_token_id, self.pad_token_id = self.codec.eos_token_id, self.codec.pad_token_id
        self.parse_tool_calls = tool_calls.tool_parser(tool_parser)
        self.tool_timeout_s = float(tool_timeout_s)
        self.max_prompt_tokens, self.max_new_tokens = int(max_prompt_tokens), int(max_new_tokens)
        self.max_turns = int(self.env_class.max_turns or max_turns)
        self.max_total_tokens = int(max_total_tokens)
        size = len(self.tokenizer)
        self.vocab_size = size if vocab_size is None else int(vocab_size)
        if self.vocab_size < size:
            raise ValueError(f"vocab_size ({self.vocab_size}) must be >= len(tokenizer) ({size})")
        self.action_space = spaces.Discrete(self.vocab_size)
        L = self.max_total_tokens
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, shape=(L,), dtype=np.int64),
                "length": spaces.Box(0, L, shape=(1,), dtype=np.int64),
            }
        )
        self.task: Environment | None = None
        self._over = True

    # ------------------------------------------------------------------ episode
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Builds the episode's environment from a prompt row (``options["prompt_index"]``,
        else one drawn at random) and renders its opening."""
        super().reset(seed=seed)
        options = options or {}
        index = options.get("prompt_index")
        index = int(self.np_random.integers(len(self.rows))) if index is None else int(index)
        if not 0 <= index < len(self.rows):
            raise ValueError(f"prompt_index {index} is out of range for {len(self.rows)} rows")
        self.task = self.env_class(dict(self.rows[index]))
        self.tools = {fn.__name__: fn for fn in self.task.tools}
        schemas = [tool_schema(fn) for fn in self.task.tools] or None
        self.turn_codec = TurnCodec(self.tokenizer, tools=schemas)
        self.history = as_messages(self.task.reset())
        self.ids = list(self.turn_codec.first(self.history))
        if len(self.ids) > self.max_prompt_tokens:
            raise ValueError(
                f"row {index}: the opening is {len(self.ids)} tokens, over "
                f"data.max_prompt_tokens={self.max_prompt_tokens}"
            )
        self.prompt_index, self.opening_len = index, len(self.ids)
        self.turn_start = len(self.ids)
        self.num_actions = 0
        self.inserts: list[tuple[int, list[int]]] = []
        self.stats: dict[str, float] = {
            "turns": 0.0,
            "tool_calls": 0.0,
            "tool_errors": 0.0,
            "tool_timeouts": 0.0,
            "truncated": 0.0,
        }
        self._over = False
        opening = self.codec.decode(self.ids)
        self._opening_text = opening
        info = {"prompt": opening, "prompt_index": index, "messages": list(self.history)}
        return self._observation(), info

    def step(self, action: int) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Appends one policy token; at the end of a turn, answers it (see module docstring)."""
        if self._over or self.task is None:
            raise RuntimeError("MultiTurnTextEnv.step() called before reset() or after the end")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in Discrete({self.vocab_size})")
        token = int(action)
        self.ids.append(token)
        self.num_actions += 1
        turn = self.ids[self.turn_start :]
        stop = token in self.codec.stop_token_ids
        text = None
        if not stop and self.codec.stop_strings:
            text = self._turn_text()
        ended = (
            stop
            or (text is not None and self.codec.stop_string_end(text) is not None)
            or len(turn) >= self.max_new_tokens
        )
        full = len(self.ids) >= self.max_total_tokens
        if not ended and not full:
            return self._observation(), 0.0, False, False, {}
        text = self._turn_text()
        self.history.append({"role": "assistant", "content": text})
        self.stats["turns"] += 1
        reply = self._answer(text)
        terminated, truncated = reply.done, False
        info: dict[str, Any] = {}
        if not terminated:
            if full or self.stats["turns"] >= self.max_turns:
                truncated = True
            else:
                new = as_messages(reply.messages)
                ids = self.turn_codec.reply(
                    self.history, new, ended_by_stop=token if stop else None
                )
                if len(self.ids) + len(ids) >= self.max_total_tokens:
                    truncated = True  # no room for the reply and a token of the next turn
                else:
                    self.ids.extend(ids)
                    self.inserts.append((self.num_actions - 1, list(ids)))
                    self.history.extend(new)
                    self.turn_start = len(self.ids)
                    info[REPLY_IDS] = np.asarray(ids, np.int64)
        if terminated or truncated:
            self._over = True
            self.stats["truncated"] = float(truncated)
            info.update(self._last_info(stop))
        return self._observation(), float(reply.reward), terminated, truncated, info

    # ------------------------------------------------------------------ helpers
    def _answer(self, text: str) -> Reply:
        """The environment's reply to a turn: the tools' results when it calls tools."""
        if self.task is None:
            raise RuntimeError("MultiTurnTextEnv: no episode (call reset() first)")
        calls = self.parse_tool_calls(text) if self.tools else []
        if not calls:
            reply = self.task.step(text)
            self.stats.update({k: float(v) for k, v in reply.info.items()})
            return reply
        messages = []
        for call in calls:
            result = call_tool(self.tools, call, timeout_s=self.tool_timeout_s)
            self.stats["tool_calls"] += 1
            self.stats["tool_errors"] += float(result.error)
            self.stats["tool_timeouts"] += float(result.timed_out)
            messages.append({"role": "tool", "content": result.content})
        return Reply(messages)

    def _turn_text(self) -> str:
        """The current turn's text, decoded in context (a stop token left out)."""
        context = self.ids[: self.turn_start]
        return self.codec.texts(context, self.ids[self.turn_start :])[1]

    def _last_info(self, stop: bool) -> dict[str, Any]:
        """What rewards and the learner read of a finished episode: the final answer as the
        completion, the whole conversation before it as the prompt."""
        final = self.history[-1]["content"]
        before = self.ids[: self.turn_start]
        return {
            "prompt_text": self.codec.decode(before),
            "completion": final,
            "messages": self.history[:-1],
            "reward_deferred": True,
            "stop_token": stop,
            INSERTS: [(i, list(ids)) for i, ids in self.inserts],
            EPISODE_STATS: dict(self.stats),
            "prompt_index": self.prompt_index,
        }

    def _observation(self) -> Observation:
        ids = np.full(self.max_total_tokens, self.pad_token_id, np.int64)
        ids[: len(self.ids)] = self.ids
        return {"input_ids": ids, "length": np.array([len(self.ids)], np.int64)}
