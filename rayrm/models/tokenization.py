"""Prompts to tokens and tokens to the texts that rewards read: one rule, used everywhere.

Every place that turns a prompt into token ids (the environment, held-out evaluation,
``rayrm generate``, ``rayrm explain``, ``rayrm data pairs``, the report) and every place that
turns sampled ids back into text goes through :class:`PromptCodec`, so the policy, the reward
sources and the tools see the same thing:

* **Special tokens as the model was trained.** A plain prompt is encoded the way the tokenizer
  adds special tokens by default (``<s>``/``<bos>`` for Llama, Mistral and Gemma; nothing for
  GPT-2 and Qwen), except tokens the tokenizer would append *after* the text (an EOS): a
  completion must not start after an end-of-sequence. A conversation (a list of
  ``{"role", "content"}`` messages) is rendered with the tokenizer's chat template and the
  generation prompt, then encoded without adding anything (the template holds its own BOS).
* **Left truncation keeps the BOS.** A prompt longer than ``max_prompt_tokens`` keeps its
  leading BOS and the last tokens of the text, nearest to the completion.
* **Exact text.** SentencePiece-style decoders (Metaspace: Llama-2, Mistral, Gemma) strip the
  leading space of the first token of a string, so decoding a completion on its own loses the
  space the policy wrote (``"the cat said" + "hello"``). :meth:`PromptCodec.texts` decodes
  prompt and completion ids *together* and splits the result at the prompt's boundary: the
  prompt text plus the completion text is exactly what the whole sequence decodes to.
* **Stop tokens and stop strings.** Any id of :attr:`PromptCodec.stop_token_ids` ends a
  completion (the tokenizer's EOS, the model's ``generation_config.eos_token_id`` list and
  configured ids); the stop token is the last action and is not part of the text. A stop
  string ends it once the completion text contains it; the text keeps the stop string and
  drops whatever the last token added after it.

No Ray and no model here; ``transformers`` comes in only through the tokenizer object.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
Conversation = list[Message]
Prompt = str | Conversation
"""A plain prompt string, or a conversation rendered with the tokenizer's chat template."""

ROLES = ("system", "user", "assistant", "tool")


