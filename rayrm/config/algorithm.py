"""The ``algorithm`` section of the run config: the update, its estimator and the KL penalty.

PPO's clipped update for every estimator: GAE with a critic, or critic-free GRPO, RLOO and
REINFORCE++ (the section was called ``ppo`` before; the old name is refused in one line).

Its relations to the other sections (batch sizes, learners, groups) are checked with the
whole config (``rayrm.config.run``). Cheap to import: no ``ray``, no ``torch``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrm.config.base import Section

__all__ = ["AlgorithmSettings"]


class AlgorithmSettings(Section):
    """PPO's clipped update with an advantage estimator and a KL penalty against the frozen
    reference policy.

    Attributes:
        batch_size: Completions (one per prompt) sampled per iteration.
        num_minibatches: Optimizer steps per epoch over the batch.
        num_epochs: Passes over each batch.
        lr: Adam learning rate.
        gamma: Discount factor over completion tokens (GAE and REINFORCE++'s returns).
        gae_lambda: GAE lambda (https://arxiv.org/abs/1506.02438).
        clip_ratio: PPO policy-ratio clip epsilon.
        value_clip: Value-prediction clip around the old values; None disables value clipping.
        vf_coef: Weight of the value loss.
        entropy_coef: Weight of the entropy bonus.
        max_grad_norm: Global gradient-norm clip; None disables it.
        kl_coef: Initial KL-penalty coefficient beta.
        adaptive_kl: Adapt beta towards ``target_kl`` with the controller of Ziegler et al.
            2019 (https://arxiv.org/abs/1909.08593).
        target_kl: Per-sequence KL the adaptive controller aims for.
        kl_horizon: Horizon (in completions) of the adaptive controller.
        forward_batch_size: Completions per no-grad forward pass in the learner (reference
            log-probs, values, recomputed log-probs); None uses the completions of one
            learner's training minibatch, which fit in memory with gradients already.
        recompute_logp: Recompute the sampled tokens' log-probs (PPO's "old" log-probs and the
            KL penalty's) with the learner's forward instead of using the sampler's. None:
            only when ``model.dtype`` is not float32, where KV-cached decoding and a full
            forward round differently and the first ratio would not be exactly 1 (and never
            under ``async_rollouts``).
        advantage_estimator: ``gae`` (a critic), or critic-free: ``grpo`` (group-normalised
            reward), ``rloo`` (leave-one-out baseline), ``reinforce_pp`` (REINFORCE++: KL in
            the return, batch-normalised), ``reinforce_pp_baseline`` (group mean subtracted
            first); see ``rayrm.core_algos``. Critic-free estimators build no value model; the
            group ones need ``generation.samples_per_prompt`` >= 2.
        grpo_std_normalize: GRPO divides by the group's std; false: Dr. GRPO.
        loss_aggregation: ``token_mean``, ``seq_mean_token_mean`` (GRPO) or
            ``seq_mean_token_sum_norm`` (Dr. GRPO: sum / ``generation.max_new_tokens``, or
            the most policy tokens of a multi-turn episode): how the policy loss, the value
            loss and a KL loss term become one number (the logged entropy and KL are
            per-token means whatever it is).
        clip_ratio_high: Upper clip ``1 + clip_ratio_high`` (DAPO's clip-higher); None:
            ``clip_ratio``.
        kl_mode: ``reward``: β·KL is subtracted from the rewards (per token for GAE and
            REINFORCE++; for GRPO/RLOO β·ΣKL per completion, centred in its group, after
            GRPO's std normalisation of the scores); ``loss``: β·KL is a loss term (GRPO's),
            the rewards are the scores alone.
        kl_estimator: ``k1``, ``k2`` or ``k3`` (``rayrm.core_algos.kl_estimate``); None:
            ``k1`` with ``kl_mode=reward`` (summed, unbiased for the sequence's KL) and ``k3``
            with ``kl_mode=loss``. As a loss k1 has zero expected gradient (no KL pressure),
            so ``kl_mode=loss`` refuses it; k2's gradient is that of KL(π‖π_ref), k3's that of
            KL(π_ref‖π) (GRPO's).
        filter_uniform_groups: Leave out of the update the groups whose scores are all equal
            (no signal under GRPO/RLOO; DAPO's dynamic sampling), counted as
            ``rollout/uniform_groups``.
        async_rollouts: Pipelined (one-step off-policy) rollouts: iteration k+1's batch is
            sampled and scored with the weights of iteration k while the learners update on
            iteration k's, so each batch trains weights exactly one update newer than the ones
            that sampled it; the sampler's log-probs are PPO's "old" ones, and the ratio
            corrects for the lag (``recompute_logp`` must stay off). Without remote env
            runners the trial samples in a second thread, which time-shares the CPUs of the
            trial's own reward actors (it waits while they score what it sampled): the trial
            reserves only what they lack of ``resources.num_cpus_per_env_runner`` (at the
            defaults nothing, so on 2 cores it asks for 2 CPUs: learner and reward actor).
    """

    batch_size: int = Field(16, ge=1)
    num_minibatches: int = Field(2, ge=1)
    num_epochs: int = Field(2, ge=1)
    lr: float = Field(1.0e-5, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_ratio: float = Field(0.2, gt=0)
    value_clip: float | None = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    entropy_coef: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    kl_coef: float = Field(0.05, ge=0)
    adaptive_kl: bool = False
    target_kl: float = Field(6.0, gt=0)
    kl_horizon: int = Field(10000, gt=0)
    forward_batch_size: int | None = Field(None, ge=1)
    recompute_logp: bool | None = None
    advantage_estimator: Literal["gae", "grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = (
        "gae"
    )
    grpo_std_normalize: bool = True
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = (
        "token_mean"
    )
    clip_ratio_high: float | None = Field(None, gt=0)
    kl_mode: Literal["reward", "loss"] = "reward"
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    filter_uniform_groups: bool = False
    async_rollouts: bool = False

    @property
    def uses_critic(self) -> bool:
        """Whether the estimator needs a value model (GAE does; the others are critic-free)."""
        return self.advantage_estimator == "gae"

    @property
    def resolved_kl_estimator(self) -> Literal["k1", "k2", "k3"]:
        """``kl_estimator``, or its default for ``kl_mode``: k1 in the reward, k3 as a loss."""
        if self.kl_estimator is not None:
            return self.kl_estimator
        return "k1" if self.kl_mode == "reward" else "k3"

    @property
    def uses_groups(self) -> bool:
        """Whether advantages compare the samples of one prompt."""
        return self.advantage_estimator in ("grpo", "rloo", "reinforce_pp_baseline")

    @property
    def completions_per_minibatch(self) -> int:
        """Completions per optimizer step, summed over all learners."""
        return self.batch_size // self.num_minibatches
