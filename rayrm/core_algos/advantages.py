"""Advantage estimators, registered by their config name (``algorithm.advantage_estimator``):
GAE with a critic, and the critic-free GRPO, RLOO and REINFORCE++ (with and without a group
baseline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rayrm.core_algos.kl import kl_penalty_rewards
from rayrm.core_algos.stats import whiten

__all__ = [
    "ESTIMATOR_FUNCTIONS",
    "AdvantageInputs",
    "gae_advantages",
    "group_advantages",
    "register_estimator",
    "reinforce_returns",
    "token_advantages",
]


def group_advantages(
    *,
    scores: np.ndarray,
    groups: np.ndarray,
    estimator: Literal["grpo", "rloo"],
    std_normalize: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """One advantage per completion from the rewards of the other samples of its prompt.

    * ``grpo`` (Shao et al. 2024, https://arxiv.org/abs/2402.03300, §4.1.2): the reward minus
      its group's mean, divided by the group's standard deviation (sample std, ddof=1, as TRL
      and verl compute it, plus ``eps``); ``std_normalize=False`` is Dr. GRPO's unnormalised
      variant (Liu et al. 2025, https://arxiv.org/abs/2503.20783, §3.2).
    * ``rloo`` (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740, eq. 6): the reward
      minus the mean of the OTHER ``n − 1`` rewards of its group, ``n/(n−1)·(r_i − mean)``.

    A group of one sample has no baseline: its advantage is 0.

    Args:
        scores: (B,) sequence rewards.
        groups: (B,) group key of each completion (samples of one prompt share it).
        estimator: ``"grpo"`` or ``"rloo"``.
        std_normalize: GRPO only: divide by the group std.
        eps: GRPO only: added to the std.

    Returns:
        (B,) float64 advantages.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    out = np.zeros_like(scores)
    for key in np.unique(groups):
        idx = np.flatnonzero(groups == key)
        r = scores[idx]
        n = len(r)
        if n < 2:
            continue
        if estimator == "grpo":
            a = r - r.mean()
            out[idx] = a / (r.std(ddof=1) + eps) if std_normalize else a
        elif estimator == "rloo":
            out[idx] = r - (r.sum() - r) / (n - 1)
        else:
            raise ValueError(f"estimator must be 'grpo' or 'rloo', got {estimator!r}")
    return out


def reinforce_returns(rewards: np.ndarray, *, gamma: float = 1.0) -> np.ndarray:
    """Reward-to-go ``G_t = Σ_{s≥t} γ^(s−t) r_s`` over ONE completion, (T,) -> (T,).

    REINFORCE++ (Hu 2025, https://arxiv.org/abs/2501.03262, §3): the per-token rewards hold the
    KL penalty on every token and the score at the last; the advantages are these returns
    normalised over the whole batch (:func:`whiten` of all tokens). ``γ`` is ``algorithm.gamma``
    (1 by default, as in the paper).
    """
    r = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(r)
    running = 0.0
    for t in reversed(range(len(r))):
        running = r[t] + gamma * running
        out[t] = running
    return out


def gae_advantages(
    *,
    rewards: np.ndarray,
    values: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over the tokens of ONE completion.

    The completion's end is always terminal: ``V(s_T) = 0``. That holds for EOS and for the
    ``max_new_tokens`` limit alike, because the sequence-level reward is paid in full at the
    last token, so nothing is left to bootstrap (Schulman et al. 2016,
    https://arxiv.org/abs/1506.02438, eq. 16).

    Args:
        rewards: (T,) per-token rewards (KL penalty plus the final score).
        values: (T,) value estimates V(s_t) at each generated position.
        gamma: discount γ.
        gae_lambda: λ.

    Returns:
        ``(advantages, returns)``, both (T,), with ``returns = advantages + values`` (the value
        targets).
    """
    T = len(rewards)
    advantages = np.zeros(T, dtype=np.float64)
    last = 0.0
    for t in reversed(range(T)):
        next_value = values[t + 1] if t + 1 < T else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * gae_lambda * last
        advantages[t] = last
    returns = advantages + np.asarray(values, dtype=np.float64)
    return advantages.astype(np.float32), returns.astype(np.float32)


@dataclass(frozen=True)
class AdvantageInputs:
    """What an advantage estimator reads of a batch of completions.

    Attributes:
        rewards: per completion, (T_i,) env rewards (the score at the last token).
        kls: per completion, (T_i,) per-token KL estimates (for the reward penalty).
        kl_coef: β of the reward penalty (0 when the KL is a loss term instead).
        groups: (B,) group keys (samples of one prompt share one).
        values: per completion, (T_i,) value estimates (``gae``), or None.
        gamma, gae_lambda: GAE's γ and λ; REINFORCE++'s γ.
        std_normalize: GRPO's std normalisation.
        whiten_with: the whitening of per-token advantages (all tokens, flat, float64).
    """

    rewards: list[np.ndarray]
    kls: list[np.ndarray]
    kl_coef: float
    groups: np.ndarray
    values: list[np.ndarray] | None
    gamma: float
    gae_lambda: float
    std_normalize: bool
    whiten_with: Callable[[np.ndarray], np.ndarray]

    def shaped(self) -> list[np.ndarray]:
        """Per completion, the rewards minus β·KL on every token (:func:`kl_penalty_rewards`)."""
        return [
            kl_penalty_rewards(rewards=r, kl=k, kl_coef=self.kl_coef)
            for r, k in zip(self.rewards, self.kls, strict=True)
        ]

    def whitened(self, advantages: list[np.ndarray]) -> list[np.ndarray]:
        """Per-token advantages whitened over the whole batch, split back per completion."""
        flat = self.whiten_with(np.concatenate(advantages).astype(np.float64)).astype(np.float32)
        bounds = np.cumsum([0, *[len(a) for a in advantages]])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


Advantages = tuple[list[np.ndarray], list[np.ndarray]]


Estimator = Callable[[AdvantageInputs], Advantages]
"""``fn(inputs) -> (advantages, returns)``: per completion, (T_i,) float32 arrays."""


ESTIMATOR_FUNCTIONS: dict[str, Estimator] = {}
"""Advantage estimators by their config name (``algorithm.advantage_estimator``): see
:func:`register_estimator`."""


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Registers an advantage estimator under its config name (as verl's
    ``register_adv_est``); a new one is a function, not another branch."""

    def register(fn: Estimator) -> Estimator:
        ESTIMATOR_FUNCTIONS[name] = fn
        return fn

    return register


@register_estimator("gae")
def _gae(x: AdvantageInputs) -> Advantages:
    """Rewards minus β·KL per token, :func:`gae_advantages` with the values, whitened."""
    if x.values is None:
        raise ValueError("the gae estimator needs values")
    pairs = [
        gae_advantages(rewards=r, values=v, gamma=x.gamma, gae_lambda=x.gae_lambda)
        for r, v in zip(x.shaped(), x.values, strict=True)
    ]
    return x.whitened([a for a, _ in pairs]), [r for _, r in pairs]


def _group_estimator(kind: Literal["grpo", "rloo"]) -> Estimator:
    def estimate(x: AdvantageInputs) -> Advantages:
        scores = np.array([float(np.sum(r)) for r in x.rewards])
        penalties = x.kl_coef * np.array([float(np.sum(k)) for k in x.kls])
        adv = group_advantages(
            scores=scores, groups=x.groups, estimator=kind, std_normalize=x.std_normalize
        ) - group_advantages(scores=penalties, groups=x.groups, estimator=kind, std_normalize=False)
        out = [np.full(len(r), a, dtype=np.float32) for r, a in zip(x.rewards, adv, strict=True)]
        return out, out

    estimate.__doc__ = f"{kind}: one advantage per completion (see :func:`token_advantages`)."
    return estimate


register_estimator("grpo")(_group_estimator("grpo"))


register_estimator("rloo")(_group_estimator("rloo"))


def _reinforce_pp(x: AdvantageInputs, *, baseline: bool) -> Advantages:
    shaped = x.shaped()
    if baseline:  # each completion's score less its group's mean score, at its last token
        scores = np.array([float(np.sum(r)) for r in x.rewards])
        means = {key: scores[x.groups == key].mean() for key in np.unique(x.groups)}
        for r, key in zip(shaped, x.groups, strict=True):
            r[-1] -= means[key]
    rets = [reinforce_returns(r, gamma=x.gamma).astype(np.float32) for r in shaped]
    return x.whitened(rets), rets


register_estimator("reinforce_pp")(lambda x: _reinforce_pp(x, baseline=False))


register_estimator("reinforce_pp_baseline")(lambda x: _reinforce_pp(x, baseline=True))


def token_advantages(
    *,
    estimator: str,
    rewards: list[np.ndarray],
    kls: list[np.ndarray],
    kl_coef: float,
    groups: Sequence[object] | None = None,
    values: list[np.ndarray] | None = None,
    gamma: float = 1.0,
    gae_lambda: float = 1.0,
    std_normalize: bool = True,
    whiten_with: Callable[[np.ndarray], np.ndarray] = whiten,
) -> Advantages:
    """Per-token advantages and returns (value targets) of a batch, by the estimator
    registered under ``estimator`` (:data:`ESTIMATOR_FUNCTIONS`):

    * ``gae``: rewards minus β·KL per token, :func:`gae_advantages` with ``values``, then
      whitened over the batch's tokens.
    * ``reinforce_pp``: rewards minus β·KL per token, :func:`reinforce_returns`, whitened over
      the batch's tokens (Hu 2025); ``reinforce_pp_baseline`` first subtracts from each
      completion's score the mean score of its group.
    * ``grpo`` / ``rloo``: one advantage per completion, given to every token of it:
      :func:`group_advantages` of the scores, minus β times the completion's ΣKL centred in
      its group (the group mean for ``grpo``, the other samples' mean for ``rloo``). For RLOO
      and Dr. GRPO, linear in the reward, that is the advantage of the KL-regularised return
      score − β·ΣKL (Ahmadian et al. 2024, §3); for GRPO the std is the scores' alone, so
      the penalty keeps β's scale: were it inside, a group of equal scores would get
      unit-scale advantages made of KL noise whatever β is.

    Args:
        estimator: a name in :data:`ESTIMATOR_FUNCTIONS`.
        rewards, kls, kl_coef, values, gamma, gae_lambda, std_normalize, whiten_with: see
            :class:`AdvantageInputs` (``whiten_with``: :func:`whiten` over this batch, or one
            with the moments of every learner's shard,
            ``rayrm.rl.connectors.advantages.whiten_across_learners``).
        groups: (B,) group keys (the group estimators); None: each completion its own.

    Returns:
        ``(advantages, returns)``: per completion, (T_i,) float32 arrays.
    """
    fn = ESTIMATOR_FUNCTIONS.get(estimator)
    if fn is None:
        raise ValueError(
            f"estimator must be one of {tuple(ESTIMATOR_FUNCTIONS)}, got {estimator!r}"
        )
    keys = np.asarray(groups if groups is not None else range(len(rewards)))
    inputs = AdvantageInputs(
        rewards=rewards, kls=kls, kl_coef=kl_coef, groups=keys, values=values, gamma=gamma,
        gae_lambda=gae_lambda, std_normalize=std_normalize, whiten_with=whiten_with,
    )  # fmt: skip
    return fn(inputs)
