"""Multi-turn episodes token in / token out (rayrm.models.turns) and tool calls (envs.tools).

No Ray and no model: a "policy" turn is the ids of a text plus a stop id, and the episode
built turn by turn must equal, token for token, the tokenization of the whole conversation's
render.
"""

from __future__ import annotations

import copy
import threading
import time

import pytest

from envs.tools import (
    ToolCall,
    call_tool,
    parse_hermes,
    render_tool_calls,
    tool_parser,
    tool_schema,
)
from rayrm.models.tiny import build_tokenizer
from rayrm.models.tokenization import PromptCodec
from rayrm.models.turns import TemplateNotPrefixStable, TurnCodec

KINDS = ("qwen2", "llama", "gemma")
STOP = {"qwen2": "<|im_end|>", "llama": "</s>", "gemma": "<end_of_turn>"}
"""The stop token each kind's policy ends a turn with: the first token of its closing."""


def add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: The first summand.
        b: The second summand.
    """
    return a + b


TOOLS = {"add": add}


@pytest.fixture(scope="module")
def toks() -> dict:
    return {kind: build_tokenizer(kind) for kind in KINDS}


def opening(kind: str) -> list[dict]:
    user = {"role": "user", "content": "what is 2+2 plus 3+4?"}
    if kind == "gemma":  # Gemma refuses a system role
        return [user]
    return [{"role": "system", "content": "be brief"}, user]


def tool_messages(text: str) -> list[dict]:
    """The environment's answer to a policy turn: one tool message per call it wrote."""
    calls = tool_parser("hermes")(text)
    return [{"role": "tool", "content": call_tool(TOOLS, c, timeout_s=5).content} for c in calls]


POLICY_TURNS = [
    render_tool_calls([ToolCall("add", {"a": 2, "b": 2}), ToolCall("add", {"a": 3, "b": 4})]),
    render_tool_calls([ToolCall("add", {"a": 4, "b": 7})]),
    "2+2 plus 3+4 is 11.",
]


def run_episode(tok, codec: TurnCodec, kind: str, stop: int | None):
    """Builds an episode incrementally: (ids, messages, where each closing starts)."""
    messages = opening(kind)
    ids = codec.first(messages)
    boundaries = []
    for text in POLICY_TURNS:
        policy = tok.encode(text, add_special_tokens=False)
        content = tok.decode(policy, skip_special_tokens=True)
        assert content == text
        ids += policy + ([stop] if stop is not None else [])
        messages.append({"role": "assistant", "content": content})
        new = tool_messages(text)
        if new:
            boundaries.append(len(ids) - (stop is not None))  # the closing starts here
            ids += codec.reply(messages, new, ended_by_stop=stop)
            messages += new
    return ids, messages, boundaries


@pytest.mark.parametrize("ended", ["stop", "length"])
@pytest.mark.parametrize("kind", KINDS)
def test_episode_equals_the_full_render(toks, kind, ended):
    tok = toks[kind]
    schemas = [tool_schema(add)]
    codec = TurnCodec(tok, tools=schemas)
    closing = codec.closing_ids()
    stop_id = tok.convert_tokens_to_ids(STOP[kind])
    assert closing[0] == stop_id
    stop = stop_id if ended == "stop" else None
    ids, messages, boundaries = run_episode(tok, codec, kind, stop)
    assert [m["role"] for m in messages].count("tool") == 3

    full = tok.apply_chat_template(messages, tools=schemas, tokenize=False)
    full_ids = tok.encode(full, add_special_tokens=False)
    # The render closes the final turn too: what follows the policy's stop token, or all of it.
    assert full_ids == ids + (closing[1:] if stop is not None else closing)
    # The opening: the ids PromptCodec gives a conversation, tools in its system/first turn.
    prompt = PromptCodec(tok, max_prompt_tokens=10_000, tools=schemas).encode(opening(kind))
    assert ids[: len(prompt)] == prompt and "add" in tok.decode(prompt)
    # Each assistant -> tool boundary holds the closing exactly once.
    n = len(closing)
    assert len(boundaries) == 2
    for at in boundaries:
        assert ids[at : at + n] == closing
        assert ids[at + n : at + 2 * n] != closing and ids[at - n : at] != closing


