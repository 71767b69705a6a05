"""The token-level RLHF environment: state = prompt + tokens so far, action = next token.

This module holds the Gymnasium environment that RLlib's EnvRunners step, plus the small
resolvers that turn its plain ``env_config`` values (paths, ``"module:function"`` strings) into
a tokenizer, a prompt list and a reward function. It imports no Ray and loads no model;
``transformers`` is imported only when a tokenizer path has to be loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.builtin import BUILTIN_PROMPTS, build_char_tokenizer, vowel_reward
from rayrm.data.prompts import load_prompt_rows, other_columns
from rayrm.models.tokenization import Prompt, PromptCodec, check_conversation
from rayrm.resolver import import_function

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
"""Batched reward: (prompts, completions) -> one float per pair, in order."""

Observation = dict[str, np.ndarray]


class TextGenerationEnv(gym.Env[Observation, int]):
    """Generates one completion per episode, one token per step, paid once at the end.

    Each episode samples a prompt, tokenizes it once (special tokens and chat templates as in
    ``rayrm.models.tokenization``) and then appends one token per step.
    The observation is the whole sequence so far (prompt tokens, then generated tokens,
    right-padded with the pad id) and its length, so a policy can run a causal LM over it and
    read the logits at position ``length - 1``.

    The episode ends at a stop token or stop string (``terminated``) or after
    ``max_new_tokens`` tokens (``truncated``
    -- Gymnasium's time-limit signal). Because the sequence-level reward is paid in full at
    that last step, there is nothing left to bootstrap: rayrm's advantage estimation treats the
    end of a completion as terminal in both cases (V(s_{T+1}) = 0), and the truncated flag is
    informational. Every earlier step pays 0.0.

    With ``reward_fn=None`` the reward is deferred: the last step pays 0.0 and sets
    ``info["reward_deferred"] = True``, because the trainer scores finished completions in
    batches through reward-model actors and writes the score into the episode's last step.

    All constructor arguments are keyword-only plain values, because RLlib passes
    ``env_config`` as keyword arguments to ``gymnasium.make``.

    Args:
        tokenizer: ``None`` for the built-in character tokenizer, a path for
            ``AutoTokenizer.from_pretrained``, or a tokenizer object. Must define an EOS token;
            the pad id falls back to the EOS id.
        prompts: ``None`` for ``BUILTIN_PROMPTS``, a ``.parquet``/``.jsonl`` path for
            ``load_prompt_rows``, or a list of prompts: strings, or conversations (lists of
            ``{"role", "content"}`` messages) rendered with the tokenizer's chat template.
        prompt_column: Column holding the prompts when ``prompts`` is a path.
        messages_column: Column holding conversations, read when the file has no
            ``prompt_column``.
        chat_template: Render plain prompts as a user turn with the chat template too.
        reference_column: Column holding one reference text per prompt (for reference-based
            rewards such as chrF) when ``prompts`` is a path; used only if the file has it.
            Each episode's reference is then in ``info["reference"]`` (reset and every step),
            and the row's other columns, as a dict, in ``info["columns"]``.
        reward_fn: ``"builtin"`` (``vowel_reward``), a ``"module:function"`` string, a callable
            with the batched reward signature, or ``None`` for a deferred reward.
        max_prompt_tokens: Prompts longer than this keep their BOS and their last tokens
            (left truncation keeps the text nearest to the completion).
        max_new_tokens: Completion length limit; reaching it truncates the episode.
        stop_token_ids: Token ids besides the tokenizer's EOS that end (terminate) an episode,
            e.g. every id of the model's ``generation_config.eos_token_id``.
        stop_strings: Texts that end an episode once the completion contains them.
        vocab_size: Size of the action space; defaults to ``len(tokenizer)``. May be larger,
            since a model's embedding matrix is often padded beyond the tokenizer.
        render_mode: ``None`` or ``"ansi"`` (``render()`` returns prompt + completion text).

    Raises:
        ValueError: On a tokenizer without EOS, an unusable ``reward_fn``, non-positive
            lengths, ``vocab_size < len(tokenizer)`` or an unknown render mode.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        *,
        tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None = None,
        prompts: str | os.PathLike[str] | Sequence[Prompt] | None = None,
        prompt_column: str = "prompt",
        reference_column: str | None = "reference",
        messages_column: str | None = "messages",
        chat_template: bool = False,
        reward_fn: RewardFn | str | None = "builtin",
        max_prompt_tokens: int = 32,
        max_new_tokens: int = 16,
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        vocab_size: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if max_prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError(
                f"max_prompt_tokens ({max_prompt_tokens}) and max_new_tokens ({max_new_tokens}) "
                "must both be at least 1"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; use None or one of "
                f"{self.metadata['render_modes']}"
            )
        self.render_mode = render_mode
        self.tokenizer = resolve_tokenizer(tokenizer)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no eos_token_id; TextGenerationEnv needs EOS to end episodes"
            )
        self.codec = PromptCodec(
            self.tokenizer,
            max_prompt_tokens=max_prompt_tokens,
            chat_template=chat_template,
            stop_token_ids=stop_token_ids,
            stop_strings=stop_strings,
        )
        self.eos_token_id = self.codec.eos_token_id
        self.pad_token_id = self.codec.pad_token_id
        self.prompts, self.references = resolve_prompts_and_references(
            prompts, prompt_column, reference_column, messages_column
        )
        # The file's other columns, for reward functions that take them (none for a list).
        self.columns = (
            other_columns(prompts, (prompt_column, reference_column, messages_column))
            if isinstance(prompts, str | os.PathLike)
            else None
        )
        self.reward_fn = resolve_reward_fn(reward_fn)
        self.reward_deferred = self.reward_fn is None

        tokenizer_size = len(self.tokenizer)
        self.vocab_size = tokenizer_size if vocab_size is None else int(vocab_size)
        if self.vocab_size < tokenizer_size:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) must be >= len(tokenizer) ({tokenizer_size}): "
                "every token id must be a valid action"
            )
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.max_new_tokens = int(max_new_tokens)
        self.max_seq_len = self.max_prompt_tokens + self.max_new_tokens

        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(
                    0, self.vocab_size - 1, shape=(self.max_seq_len,), dtype=np.int64
                ),
                "length": spaces.Box(0, self.max_seq_len, shape=(1,), dtype=np.int64),
            }
        )

        self._init_episode_state()

    def _init_episode_state(self) -> None:
        """Episode state: reset() fills it, step() only appends."""
        self._input_ids = np.full(self.max_seq_len, self.pad_token_id, dtype=np.int64)  # (L,)
        self._length = 0
        self._prompt_ids: list[int] = []
        self._generated: list[int] = []
        self._prompt = ""
        self._messages: list[dict[str, str]] | None = None
        self._prompt_index = -1
        self._reference: str | None = None
        self._columns: dict[str, Any] | None = None
        self._prompt_text = self._decoded_prompt = ""
        self._completion = ""
        self._has_reset = False
        self._episode_over = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Starts an episode on a sampled prompt, or on one chosen through ``options``.

        Args:
            seed: Seeds ``self.np_random``, which picks the prompts.
            options: Optional ``{"prompt": text}`` (any string; ``prompt_index`` is then -1;
                an optional ``"reference"`` text goes with it) or ``{"prompt_index": i}`` (an
                index into ``self.prompts``), not both.

        Returns:
            The observation and ``{"prompt": text, "prompt_index": int}``, plus ``"reference"``
            when the prompt has one and ``"columns"`` when its file row has other columns.
        """
        super().reset(seed=seed)
        options = options or {}
        prompt, self._prompt_index = self._choose_prompt(options)
        self._reference = options.get("reference")
        if self._reference is None and self.references is not None and self._prompt_index >= 0:
            self._reference = self.references[self._prompt_index]
        self._columns = None
        if self.columns is not None and self._prompt_index >= 0:
            self._columns = self.columns[self._prompt_index]
        self._messages = self.codec.conversation(prompt)
        self._prompt = prompt if isinstance(prompt, str) else self.codec.render(prompt)
        prompt_ids = self.codec.encode(prompt)
        self._input_ids.fill(self.pad_token_id)
        self._input_ids[: len(prompt_ids)] = prompt_ids
        self._length = len(prompt_ids)
        self._prompt_ids = prompt_ids
        self._decoded_prompt = self._prompt_text = self.codec.decode(prompt_ids)
        self._generated = []
        self._completion = ""
        self._has_reset = True
        self._episode_over = False
        info: dict[str, Any] = {"prompt": self._prompt, "prompt_index": self._prompt_index}
        if self._messages is not None:
            info["messages"] = self._messages
        if self._reference is not None:
            info["reference"] = self._reference
        if self._columns is not None:
            info["columns"] = self._columns
        return self._observation(), info

    def step(self, action: int) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Appends one token; pays the sequence reward if this token ends the completion.

        Args:
            action: The next token id, in ``[0, vocab_size)``.

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``info`` holds ``prompt`` and
            ``num_generated``; on the last step also ``completion`` (the generated text:
            prompt and completion decoded together -- once per episode, unless stop strings
            are looked for every step -- and split at the prompt, without the stop token,
            special tokens skipped), ``prompt_text`` (the decoded prompt, the text rewards
            read), ``reward_deferred`` and ``stop_token`` (whether a stop token, which the
            text leaves out, ended it; false for a stop string or the length limit);
            ``messages`` for a conversation and ``reference`` when the prompt has one.

        Raises:
            RuntimeError: If called before ``reset`` or after the episode ended.
            ValueError: If ``action`` is not in the action space.
        """
        if not self._has_reset:
            raise RuntimeError("TextGenerationEnv.step() called before reset()")
        if self._episode_over:
            raise RuntimeError(
                "TextGenerationEnv.step() called after the episode ended "
                "(terminated or truncated); call reset() first"
            )
        if not self.action_space.contains(action):
            raise ValueError(
                f"action {action!r} is not in the action space Discrete({self.vocab_size})"
            )
        token = int(action)
        self._input_ids[self._length] = token
        self._length += 1
        self._generated.append(token)

        # The text is decoded once, when the completion ends -- or every step when stop strings
        # must be looked for in it. Prompt and completion are decoded together: token by token
        # would break multi-token characters, and the completion alone would lose
        # SentencePiece's leading space (see rayrm.models.tokenization).
        stop_token = terminated = token in self.codec.stop_token_ids
        decoded = False
        if not terminated and self.codec.stop_strings:
            self._decode()
            decoded = True
            terminated = self.codec.stop_string_end(self._completion) is not None
        truncated = not terminated and len(self._generated) >= self.max_new_tokens
        self._episode_over = terminated or truncated
        if self._episode_over and not decoded:
            self._decode()

        info: dict[str, Any] = {"prompt": self._prompt, "num_generated": len(self._generated)}
        if self._episode_over:
            info["completion"] = self._completion
        if self._messages is not None:
            info["messages"] = self._messages
        if self._reference is not None:
            info["reference"] = self._reference
        if self._columns is not None:
            info["columns"] = self._columns
        reward = 0.0
        if self._episode_over:
            # The texts rewards read: what the whole sequence decodes to, split at the prompt.
            info["prompt_text"] = self._prompt_text
            info["reward_deferred"] = self.reward_deferred
            info["stop_token"] = stop_token  # the last token is not in the text
            if self.reward_fn is not None:
                reward = float(self.reward_fn([self._prompt_text], [self._completion])[0])
        return self._observation(), reward, terminated, truncated, info

    def render(self) -> str | None:  # type: ignore[override]  # ansi frames are str
        """Returns prompt + completion text in ``"ansi"`` mode, else nothing."""
        if self.render_mode == "ansi":
            self._decode()
            return self._prompt_text + self._completion
        return None

    def _decode(self) -> None:
        """The prompt and completion texts of the tokens so far."""
        self._prompt_text, self._completion = self.codec.texts(
            self._prompt_ids, self._generated, prompt_text=self._decoded_prompt
        )

    def _choose_prompt(self, options: dict[str, Any]) -> tuple[Prompt, int]:
        """Picks the episode's prompt text and index (-1 for a prompt given as text)."""
        if "prompt" in options and "prompt_index" in options:
            raise ValueError("reset options may hold 'prompt' or 'prompt_index', not both")
        if "prompt" in options:
            prompt = options["prompt"]
            if not isinstance(prompt, str):
                prompt = check_conversation(prompt, "options['prompt']")
            return prompt, -1
        if "prompt_index" in options:
            index = int(options["prompt_index"])
            if not 0 <= index < len(self.prompts):
                raise ValueError(
                    f"options['prompt_index'] = {index} is out of range for "
                    f"{len(self.prompts)} prompts"
                )
        else:
            index = int(self.np_random.integers(len(self.prompts)))
        return self.prompts[index], index

    def _observation(self) -> Observation:
        """Copies the state so that callers may keep observations across steps."""
        return {
            "input_ids": self._input_ids.copy(),  # (L,)
            "length": np.array([self._length], dtype=np.int64),  # (1,)
        }


