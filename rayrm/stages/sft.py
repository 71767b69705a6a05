"""``rayrm sft``: supervised fine-tuning of a causal LM on Ray Train (stage 1 of RLHF).

What belongs here: turning a corpus into ``(input_ids, labels)`` examples, the masked
next-token loss, and the SFT plug-ins of the shared epoch loop in :mod:`rayrm.stages.trainer`.

Examples are encoded the way the PPO environment encodes prompts and the sampler ends
completions (``rayrm.models.tokenization``): the prompt with the special tokens the tokenizer adds by
default (Llama's ``<s>``), the response tokenized in the prompt's context (so SentencePiece's
word marker stays on its first token), then EOS, so the model learns the token boundary and the
stop signal it will meet in RL. With prompt/response columns the prompt positions get the label
``IGNORE_INDEX`` and only the response (and EOS) is trained on (InstructGPT's SFT,
https://arxiv.org/abs/2203.02155); with a text column every token is. Conversations (a
messages column) are rendered with the tokenizer's chat template and only the assistant turns
are learned: each turn's tokens are those between the rendering of the conversation before it
(with the generation prompt) and the rendering that includes it, its end-of-turn token
included. A conversation's tools (a ``tools`` column of JSON schemas) go to the template as a
multi-turn environment's tools do, so tool-calling traces render as RL renders them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayrm.config import ConfigError
from rayrm.config.stage import SFTConfig
from rayrm.models.tokenization import Conversation, Message, PromptCodec, require_chat_template
from rayrm.stages.batches import pad_right
from rayrm.stages.tables import (
    TEXT_COLUMN,
    conversation_column,
    read_table,
    string_column,
    tools_column,
)
from rayrm.stages.trainer import (
    SFT_EVAL_LOSS,
    SFT_EVAL_PERPLEXITY,
    SFT_TRAIN_LOSS,
    SFT_TRAIN_TOKENS,
    StageSteps,
    describe_metrics,
    run_stage,
    worker_loop,
)

IGNORE_INDEX = -100
"""Label of positions left out of the loss (PyTorch's ``cross_entropy`` default)."""

Example = tuple[np.ndarray, np.ndarray]
"""``(input_ids, labels)``, both int64 of the same length."""


# ---------------------------------------------------------------------------------------------
# Examples and loss (pure)
# ---------------------------------------------------------------------------------------------


def build_example(
    prompt_ids: Sequence[int], response_ids: Sequence[int], *, eos_id: int, max_length: int
) -> Example | None:
    """One training example: ``prompt + response + EOS``, prompt positions masked.

    Args:
        prompt_ids: Prompt tokens (empty for plain-text examples).
        response_ids: Tokens to learn.
        eos_id: End-of-sequence token appended to the response.
        max_length: Keep the first this many tokens.

    Returns:
        ``(input_ids, labels)``, or None when no token is left to learn (labels at positions
        >= 1 are all ``IGNORE_INDEX``: position 0 is never predicted).
    """
    ids = [*prompt_ids, *response_ids, eos_id][:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + [*response_ids, eos_id])[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def encode_examples(
    tokenizer: Any,
    *,
    texts: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    responses: Sequence[str] | None = None,
    max_length: int,
) -> tuple[list[Example], int]:
    """Tokenizes a corpus: either ``texts``, or ``prompts`` with ``responses``.

    Returns:
        ``(examples, num_dropped)``; examples without a token to learn are dropped.
    """
    codec = PromptCodec(tokenizer, max_prompt_tokens=sys.maxsize)  # special tokens, no cut
    eos = codec.eos_token_id
    pairs: list[tuple[list[int], list[int]]] = []
    if texts is not None:
        for text in texts:
            ids = codec.encode(text) if text else []
            head = _bos(codec, ids)  # the BOS is context, not a token to learn
            pairs.append((head, ids[len(head) :]))
    else:
        if prompts is None or responses is None:
            raise ValueError("encode_examples needs texts, or prompts with responses")
        for prompt, response in zip(prompts, responses, strict=True):
            prompt_ids = codec.encode(prompt)
            pairs.append((prompt_ids, codec.encode_completion(prompt_ids, response)))
    examples = []
    for p, r in pairs:
        ex = build_example(p, r, eos_id=eos, max_length=max_length)
        if ex is not None:
            examples.append(ex)
    return examples, len(pairs) - len(examples)


def _bos(codec: PromptCodec, ids: Sequence[int]) -> list[int]:
    """The leading BOS of ``ids`` (as a list), or []."""
    return [ids[0]] if ids and ids[0] == codec.bos_token_id else []


def encode_conversations(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    max_length: int,
    tools: Sequence[Sequence[dict[str, Any]] | None] | None = None,
) -> tuple[list[Example], int]:
    """Renders conversations with the chat template; labels only the assistant turns.

    Args:
        tokenizer: With a chat template.
        conversations: Lists of ``{role, content}`` messages.
        max_length: Tokens kept per example (the rest cut off at the end).
        tools: Per conversation, the JSON schemas of the tools it offers (``None``: none),
            passed to the template (``apply_chat_template(tools=...)``) as a multi-turn
            environment passes its tools (``rayrm.models.turns``), so that SFT sees the conversation
            as RL renders it.

    Returns:
        ``(examples, num_dropped)``.

    Raises:
        ValueError: The tokenizer has no chat template, or rendering a conversation turn by
            turn does not reproduce its full rendering's tokens (row named).
    """
    require_chat_template(tokenizer, "the SFT tokenizer")
    if tools is not None and len(tools) != len(conversations):
        raise ValueError(f"{len(tools)} tool lists for {len(conversations)} conversations")
    row_tools: list[dict[str, Any]] | None = None

    def ids_of(messages: Sequence[Message], generation_prompt: bool) -> list[int]:
        if not messages and not generation_prompt:
            return []
        text = tokenizer.apply_chat_template(
            list(messages),
            tools=row_tools,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    examples = []
    for row, messages in enumerate(conversations):
        row_tools = [dict(t) for t in tools[row]] if tools is not None and tools[row] else None
        ids = ids_of(messages, False)
        labels = [IGNORE_INDEX] * len(ids)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start, upto = len(ids_of(messages[:i], True)), ids_of(messages[: i + 1], False)
            if ids[: len(upto)] != upto or start > len(upto):
                raise ValueError(
                    f"row {row}: the chat template does not render the conversation turn by "
                    "turn as a prefix of the whole, so assistant turns cannot be located"
                )
            labels[start : len(upto)] = ids[start : len(upto)]
        ids, labels = ids[:max_length], labels[:max_length]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append((np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)))
    return examples, len(conversations) - len(examples)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-pads examples into ``input_ids``, ``attention_mask`` and ``labels``, each (B, T)."""
    import torch

    ids = pad_right([e[0] for e in examples], pad_id)  # (B, T)
    labels = pad_right([e[1] for e in examples], IGNORE_INDEX)  # (B, T)
    mask = pad_right([np.ones(len(e[0]), dtype=np.int64) for e in examples], 0)  # (B, T)
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
    }


def token_nll(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Summed next-token negative log-likelihood over the positions that have a label.

    Args:
        logits: (B, T, V) causal-LM logits; position t predicts token t + 1.
        labels: (B, T) token ids, ``IGNORE_INDEX`` where there is nothing to learn.

    Returns:
        ``(nll_sum, num_tokens)``: a scalar tensor (differentiable) and an integer tensor.
    """
    import torch.nn.functional as F

    B, T, V = logits.shape
    targets = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(
        logits[:, :-1].reshape(B * (T - 1), V).float(),
        targets.reshape(B * (T - 1)),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return nll, (targets != IGNORE_INDEX).sum()


# ---------------------------------------------------------------------------------------------
# The stage's plug-ins for rayrm.stages.trainer.worker_loop
# ---------------------------------------------------------------------------------------------


def build_model(path: str, cfg: SFTConfig, tokenizer: Any) -> Any:
    """The causal LM, dropout as its config says, fused activation kernels, in train mode."""
    from transformers import AutoModelForCausalLM

    from rayrm.models.fused import fuse_activations

    return fuse_activations(AutoModelForCausalLM.from_pretrained(path)).train()


def compute(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """Mean NLL over this worker's batch tokens, and the sums behind it."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, n = token_nll(logits, batch["labels"])
    return nll / n.clamp(min=1), {"nll": float(nll.detach()), "tokens": float(n)}


def metrics(train: dict[str, float], evaluation: dict[str, float]) -> dict[str, float]:
    out = {
        SFT_TRAIN_LOSS: train["nll"] / max(train["tokens"], 1.0),
        SFT_TRAIN_TOKENS: train["tokens"],
    }
    if evaluation:
        loss = evaluation["nll"] / max(evaluation["tokens"], 1.0)
        out[SFT_EVAL_LOSS] = loss
        out[SFT_EVAL_PERPLEXITY] = math.exp(min(loss, 50.0))
    return out


def describe(m: dict[str, float]) -> str:
    return describe_metrics(
        m,
        [
            (SFT_TRAIN_LOSS, "train loss", ".4f"),
            (SFT_EVAL_LOSS, "eval loss", ".4f"),
            (SFT_EVAL_PERPLEXITY, "eval ppl", ".2f"),
            ("timers/epoch_s", "time", ".1f"),
        ],
    )


STEPS = StageSteps(
    config_cls=SFTConfig,
    build_model=build_model,
    collate=collate,
    compute=compute,
    metrics=metrics,
    describe=describe,
    sum_keys=("nll", "tokens"),
)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` for SFT."""
    worker_loop(config, STEPS)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _position_limit(path: str) -> int | None:
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def load_examples(cfg: SFTConfig, tokenizer: Any) -> tuple[list[Example], dict[str, Any]]:
    """Reads and tokenizes ``data.path`` as the config says.

    Returns:
        ``(examples, info)``; ``info`` says which format was used, the token limit and how
        many rows were read and dropped.

    Raises:
        ConfigError: Missing or non-string columns, or no usable example.
    """

    d = cfg.data
    table = read_table(d.path, key="data.path")
    fmt = d.format
    if d.path.endswith(".txt"):
        fmt, text_column = "text", TEXT_COLUMN
    else:
        text_column = d.text_column
    if fmt == "auto":
        columns = set(table.column_names)
        if {d.prompt_column, d.response_column} <= columns:
            fmt = "prompt_response"
        else:
            fmt = "messages" if d.messages_column in columns else "text"
    max_length = d.max_length
    limit = _position_limit(cfg.model.path)
    if limit is not None:
        max_length = min(max_length, limit)
    if fmt == "text":
        texts = string_column(table, text_column, path=d.path, key="data.text_column")
        examples, dropped = encode_examples(tokenizer, texts=texts, max_length=max_length)
    elif fmt == "messages":
        key = "data.messages_column"
        conversations = conversation_column(table, d.messages_column, path=d.path, key=key)
        tools = None
        if d.tools_column in table.column_names:
            tools = tools_column(table, d.tools_column, path=d.path, key="data.tools_column")
        try:
            examples, dropped = encode_conversations(
                tokenizer, conversations, max_length=max_length, tools=tools
            )
        except ValueError as exc:
            raise ConfigError(f"data.path {d.path}: {exc}", key="data.path") from exc
    else:
        prompts = string_column(table, d.prompt_column, path=d.path, key="data.prompt_column")
        responses = string_column(table, d.response_column, path=d.path, key="data.response_column")
        examples, dropped = encode_examples(
            tokenizer, prompts=prompts, responses=responses, max_length=max_length
        )
    if not examples:
        raise ConfigError(
            f"data.path {d.path} has no usable example ({table.num_rows} rows, {dropped} "
            f"without a token to learn within data.max_length={max_length})",
            key="data.path",
        )
    info = {"format": fmt, "max_length": max_length, "rows": table.num_rows, "dropped": dropped}
    return examples, info


def run_sft(cfg: SFTConfig, *, resume: bool = False, progress: bool = False) -> dict[str, Any]:
    """Fine-tunes ``model.path`` on ``data.path`` with Ray Train; writes ``output.dir``.

    The data is read and tokenized here, before Ray starts, so data problems surface as
    ConfigErrors.

    Args:
        cfg: A config from :func:`~rayrm.config.stage.load_stage_config` (absolute paths).
        resume: Continue the run in ``output.storage_path/name`` from its last checkpoint.
        progress: Per-epoch progress bars (rank 0's, rendered by the driver).

    Returns:
        :func:`rayrm.stages.trainer.fit_stage`'s summary plus ``"data"`` (format, max_length, rows,
        dropped, train/eval sizes).

    Raises:
        ConfigError: Bad data, too few rows for the workers, or a run-folder conflict.
        StageFailed: Training failed in a worker.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.resolved_tokenizer_path)
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"the tokenizer at {cfg.model.resolved_tokenizer_path} has no eos token; SFT "
            f"appends it to every response so the policy learns to stop",
            key="model.tokenizer_path" if cfg.model.tokenizer_path else "model.path",
        )
    examples, info = load_examples(cfg, tokenizer)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    return run_stage(
        cfg, train_loop, examples, info, pad_id=pad_id, unit="examples", resume=resume,
        progress=progress,
    )  # fmt: skip