def test_qwen2_turn_ended_by_the_other_eos_gets_the_full_closing(toks):
    tok = toks["qwen2"]
    codec = TurnCodec(tok)
    im_end, endoftext = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    history = [*opening("qwen2"), {"role": "assistant", "content": POLICY_TURNS[1]}]
    new = tool_messages(POLICY_TURNS[1])
    by_closing = codec.reply(history, new, ended_by_stop=im_end)
    by_other = codec.reply(history, new, ended_by_stop=endoftext)
    by_length = codec.reply(history, new, ended_by_stop=None)
    assert by_other == by_length == [im_end, *by_closing]
    assert by_other[:2] == codec.closing_ids() == tok.encode("<|im_end|>\n")
    assert tok.decode(by_other) == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n11\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama_fragments_have_no_dummy_prefix(toks):
    """Alone, "[TOOL_RESULTS]" would tokenize with SentencePiece's "▁" in front; after the
    closing "</s>" the full text has none."""
    tok = toks["llama"]
    codec = TurnCodec(tok)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "call"}]
    reply = codec.reply(history, [{"role": "tool", "content": "4"}], ended_by_stop=None)
    assert tok.convert_ids_to_tokens(reply)[:2] == ["</s>", "<0x5B>"]  # "</s>", "["
    alone = tok.encode("[TOOL_RESULTS] 4 [/TOOL_RESULTS]", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(alone)[0] == "▁"


LLAMA2_TEMPLATE = (  # Llama-2-chat's: the closing " </s>" has a space before the stop token
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'].strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
PLAIN_TEMPLATE = (  # no special token at all: the closing is a newline
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


@pytest.mark.parametrize(
    "template, closing",
    [(LLAMA2_TEMPLATE, ["▁", "</s>"]), (PLAIN_TEMPLATE, ["<0x0A>"])],
    ids=["llama2", "plain"],
)
def test_game_turns_with_a_closing_that_starts_with_text(toks, template, closing):
    """A game answering as the user, on the llama tokenizer, under templates whose closing
    starts with text. A fragment such as "\\nuser: higher" tokenizes as in the full text
    only after an anchor: alone, SentencePiece's dummy prefix puts a "▁" before it."""
    tok = copy.deepcopy(toks["llama"])
    tok.chat_template = template
    codec = TurnCodec(tok)
    assert tok.convert_ids_to_tokens(codec.closing_ids()) == closing
    messages = [{"role": "user", "content": "guess my number"}]
    ids = codec.first(messages)
    for guess, answer in [("5", "higher"), ("8", "lower"), ("7", None)]:
        policy = tok.encode(f"is it {guess}?", add_special_tokens=False)
        ids += policy
        messages.append({"role": "assistant", "content": tok.decode(policy)})
        if answer is not None:
            new = [{"role": "user", "content": answer}]
            reply = codec.reply(messages, new, ended_by_stop=None)
            assert reply[: len(closing)] == codec.closing_ids()
            # Had the policy stopped on </s>, the closing through </s> would be its own.
            stopped = codec.reply(messages, new, ended_by_stop=tok.eos_token_id)
            assert stopped == (reply[2:] if template == LLAMA2_TEMPLATE else reply)
            ids += reply
            messages += new
    full = tok.apply_chat_template(messages, tokenize=False)
    assert tok.encode(full, add_special_tokens=False) == ids + codec.closing_ids()


THINK_DROPPING = (  # Qwen3-like: only the last assistant turn keeps its reasoning
    "{% for m in messages %}"
    "{% set content = m['content'] %}"
    "{% if m['role'] == 'assistant' and not loop.last %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SYSTEM_AT_LAST_USER = (  # Mistral v3-like: the system prompt goes to the last user turn
    "{% set users = messages | selectattr('role', 'equalto', 'user') | list %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' and m == users[-1] and messages[0]['role'] == 'system' %}"
    "{{ '[INST] ' + messages[0]['content'] + '\\n\\n' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


@pytest.mark.parametrize(
    "template, new",
    [
        (THINK_DROPPING, {"role": "tool", "content": "4"}),
        (SYSTEM_AT_LAST_USER, {"role": "user", "content": "and 3+4?"}),
    ],
    ids=["think-dropping", "system-at-last-user"],
)
def test_not_prefix_stable_template_is_refused(toks, template, new):
    tok = copy.deepcopy(toks["qwen2"])
    tok.chat_template = template
    tok.name_or_path = "tiny/qwen3-like"
    codec = TurnCodec(tok)
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is 2+2?"},
        {"role": "assistant", "content": "<think>add them</think>" + POLICY_TURNS[1]},
    ]
    with pytest.raises(TemplateNotPrefixStable) as info:
        codec.reply(history, [new], ended_by_stop=None)
    message = str(info.value)
    assert "\n" not in message
    assert codec.name in message and "tiny/qwen3-like" in message
    assert "changes what came before" in message


def test_reply_needs_an_assistant_turn_and_new_messages(toks):
    codec = TurnCodec(toks["qwen2"])
    with pytest.raises(ValueError, match="must end with the assistant"):
        codec.reply(opening("qwen2"), [{"role": "tool", "content": "4"}], ended_by_stop=None)
    history = [*opening("qwen2"), {"role": "assistant", "content": "hi"}]
    with pytest.raises(ValueError, match="one or more"):
        codec.reply(history, [], ended_by_stop=None)
    with pytest.raises(ValueError, match="no chat template"):
        TurnCodec(build_tokenizer("gpt2"))


# ---------------------------------------------------------------------- tools
def test_tool_schema():
    schema = tool_schema(add)
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "add" and function["description"] == "Adds two integers."
    assert function["parameters"]["properties"]["a"] == {
        "type": "integer",
        "description": "The first summand.",
    }
    assert function["parameters"]["required"] == ["a", "b"]

    def undocumented(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="undocumented"):
        tool_schema(undocumented)


def test_hermes_parser():
    assert parse_hermes("no calls here") == []
    one = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    [call] = parse_hermes("let me add " + one)
    assert (call.name, call.arguments, call.error, call.raw) == ("add", {"a": 1, "b": 2}, None, one)
    two = parse_hermes(one + "\n" + one.replace('"a": 1', '"a": 5'))
    assert [c.arguments["a"] for c in two] == [1, 5]
    assert parse_hermes(render_tool_calls(two)) == two
    as_string = '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>'
    assert parse_hermes(as_string)[0].arguments == {"a": 1}

    [bad_json, no_name, unclosed] = parse_hermes(
        '<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>'
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "add"'
    )
    assert bad_json.error and "not JSON" in bad_json.error and bad_json.name == ""
    assert no_name.error and "name" in no_name.error
    assert unclosed.error and "</tool_call>" in unclosed.error
    with pytest.raises(ValueError, match="hermes"):
        tool_parser("nope")


def test_call_tool_results_and_errors():
    release = threading.Event()

    def divide(a: float, b: float) -> float:
        return a / b

    def hang() -> str:
        release.wait(10)
        return "late"

    tools = {"add": add, "divide": divide, "hang": hang, "info": lambda: {"ok": [1, 2]}}
    assert call_tool(tools, ToolCall("add", {"a": 2, "b": 2}), timeout_s=1).content == "4"
    assert call_tool(tools, ToolCall("info"), timeout_s=1).content == '{"ok": [1, 2]}'

    raised = call_tool(tools, ToolCall("divide", {"a": 1, "b": 0}), timeout_s=1)
    assert raised.error and not raised.timed_out
    assert raised.content == "error: ZeroDivisionError: division by zero"
    unknown = call_tool(tools, ToolCall("mul", {"a": 1}), timeout_s=1)
    assert unknown.error and "unknown tool 'mul'" in unknown.content
    wrong = call_tool(tools, ToolCall("add", {"a": 1, "c": 2}), timeout_s=1)
    assert wrong.error and wrong.content.startswith("error: bad arguments for tool 'add'")
    malformed = parse_hermes("<tool_call>{oops}</tool_call>")[0]
    bad = call_tool(tools, malformed, timeout_s=1)
    assert bad.error and bad.content.startswith("error: the tool call is not JSON")

    start = time.monotonic()
    try:
        hung = call_tool(tools, ToolCall("hang"), timeout_s=0.2)
    finally:
        release.set()
    assert time.monotonic() - start < 2
    assert hung.error and hung.timed_out
    assert hung.content == "error: tool 'hang' timed out after 0.2 s"
