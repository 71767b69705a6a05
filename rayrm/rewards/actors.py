"""The reward-model actor (reward functions: ``rayrm.rewards.functions``; metric actors:
``rayrm.rewards.text_metrics``).

Plain classes (house style): :class:`~rayrm.rewards.pool.RewardPool` makes them remote where it
creates them, and builds them in-process with ``local=True``, so the scoring logic is testable
without a Ray cluster. They return CPU ``float32`` numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rayrm.models.fused import fuse_activations
from rayrm.models.hf_files import TOKENIZER_FILES, has_tokenizer
from rayrm.rewards.base import Completion, RewardActor, RewardSourceError, resolve_device

__all__ = ["RewardModelActor", "reward_model_texts"]


class RewardModelActor(RewardActor):
    """Scores ``prompt + completion`` with a scalar-head sequence-classification model.

    Attributes:
        num_calls: ``score`` calls served (since the last restart, when remote).
        num_scored: items scored.
    """

    def __init__(
        self,
        path: str,
        *,
        max_length: int = 512,
        device: str = "auto",
        tokenizer_path: str | None = None,
    ) -> None:
        """Loads tokenizer and model from a local directory.

        Args:
            path: directory written by ``save_pretrained`` (model, usually tokenizer too).
            tokenizer_path: tokenizer directory when ``path`` has none.
            max_length: token budget per text; clamped to the model's position limit so long
                texts truncate instead of indexing past the position embeddings.
            device: ``"auto"`` (CUDA if visible, else CPU), or any torch device string.

        Raises:
            RewardSourceError: the model has more than one label, or the tokenizer has
                neither a pad nor an eos token to pad with.
        """
        self.path = str(path)
        self.device = resolve_device(device)
        tokenizer_dir = str(tokenizer_path or path)
        if not has_tokenizer(tokenizer_dir):
            raise RewardSourceError(
                f"reward model {self.path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                "set reward.tokenizer_path to the tokenizer it was trained with"
            )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise RewardSourceError(
                    f"reward model tokenizer at {self.path!r} has neither a pad nor an eos "
                    "token; batched scoring needs one to pad with"
                )
            tokenizer.pad_token = tokenizer.eos_token
        # Right padding keeps absolute position ids identical to the unpadded text (GPT-2 has
        # learned positions), and the seq-cls head pools the last non-pad token either way.
        tokenizer.padding_side = "right"
        # Keep the end of the text when truncating: the head reads the last token, which
        # must belong to the completion, not the middle of a long prompt.
        tokenizer.truncation_side = "left"
        self.tokenizer = tokenizer

        model = AutoModelForSequenceClassification.from_pretrained(self.path)
        if model.config.num_labels != 1:
            raise RewardSourceError(
                f"reward model at {self.path!r} has num_labels={model.config.num_labels}; "
                "a reward model needs a single scalar head (num_labels=1)"
            )
        # The head finds each row's last real token by comparing ids to pad_token_id, so it
        # must be the id the tokenizer actually pads with.
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = fuse_activations(model).to(self.device).eval()

        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if isinstance(limit, int) else max_length
        super().__init__("model", self.path)

    def score(
        self, records: Sequence[Completion], present: frozenset[str] | None = None
    ) -> np.ndarray:
        """Scores a chunk in one forward pass.

        Args:
            records: N completions; the model reads each one's prompt and completion, or, for a
                chat prompt (``messages``), ``messages + [{"role": "assistant", "content":
                completion}]`` rendered with this model's chat template. References, ids and
                columns are not read.
            present: ignored (what a pool tells each of its actors; see
                ``RewardFunctionActor.score``).

        Returns:
            ``float32`` array of shape (N,), on CPU: the scalar head's logit per text.
        """
        self.num_calls += 1
        if len(records) == 0:
            return np.zeros((0,), dtype=np.float32)
        texts = reward_model_texts(self.tokenizer, records)
        # Chat renderings hold their own special tokens; plain texts get the tokenizer's.
        special = all(r.messages is None for r in records)
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=special,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits  # (N, 1)
        self.num_scored += len(texts)
        return logits[:, 0].float().cpu().numpy()


def reward_model_texts(tokenizer: Any, records: Sequence[Completion]) -> list[str]:
    """What a reward model reads per record: ``prompt + completion``, or for a conversation the
    reward model's own chat template over ``messages + [assistant: completion]``.

    Raises:
        RewardSourceError: A conversation arrives and the tokenizer has no chat template.
    """
    texts = []
    for record in records:
        if record.messages is None:
            texts.append(record.prompt_text + record.completion)
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise RewardSourceError(
                "the reward model's tokenizer has no chat template, but the prompts are "
                "conversations; set reward.tokenizer_path to a tokenizer with one"
            )
        turn = {"role": "assistant", "content": record.completion}
        texts.append(str(tokenizer.apply_chat_template([*record.messages, turn], tokenize=False)))
    return texts
