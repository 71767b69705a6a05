"""``rayrm data pairs``: preference pairs sampled from a policy and labelled by a judge.

Two completions per prompt from a policy (or one from it and one from another policy,
``against``: a trained policy's own completions next to where it started, as the rounds of
iterated RLHF label them); a judge function decides which one is *chosen*. The pairs file is
the input of ``rayrm train-rm`` (columns ``prompt``, ``chosen``, ``rejected``, plus the two
judge scores).

``pyarrow``, ``torch`` and ``transformers`` are imported inside the functions so that the
command line stays quick to start.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rayrm.config import ConfigError
from rayrm.models.decoding import sample_completions
from rayrm.models.hf_files import stop_token_ids_of
from rayrm.models.loading import load_causal_lm, load_tokenizer
from rayrm.models.tokenization import PromptCodec
from rayrm.rewards import RewardSourceError, resolve_function
from rayrm.rl.checkpoint import checkpoint_codec, load_policy
from rayrm.stages.tables import read_table, string_column

PAIR_COLUMNS = ("prompt", "chosen", "rejected", "chosen_score", "rejected_score")
"""Columns :func:`build_preference_pairs` writes, in order."""


def load_policy_with_codec(
    policy: str | os.PathLike[str], max_prompt_tokens: int
) -> tuple[Any, Any]:
    """A causal LM and its prompt codec (tokenizer, special tokens, stop ids) from a Hugging
    Face directory or a rayrm run/checkpoint."""

    path = Path(policy)
    if (path / "config.json").is_file():
        codec = PromptCodec(
            load_tokenizer(path),
            max_prompt_tokens=max_prompt_tokens,
            stop_token_ids=stop_token_ids_of(path),
        )
        return load_causal_lm(str(path)), codec
    if not path.exists():
        raise ConfigError(f"policy {str(path)!r} does not exist", key="policy")

    model, tokenizer, cfg, ckpt = load_policy(path)  # ConfigError if it is no run either
    return model, checkpoint_codec(ckpt, cfg, tokenizer, max_prompt_tokens=max_prompt_tokens)


def _prompt_list(prompts: str | os.PathLike[str] | Sequence[str], column: str) -> list[str]:
    """The prompts: a file's ``column``, or the strings given."""
    if isinstance(prompts, str | os.PathLike):
        table = read_table(prompts, key="prompts")
        out = string_column(table, column, path=str(prompts), key="prompt_column")
    else:
        out = list(prompts)
    if not out:
        raise ConfigError("prompts: no prompts given", key="prompts")
    return out


