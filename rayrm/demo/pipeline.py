"""The sentiment demo's stages in order, each cached in the workspace under a hash of its
settings and inputs (:func:`rayrm.demo.cache.run_stage`).

What belongs here: :func:`demo_stages`, the pipeline ``rayrm demo`` runs and the
over-optimisation study (:mod:`rayrm.demo.overoptimise`) runs once per seed::

    data ─> tokenizer ─> sft ─> pairs (gold labels) ─> reward_model ─> ppo
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayrm.demo import steps as ds
from rayrm.demo.cache import StageResult, run_stage
from rayrm.demo.steps import STAGE_SETTINGS, DemoSizes

__all__ = ["demo_stages"]


def demo_stages(
    s: DemoSizes,
    work: Path,
    progress: bool,
    log: Callable[[str], None],
    *,
    until: str = "ppo",
) -> list[StageResult]:
    """Runs or finds every stage of the sentiment demo up to ``until`` (``reward_model`` or
    ``ppo``), in order, in ``work``; each stage's key names the stages it reads."""

    settings = dataclasses.asdict(s)
    done: dict[str, StageResult] = {}

    def stage(
        name: str, inputs: tuple[str, ...], build: Callable[[Path], dict[str, Any]]
    ) -> StageResult:
        key = {k: settings[k] for k in STAGE_SETTINGS[name]}
        key |= {i: done[i].hash for i in inputs}
        folder = work / ("runs" if name == "ppo" else "stages")
        done[name] = run_stage(folder, name, key, build, log)
        return done[name]

    data = stage("data", (), lambda d: ds.build_data(d, s))
    corpus = data.dir / "corpus.txt"
    tok = stage("tokenizer", ("data",), lambda d: ds.build_tokenizer(d, s, corpus))
    sft = stage(
        "sft", ("data", "tokenizer"), lambda d: ds.build_sft(d, s, corpus, tok.dir, progress)
    )
    sft_model = sft.info["model"]
    prompts = data.dir / "prompts.jsonl"
    pairs = stage(
        "pairs", ("data", "sft"), lambda d: ds.build_pairs(d, s, sft_model, prompts, progress)
    )
    rm = stage(
        "reward_model",
        ("pairs", "sft"),
        lambda d: ds.build_reward_model(d, s, sft_model, pairs.info["path"], progress),
    )
    log(f"reward model held-out pairwise accuracy: {rm.info['eval_accuracy']:.3f}")
    if until == "reward_model":
        return list(done.values())
    rows = [(r.name, r.dir, None if r.cached else r.seconds) for r in done.values()]
    stage(
        "ppo",
        ("data", "sft", "reward_model"),
        lambda d: ds.build_ppo(d, s, sft_model, rm.info, data.dir, rows),
    )
    return list(done.values())
