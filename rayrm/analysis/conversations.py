"""The report of a multi-turn run: held-out success before and after, and whole conversations.

What belongs here: the parts of ``report.md`` (``rayrm.analysis.report``) that differ when a
run's episodes have several turns (an ``env`` section). The initial and the final policy each
play every held-out row once (:class:`rayrm.rl.env_evaluation.HeldOutEpisodes`: the run's
sampler, sampling settings and seed), and the report shows their success rates with standard
errors and, for the first ``eval.report_samples`` rows, both conversations turn by turn: the
opening, the assistant's turns as the model wrote them (tool calls included), and every reply
(tool results, game states).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayrm.config import RLConfig
from rayrm.models.loading import load_causal_lm
from rayrm.rewards import pool_from_config
from rayrm.rl.checkpoint import load_policy
from rayrm.rl.env_evaluation import EpisodeOutcome, HeldOutEpisodes, success_rate
from rayrm.rl.settings import environment_of, policy_vocab_size

__all__ = ["conversation_block", "episodes_before_after", "episodes_headline", "episodes_section"]


def episodes_before_after(cfg: RLConfig, exp_dir: Path) -> dict[str, Any]:
    """Each held-out row played once by the initial and by the final policy.

    Returns:
        ``{"before", "after"}``: each ``{"outcomes", "rate", "scores"}`` (the outcomes,
        :func:`~rayrm.rl.env_evaluation.success_rate` of them, and the proxy/gold scores).
    """
    final = load_policy(exp_dir)[0]
    initial = load_causal_lm(cfg.model.path, cfg.model.dtype)
    _, env_config = environment_of(cfg, policy_vocab_size(cfg))
    held_out = HeldOutEpisodes(cfg, env_config)
    if not held_out.rows:
        raise ValueError("the report needs held-out rows (eval.prompts or data.prompts)")
    proxy = pool_from_config(cfg.reward, local=True, tokenizer=cfg.model.resolved_tokenizer_path)
    out = {}
    for name, model in (("before", initial), ("after", final)):
        outcomes = held_out.play(model)
        out[name] = {
            "outcomes": outcomes,
            "rate": success_rate(outcomes),
            "scores": held_out.scores(outcomes, proxy),
        }
    return out


def episodes_headline(ba: dict[str, Any]) -> list[str]:
    """The headline lines of the held-out episodes: success (± standard error), the gain in
    standard errors, return and turns, proxy (and gold) before and after."""
    a, b = ba["before"]["rate"], ba["after"]["rate"]
    diff = b["success"] - a["success"]
    se = math.hypot(a["se"], b["se"])
    z = f" = {diff / se:+.1f} standard errors" if se > 0 else ""
    lines = [
        f"held-out success, {int(a['n'])} episodes each: before {a['success']:.3f} ± "
        f"{a['se']:.3f}, after {b['success']:.3f} ± {b['se']:.3f} (gain {diff:+.3f}{z})",
        f"held-out return: before {a['return']:+.3f}, after {b['return']:+.3f}; turns per "
        f"episode: {a['turns']:.2f} -> {b['turns']:.2f}",
    ]
    for key, label in (("proxy", "proxy"), ("gold", "GOLD")):
        if key in ba["after"]["scores"]:
            before, after = ba["before"]["scores"][key], ba["after"]["scores"][key]
            lines.append(f"held-out {label}: before {_fmt(before)}, after {_fmt(after)}")
    return lines


def _fmt(values: np.ndarray) -> str:
    return f"{values.mean():+.3f} ± {values.std():.3f}"


def conversation_block(messages: Sequence[dict[str, Any]]) -> list[str]:
    """A conversation as a fenced block, one ``role: content`` paragraph per message, the
    texts verbatim (tool calls as the model wrote them)."""
    body = "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages)
    fence = "~~~~" if "```" in body else "```"
    return [fence + "text", body, fence]


def _summary(o: EpisodeOutcome) -> str:
    end = "truncated" if o.truncated else "finished"
    return f"success {o.success:g}, return {o.episode_return:+.3f}, {o.turns} turns, {end}"


def episodes_section(ba: dict[str, Any], rows: int) -> list[str]:
    """The report's conversations: for each of the first ``rows`` held-out rows, the initial
    and the final policy's episode."""
    lines: list[str] = []
    before, after = ba["before"]["outcomes"], ba["after"]["outcomes"]
    for i in range(min(rows, len(before))):
        lines += [f"### Held-out row {before[i].prompt_index}", ""]
        for name, o in (("Before", before[i]), ("After", after[i])):
            lines += [f"**{name}** ({_summary(o)}):", "", *conversation_block(o.messages), ""]
    return lines