def _resolve_judge(judge: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(judge):
        return judge

    try:
        return resolve_function(judge)
    except RewardSourceError as exc:
        raise ConfigError(f"judge: {exc}", key="judge") from exc


def _judge_scores(judge: Callable[..., Any], prompts: list[str], completions: list[str]) -> list:
    out = judge(list(prompts), list(completions))
    scores = [float(x) for x in out]
    if len(scores) != len(prompts):
        raise ValueError(
            f"judge returned {len(scores)} scores for {len(prompts)} completions; it must "
            f"return one float per (prompt, completion)"
        )
    return scores


def _prompt_order(num_prompts: int, num_pairs: int | None, seed: int) -> tuple[list[int], int]:
    """Prompt indices to try, and how many pairs are wanted.

    None: every prompt once, in order. Otherwise seeded shuffled cycles over the prompts, up to
    ``4 * num_pairs`` tries (ties are dropped, so more tries than pairs are needed).
    """
    import numpy as np

    if num_pairs is None:
        return list(range(num_prompts)), num_prompts
    rng = np.random.default_rng(seed)
    cycles = math.ceil(4 * num_pairs / num_prompts)
    order = [int(i) for _ in range(cycles) for i in rng.permutation(num_prompts)]
    return order[: 4 * num_pairs], num_pairs


def _write_pairs(
    rows: dict[str, list[Any]], out_path: str | os.PathLike[str], **metadata: Any
) -> Path:
    """Writes the pair columns as Parquet, with ``rayrm.*`` schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = [pa.string()] * 3 + [pa.float64()] * 2
    table = pa.table({c: pa.array(rows[c], t) for c, t in zip(PAIR_COLUMNS, types, strict=True)})
    table = table.replace_schema_metadata({f"rayrm.{k}": str(v) for k, v in metadata.items()})
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out


def build_preference_pairs(
    policy: str | os.PathLike[str],
    prompts: str | os.PathLike[str] | Sequence[str],
    judge: str | Callable[[list[str], list[str]], Sequence[float]],
    out_path: str | os.PathLike[str],
    *,
    num_pairs: int | None = None,
    prompt_column: str = "prompt",
    max_new_tokens: int = 32,
    max_prompt_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 32,
    min_margin: float = 0.0,
    seed: int = 0,
    against: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Samples two completions per prompt, lets a judge pick one, writes the pairs as Parquet.

    Each prompt gets two independent samples from the policy, or with ``against`` one from
    the policy and one from that policy (KV-cached, as in PPO's sampler); the judge scores both and the higher one becomes ``chosen``. Pairs whose scores
    differ by ``min_margin`` or less (ties), or whose two completions are identical, carry no
    preference and are dropped.

    Args:
        policy: Hugging Face causal-LM directory, or a rayrm run folder / checkpoint.
        prompts: Prompts file (``.parquet``/``.jsonl``, column ``prompt_column``) or a list.
        judge: ``"module:function"`` (or a callable) with the reward signature
            ``fn(prompts, completions) -> list[float]``; higher is better.
        out_path: Parquet file to write (parent directories are created).
        num_pairs: Pairs wanted. None: one attempt per prompt, in file order. Otherwise
            prompts are drawn in a seeded shuffled cycle until ``num_pairs`` pairs are kept
            or ``4 * num_pairs`` prompts were tried.
        prompt_column: Column of the prompts file holding the prompts.
        max_new_tokens: Completion length limit in tokens.
        max_prompt_tokens: Prompts are cut to their last this many tokens for sampling.
        temperature, top_k, top_p: Sampling settings (0 / 1.0 turn top-k / top-p off).
        batch_size: Prompts per sampling batch (each batch decodes ``2 * batch_size`` rows).
        min_margin: Pairs with ``|score_a - score_b| <= min_margin`` are dropped.
        seed: Seed of the prompt order and the sampling.
        against: A second policy (as ``policy``) that samples the other completion of each
            pair; None: both from ``policy``.
        progress: Show a progress bar on stderr.

    Returns:
        ``{"path", "num_pairs", "num_attempts", "num_dropped", "chosen_score_mean",
        "rejected_score_mean"}``.

    Raises:
        ConfigError: A missing file or column, or a judge that cannot be imported.
    """
    from tqdm.auto import tqdm

    prompt_list = _prompt_list(prompts, prompt_column)
    if num_pairs is not None and num_pairs < 1:
        raise ConfigError(f"num_pairs must be >= 1 (got {num_pairs})", key="num_pairs")
    judge_fn = _resolve_judge(judge)
    model, codec = load_policy_with_codec(policy, max_prompt_tokens)
    other, other_codec = (
        load_policy_with_codec(against, max_prompt_tokens) if against is not None else (None, None)
    )

    order, wanted = _prompt_order(len(prompt_list), num_pairs, seed)
    rows: dict[str, list[Any]] = {c: [] for c in PAIR_COLUMNS}
    attempts = dropped = 0
    bar = tqdm(total=wanted, desc="pairs", unit="pair", disable=not progress)
    for step, start in enumerate(range(0, len(order), batch_size)):
        if len(rows["prompt"]) >= wanted:
            break
        batch = [prompt_list[i] for i in order[start : start + batch_size]]
        sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
                    "top_p": top_p, "seed": seed * 1_000_003 + step}  # fmt: skip
        if other is None:
            completions = sample_completions(model, codec, batch + batch, **sampling)
            a, b = completions[: len(batch)], completions[len(batch) :]
        else:
            a = sample_completions(model, codec, batch, **sampling)
            b = sample_completions(other, other_codec, batch, **sampling)
        scores = _judge_scores(judge_fn, batch + batch, a + b)
        for i, prompt in enumerate(batch):
            if len(rows["prompt"]) >= wanted:
                break
            attempts += 1
            sa, sb = scores[i], scores[len(batch) + i]
            if a[i] == b[i] or abs(sa - sb) <= min_margin:
                dropped += 1
                continue
            (chosen, sc), (rejected, sr) = sorted([(a[i], sa), (b[i], sb)], key=lambda x: -x[1])
            for col, value in zip(PAIR_COLUMNS, (prompt, chosen, rejected, sc, sr), strict=True):
                rows[col].append(value)
            bar.update(1)
    bar.close()

    judge_name = judge if isinstance(judge, str) else getattr(judge, "__qualname__", "callable")
    against_name = {} if against is None else {"against": os.fspath(against)}
    out = _write_pairs(
        rows, out_path, policy=os.fspath(policy), judge=judge_name, seed=seed, **against_name
    )

    def mean(xs: list[float]) -> float:
        return float(sum(xs) / len(xs)) if xs else float("nan")

    return {
        "path": str(out),
        "num_pairs": len(rows["prompt"]),
        "num_attempts": attempts,
        "num_dropped": dropped,
        "chosen_score_mean": mean(rows["chosen_score"]),
        "rejected_score_mean": mean(rows["rejected_score"]),
    }


# ---------------------------------------------------------------------------------------------
# Command line: rayrm data pairs
# ---------------------------------------------------------------------------------------------


def pairs_main(args: argparse.Namespace) -> int:
    """``rayrm data pairs``; ConfigError propagates (the CLI turns it into exit code 2)."""
    summary = build_preference_pairs(
        args.policy,
        args.prompts,
        args.judge,
        args.out,
        num_pairs=args.num_pairs,
        prompt_column=args.prompt_column,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        batch_size=args.batch_size,
        min_margin=args.min_margin,
        seed=args.seed,
        against=args.against,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(
        f"wrote {summary['num_pairs']} pairs to {summary['path']} "
        f"({summary['num_attempts']} prompts tried, {summary['num_dropped']} ties dropped; "
        f"judge score chosen {summary['chosen_score_mean']:.3f} vs rejected "
        f"{summary['rejected_score_mean']:.3f})"
    )
    return 0
