"""Per-token attribution: how a reward builds up token by token, and where a policy left its
reference.

What belongs here: ``rayrm explain``. For a prompt and a completion it reports

* the reward model's score of every prefix, ``s_t = RM(prompt + first t completion tokens)``
  for t = 0..T, and each token's contribution ``Δ_t = s_t − s_{t−1}``; the contributions sum
  to ``s_T − s_0`` (score of the whole text minus that of the prompt alone). All prefixes are
  scored in ONE forward pass: for a decoder reward model (GPT-2, Llama, ... with a ``score``
  head) the causal mask makes the head's output at position i the score of the text up to i,
  so one pass over the whole text gives every prefix's score; other models (e.g. encoders)
  score all prefix texts as one padded batch;
* for a trained policy (a run folder or checkpoint), per completion token the KL estimate
  ``log π(a_t|s_t) − log π_ref(a_t|s_t)`` that PPO's KL penalty uses (at the run's sampling
  temperature), and the exact ``KL(π(·|s_t) ‖ π_ref(·|s_t))`` over the vocabulary.

Output: a coloured terminal view (ANSI: green for positive, red for negative values, bold when
large) and, with ``--html``, a standalone HTML page with the same tokens shaded by value.
"""

from __future__ import annotations

import argparse
import html
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayrm.config import ConfigError
from rayrm.models.decoding import sample_completions
from rayrm.models.tokenization import PromptCodec
from rayrm.rewards import RewardModelActor
from rayrm.rl.checkpoint import checkpoint_codec, load_policy, load_reference

GREEN, RED, BOLD, RESET = "\x1b[32m", "\x1b[31m", "\x1b[1m", "\x1b[0m"


@dataclass
class RewardAttribution:
    """Reward-model scores of every prefix of a completion.

    Attributes:
        tokens: the T completion tokens as text (their part of the completion).
        prefix_scores: (T+1,) score of prompt + first t tokens, t = 0..T.
        method: ``"causal"`` (one pass over the whole text) or ``"batched"`` (all prefixes).
    """

    tokens: list[str]
    prefix_scores: np.ndarray
    method: str

    @property
    def deltas(self) -> np.ndarray:
        """(T,) each token's contribution ``s_t − s_{t−1}``."""
        return np.diff(self.prefix_scores)

    def rows(self) -> list[tuple[int, str, float, float]]:
        """``(t, token, s_t, Δ_t)`` for t = 1..T."""
        scores, deltas = self.prefix_scores[1:], self.deltas
        return [(t + 1, tok, scores[t], deltas[t]) for t, tok in enumerate(self.tokens)]


@dataclass
class TokenKL:
    """Per-token divergence of a policy from its reference on one completion.

    Attributes:
        tokens: the T completion tokens as text.
        logp: (T,) log π of each token.
        ref_logp: (T,) log π_ref of each token.
        kl_exact: (T,) KL(π(·|s_t) ‖ π_ref(·|s_t)) over the vocabulary.
    """

    tokens: list[str]
    logp: np.ndarray
    ref_logp: np.ndarray
    kl_exact: np.ndarray

    @property
    def kl(self) -> np.ndarray:
        """(T,) the k1 estimate log π − log π_ref (PPO's per-token KL penalty)."""
        return self.logp - self.ref_logp


def load_reward_model(path: str | Path) -> tuple[torch.nn.Module, Any]:
    """A reward model and its tokenizer, set up as the reward actors use them."""

    actor = RewardModelActor(str(path), device="cpu")
    return actor.model, actor.tokenizer


