"""Multi-turn episodes, token in and token out: the ids to append after each policy turn.

In a multi-turn episode the policy writes a turn, the environment answers (a tool result, a
game state), the policy writes again. The sequence the policy is trained on must hold the ids
it *sampled*, verbatim: decoding them and encoding the text again can give other ids (another
BPE segmentation, a lost SentencePiece space), and the log-probabilities would then belong to
tokens the policy never chose. So the history is never re-tokenised; :class:`TurnCodec` only
computes the ids that come *between* two policy turns:

1. the assistant turn's closing tokens (``<|im_end|>\\n``, ``<end_of_turn>\\n``, ``</s>``),
   except what the policy sampled already (the closing through its stop token, which is
   as a rule the closing's first token), so that each closing appears exactly once (dropping or doubling it at every assistant -> tool
   boundary is the classic bug, e.g. verl PR #6921);
2. the environment's messages as the chat template renders them;
3. the generation prompt of the next assistant turn.

The texts come from the chat template itself: the reply is the part of
``render(history + new, add_generation_prompt=True)`` after ``render(history)``. That only
works when the template is *prefix-stable*: rendering a longer conversation must not change
what a shorter one rendered. Templates that drop earlier turns' reasoning (Qwen3's
``<think>`` blocks) or move the system prompt to the last user turn (Mistral v3) are not,
and :class:`TemplateNotPrefixStable` says so; it is checked on the real history at every turn.

Fragments are tokenized after an *anchor*, a special token: the tokenizer then treats them as
the full text does after a special token (no SentencePiece dummy prefix ``▁`` in front, no
BPE merge with what comes before), and the anchor's ids are dropped.

No Ray and no model here; ``transformers`` comes in only through the tokenizer object.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rayrm.models.tokenization import PromptCodec, require_chat_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TemplateNotPrefixStable", "TurnCodec"]

_PLACEHOLDER = "RAYRM-ASSISTANT-PLACEHOLDER"
"""Assistant content whose render shows where the content ends and the closing begins."""
_PROBE = " a\n b"
"""Text that checks an anchor: leading space and newline, as fragments have."""


class TemplateNotPrefixStable(ValueError):
    """The chat template renders the start of a conversation differently once it grows."""


class TurnCodec:
    """The ids of a multi-turn conversation's template parts, for one tokenizer and tool set.

    Args:
        tokenizer: The policy's tokenizer, with a chat template.
        tools: JSON schemas of the tools (``envs.tools.tool_schema``), passed to
            ``apply_chat_template(tools=...)`` at every render.

    Raises:
        ValueError: The tokenizer has no chat template or no EOS, or its template hides the
            assistant's content or its closing does not tokenize after a special token.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, tools: list[dict[str, Any]] | None = None
    ) -> None:
        require_chat_template(tokenizer, "the policy tokenizer")
        self.tokenizer = tokenizer
        self.tools = [dict(t) for t in tools] if tools else None
        self._prompts = PromptCodec(tokenizer, max_prompt_tokens=sys.maxsize, tools=self.tools)
        self._closing_text = self._find_closing_text()
        self._anchor_text, self._anchor_ids = self._find_anchor()
        self._closing_ids = self._encode_fragment(self._closing_text)

    @property
    def name(self) -> str:
        """The template's name in errors: the tokenizer's path and a hash of the template."""
        template = str(self.tokenizer.chat_template)
        digest = hashlib.sha256(template.encode("utf-8")).hexdigest()[:8]
        owner = self.tokenizer.name_or_path or type(self.tokenizer).__name__
        return f"the chat template of {owner} (sha256 {digest})"

    def first(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Ids of the opening conversation with the generation prompt: the prompt of turn 1.

        The same ids as :meth:`rayrm.models.tokenization.PromptCodec.encode` gives (not truncated).
        """
        return self._prompts.encode([dict(m) for m in messages])

    def closing_ids(self) -> list[int]:
        """The ids that close an assistant turn in the template (e.g. ``<|im_end|>``, ``\\n``)."""
        return list(self._closing_ids)

    def reply(
        self,
        history: Sequence[Mapping[str, Any]],
        new: Sequence[Mapping[str, Any]],
        *,
        ended_by_stop: int | None,
    ) -> list[int]:
        """Ids to append right after a policy turn's ids (see the module docstring).

        Args:
            history: The conversation so far, ending with the assistant message the policy
                just wrote (its content: the decoded text of its ids).
            new: The environment's messages (``tool`` or ``user``), one or more.
            ended_by_stop: The policy turn's last id when it is a stop token, else None (the
                turn ended on the length limit or a stop string): the closing is then
                appended in full. When the stop token is one of the closing's tokens (its
                first, as a rule), the closing is appended after it; a stop token that is
                not (``<|endoftext|>`` where the closing is ``<|im_end|>\\n``) is followed by
                the full closing.

        Returns:
            The rest of the assistant turn's closing, the new messages and the next
            assistant turn's generation prompt, as the template renders them.

        Raises:
            TemplateNotPrefixStable: Rendering ``history + new`` changes how ``history``
                renders.
            ValueError: ``history`` does not end with an assistant message, ``new`` is empty,
                or the history's render does not end with the template's closing.
        """
        if not history or history[-1].get("role") != "assistant":
            raise ValueError("history must end with the assistant message the policy just wrote")
        if not new:
            raise ValueError("new must hold the environment's messages (one or more)")
        before = self._render(history, add_generation_prompt=False)
        after = self._render([*history, *new], add_generation_prompt=True)
        if not after.startswith(before):
            at = len(os.path.commonprefix([before, after]))
            raise TemplateNotPrefixStable(
                f"{self.name} is not prefix-stable: rendering the conversation after a turn "
                "changes what came before (e.g. it drops earlier turns' reasoning or moves the "
                "system prompt), so token-in/token-out cannot extend it; at character "
                f"{at}, {before[at : at + 40]!r} became {after[at : at + 40]!r}"
            )
        if not before.endswith(self._closing_text):
            raise ValueError(
                f"{self.name} does not end the conversation's last assistant turn with its "
                f"closing {self._closing_text!r} (the render ends {before[-40:]!r})"
            )
        ids = self._encode_fragment(self._closing_text + after[len(before) :])
        closing = self._closing_ids
        if ended_by_stop in closing and ids[: len(closing)] == closing:
            # The policy sampled the closing through its stop token already: usually the
            # closing's first token; Llama-2's " </s>" has a space the policy wrote no token for.
            ids = ids[closing.index(ended_by_stop) + 1 :]
        return ids

    # ------------------------------------------------------------------ internals
    def _render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool) -> str:
        tools: list[dict[Any, Any] | Callable[..., Any]] | None = (
            list(self.tools) if self.tools else None
        )
        return str(
            self.tokenizer.apply_chat_template(
                [dict(m) for m in messages],
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        )

    def _find_closing_text(self) -> str:
        """What the template writes after an assistant message's content."""
        messages = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": _PLACEHOLDER},
        ]
        text = self._render(messages, add_generation_prompt=False)
        at = text.rfind(_PLACEHOLDER)
        if at < 0:
            raise ValueError(
                f"{self.name} does not write an assistant message's content verbatim, so the "
                "ids that close a turn cannot be found"
            )
        return text[at + len(_PLACEHOLDER) :]

    def _find_anchor(self) -> tuple[str, list[int]]:
        """Ids of a special token after which fragments tokenize as inside the full text.

        Candidates: the special tokens in the closing, then EOS, BOS, the other specials. One
        qualifies when it encodes to itself alone, strips no whitespace next to it, and its
        ids stay a prefix when text follows.
        """
        tok = self.tokenizer
        specials = set(tok.all_special_ids)
        closing = tok(self._closing_text, add_special_tokens=False)["input_ids"]
        candidates = [i for i in closing if i in specials]
        candidates += [i for i in (tok.eos_token_id, tok.bos_token_id) if i is not None]
        candidates += list(tok.all_special_ids)
        added = tok.added_tokens_decoder
        for token_id in dict.fromkeys(int(i) for i in candidates):
            spec = added.get(token_id)
            if spec is None or spec.lstrip or spec.rstrip:
                continue
            anchor = list(tok(spec.content, add_special_tokens=False)["input_ids"])
            probe = list(tok(spec.content + _PROBE, add_special_tokens=False)["input_ids"])
            if anchor == [token_id] and probe[:1] == anchor:
                return str(spec.content), anchor
        raise ValueError(
            f"{self.name}: no special token of the tokenizer encodes to itself without "
            "stripping the text next to it, so template fragments cannot be tokenized as in "
            "the full text"
        )

    def _encode_fragment(self, text: str) -> list[int]:
        """Ids of ``text`` as it tokenizes after a special token inside a longer text."""
        if not text:
            return []
        ids = list(self.tokenizer(self._anchor_text + text, add_special_tokens=False)["input_ids"])
        n = len(self._anchor_ids)
        if ids[:n] != self._anchor_ids:
            raise ValueError(
                f"{self.name}: the anchor {self._anchor_text!r} merged with the fragment "
                f"{text[:40]!r}, so its ids cannot be cut off"
            )
        return [int(i) for i in ids[n:]]
