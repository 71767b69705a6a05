"""``rayrm train-rm``: reward-model training on preference pairs, on Ray Train (stage 2).

What belongs here: encoding ``(prompt, chosen, rejected)`` rows exactly as the reward actors
will score them, the Bradley–Terry pairwise loss, and the reward-model plug-ins of the shared
epoch loop in :mod:`rayrm.stages.trainer`.

The model is an ``AutoModelForSequenceClassification`` with one label. Starting from a causal
LM directory, ``from_pretrained(path, num_labels=1)`` keeps the trunk and adds a fresh scalar
head. Texts are ``prompt + completion`` as one string, tokenized with the tokenizer's default
special tokens (conversational pairs -- message lists -- are rendered with the chat template
instead, as the actors render conversations), cut from the left to ``data.max_length`` and right-padded with
``pad_token_id`` (EOS when the tokenizer has no pad token) -- what
:class:`rayrm.rewards.actors.RewardModelActor` does -- so the head reads the same last token in
training and in PPO. The written directory loads there unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rayrm.config import ConfigError
from rayrm.config.stage import RMConfig
from rayrm.models.tokenization import Conversation, check_conversation, require_chat_template
from rayrm.stages.batches import pad_right
from rayrm.stages.tables import conversation_column, read_table, string_column
from rayrm.stages.trainer import (
    RM_EVAL_ACCURACY,
    RM_EVAL_CHOSEN_REWARD,
    RM_EVAL_LOSS,
    RM_EVAL_MARGIN,
    RM_EVAL_REJECTED_REWARD,
    RM_TRAIN_ACCURACY,
    RM_TRAIN_LOSS,
    StageSteps,
    describe_metrics,
    run_stage,
    worker_loop,
)

Pair = tuple[np.ndarray, np.ndarray]
"""``(chosen_ids, rejected_ids)``: token ids of ``prompt + chosen`` and ``prompt + rejected``."""


# ---------------------------------------------------------------------------------------------
# Encoding and loss (pure)
# ---------------------------------------------------------------------------------------------


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Pads with EOS when there is no pad token, pads right, truncates left (as the actors do).

    Raises:
        ConfigError: The tokenizer has neither a pad nor an eos token.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "the tokenizer has neither a pad nor an eos token; batched scoring needs one "
                "to pad with",
                key="model.tokenizer_path",
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return tokenizer


def encode_pairs(
    tokenizer: Any,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    max_length: int,
) -> tuple[list[Pair], int]:
    """Tokenizes ``prompt + chosen`` and ``prompt + rejected`` for every row.

    Args:
        tokenizer: Prepared by :func:`prepare_tokenizer`.
        prompts, chosen, rejected: One entry per pair.
        max_length: Token limit per text (the end of the text is kept).

    Returns:
        ``(pairs, num_dropped)``: pairs whose two token sequences are identical carry no
        preference and are dropped.
    """

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    c = encode([p + x for p, x in zip(prompts, chosen, strict=True)])
    r = encode([p + x for p, x in zip(prompts, rejected, strict=True)])
    pairs = [
        (np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        for a, b in zip(c, r, strict=True)
        if a != b
    ]
    return pairs, len(c) - len(pairs)


def encode_conversation_pairs(
    tokenizer: Any,
    prompts: Sequence[Conversation],
    chosen: Sequence[Conversation],
    rejected: Sequence[Conversation],
    *,
    max_length: int,
) -> tuple[list[Pair], int]:
    """Renders ``prompt + chosen`` and ``prompt + rejected`` conversations with the chat
    template (as :class:`rayrm.rewards.actors.RewardModelActor` renders conversations in PPO) and
    tokenizes them without adding special tokens (the template holds its own).

    Returns:
        ``(pairs, num_dropped)`` as :func:`encode_pairs`.

    Raises:
        ValueError: The tokenizer has no chat template.
    """
    require_chat_template(tokenizer, "the reward model's tokenizer")

    def encode(conversations: list[Conversation]) -> list[list[int]]:
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
        return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)[
            "input_ids"
        ]

    c = encode([[*p, *x] for p, x in zip(prompts, chosen, strict=True)])
    r = encode([[*p, *x] for p, x in zip(prompts, rejected, strict=True)])
    pairs = [
        (np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        for a, b in zip(c, r, strict=True)
        if a != b
    ]
    return pairs, len(c) - len(pairs)


def collate(pairs: Sequence[Pair], pad_id: int) -> dict[str, Any]:
    """Stacks the B chosen rows, then the B rejected rows, right-padded: (2B, T) each."""
    import torch

    rows = [p[0] for p in pairs] + [p[1] for p in pairs]
    ids = pad_right(rows, pad_id)  # (2B, T)
    mask = pad_right([np.ones(len(r), dtype=np.int64) for r in rows], 0)  # (2B, T)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def bradley_terry_loss(chosen_rewards: Any, rejected_rewards: Any) -> Any:
    """Per-pair Bradley–Terry loss ``-log σ(r_chosen − r_rejected)``.

    The negative log-likelihood of the observed preference under the Bradley–Terry model, as
    in InstructGPT's reward model (https://arxiv.org/abs/2203.02155, eq. 1).

    Args:
        chosen_rewards: (B,) rewards of the preferred completions.
        rejected_rewards: (B,) rewards of the other completions.

    Returns:
        (B,) losses.
    """
    import torch.nn.functional as F

    return -F.logsigmoid(chosen_rewards - rejected_rewards)


# ---------------------------------------------------------------------------------------------
# The stage's plug-ins for rayrm.stages.trainer.worker_loop
# ---------------------------------------------------------------------------------------------


def build_model(path: str, cfg: RMConfig, tokenizer: Any) -> Any:
    """A one-label sequence classifier from ``path``, padding with the tokenizer's pad id.

    Also prepares ``tokenizer`` (:func:`prepare_tokenizer`), so the checkpoints save the pad
    token the model was trained with.
    """
    from transformers import AutoModelForSequenceClassification

    from rayrm.models.fused import fuse_activations

    prepare_tokenizer(tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    # The head pools each row's last token whose id differs from pad_token_id.
    model.config.pad_token_id = tokenizer.pad_token_id
    return fuse_activations(model).train()


def compute(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """Mean Bradley–Terry loss over this worker's pairs, and the sums behind the metrics."""
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rewards = rewards[:, 0].float()  # (2B,)
    B = rewards.shape[0] // 2
    chosen, rejected = rewards[:B], rewards[B:]  # (B,), (B,)
    losses = bradley_terry_loss(chosen, rejected)  # (B,)
    chosen, rejected = chosen.detach(), rejected.detach()
    return losses.mean(), {
        "loss": float(losses.detach().sum()),
        "correct": float((chosen > rejected).sum()),
        "margin": float((chosen - rejected).sum()),
        "chosen": float(chosen.sum()),
        "rejected": float(rejected.sum()),
        "pairs": float(B),
    }