class PromptCodec:
    """Encodes prompts and splits decoded sequences for one tokenizer (see module docstring).

    Args:
        tokenizer: The policy's tokenizer. Needs an EOS token.
        max_prompt_tokens: Longer prompts are cut from the left (the BOS is kept).
        chat_template: Render plain prompts as a one-message user conversation with the
            tokenizer's chat template (conversations are always rendered with it).
        stop_token_ids: Ids besides the tokenizer's EOS that end a completion.
        stop_strings: Texts that end a completion once it contains them.
        tools: JSON schemas of the tools the policy may call (``envs.tools.tool_schema``),
            passed to the chat template (``apply_chat_template(tools=...)``) with every
            conversation.

    Raises:
        ValueError: The tokenizer has no EOS, ``max_prompt_tokens < 1``, or chat rendering is
            asked of a tokenizer without a chat template.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_prompt_tokens: int,
        chat_template: bool = False,
        stop_token_ids: Iterable[int] = (),
        stop_strings: Iterable[str] = (),
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id; a completion needs EOS to end")
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        self.tokenizer = tokenizer
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.chat_template = bool(chat_template)
        if self.chat_template:
            require_chat_template(tokenizer, "the policy tokenizer")
        self.eos_token_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_token_id = self.eos_token_id if pad is None else int(pad)
        bos = tokenizer.bos_token_id
        self.bos_token_id = None if bos is None else int(bos)
        self.stop_token_ids = frozenset({self.eos_token_id, *(int(i) for i in stop_token_ids)})
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.tools: list[dict[Any, Any] | Callable[..., Any]] | None = (
            [dict(t) for t in tools] if tools else None
        )
        self._num_appended = _num_appended_special_tokens(tokenizer)

    # ------------------------------------------------------------------ prompts
    def conversation(self, prompt: Prompt) -> Conversation | None:
        """The messages of a chat prompt (a plain prompt wrapped as a user turn when
        ``chat_template``), or None for a plain prompt."""
        if isinstance(prompt, str):
            return [{"role": "user", "content": prompt}] if self.chat_template else None
        return list(prompt)

    def render(self, prompt: Prompt) -> str:
        """The prompt as text: the string itself, or the chat template's rendering."""
        messages = self.conversation(prompt)
        if messages is None:
            return str(prompt)
        require_chat_template(self.tokenizer, "the policy tokenizer")
        return str(
            self.tokenizer.apply_chat_template(
                messages, tools=self.tools, add_generation_prompt=True, tokenize=False
            )
        )

    def encode(self, prompt: Prompt) -> list[int]:
        """Prompt token ids, special tokens as the model was trained, cut to the limit."""
        if self.conversation(prompt) is None:
            ids = list(self.tokenizer(str(prompt))["input_ids"])
            if self._num_appended:
                ids = ids[: len(ids) - self._num_appended]
        else:
            ids = list(self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"])
        if len(ids) > self.max_prompt_tokens:
            head = ids[:1] if self.bos_token_id is not None and ids[0] == self.bos_token_id else []
            ids = head + ids[len(ids) - (self.max_prompt_tokens - len(head)) :]
        if not ids:
            # The LM needs at least one token to condition its first prediction on.
            ids = [self.bos_token_id if self.bos_token_id is not None else self.eos_token_id]
        return [int(i) for i in ids]

    # ------------------------------------------------------------------ completions
    def completion_ids(self, generated: Sequence[int]) -> list[int]:
        """The generated ids that are text: a final stop token is not."""
        ids = [int(i) for i in generated]
        if ids and ids[-1] in self.stop_token_ids:
            ids.pop()
        return ids

    def encode_completion(self, prompt_ids: Sequence[int], completion_text: str) -> list[int]:
        """Token ids of a completion text that follows ``prompt_ids`` (e.g. to score a given
        completion), tokenized in context so that a SentencePiece word marker or a byte-level
        space stays on its first token; the text alone when the context does not reproduce the
        prompt's ids."""
        prompt_ids = [int(i) for i in prompt_ids]
        for skip in (True, False):
            context = str(self.tokenizer.decode(prompt_ids, skip_special_tokens=skip))
            full = list(self.tokenizer(context + completion_text)["input_ids"])
            full = full[: len(full) - self._num_appended] if self._num_appended else full
            if full[: len(prompt_ids)] == prompt_ids:
                return full[len(prompt_ids) :]
        return list(self.tokenizer(completion_text, add_special_tokens=False)["input_ids"])

    def texts(
        self,
        prompt_ids: Sequence[int],
        generated: Sequence[int],
        *,
        prompt_text: str | None = None,
    ) -> tuple[str, str]:
        """``(prompt_text, completion_text)`` of a sequence, decoded together and split.

        ``prompt_text + completion_text == decode(prompt_ids + completion_ids)`` (special
        tokens skipped), up to a stop string's tail (see the module docstring).

        Args:
            prompt_ids, generated: The prompt's ids and the sampled ids (a final stop token
                included or not).
            prompt_text: ``decode(prompt_ids)`` when the caller has it already.
        """
        prompt_ids = [int(i) for i in prompt_ids]
        if prompt_text is None:
            prompt_text = self.decode(prompt_ids)
        completion = self.completion_ids(generated)
        if not completion:
            return prompt_text, ""
        full = self.decode(prompt_ids + completion)
        # Normally the decoded prompt is a prefix of the whole; a decoder that rewrites text
        # across the boundary (clean-up of " 's") moves the split to where they agree.
        cut = len(os.path.commonprefix([prompt_text, full]))
        completion_text = full[cut:]
        end = self.stop_string_end(completion_text)
        if end is not None:
            completion_text = completion_text[:end]
        return full[:cut], completion_text

    def stop_string_end(self, completion_text: str) -> int | None:
        """Where the first stop string in the text ends, or None."""
        ends = [i + len(s) for s in self.stop_strings if (i := completion_text.find(s)) >= 0]
        return min(ends) if ends else None

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens skipped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


def require_chat_template(tokenizer: Any, what: str) -> None:
    """Raises a one-line ValueError when ``tokenizer`` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{what} has no chat template, but the prompts are conversations "
            "(a messages column, or data.chat_template: true)"
        )


def _num_appended_special_tokens(tokenizer: Any) -> int:
    """How many special tokens the tokenizer appends after a text by default (e.g. an EOS)."""
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return len(full) - start - len(plain)
    return 0


def check_conversation(value: Any, where: str) -> Conversation:
    """Validates a conversation read from a file: a non-empty list of role/content strings.

    Raises:
        ValueError: One line naming ``where`` (file, column, row) and what is wrong.
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {value!r}")
    out: Conversation = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValueError(f"{where}, message {i}: expected a mapping, got {message!r}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(
                f"{where}, message {i}: needs string 'role' and 'content' (got {message!r})"
            )
        out.append({"role": role, "content": content})
    return out