def resolve_tokenizer(
    tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None,
) -> PreTrainedTokenizerBase:
    """Returns the built-in char tokenizer for None, loads a path, passes objects through."""
    if tokenizer is None:
        return build_char_tokenizer()
    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    return tokenizer


def resolve_prompts(
    prompts: str | os.PathLike[str] | Sequence[Prompt] | None,
    column: str = "prompt",
    messages_column: str | None = "messages",
) -> list[Prompt]:
    """Returns ``BUILTIN_PROMPTS`` for None, reads a path, validates an in-memory list.

    Each prompt is a string or a conversation (a list of ``{"role", "content"}`` messages).
    """
    if prompts is None:
        return list(BUILTIN_PROMPTS)
    if isinstance(prompts, str | os.PathLike):
        return load_prompt_rows(prompts, column, None, messages_column)[0]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is an empty list; give at least one prompt")
    return [
        p if isinstance(p, str) else check_conversation(p, f"prompts[{i}]")
        for i, p in enumerate(prompts)
    ]


def resolve_prompts_and_references(
    prompts: str | os.PathLike[str] | Sequence[Prompt] | None,
    column: str = "prompt",
    reference_column: str | None = "reference",
    messages_column: str | None = "messages",
) -> tuple[list[Prompt], list[str] | None]:
    """``resolve_prompts`` plus the file's reference column (None if absent or not a file)."""
    if isinstance(prompts, str | os.PathLike):
        return load_prompt_rows(prompts, column, reference_column, messages_column)
    return resolve_prompts(prompts, column, messages_column), None


def resolve_reward_fn(spec: RewardFn | str | None) -> RewardFn | None:
    """Turns a reward spec into a batched reward function (None means deferred).

    Args:
        spec: ``"builtin"`` for ``vowel_reward``; ``"module:function"`` (the attribute may be
            dotted, e.g. ``"pkg.mod:Class.method"``); a callable; or ``None``.

    Returns:
        The callable, or ``None`` when scoring is deferred to the trainer.

    Raises:
        ValueError: If the spec is malformed, cannot be imported, or is not callable.
    """
    if spec is None or callable(spec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(
            f"reward_fn must be 'builtin', 'module:function', a callable or None; got {spec!r}"
        )
    if spec == "builtin":
        return vowel_reward
    if ":" not in spec:
        raise ValueError(f"reward_fn {spec!r} must be 'builtin' or of the form 'module:function'")
    try:
        return import_function(spec)
    except ValueError as exc:
        raise ValueError(f"reward_fn {exc}") from exc
