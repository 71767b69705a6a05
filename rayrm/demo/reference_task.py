"""Small synthetic tasks and hand-built models with known answers, built locally.

What belongs here: what the reference-based rewards, the ensembles and ``rayrm explain`` are
demonstrated and tested on, with nothing downloaded:

* the *last-word* task: a prompt lists three short words, the reference is the last one
  (``"owl fox cat:"`` -> ``"cat"``); chrF against the reference rewards every right character,
  so a tiny character-level policy improves it within a short PPO run;
* :func:`build_mean_value_reward_model`: a GPT-2 sequence-classification model whose score is,
  exactly, the mean of fixed per-character values over the text, so the reward of every prefix
  and every token's contribution is known by hand (``rayrm explain`` tests, ensemble tests).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from envs.builtin import build_char_tokenizer
from rayrm.models.tiny import build_tiny_policy

LAST_WORD_WORDS = ("cat", "dog", "sun", "sea", "red", "owl")
"""Three-letter words of the last-word task (only characters the built-in tokenizer knows).
Few enough that a random tiny policy hits some of their characters, so chrF has a signal."""

REFERENCE_TASK_CONFIG = "reference_task.yaml"


def last_word_rows(num_prompts: int, *, seed: int = 0, words_per_prompt: int = 3) -> list[dict]:
    """Rows ``{"prompt": "w1 w2 w3:", "reference": "w3"}`` of the last-word task.

    Args:
        num_prompts: rows to draw.
        seed: the draw is deterministic given the seed.
        words_per_prompt: words listed in each prompt.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(num_prompts):
        words = [rng.choice(LAST_WORD_WORDS) for _ in range(words_per_prompt)]
        rows.append({"prompt": " ".join(words) + ":", "reference": words[-1]})
    return rows


def write_rows_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Writes rows as JSON Lines (the prompts-file format, any columns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_reference_task(
    workdir: str | Path, *, num_prompts: int = 256, num_iterations: int = 80, seed: int = 0
) -> Path:
    """Builds the last-word task workspace: a tiny policy, prompts with references, a config.

    The config is ``jobs/configs/reference_task.yaml`` with the workspace's paths filled in;
    held-out prompts are a second draw from the same task.

    Returns:
        Path of the written YAML run config.
    """

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "policy"
    if not (policy / "config.json").exists():
        build_tiny_policy(policy)
    prompts = write_rows_jsonl(work / "prompts.jsonl", last_word_rows(num_prompts, seed=seed))
    heldout = write_rows_jsonl(work / "heldout.jsonl", last_word_rows(64, seed=seed + 1))
    shipped = Path(__file__).resolve().parents[2] / "jobs" / "configs" / REFERENCE_TASK_CONFIG
    config: dict[str, Any] = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    config["model"]["path"] = str(policy)
    config["data"]["prompts"] = str(prompts)
    config["eval"]["prompts"] = str(heldout)
    config["run"]["num_iterations"] = num_iterations
    config["run"]["storage_path"] = str(work / "runs")
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def build_mean_value_reward_model(
    out_dir: str | Path, values: Mapping[str, float], tokenizer: Any = None
) -> str:
    """Writes a GPT-2 reward model whose score is the mean of per-token values over the text.

    ``score(text) = mean over the tokens x of text of values[x]`` (tokens not in ``values``
    count 0), exact up to float32 rounding, so each prefix's score and each token's
    contribution are known by hand. It is an ordinary ``GPT2ForSequenceClassification``
    (loadable by ``AutoModelForSequenceClassification``) with weights set by construction:

    * embeddings ``(v_x, -v_x, 0, 0)``, no position embeddings;
    * one block whose attention has zero query/key weights, hence uniform causal attention:
      position i receives the mean of the value vectors of tokens 0..i, written to dims 2, 3
      by the output projection; the MLP is zero;
    * layer norms with a huge epsilon (1e12) and gain sqrt(eps): on these zero-mean vectors
      ``LN(h) = h · sqrt(eps) / sqrt(var(h) + eps) = h`` to float32 precision;
    * the scalar head reads dim 2, the running mean, at the last token.

    Args:
        out_dir: directory written (model and tokenizer).
        values: token text -> value, e.g. ``{"a": 1.0, "e": 1.0}`` (single characters with the
            built-in character tokenizer).
        tokenizer: default: the built-in character tokenizer.

    Returns:
        ``out_dir`` as a string.
    """
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = tokenizer or build_char_tokenizer()
    eps = 1e12
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=4,
        n_layer=1,
        n_head=1,
        layer_norm_epsilon=eps,
        num_labels=1,
        pad_token_id=pad,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2ForSequenceClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        vocab = tokenizer.get_vocab()
        for token, value in values.items():
            if token not in vocab:
                raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
            model.transformer.wte.weight[vocab[token]] = torch.tensor([value, -value, 0.0, 0.0])
        block = model.transformer.h[0]
        for ln in (block.ln_1, block.ln_2, model.transformer.ln_f):
            ln.weight.fill_(math.sqrt(eps))
        # c_attn is a Conv1D with weight (in, 3 * n_embd): [query | key | value].
        block.attn.c_attn.weight[0, 8] = 1.0  # value dim 0 <- input dim 0
        block.attn.c_attn.weight[1, 9] = 1.0  # value dim 1 <- input dim 1
        block.attn.c_proj.weight[0, 2] = 1.0  # mean of values -> residual dims 2, 3
        block.attn.c_proj.weight[1, 3] = 1.0
        model.score.weight[0, 2] = 1.0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
