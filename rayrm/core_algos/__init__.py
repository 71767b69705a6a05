"""Pure RL math for RLHF-PPO: advantages, PPO losses, KL penalties, KL control, sampling.

Everything here is a keyword-only function (or a tiny stateful controller) over torch tensors
or numpy arrays. Nothing imports Ray, RLlib or transformers, so each piece is unit-testable
against hand-computed values (see tests/unit/core_algos/test_core_algos.py). ``advantages``
(estimators, registered by name), ``losses`` (PPO, value, aggregations registered by name),
``kl`` (estimators, the reward penalty, β controllers), ``sampling`` and ``stats``.

Shapes: ``B`` completions, ``T`` generated tokens of one completion, ``N`` token rows of a
flattened batch (all completions' tokens concatenated), ``V`` vocabulary size.
"""

from rayrm.core_algos.advantages import (
    ESTIMATOR_FUNCTIONS,
    AdvantageInputs,
    gae_advantages,
    group_advantages,
    register_estimator,
    reinforce_returns,
    token_advantages,
)
from rayrm.core_algos.kl import (
    K3_CLAMP,
    KL_ESTIMATORS,
    LOG_RATIO_CLAMP,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_penalty_rewards,
)
from rayrm.core_algos.losses import (
    AGGREGATIONS,
    aggregate_tokens,
    entropy_from_logits,
    logp_and_entropy,
    ppo_policy_loss,
    register_aggregation,
    value_loss,
)
from rayrm.core_algos.sampling import sample_tokens
from rayrm.core_algos.stats import RunningMoments, masked_mean, whiten

__all__ = [
    "AGGREGATIONS",
    "ESTIMATOR_FUNCTIONS",
    "K3_CLAMP",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "AdaptiveKLController",
    "AdvantageInputs",
    "FixedKLController",
    "RunningMoments",
    "aggregate_tokens",
    "entropy_from_logits",
    "gae_advantages",
    "group_advantages",
    "kl_estimate",
    "kl_penalty_rewards",
    "logp_and_entropy",
    "masked_mean",
    "ppo_policy_loss",
    "register_aggregation",
    "register_estimator",
    "reinforce_returns",
    "sample_tokens",
    "token_advantages",
    "value_loss",
    "whiten",
]
