"""Plays whole multi-turn episodes with a policy model: an environment's success rate.

A multi-turn run logs ``env/success`` of the episodes it trains on; how good a policy is on
rows it never trained on is measured here, with the sampler RL uses: the episodes run in
:class:`envs.multi_turn.MultiTurnTextEnv` (one token per step, the environment's replies
spliced in as ids) and decode through :func:`rayrm.models.decoding.decode_batch`, replies fed
through the KV cache by its ``inserts`` callback, exactly as the env runner
(``rayrm.rl.env_runner``) samples training episodes. :class:`HeldOutEpisodes` is a multi-turn
run's held-out evaluation (every ``eval.every`` iterations, and the report's before/after).
No Ray here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.multi_turn import EPISODE_STATS, REPLY_IDS, MultiTurnTextEnv
from envs.text_generation import resolve_tokenizer
from rayrm import metrics as M
from rayrm.config import RLConfig
from rayrm.models.decoding import decode_batch, sampler
from rayrm.rewards import Scorer, completion_records
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rl.prompt_order import held_out_rows

__all__ = ["EpisodeOutcome", "HeldOutEpisodes", "play_episodes", "success_rate"]


@dataclass(frozen=True)
class EpisodeOutcome:
    """One finished episode.

    Attributes:
        prompt_index: The prompt row it was built from.
        success: The environment's ``success`` of its last turn (0 when it reported none).
        episode_return: The sum of its turns' rewards.
        turns: Assistant turns taken.
        truncated: It hit a limit (turns or tokens) instead of being finished.
        messages: The whole conversation: the opening, every assistant turn (tool calls as
            the model wrote them) and every reply, the last assistant turn included.
        prompt_text: What reward sources read as the prompt: the conversation before the
            last assistant turn, as its ids decode.
        completion: The last assistant turn's text.
    """

    prompt_index: int
    success: float
    episode_return: float
    turns: int
    truncated: bool
    messages: tuple[dict[str, Any], ...] = ()
    prompt_text: str = ""
    completion: str = ""


def play_episodes(
    model: nn.Module,
    make_env: Callable[[], MultiTurnTextEnv],
    rows: Sequence[int],
    *,
    batch_size: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
) -> list[EpisodeOutcome]:
    """One episode per entry of ``rows`` (prompt indices of the env's rows), ``batch_size``
    decoded together.

    Args:
        model: A Hugging Face causal LM (eval mode is the caller's business).
        make_env: Builds a fresh env (the same settings as training: the run's env config).
        rows: Prompt rows to play, repeats allowed.
        batch_size: Episodes decoded together.
        temperature, top_k, top_p, greedy: Sampling settings (``core_algos.sample_tokens``).
        seed: Seed of the sampling generator (one for the whole call).

    Returns:
        The outcomes, in the order of ``rows``.
    """
    envs = [make_env() for _ in range(min(batch_size, len(rows)))]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    sample = sampler(
        temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, generator=generator
    )
    out: list[EpisodeOutcome] = []
    for start in range(0, len(rows), len(envs)):
        chunk = list(rows[start : start + len(envs)])
        out += _play(model, envs[: len(chunk)], chunk, sample)
    return out


def _play(
    model: nn.Module, envs: list[MultiTurnTextEnv], rows: list[int], sample: Any
) -> list[EpisodeOutcome]:
    """Plays ``envs[i]`` from prompt row ``rows[i]``, all together."""
    prompts = []
    for env, row in zip(envs, rows, strict=True):
        obs, _ = env.reset(options={"prompt_index": row})
        prompts.append(obs["input_ids"][: int(obs["length"][0])])
    active = [True] * len(envs)
    returns = [0.0] * len(envs)
    last: list[Mapping[str, Any]] = [{} for _ in envs]
    replies: dict[int, np.ndarray] = {}

    def on_tokens(tokens: np.ndarray, logp: np.ndarray) -> list[bool]:
        for i, env in enumerate(envs):
            if not active[i]:
                continue
            _, reward, terminated, truncated, info = env.step(int(tokens[i]))
            returns[i] += float(reward)
            active[i] = not (terminated or truncated)
            if REPLY_IDS in info:
                replies[i] = info[REPLY_IDS]
            if not active[i]:
                last[i] = {**info, "truncated": truncated}
        return active

    def take_replies() -> dict[int, np.ndarray]:
        taken = dict(replies)
        replies.clear()
        return taken

    pad_id = int(envs[0].pad_token_id)
    decode_batch(model, prompts, pad_id=pad_id, sample=sample, on_tokens=on_tokens,
                 inserts=take_replies)  # fmt: skip
    outcomes = []
    for row, info, ret in zip(rows, last, returns, strict=True):
        stats = info[EPISODE_STATS]
        last_turn = {"role": "assistant", "content": info["completion"]}
        outcomes.append(
            EpisodeOutcome(
                prompt_index=row,
                success=float(stats.get("success", 0.0)),
                episode_return=ret,
                turns=int(stats["turns"]),
                truncated=bool(info["truncated"]),
                messages=(*info["messages"], last_turn),
                prompt_text=info["prompt_text"],
                completion=info["completion"],
            )
        )
    return outcomes


def success_rate(outcomes: Sequence[EpisodeOutcome]) -> dict[str, float]:
    """``{"success", "se", "return", "turns", "n"}``: the mean success ``p`` with its standard
    error ``sqrt(p (1 - p) / n)`` (successes are 0 or 1), the mean return and turns."""
    n = len(outcomes)
    if not n:
        raise ValueError("no episodes to summarise")
    p = sum(o.success for o in outcomes) / n
    return {
        "success": p,
        "se": math.sqrt(max(p * (1 - p), 0.0) / n),
        "return": sum(o.episode_return for o in outcomes) / n,
        "turns": sum(o.turns for o in outcomes) / n,
        "n": float(n),
    }


class HeldOutEpisodes:
    """A multi-turn run's held-out evaluation: one episode per held-out row
    (:func:`rayrm.rl.prompt_order.held_out_rows`), played with the run's sampling settings
    and the same seed each time, so that two evaluations differ by the policy alone."""

    def __init__(
        self,
        cfg: RLConfig,
        env_config: Mapping[str, Any],
        rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """
        Args:
            cfg: The run config (``eval``, ``generation``, ``reward`` and ``seed``).
            env_config: The run's ``envs.multi_turn.MultiTurnTextEnv`` settings
                (``rayrm.rl.settings.environment_of``); its ``prompts`` are replaced by the rows.
            rows: The rows to play; None plays the run's held-out rows.
        """
        self.cfg = cfg
        self.rows = [dict(r) for r in (held_out_rows(cfg) if rows is None else rows)]
        tokenizer = resolve_tokenizer(env_config["tokenizer"])
        self.env_config = {**env_config, "prompts": self.rows, "tokenizer": tokenizer}
        gold = cfg.eval.gold_function
        self.gold = RewardFunctionActor(gold) if gold else None

    def due(self, iteration: int) -> bool:
        """Whether to evaluate before this iteration's update (every ``eval.every``)."""
        every = self.cfg.eval.every
        return bool(every) and bool(self.rows) and iteration % every == 0

    def play(self, model: nn.Module, *, seed: int | None = None) -> list[EpisodeOutcome]:
        """Each row once, in order, sampled as in training (``seed`` defaults to the run's)."""
        g = self.cfg.generation
        was_training = model.training
        model.eval()
        try:
            return play_episodes(
                model, lambda: MultiTurnTextEnv(**self.env_config), range(len(self.rows)),
                temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                seed=self.cfg.seed if seed is None else seed,
            )  # fmt: skip
        finally:
            model.train(was_training)

    def scores(self, outcomes: Sequence[EpisodeOutcome], proxy: Scorer) -> dict[str, np.ndarray]:
        """``proxy``: the run's reward of each episode as training counts it (the episode's
        return plus the reward source's score of its last turn, in its conversation);
        ``gold``, with ``eval.gold_function``: the gold scorer's, given the row's columns."""
        prompts = [o.prompt_text for o in outcomes]
        completions = [o.completion for o in outcomes]
        messages = [list(o.messages[:-1]) for o in outcomes]
        returns = np.array([o.episode_return for o in outcomes], np.float64)
        raw = proxy.score(completion_records(prompts, completions, messages=messages))
        out = {"proxy": returns + np.asarray(raw, np.float64)}
        if self.gold is not None:
            columns = [self.rows[o.prompt_index] for o in outcomes]
            gold = self.gold.score(completion_records(prompts, completions, columns=columns))
            out["gold"] = np.asarray(gold, np.float64)
        return out

    def evaluate(self, lm: nn.Module, proxy: Scorer, iteration: int) -> dict[str, float]:
        """Success, return and turns of one episode per held-out row, and the proxy (and
        gold) scores of them, as ``eval/...`` metrics."""
        outcomes = self.play(lm)
        rate = success_rate(outcomes)
        scores = self.scores(outcomes, proxy)
        out = {
            M.EVAL_UPDATES: float(iteration),
            M.EVAL_SUCCESS: rate["success"],
            M.EVAL_SUCCESS_SE: rate["se"],
            M.EVAL_RETURN: rate["return"],
            M.EVAL_TURNS: rate["turns"],
            M.EVAL_PROXY_MEAN: float(scores["proxy"].mean()),
            M.EVAL_PROXY_STD: float(scores["proxy"].std()),
        }
        if "gold" in scores:
            out[M.EVAL_GOLD_MEAN] = float(scores["gold"].mean())
            out[M.EVAL_GOLD_STD] = float(scores["gold"].std())
        return out
