"""Reward sources: what turns finished completions into one score each.

* ``base``: the record every scorer takes (:class:`~rayrm.rewards.base.Completion`),
  :class:`~rayrm.rewards.base.RewardActor` and the :class:`~rayrm.rewards.base.Scorer` protocol;
* ``actors``: the reward-model actor; ``functions``: the reward-function actor (no torch);
  ``text_metrics``: chrF/BLEU;
* ``pool``: :class:`~rayrm.rewards.pool.RewardPool`, actors scoring in parallel batches;
* ``compose``: ensembles, weighted composites, length and missing-EOS penalties;
* ``shaping``: normalisation and clipping of the scores, and the score paid at the last token;
* ``service``: the shared reward service (``rayrm serve-rm``); ``judges``: gold scorers.

:func:`pool_from_config` builds whatever a ``RewardSettings`` describes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rayrm.rewards.base import (
    Completion,
    RewardSourceError,
    Scorer,
    completion_records,
    resolve_function,
)
from rayrm.rewards.compose import ComposedReward, EnsembleReward, build_reward
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rewards.pool import POOL_NAMESPACE, RewardPool

if TYPE_CHECKING:
    from rayrm.rewards.actors import RewardModelActor, reward_model_texts

__all__ = [
    "POOL_NAMESPACE",
    "ComposedReward",
    "Completion",
    "EnsembleReward",
    "RewardFunctionActor",
    "RewardModelActor",
    "RewardPool",
    "RewardSourceError",
    "Scorer",
    "completion_records",
    "pool_from_config",
    "resolve_function",
    "reward_model_texts",
]


def __getattr__(name: str) -> Any:
    """The reward-model actor's names, imported on first use: importing this package (as every
    reward-function actor process does) does not import torch or transformers."""
    if name in ("RewardModelActor", "reward_model_texts"):
        from rayrm.rewards import actors

        return getattr(actors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pool_from_config(
    reward: Any,
    *,
    name: str | None = None,
    local: bool = False,
    tokenizer: Any = None,
    namespace: str = POOL_NAMESPACE,
) -> Any:
    """The scorer a ``RewardSettings`` describes: the one factory for every reward source.

    A single ``model``/``function``/``metric`` source without penalties is a plain
    :class:`RewardPool`; ``ensemble``, ``composite`` or any penalty gives a
    ``rayrm.rewards.compose.ComposedReward``. Both are a :class:`Scorer`:
    ``score(records)``, ``score_detailed(records) -> (scores, breakdown)``, ``stats()`` and
    ``shutdown()``, over a sequence of :class:`Completion` records.

    Args:
        reward: a validated ``rayrm.config.RewardSettings``.
        name: shared pool name (``reward.pool_name``): actors are detached and named, see
            :class:`RewardPool`; components and ensemble members get sub-pools ``{name}.{part}``.
        local: build in-process instances instead of Ray actors.
        tokenizer: the policy's tokenizer (or its directory), used to count completion tokens
            for ``reward.length_penalty`` when records carry no ``num_tokens``.
        namespace: Ray namespace of shared actors.
    """
    return build_reward(reward, name=name, local=local, tokenizer=tokenizer, namespace=namespace)
