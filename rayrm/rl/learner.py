"""RLHF-PPO learner: reference-KL rewards, GAE over whole completions, clipped PPO loss.

What belongs here: the learner connector piece that turns sampled completions into
advantages (``RLHFAdvantages``), the minibatch iterator that keeps completions whole, and the
Learner that owns β and computes the loss. The math itself is in ``rayrm.core_algos``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
import tree
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.torch_utils import explained_variance

from rayrm import metrics as M
from rayrm.config import RunConfig, config_from_dict
from rayrm.core_algos import (
    aggregate_tokens,
    kl_estimate,
    masked_mean,
    ppo_policy_loss,
    token_advantages,
    value_loss,
    whiten,
)
from rayrm.models.precision import MasterWeightAdam
from rayrm.ray_init import ThreadLoan, use_reserved_cpus
from rayrm.rl.episodes import GROUP, PROMPT_IDS, content_key, row_slices, seq_ids, token_rows
from rayrm.rl.module import ENTROPY, LOGP, REF_LOGP, SEQ_ID, VF_PREDS
from rayrm.rl.rllib_compat import MinibatchHook, learner_connector, weights_seq_no

T = TypeVar("T")
ADVANTAGES = Postprocessing.ADVANTAGES
VALUE_TARGETS = Postprocessing.VALUE_TARGETS


def whiten_across_learners(values: np.ndarray, *, eps: float = 1e-8) -> np.ndarray:
    """:func:`rayrm.core_algos.whiten` with the mean and std of every learner's tokens.

    With data-parallel learners each holds a shard of the batch; whitening each shard by its
    own moments would make the advantages depend on how the batch was dealt. One all-reduce
    of three numbers (count, sum, sum of squares) gives the whole batch's, as one learner
    would compute them. Alone (no process group, or one process) it is ``whiten``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return whiten(values, eps=eps)
    x = values.astype(np.float64)
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    )
    moments = torch.tensor(
        [x.size, x.sum(), np.square(x).sum()], dtype=torch.float64, device=device
    )
    dist.all_reduce(moments)
    n, total, squares = moments.tolist()
    mean = total / n
    std = max(squares / n - mean * mean, 0.0) ** 0.5
    out: np.ndarray = (values - mean) / (std + eps)
    return out


def run_config_of(algo_config: Any) -> RunConfig:
    """The rayrm run config carried inside an RLlib AlgorithmConfig (see rayrm.rl.algorithm)."""
    return config_from_dict(algo_config.rayrm, check_paths=False)


