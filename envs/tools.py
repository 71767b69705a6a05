"""Tools a policy calls in a multi-turn episode: schemas, call parsers, safe calls.

* :func:`tool_schema`: the JSON schema of a typed Python function with a Google-style
  docstring, as chat templates list tools (``apply_chat_template(tools=...)``).
* Tool-call parsers, registered by name (:func:`register_tool_parser`, :func:`tool_parser`):
  a parser reads the calls out of an assistant turn's text. ``hermes`` (Qwen2.5, Hermes)
  ships here; :func:`render_tool_calls` writes that format (SFT traces).
* :func:`call_tool`: runs one call with a time limit and turns every failure (unknown tool,
  bad arguments, an exception, a timeout, a malformed call) into a :class:`ToolResult` the
  policy reads, never an exception that ends the episode.

No Ray and no model here; ``transformers`` is imported only by :func:`tool_schema`.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ToolCall",
    "ToolParser",
    "ToolResult",
    "call_tool",
    "register_tool_parser",
    "render_tool_calls",
    "tool_parser",
    "tool_parsers",
    "tool_schema",
]


@dataclass(frozen=True)
class ToolCall:
    """One tool call read from an assistant turn.

    Attributes:
        name: The tool's name ("" when the call has none).
        arguments: Keyword arguments of the call.
        error: Why the call is malformed (bad JSON, no name), else None.
        raw: The call's text as the policy wrote it.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw: str = ""


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gave the policy to read.

    Attributes:
        content: The tool's return value as text, or a short error text (``"error: ..."``).
        error: The call failed (unknown tool, bad arguments, an exception, malformed, timed
            out).
        timed_out: The tool ran longer than its time limit.
    """

    content: str
    error: bool = False
    timed_out: bool = False


ToolParser = Callable[[str], list[ToolCall]]
"""Reads the tool calls out of an assistant turn's text, in order."""

_PARSERS: dict[str, ToolParser] = {}


def register_tool_parser(name: str) -> Callable[[ToolParser], ToolParser]:
    """Registers a tool-call parser under ``name`` (a decorator)."""

    def register(fn: ToolParser) -> ToolParser:
        if name in _PARSERS and _PARSERS[name] is not fn:
            raise ValueError(f"a tool parser named {name!r} is registered already")
        _PARSERS[name] = fn
        return fn

    return register


def tool_parser(name: str) -> ToolParser:
    """The tool-call parser registered under ``name``."""
    try:
        return _PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool parser {name!r}; registered: {sorted(_PARSERS)}") from None


def tool_parsers() -> list[str]:
    """Names of the registered tool-call parsers."""
    return sorted(_PARSERS)


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of ``fn`` as chat templates list tools.

    ``fn`` needs type hints on every argument and a Google-style docstring describing each
    (``Args:``); this is ``transformers.utils.get_json_schema``, which
    ``apply_chat_template`` uses for functions passed as tools (defined in
    ``transformers.utils.chat_template_utils``).

    Raises:
        ValueError: Naming ``fn``, when its signature or docstring cannot be described.
    """
    from transformers.utils.chat_template_utils import get_json_schema

    try:
        return dict(get_json_schema(fn))
    except Exception as e:  # transformers raises its own exception types here
        name = getattr(fn, "__qualname__", repr(fn))
        raise ValueError(f"tool {name}: cannot describe it as a JSON schema: {e}") from e


# ---------------------------------------------------------------------- hermes
_HERMES_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


@register_tool_parser("hermes")
def parse_hermes(text: str) -> list[ToolCall]:
    """Calls written as Qwen2.5 and Hermes models write them, several per turn::

        <tool_call>
        {"name": "add", "arguments": {"a": 1, "b": 2}}
        </tool_call>

    A call with bad JSON, no name, or no closing tag (the turn was cut) is returned with
    ``error`` set. ``arguments`` may also be a JSON string of an object.
    """
    calls = []
    for match in _HERMES_CALL.finditer(text):
        raw, body = match.group(0), match.group(1).strip()
        if not match.group(2):
            calls.append(ToolCall("", error="a <tool_call> without </tool_call>", raw=raw))
            continue
        calls.append(_hermes_call(body, raw))
    return calls


def _hermes_call(body: str, raw: str) -> ToolCall:
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall("", error=f"the tool call is not JSON ({e})", raw=raw)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return ToolCall("", error='the tool call has no "name"', raw=raw)
    name, arguments = value["name"], value.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            return ToolCall(name, error=f"the arguments of {name!r} are not JSON ({e})", raw=raw)
    if not isinstance(arguments, dict):
        return ToolCall(name, error=f'the "arguments" of {name!r} are not an object', raw=raw)
    return ToolCall(name, arguments, raw=raw)


def render_tool_calls(calls: Iterable[ToolCall]) -> str:
    """The calls as ``hermes`` text (what :func:`parse_hermes` reads back), one block each,
    separated by newlines: for assistant turns of SFT traces."""
    blocks = []
    for call in calls:
        body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        blocks.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(blocks)


# ---------------------------------------------------------------------- calls
def call_tool(
    tools: dict[str, Callable[..., Any]], call: ToolCall, *, timeout_s: float
) -> ToolResult:
    """Runs ``call`` with ``tools[call.name]``, at most ``timeout_s`` seconds.

    The tool runs in a daemon thread. Python cannot stop a thread, so a tool that overruns
    is *abandoned*: it runs on in the background until it returns (its result is dropped)
    and does not keep the process from exiting. Tools that can hang for good should time
    out on their own (a socket timeout, a subprocess with ``timeout=``).

    Returns:
        The return value as text (a ``str`` as is; dicts and lists as JSON; else ``str()``),
        or an error result whose content is a short ``"error: ..."`` text.
    """
    if call.error is not None:
        return ToolResult(f"error: {call.error}", error=True)
    fn = tools.get(call.name)
    if fn is None:
        return ToolResult(
            f"error: unknown tool {call.name!r} (tools: {', '.join(sorted(tools))})", error=True
        )
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as e:
        return ToolResult(f"error: bad arguments for tool {call.name!r}: {e}", error=True)
    except ValueError:  # no signature (some builtins): let the call itself say
        pass

    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, fn(**call.arguments)))
        except BaseException as e:  # reported to the policy, not raised in a stray thread
            outcome.append((False, e))

    thread = threading.Thread(target=run, name=f"tool-{call.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return ToolResult(
            f"error: tool {call.name!r} timed out after {timeout_s:.1f} s",
            error=True,
            timed_out=True,
        )
    ok, value = outcome[0]
    if not ok:
        return ToolResult(f"error: {type(value).__name__}: {value}", error=True)
    return ToolResult(_as_text(value))


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
