"""RLHF-PPO learner: the Learner that owns β, iterates minibatches of whole completions and
computes the loss (clipped PPO, value loss, a KL loss term).

Its connector pieces (reference log-probs and advantages; forwards taken precomputed) are in
``rayrm.rl.connectors``; the math is ``rayrm.core_algos``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import tree
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.torch_utils import explained_variance

from rayrm import metrics as M
from rayrm.config import RLConfig, config_from_dict
from rayrm.core_algos import aggregate_tokens, kl_estimate, masked_mean, ppo_policy_loss, value_loss
from rayrm.models.precision import MasterWeightAdam
from rayrm.rl.connectors.advantages import ADVANTAGES, VALUE_TARGETS, RLHFAdvantages, as_numpy
from rayrm.rl.connectors.precomputed import PrecomputedForwards
from rayrm.rl.module import ENTROPY, LOGP, REF_LOGP, SEQ_ID, VF_PREDS
from rayrm.rl.rllib_compat import MinibatchHook, learner_connector, weights_seq_no
from rayrm.threads import ThreadLoan, use_reserved_cpus


def run_config_of(algo_config: Any) -> RLConfig:
    """The rayrm run config carried inside an RLlib AlgorithmConfig (see rayrm.rl.algorithm)."""
    return config_from_dict(algo_config.rayrm, check_paths=False)


class CompletionMinibatches:
    """Iterates ``num_epochs`` × ``num_minibatches`` minibatches made of WHOLE completions.

    Completions are shuffled once per epoch and dealt into ``num_minibatches`` groups, so every
    learner runs the same number of optimizer steps (DDP needs that) whatever the token counts,
    and a completion's rows are always trained together (one forward pass per completion).
    """

    def __init__(
        self, batch: MultiAgentBatch, *, num_epochs: int, num_minibatches: int, seed: int
    ) -> None:
        self._batch = batch
        self._num_epochs = num_epochs
        self._num_minibatches = num_minibatches
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[MultiAgentBatch]:
        (module_id, module_batch), *rest = self._batch.policy_batches.items()
        if rest:
            raise ValueError(f"rayrm trains a single policy module, got {1 + len(rest)}")
        seq_id = as_numpy(module_batch[SEQ_ID])
        num_seqs = int(seq_id.max()) + 1
        for _ in range(self._num_epochs):
            order = self._rng.permutation(num_seqs)
            for group in np.array_split(order, self._num_minibatches):
                rows = torch.from_numpy(np.flatnonzero(np.isin(seq_id, group)))
                minibatch = SampleBatch(
                    {
                        k: tree.map_structure(lambda x, rows=rows: x[rows.to(x.device)], v)
                        for k, v in module_batch.items()
                    }
                )
                yield MultiAgentBatch({module_id: minibatch}, env_steps=len(rows))


class RLHFPPOLearner(MinibatchHook, PPOTorchLearner):
    """PPO learner for token-level RLHF (Ziegler et al. 2019; Ouyang et al. 2022).

    Replaces PPO's bootstrap-and-GAE connector pieces with ``RLHFAdvantages``, keeps β (set
    by the algorithm each iteration from its KL controller), trains only the policy and value
    parameters, and iterates minibatches of whole completions.
    """

    def build(self) -> None:
        use_reserved_cpus()  # a remote learner: num_cpus_per_learner
        self.run_config: RLConfig = run_config_of(self.config)
        # A local learner of a trial that samples in a second thread borrows that thread's
        # CPUs while it idles (set by the algorithm; see rayrm.threads.ThreadLoan).
        self.thread_loan: ThreadLoan | None = None
        # No-grad forwards run while the batch was scored (precompute_forwards).
        self.precomputed = PrecomputedForwards()
        self.kl_coef = float(self.run_config.algorithm.kl_coef)
        super().build()
        pipeline = learner_connector(self)
        names = [type(c).__name__ for c in pipeline.connectors]
        for name in ("AddOneTsToEpisodesAndTruncate", "GeneralAdvantageEstimation"):
            # Checked: RLlib silently ignores (or misplaces around) an unknown name.
            if name not in names:
                raise RuntimeError(f"RLlib's PPO learner pipeline changed: {name} not in {names}")
            pipeline.remove(name)
        pipeline.append(
            RLHFAdvantages(
                learner=self,
                gamma=self.run_config.algorithm.gamma,
                gae_lambda=self.run_config.algorithm.gae_lambda,
                recompute_logp=self.run_config.recompute_logp,
            )
        )

    def precompute_forwards(self, episodes: list[Any]) -> None:
        """Runs the learner connector's no-grad forwards over ``episodes`` now, with the
        current weights, for the next update to take (``rayrm.rl.connectors.precomputed``)."""
        self.precomputed.compute(
            self.module[DEFAULT_MODULE_ID].unwrapped(),
            episodes,
            logp=self.run_config.recompute_logp,
            values=self.run_config.algorithm.uses_critic,
        )

    def set_state(self, state: dict[str, Any]) -> None:
        self.precomputed.drop()  # forwards of other weights
        super().set_state(state)

    def set_kl_coef(self, value: float) -> None:
        """Sets β for the next update (the algorithm owns the KL controller)."""
        self.kl_coef = float(value)

    def set_lr(self, lr: float) -> None:
        """Sets the learning rate of every optimizer (after a restore, e.g. by PBT)."""
        for _, optimizer in self._optimizers():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
        """Adam on float32 master weights, with global-norm clipping and (float16) loss scaling.

        See ``rayrm.models.precision``: parameters stored in bfloat16/float16 are updated
        through float32 copies, so small updates do not round away.
        """
        params = self.module[module_id].unwrapped().trainable_parameters()
        optimizer = MasterWeightAdam(
            params,
            lr=config.lr,
            eps=1e-5,
            max_grad_norm=self.run_config.algorithm.max_grad_norm,
            dynamic_loss_scale=self.run_config.model.dtype == "float16",
            # fused: one kernel per tensor for Adam's whole update (as TRL's default
            # adamw_torch_fused), instead of one per operation; the same arithmetic.
            fused=True,
        )
        self.register_optimizer(
            module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=config.lr
        )

    def _optimizers(self) -> list[tuple[str, MasterWeightAdam]]:
        """``(module_id, optimizer)`` pairs."""
        return [
            (module_id, optimizer)
            for module_id in self.module.keys()
            for _, optimizer in self.get_optimizers_for_module(module_id)
        ]

    def compute_gradients(self, loss_per_module: dict[str, Any], **kwargs: Any) -> Any:
        """Backward of the loss times the loss scale (1 unless the model is float16).

        Takes the loan first: the sampler may have finished during this minibatch's forward,
        and the backward is the larger half of its work."""
        self.take_threads()
        scale = max((o.loss_scale for _, o in self._optimizers()), default=1.0)
        if scale != 1.0:
            loss_per_module = {mid: loss * scale for mid, loss in loss_per_module.items()}
        return super().compute_gradients(loss_per_module, **kwargs)

    def apply_gradients(self, gradients_dict: dict[Any, Any]) -> None:
        """Hands the gradients to the optimizers, which unscale, check, clip and step.

        RLlib's own version tests every gradient tensor for NaN/inf (two ops and a host sync
        per tensor) and zeroes bad values; :class:`MasterWeightAdam` checks one global norm
        instead and skips a non-finite step entirely (the float16 loss scale then halves).
        """
        self.precomputed.drop()  # forwards of the weights before this step
        for module_id, optimizer in self._optimizers():
            for p in optimizer.model_params:
                p.grad = gradients_dict.get(self.get_param_ref(p), p.grad)
            optimizer.step()
            self.metrics.log_dict(
                {M.GRAD_NORM: optimizer.last_grad_norm, M.SKIPPED_STEPS: optimizer.skipped_steps},
                key=module_id,
                window=1,
            )

    def take_threads(self) -> None:
        """Before a piece of the update: the CPUs a loan gives this thread now."""
        if self.thread_loan is not None:
            self.thread_loan.apply()

    def minibatches(self, batch: MultiAgentBatch, *, num_epochs: int) -> Iterator[MultiAgentBatch]:
        """Minibatches of whole completions, reshuffled with a fresh seed per update."""
        for minibatch in CompletionMinibatches(
            batch,
            num_epochs=num_epochs,
            num_minibatches=self.run_config.algorithm.num_minibatches,
            seed=self.run_config.seed + weights_seq_no(self),
        ):
            self.take_threads()
            yield minibatch

    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        algorithm = self.run_config.algorithm
        mask = batch.get(Columns.LOSS_MASK)
        norm = float(self.run_config.max_policy_tokens)

        def aggregate(values: torch.Tensor) -> torch.Tensor:
            return aggregate_tokens(
                values,
                mode=algorithm.loss_aggregation,
                seq_id=batch.get(SEQ_ID),
                mask=mask,
                norm=norm,
            )

        pg_loss, stats = ppo_policy_loss(
            logp=fwd_out[LOGP],
            old_logp=batch[Columns.ACTION_LOGP],
            advantages=batch[ADVANTAGES],
            clip_ratio=algorithm.clip_ratio,
            mask=mask,
            clip_ratio_high=algorithm.clip_ratio_high,
            aggregate=aggregate,
        )
        # Without a bonus the entropy is a metric only: no gradient through it (the head's
        # backward then skips its vocabulary-sized terms). Metrics are per-token means
        # whatever the loss aggregation (under seq_mean_token_sum_norm the aggregate is
        # a sum over max_new_tokens, not a mean).
        total = (
            pg_loss - algorithm.entropy_coef * aggregate(fwd_out[ENTROPY])
            if algorithm.entropy_coef
            else pg_loss
        )
        logged = {
            M.POLICY_LOSS: pg_loss.detach(),
            M.ENTROPY: masked_mean(fwd_out[ENTROPY].detach(), mask),
            M.CLIP_FRACTION: stats["clip_fraction"],
            M.APPROX_KL: stats["approx_kl"],
        }
        if algorithm.uses_critic:
            vf_loss = value_loss(
                values=fwd_out[VF_PREDS],
                old_values=batch[VF_PREDS],
                returns=batch[VALUE_TARGETS],
                value_clip=algorithm.value_clip,
                aggregate=aggregate,
            )
            total = total + algorithm.vf_coef * vf_loss
            logged[M.VF_LOSS] = vf_loss.detach()
            logged[M.VF_EXPLAINED_VAR] = explained_variance(
                batch[VALUE_TARGETS], fwd_out[VF_PREDS].detach()
            )
        if algorithm.kl_mode == "loss":  # GRPO's KL term (Shao et al. 2024, eq. 3)
            kl_tokens = kl_estimate(
                logp=fwd_out[LOGP], ref_logp=batch[REF_LOGP], kind=algorithm.resolved_kl_estimator
            )  # (N,)
            total = total + self.kl_coef * aggregate(kl_tokens)
            logged[M.KL_LOSS] = masked_mean(kl_tokens.detach(), mask)
        self.metrics.log_dict(logged, key=module_id, window=1)
        return total