class RLHFAdvantages(ConnectorV2):
    """Learner connector piece: reference log-probs, KL-penalised rewards, GAE, value targets.

    Runs once per update on the whole (per-learner) batch, after RLlib has turned episodes into
    token rows. Rows of episode ``k`` are contiguous and in episode order, so each completion is
    a slice of the batch. Rebuilds the observations the episodes store compactly (the rows'
    ``input_ids``, see ``rayrm.rl.episodes``) and adds the columns ``seq_id``, ``vf_preds``
    (sampling-time values, for value clipping), ``advantages`` (whitened over the whole batch,
    every learner's shard, :func:`whiten_across_learners`) and
    ``value_targets``.

    With ``recompute_logp`` the PPO "old" log-probs (and the KL penalty's) are recomputed here
    by the learner's own forward instead of taken from the sampler: in bfloat16 the KV-cached
    decode and the full forward round differently, and the ratio must start at exactly 1.
    """

    def __init__(
        self,
        *,
        learner: RLHFPPOLearner,
        gamma: float,
        gae_lambda: float,
        recompute_logp: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self._learner = learner
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.recompute_logp = recompute_logp

    def __call__(  # type: ignore[override]
        self,
        *,
        rl_module: Any,
        episodes: list[Any],
        batch: dict[str, Any],
        metrics: Any = None,
        **kwargs: Any,
    ) -> Any:
        episodes = list(
            self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False)
        )
        kl_coef = self._learner.kl_coef
        ppo = self._learner.run_config.ppo
        self._learner.take_threads()
        for module_id, module_batch in batch.items():
            module = rl_module[module_id].unwrapped()
            mine = [e for e in episodes if e.module_id in (None, module_id)]
            lens = [len(e) for e in mine]
            device = module_batch[Columns.ACTIONS].device
            module_batch[SEQ_ID] = seq_ids(lens, device)
            module_batch[Columns.OBS] = _rebuilt_rows(mine, module_batch, lens)
            out = self._learner.take_precomputed(mine, device)  # done while they were scored
            if out is None:
                with torch.no_grad():
                    out = module.rollout_outputs(
                        module_batch, logp=self.recompute_logp, values=ppo.uses_critic
                    )
            values = out[VF_PREDS].cpu().numpy() if VF_PREDS in out else None  # (N,)
            ref_logp = out[REF_LOGP].cpu().numpy()  # (N,)
            if self.recompute_logp:
                module_batch[Columns.ACTION_LOGP] = out[LOGP].to(device)
            logp = _np(module_batch[Columns.ACTION_LOGP])
            env_rewards = _np(module_batch[Columns.REWARDS])
            slices = list(row_slices(lens))
            advs, rets = token_advantages(
                estimator=ppo.advantage_estimator,
                rewards=[env_rewards[sl] for sl in slices],
                kls=[
                    kl_estimate(
                        logp=logp[sl], ref_logp=ref_logp[sl], kind=ppo.resolved_kl_estimator
                    )
                    for sl in slices
                ],
                kl_coef=kl_coef if ppo.kl_mode == "reward" else 0.0,  # else a loss term
                groups=[e.get_infos(0).get(GROUP) for e in mine],
                values=None if values is None else [values[sl] for sl in slices],
                gamma=self.gamma,
                gae_lambda=self.gae_lambda,
                std_normalize=ppo.grpo_std_normalize,
                whiten_with=whiten_across_learners,
            )
            module_batch[ADVANTAGES] = torch.from_numpy(np.concatenate(advs)).to(device)
            module_batch[VALUE_TARGETS] = torch.from_numpy(np.concatenate(rets)).to(device)
            if values is not None:
                module_batch[VF_PREDS] = torch.from_numpy(values.astype(np.float32)).to(device)
            if ppo.kl_mode == "loss":
                module_batch[REF_LOGP] = torch.from_numpy(ref_logp.astype(np.float32)).to(device)
            if metrics is not None:
                kls = [logp[sl] - ref_logp[sl] for sl in slices]  # k1: the sequence KL's estimate
                logged = {
                    M.KL_PER_TOKEN: float(np.concatenate(kls).mean()),
                    M.KL_PER_SEQUENCE: float(np.mean([k.sum() for k in kls])),
                    M.RESPONSE_LENGTH: float(np.mean(lens)),
                    M.NUM_COMPLETIONS: len(lens),
                }
                if values is not None:
                    logged[M.VALUE_MEAN] = float(values.mean())
                metrics.log_dict(logged, key=module_id, window=1)
        return batch


def score_alongside(
    score: Callable[[list[Any]], T], episodes: list[Any], learner: RLHFPPOLearner | None
) -> T:
    """``score(episodes)`` in a helper thread (it waits on the reward actors) while this
    thread runs ``learner``'s no-grad forwards over the same episodes
    (:meth:`RLHFPPOLearner.precompute_forwards`); just ``score(episodes)`` without a learner."""
    if learner is None:
        return score(episodes)
    pool = ThreadPoolExecutor(1, "rayrm-score")
    try:
        scoring = pool.submit(score, episodes)
        try:
            learner.precompute_forwards(episodes)
        finally:
            result = scoring.result()  # the scores (or their error) whatever happened here
        return result
    finally:
        pool.shutdown(wait=False)  # an interrupted wait (the watchdog) does not wait again


