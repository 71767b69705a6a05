"""Held-out evaluation: the proxy reward next to an independent gold scorer.

Reward models can be over-optimised (Gao et al. 2022, https://arxiv.org/abs/2210.10760): the
proxy keeps rising while the true quality falls. Every ``eval.every`` iterations the policy
samples one completion per held-out prompt, and both the run's reward source (the proxy) and
the gold scorer score them, so the two curves parting shows over-optimisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from torch import nn

from rayrm import metrics as M
from rayrm.config import RLConfig
from rayrm.models.decoding import sample_sequences
from rayrm.models.tokenization import Prompt, PromptCodec
from rayrm.rewards import Completion, Scorer, completion_records
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rl.prompt_order import held_out_columns, held_out_prompts

__all__ = ["HeldOutEvaluation", "sample_texts", "score_held_out"]


def sample_texts(
    lm: nn.Module,
    codec: PromptCodec,
    cfg: RLConfig,
    prompts: list[Prompt],
    *,
    greedy: bool = False,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """``(prompt_texts, completions)``: one completion per prompt with the run's sampling
    settings, and the texts as reward sources read them."""
    g = cfg.generation
    sequences = sample_sequences(
        lm,
        codec,
        prompts,
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        greedy=greedy,
        seed=seed,
    )
    texts = [codec.texts(p, c) for p, c in sequences]
    return [t[0] for t in texts], [t[1] for t in texts]


def score_held_out(
    records: Sequence[Completion], proxy: Scorer, gold: RewardFunctionActor | None
) -> dict[str, np.ndarray]:
    """``proxy``: the run's reward of each held-out record; ``gold``, with a gold scorer: its
    score (float64), the records' references and columns given to it as to a reward
    function, their conversations not."""
    out = {"proxy": proxy.score(records)}
    if gold is not None:
        plain = [replace(r, messages=None) for r in records]
        out["gold"] = gold.score(plain).astype(np.float64)
    return out


class HeldOutEvaluation:
    """The held-out prompts (``eval.prompts``, or the held-out rows of ``data.prompts``:
    ``rayrm.rl.prompt_order``), their references and the gold scorer of a run."""

    def __init__(self, cfg: RLConfig, codec: PromptCodec) -> None:
        self.cfg = cfg
        self.codec = codec
        self.prompts, self.references = held_out_prompts(cfg, references=True)
        self.columns = held_out_columns(cfg, len(self.prompts))
        gold = cfg.eval.gold_function
        # Called in this process as reward functions are in their actors (references, columns).
        self.gold = RewardFunctionActor(gold) if gold else None

    def due(self, iteration: int) -> bool:
        """Whether to evaluate before this iteration's update (every ``eval.every``)."""
        every = self.cfg.eval.every
        return bool(every) and iteration % every == 0

    def evaluate(self, lm: nn.Module, proxy: Scorer, iteration: int) -> dict[str, Any]:
        """Proxy and gold scores of one completion per held-out prompt from ``lm``."""
        prompts, completions = sample_texts(
            lm, self.codec, self.cfg, self.prompts, seed=self.cfg.seed
        )
        records = completion_records(
            prompts,
            completions,
            references=self.references,
            messages=[self.codec.conversation(p) for p in self.prompts],
            columns=self.columns,
        )
        scores = score_held_out(records, proxy, self.gold)
        out = {
            M.EVAL_UPDATES: float(iteration),
            M.EVAL_PROXY_MEAN: float(scores["proxy"].mean()),
            M.EVAL_PROXY_STD: float(scores["proxy"].std()),
        }
        if "gold" in scores:
            gold = scores["gold"]
            out[M.EVAL_GOLD_MEAN], out[M.EVAL_GOLD_STD] = float(gold.mean()), float(gold.std())
        return out