def metrics(train: dict[str, float], evaluation: dict[str, float]) -> dict[str, float]:
    n = max(train["pairs"], 1.0)
    out = {RM_TRAIN_LOSS: train["loss"] / n, RM_TRAIN_ACCURACY: train["correct"] / n}
    if evaluation:
        n = max(evaluation["pairs"], 1.0)
        out[RM_EVAL_LOSS] = evaluation["loss"] / n
        out[RM_EVAL_ACCURACY] = evaluation["correct"] / n
        out[RM_EVAL_MARGIN] = evaluation["margin"] / n
        out[RM_EVAL_CHOSEN_REWARD] = evaluation["chosen"] / n
        out[RM_EVAL_REJECTED_REWARD] = evaluation["rejected"] / n
    return out


def describe(m: dict[str, float]) -> str:
    return describe_metrics(
        m,
        [
            (RM_TRAIN_LOSS, "train loss", ".4f"),
            (RM_TRAIN_ACCURACY, "acc", ".3f"),
            (RM_EVAL_LOSS, "eval loss", ".4f"),
            (RM_EVAL_ACCURACY, "acc", ".3f"),
            (RM_EVAL_MARGIN, "margin", "+.3f"),
            ("timers/epoch_s", "time", ".1f"),
        ],
    )


STEPS = StageSteps(
    config_cls=RMConfig,
    build_model=build_model,
    collate=collate,
    compute=compute,
    metrics=metrics,
    describe=describe,
    sum_keys=("loss", "correct", "margin", "chosen", "rejected", "pairs"),
    heads=("score",),
)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` for reward-model training."""
    worker_loop(config, STEPS)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def load_pairs(cfg: RMConfig, tokenizer: Any) -> tuple[list[Pair], dict[str, Any]]:
    """Reads and tokenizes the preference pairs of ``data.path``.

    Returns:
        ``(pairs, info)`` with ``info``: max_length (after clamping to the model's position
        limit), rows read, pairs dropped.

    Raises:
        ConfigError: Missing or non-string columns, or no usable pair.
    """
    from transformers import AutoConfig

    d = cfg.data
    table = read_table(d.path, key="data.path")
    max_length = d.max_length
    limit = getattr(AutoConfig.from_pretrained(cfg.model.path), "max_position_embeddings", None)
    if isinstance(limit, int):
        max_length = min(max_length, limit)
    if _is_conversational(table, d.chosen_column):
        pairs, dropped = _conversation_pairs(cfg, table, tokenizer, max_length)
    else:
        pairs, dropped = _text_pairs(cfg, table, tokenizer, max_length)
    if not pairs:
        raise ConfigError(
            f"data.path {d.path} has no usable pair ({table.num_rows} rows, {dropped} with "
            f"identical chosen and rejected texts)",
            key="data.path",
        )
    return pairs, {"max_length": max_length, "rows": table.num_rows, "dropped": dropped}


def _is_conversational(table: Any, column: str) -> bool:
    """Whether a pairs column holds message lists (the first non-null value says)."""
    if column not in table.column_names:
        return False
    values = table.column(column).to_pylist()
    return isinstance(next((v for v in values if v is not None), None), list)


def _text_pairs(cfg: RMConfig, table: Any, tokenizer: Any, max_length: int) -> Any:

    d = cfg.data
    columns = {}
    for key in ("prompt_column", "chosen_column", "rejected_column"):
        column = getattr(d, key)
        columns[key] = string_column(table, column, path=d.path, key=f"data.{key}")
    return encode_pairs(
        tokenizer,
        columns["prompt_column"],
        columns["chosen_column"],
        columns["rejected_column"],
        max_length=max_length,
    )


def _conversation_pairs(cfg: RMConfig, table: Any, tokenizer: Any, max_length: int) -> Any:
    """Pairs whose chosen/rejected sides are message lists; the prompt column (a string, which
    becomes a user message, or a message list) is optional."""

    d = cfg.data
    chosen = conversation_column(table, d.chosen_column, path=d.path, key="data.chosen_column")
    rejected = conversation_column(
        table, d.rejected_column, path=d.path, key="data.rejected_column"
    )
    prompts: list[Conversation] = [[] for _ in chosen]
    if d.prompt_column in table.column_names:
        for row, value in enumerate(table.column(d.prompt_column).to_pylist()):
            where = f"{d.path}, column {d.prompt_column!r}, row {row}"
            try:
                prompts[row] = (
                    [{"role": "user", "content": value}]
                    if isinstance(value, str)
                    else check_conversation(value, where)
                )
            except ValueError as exc:
                raise ConfigError(str(exc), key="data.prompt_column") from exc
    try:
        return encode_conversation_pairs(
            tokenizer, prompts, chosen, rejected, max_length=max_length
        )
    except ValueError as exc:
        raise ConfigError(f"data.path {d.path}: {exc}", key="model.tokenizer_path") from exc


def run_reward_training(
    cfg: RMConfig, *, resume: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Trains a reward model on ``data.path`` with Ray Train; writes ``output.dir``.

    The pairs are read and tokenized here, before Ray starts, so data problems surface as
    ConfigErrors.

    Args:
        cfg: A config from :func:`~rayrm.config.stage.load_stage_config` (absolute paths).
        resume: Continue the run in ``output.storage_path/name`` from its last checkpoint.
        progress: Per-epoch progress bars (rank 0's, rendered by the driver).

    Returns:
        :func:`rayrm.stages.trainer.fit_stage`'s summary plus ``"data"`` (max_length, rows,
        dropped, train/eval sizes). ``summary["metrics"]["rm/eval_accuracy"]`` is the held-out
        pairwise accuracy of the final model.

    Raises:
        ConfigError: Bad data, too few pairs for the workers, or a run-folder conflict.
        StageFailed: Training failed in a worker.
    """
    from transformers import AutoTokenizer

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(cfg.model.resolved_tokenizer_path))
    pairs, info = load_pairs(cfg, tokenizer)
    return run_stage(
        cfg, train_loop, pairs, info, pad_id=tokenizer.pad_token_id, unit="pairs", resume=resume,
        progress=progress,
    )  # fmt: skip