def _rebuilt_rows(
    episodes: list[Any], module_batch: dict[str, Any], lens: list[int]
) -> dict[str, torch.Tensor]:
    """The env's observation rows, rebuilt from the compactly stored episodes
    (``rayrm.rl.episodes``): prompts from the first infos, tokens from the actions."""
    rows = token_rows(
        [e.get_infos(0)[PROMPT_IDS] for e in episodes], module_batch[Columns.ACTIONS], lens
    )
    stored = module_batch[Columns.OBS]["length"].reshape(-1).long()
    if not torch.equal(rows["length"].reshape(-1), stored):
        raise RuntimeError("the batch's rows are not the episodes' steps in episode order")
    return rows


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


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
        seq_id = _np(module_batch[SEQ_ID])
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
        self.run_config: RunConfig = run_config_of(self.config)
        # A local learner of a trial that samples in a second thread borrows that thread's
        # CPUs while it idles (set by the algorithm; see rayrm.ray_init.ThreadLoan).
        self.thread_loan: ThreadLoan | None = None
        # precompute_forwards' results: {episode content: {column: rows}}.
        self.precomputed: dict[tuple[bytes, bytes], dict[str, torch.Tensor]] | None = None
        self.kl_coef = float(self.run_config.ppo.kl_coef)
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
                gamma=self.run_config.ppo.gamma,
                gae_lambda=self.run_config.ppo.gae_lambda,
                recompute_logp=self.run_config.recompute_logp,
            )
        )

    def precompute_forwards(self, episodes: list[Any]) -> None:
        """Runs the learner connector's no-grad forwards over ``episodes`` now, with the
        current weights, for the next update to take (:meth:`take_precomputed`): the reference
        log-probs, the values (with a critic) and, with ``recompute_logp``, the policy's. They
        need no rewards, so the algorithm runs them while the reward actors score a batch."""
        module = self.module[DEFAULT_MODULE_ID].unwrapped()
        device = next(module.parameters()).device
        lens = [len(e) for e in episodes]
        actions = np.concatenate([np.asarray(e.get_actions(), np.int64) for e in episodes])
        actions_t = torch.from_numpy(actions).to(device)
        batch = {
            Columns.OBS: token_rows(
                [e.get_infos(0)[PROMPT_IDS] for e in episodes], actions_t, lens
            ),
            Columns.ACTIONS: actions_t,
            SEQ_ID: seq_ids(lens, device),
        }
        with torch.no_grad():
            out = module.rollout_outputs(
                batch, logp=self.run_config.recompute_logp, values=self.run_config.ppo.uses_critic
            )
        self.precomputed = {
            content_key(e): {key: value[sl] for key, value in out.items()}
            for e, sl in zip(episodes, row_slices(lens), strict=True)
        }

    def take_precomputed(self, episodes: list[Any], device: Any) -> dict[str, Any] | None:
        """The precomputed forwards of ``episodes`` in their order (rows concatenated), or None
        when any is missing; used up either way. A weight change (an optimizer step, a
        restored state) drops them. Keyed by content (prompt and tokens): the learner gets
        copies of the episodes, and equal completions have equal forwards."""
        precomputed, self.precomputed = self.precomputed, None
        if precomputed is None or not episodes:
            return None
        parts = [precomputed.get(content_key(e)) for e in episodes]
        if any(p is None for p in parts):
            return None
        return {key: torch.cat([p[key] for p in parts]).to(device) for key in parts[0]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.precomputed = None  # forwards of other weights
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
            max_grad_norm=self.run_config.ppo.max_grad_norm,
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
        self.precomputed = None  # forwards of the weights before this step
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
            num_minibatches=self.run_config.ppo.num_minibatches,
            seed=self.run_config.seed + weights_seq_no(self),
        ):
            self.take_threads()
            yield minibatch

    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        ppo = self.run_config.ppo
        mask = batch.get(Columns.LOSS_MASK)
        norm = float(self.run_config.generation.max_new_tokens)

        def aggregate(values: torch.Tensor) -> torch.Tensor:
            return aggregate_tokens(
                values, mode=ppo.loss_aggregation, seq_id=batch.get(SEQ_ID), mask=mask, norm=norm
            )

        pg_loss, stats = ppo_policy_loss(
            logp=fwd_out[LOGP],
            old_logp=batch[Columns.ACTION_LOGP],
            advantages=batch[ADVANTAGES],
            clip_ratio=ppo.clip_ratio,
            mask=mask,
            clip_ratio_high=ppo.clip_ratio_high,
            aggregate=aggregate,
        )
        # Without a bonus the entropy is a metric only: no gradient through it (the head's
        # backward then skips its vocabulary-sized terms). Metrics are per-token means
        # whatever the loss aggregation (under seq_mean_token_sum_norm the aggregate is
        # a sum over max_new_tokens, not a mean).
        total = (
            pg_loss - ppo.entropy_coef * aggregate(fwd_out[ENTROPY])
            if ppo.entropy_coef
            else pg_loss
        )
        logged = {
            M.POLICY_LOSS: pg_loss.detach(),
            M.ENTROPY: masked_mean(fwd_out[ENTROPY].detach(), mask),
            M.CLIP_FRACTION: stats["clip_fraction"],
            M.APPROX_KL: stats["approx_kl"],
        }
        if ppo.uses_critic:
            vf_loss = value_loss(
                values=fwd_out[VF_PREDS],
                old_values=batch[VF_PREDS],
                returns=batch[VALUE_TARGETS],
                value_clip=ppo.value_clip,
                aggregate=aggregate,
            )
            total = total + ppo.vf_coef * vf_loss
            logged[M.VF_LOSS] = vf_loss.detach()
            logged[M.VF_EXPLAINED_VAR] = explained_variance(
                batch[VALUE_TARGETS], fwd_out[VF_PREDS].detach()
            )
        if ppo.kl_mode == "loss":  # GRPO's KL term (Shao et al. 2024, eq. 3)
            kl_tokens = kl_estimate(
                logp=fwd_out[LOGP], ref_logp=batch[REF_LOGP], kind=ppo.resolved_kl_estimator
            )  # (N,)
            total = total + self.kl_coef * aggregate(kl_tokens)
            logged[M.KL_LOSS] = masked_mean(kl_tokens.detach(), mask)
        self.metrics.log_dict(logged, key=module_id, window=1)
        return total