def _completion_positions(
    tokenizer: Any, prompt: str, completion: str
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Token ids of prompt + completion (tokenized together, as the reward actor does) and the
    positions of the completion's tokens: those whose text reaches past the prompt (a token
    straddling the boundary counts; special tokens, with empty offsets, never do), and the
    character offsets of every token."""
    enc = tokenizer(prompt + completion, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    return ids, [i for i, (_, end) in enumerate(offsets) if end > len(prompt)], offsets


def _is_decoder_with_score_head(model: torch.nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    score = getattr(model, "score", None)
    return (
        isinstance(score, torch.nn.Linear)
        and model.config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )


def _adds_trailing_specials(tokenizer: Any) -> bool:
    probe = "ab"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    return full[len(full) - len(plain) :] != plain


@torch.no_grad()
def reward_attribution(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    completion: str,
    *,
    method: str = "auto",
    max_length: int = 512,
) -> RewardAttribution:
    """Scores prompt + every prefix of the completion in one forward pass.

    Args:
        model: scalar-head sequence-classification model (see :func:`load_reward_model`).
        tokenizer: its tokenizer (a fast one: token boundaries come from offset mappings).
        prompt, completion: the texts.
        method: ``"causal"`` (decoder models whose tokenizer adds no trailing special tokens:
            the head at every position of one pass), ``"batched"`` (every prefix text scored
            in one padded batch, exactly as the reward actors would score it), or ``"auto"``.
        max_length: texts keep their last ``max_length`` tokens (the actors' truncation).

    Returns:
        The prefix scores; ``prefix_scores[-1]`` is the reward of the whole text. With an
        empty prompt, ``s_0`` is 0 (an empty text has no score).
    """
    ids, positions, offsets = _completion_positions(tokenizer, prompt, completion)
    bounds = [0] + [offsets[i][1] - len(prompt) for i in positions]  # char ends, t = 0..T
    tokens = [completion[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if method == "auto":
        causal = _is_decoder_with_score_head(model) and not _adds_trailing_specials(tokenizer)
        method = "causal" if causal and len(ids) <= max_length else "batched"
    if method == "causal":
        device = next(model.parameters()).device
        x = torch.tensor([ids], device=device)  # (1, L)
        hidden = model.base_model(input_ids=x, attention_mask=torch.ones_like(x))[0]  # (1, L, H)
        per_position = model.score(hidden)[0, :, 0].float().cpu().numpy()  # (L,)
        # The last token of each prefix: the one before the completion (t = 0), then each
        # completion token; an empty text (nothing before the completion) scores 0.
        last = np.array([(positions[0] if positions else len(ids)) - 1, *positions])  # (T+1,)
        scores = np.where(last >= 0, per_position[np.maximum(last, 0)], 0.0)
    elif method == "batched":
        texts = [prompt + completion[:b] for b in bounds]
        device = next(model.parameters()).device
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        scores = logits.logits[:, 0].float().cpu().numpy()  # (T+1,)
        if not texts[0]:
            scores[0] = 0.0
    else:
        raise ValueError(f"method must be auto, causal or batched, got {method!r}")
    return RewardAttribution(tokens=tokens, prefix_scores=scores.astype(np.float64), method=method)


@torch.no_grad()
def policy_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    completion: str,
    *,
    temperature: float = 1.0,
    max_prompt_tokens: int = 32,
    eos: bool = False,
    codec: PromptCodec | None = None,
) -> TokenKL:
    """Per-token KL of ``policy`` from ``reference`` on one completion (one pass each).

    The prompt is encoded as the environment does (``codec``: special tokens, chat template,
    left truncation); the completion is tokenized in the prompt's context, plus EOS when
    ``eos``.
    """
    codec = codec or PromptCodec(tokenizer, max_prompt_tokens=max_prompt_tokens)
    prompt_ids = codec.encode(prompt)
    completion_ids = codec.encode_completion(prompt_ids, completion)
    if eos:
        completion_ids = completion_ids + [codec.eos_token_id]
    P, T = len(prompt_ids), len(completion_ids)
    x = torch.tensor([prompt_ids + completion_ids])  # (1, P + T)
    target = torch.tensor(completion_ids)  # (T,)
    out = []
    for model in (policy, reference):
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0]  # (P+T, V)
        out.append(torch.log_softmax(logits[P - 1 : P + T - 1].float() / temperature, dim=-1))
    logp_all, ref_all = out  # (T, V) each
    kl_exact = (logp_all.exp() * (logp_all - ref_all)).sum(-1)  # (T,)
    tokens = [tokenizer.decode([t]) for t in completion_ids]
    return TokenKL(
        tokens=tokens,
        logp=logp_all.gather(-1, target[:, None])[:, 0].numpy().astype(np.float64),
        ref_logp=ref_all.gather(-1, target[:, None])[:, 0].numpy().astype(np.float64),
        kl_exact=kl_exact.numpy().astype(np.float64),
    )


def colorize(tokens: list[str], values: np.ndarray, *, color: bool = True) -> str:
    """Tokens joined, each green (value > 0) or red (< 0), bold when |value| ≥ half the max."""
    if not color:
        return "".join(tokens)
    top = float(np.max(np.abs(values))) if len(values) else 0.0
    parts = []
    for tok, v in zip(tokens, values, strict=True):
        code = GREEN if v > 0 else RED if v < 0 else ""
        if code and top > 0 and abs(v) >= top / 2:
            code += BOLD
        parts.append(f"{code}{tok}{RESET}" if code else tok)
    return "".join(parts)


def format_report(
    prompt: str,
    attribution: RewardAttribution | None,
    kl: TokenKL | None,
    *,
    color: bool = True,
) -> str:
    """The terminal text: coloured text line(s) and a table per analysis."""
    lines: list[str] = []
    if attribution is not None:
        a = attribution
        lines += [
            f"reward: {a.prefix_scores[-1]:+.4f} (prompt alone {a.prefix_scores[0]:+.4f}; "
            f"per-token Δ sums to {a.deltas.sum():+.4f}; {a.method} pass)",
            prompt + colorize(a.tokens, a.deltas, color=color),
            f"{'t':>4}  {'token':<12} {'score':>9} {'Δ':>9}",
        ]
        for t, tok, s, d in a.rows():
            lines.append(f"{t:>4}  {tok!r:<12} {s:>+9.4f} {d:>+9.4f}")
    if kl is not None:
        if lines:
            lines.append("")
        lines += [
            f"KL to the reference: {kl.kl.sum():+.4f} (sum of log π − log π_ref), "
            f"exact {kl.kl_exact.sum():.4f}",
            prompt + colorize(kl.tokens, kl.kl, color=color),
            f"{'t':>4}  {'token':<12} {'log π':>9} {'log π_ref':>9} {'kl':>9} {'exact':>9}",
        ]
        rows = zip(kl.tokens, kl.logp, kl.ref_logp, kl.kl, kl.kl_exact, strict=True)
        for t, (tok, lp, rlp, k, ke) in enumerate(rows, 1):
            lines.append(f"{t:>4}  {tok!r:<12} {lp:>+9.4f} {rlp:>+9.4f} {k:>+9.4f} {ke:>9.4f}")
    return "\n".join(lines)


def _html_tokens(tokens: list[str], values: np.ndarray, label: str) -> str:
    top = float(np.max(np.abs(values))) if len(values) else 0.0
    spans = []
    for tok, v in zip(tokens, values, strict=True):
        alpha = abs(v) / top if top > 0 else 0.0
        rgb = "0,160,0" if v > 0 else "200,0,0"
        spans.append(
            f'<span class="tok" style="background: rgba({rgb},{alpha:.3f})" '
            f'title="{label} {v:+.4f}">{html.escape(tok)}</span>'
        )
    return "".join(spans)


def write_html(
    path: str | Path,
    prompt: str,
    attribution: RewardAttribution | None,
    kl: TokenKL | None,
) -> Path:
    """A standalone HTML page: the tokens shaded by value (hover for numbers) and tables."""
    body = [f"<h1>rayrm explain</h1><p>Prompt: <code>{html.escape(prompt)}</code></p>"]
    if attribution is not None:
        a = attribution
        rows = "".join(
            f"<tr><td>{t}</td><td><code>{html.escape(tok)}</code></td>"
            f"<td>{s:+.4f}</td><td>{d:+.4f}</td></tr>"
            for t, tok, s, d in a.rows()
        )
        body.append(
            f"<h2>Reward by token</h2><p>Score {a.prefix_scores[-1]:+.4f}, prompt alone "
            f"{a.prefix_scores[0]:+.4f}. Green raised the reward, red lowered it.</p>"
            f'<p class="text">{html.escape(prompt)}{_html_tokens(a.tokens, a.deltas, "Δ")}</p>'
            f"<table><tr><th>t</th><th>token</th><th>prefix score</th><th>Δ</th></tr>{rows}"
            f"</table>"
        )
    if kl is not None:
        rows = "".join(
            f"<tr><td>{t}</td><td><code>{html.escape(tok)}</code></td><td>{lp:+.4f}</td>"
            f"<td>{rlp:+.4f}</td><td>{k:+.4f}</td><td>{ke:.4f}</td></tr>"
            for t, (tok, lp, rlp, k, ke) in enumerate(
                zip(kl.tokens, kl.logp, kl.ref_logp, kl.kl, kl.kl_exact, strict=True), 1
            )
        )
        body.append(
            f"<h2>KL to the reference by token</h2><p>Sum of log π − log π_ref: "
            f"{kl.kl.sum():+.4f}; exact KL summed: {kl.kl_exact.sum():.4f}.</p>"
            f'<p class="text">{html.escape(prompt)}{_html_tokens(kl.tokens, kl.kl, "kl")}</p>'
            f"<table><tr><th>t</th><th>token</th><th>log π</th><th>log π_ref</th><th>kl</th>"
            f"<th>exact</th></tr>{rows}</table>"
        )
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".text{font-family:monospace;font-size:1.3em;white-space:pre-wrap}"
        ".tok{border-radius:3px}td,th{padding:0 .8em;text-align:right}"
    )
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>rayrm explain</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def main(args: argparse.Namespace) -> int:
    """``rayrm explain``. ConfigError propagates (the CLI turns it into exit code 2)."""
    policy = tokenizer = cfg = codec = None
    if args.run:
        policy, tokenizer, cfg, ckpt = load_policy(args.run)
        codec = checkpoint_codec(ckpt, cfg, tokenizer)
    rm_path = args.reward_model
    if rm_path is None and cfg is not None and cfg.reward.source == "model":
        rm_path = cfg.reward.path
    if rm_path is None and policy is None:
        raise ConfigError("rayrm explain needs --reward-model DIR and/or --run RUN")
    completion = args.completion
    if completion is None:
        if policy is None or cfg is None or codec is None:
            raise ConfigError("--completion is required without --run (nothing to sample)")

        completion = sample_completions(
            policy, codec, [args.prompt], max_new_tokens=cfg.generation.max_new_tokens, greedy=True
        )[0]
    attribution = kl = None
    if rm_path is not None:
        if not Path(rm_path).is_dir():
            raise ConfigError(f"--reward-model {rm_path!r} is not a directory")
        model, rm_tokenizer = load_reward_model(rm_path)
        attribution = reward_attribution(model, rm_tokenizer, args.prompt, completion)
    if policy is not None and cfg is not None:
        kl = policy_kl(
            policy,
            load_reference(args.run),
            tokenizer,
            args.prompt,
            completion,
            temperature=cfg.generation.temperature,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
            eos=args.eos,
            codec=codec,
        )
    color = not args.no_color and sys.stdout.isatty()
    print(format_report(args.prompt, attribution, kl, color=color))
    if args.html:
        print(f"wrote {write_html(args.html, args.prompt, attribution, kl)}")
    return 0
