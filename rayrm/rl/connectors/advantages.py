"""Learner connector piece: reference log-probs, KL-penalised rewards, advantages, value
targets (``RLHFAdvantages``), in place of RLlib PPO's bootstrap-and-GAE pieces.

The math is ``rayrm.core_algos`` (the estimator registered under ``algorithm.advantage_estimator``);
this piece gathers its inputs from the batch RLlib made of the episodes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from rayrm import metrics as M
from rayrm.config import RLConfig
from rayrm.core_algos import kl_estimate, token_advantages, whiten
from rayrm.rl.connectors.precomputed import PrecomputedForwards
from rayrm.rl.episodes import GROUP, PROMPT_IDS, inserts_of, row_slices, seq_ids, token_rows
from rayrm.rl.module import LOGP, REF_LOGP, SEQ_ID, VF_PREDS

__all__ = ["ADVANTAGES", "VALUE_TARGETS", "RLHFAdvantages", "as_numpy", "whiten_across_learners"]


class Learner(Protocol):
    """What the piece reads of its learner (``rayrm.rl.learner.RLHFPPOLearner``)."""

    kl_coef: float
    run_config: RLConfig
    precomputed: PrecomputedForwards

    def take_threads(self) -> None: ...


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
        learner: Learner,
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
        algorithm = self._learner.run_config.algorithm
        self._learner.take_threads()
        for module_id, module_batch in batch.items():
            module = rl_module[module_id].unwrapped()
            mine = [e for e in episodes if e.module_id in (None, module_id)]
            lens = [len(e) for e in mine]
            device = module_batch[Columns.ACTIONS].device
            module_batch[SEQ_ID] = seq_ids(lens, device)
            module_batch[Columns.OBS] = _rebuilt_rows(mine, module_batch, lens)
            out = self._learner.precomputed.take(mine, device)  # done while they were scored
            if out is None:
                with torch.no_grad():
                    out = module.rollout_outputs(
                        module_batch, logp=self.recompute_logp, values=algorithm.uses_critic
                    )
            values = out[VF_PREDS].cpu().numpy() if VF_PREDS in out else None  # (N,)
            ref_logp = out[REF_LOGP].cpu().numpy()  # (N,)
            if self.recompute_logp:
                module_batch[Columns.ACTION_LOGP] = out[LOGP].to(device)
            logp = as_numpy(module_batch[Columns.ACTION_LOGP])
            env_rewards = as_numpy(module_batch[Columns.REWARDS])
            slices = list(row_slices(lens))
            advs, rets = token_advantages(
                estimator=algorithm.advantage_estimator,
                rewards=[env_rewards[sl] for sl in slices],
                kls=[
                    kl_estimate(
                        logp=logp[sl], ref_logp=ref_logp[sl], kind=algorithm.resolved_kl_estimator
                    )
                    for sl in slices
                ],
                kl_coef=kl_coef if algorithm.kl_mode == "reward" else 0.0,  # else a loss term
                groups=[e.get_infos(0).get(GROUP) for e in mine],
                values=None if values is None else [values[sl] for sl in slices],
                gamma=self.gamma,
                gae_lambda=self.gae_lambda,
                std_normalize=algorithm.grpo_std_normalize,
                whiten_with=whiten_across_learners,
            )
            module_batch[ADVANTAGES] = torch.from_numpy(np.concatenate(advs)).to(device)
            module_batch[VALUE_TARGETS] = torch.from_numpy(np.concatenate(rets)).to(device)
            if values is not None:
                module_batch[VF_PREDS] = torch.from_numpy(values.astype(np.float32)).to(device)
            if algorithm.kl_mode == "loss":
                module_batch[REF_LOGP] = torch.from_numpy(ref_logp.astype(np.float32)).to(device)
            if metrics is not None:
                kls = [logp[sl] - ref_logp[sl] for sl in slices]  # k1: the sequence KL's estimate
                logged = {
                    M.KL_PER_TOKEN: float(np.concatenate(kls).mean()),
                    M.KL_PER_SEQUENCE: float(np.mean([k.sum() for k in kls])),
                    M.COMPLETION_LENGTH: float(np.mean(lens)),
                    M.NUM_COMPLETIONS: len(lens),
                }
                if values is not None:
                    logged[M.VALUE_MEAN] = float(values.mean())
                metrics.log_dict(logged, key=module_id, window=1)
        return batch


def _rebuilt_rows(
    episodes: list[Any], module_batch: dict[str, Any], lens: list[int]
) -> dict[str, torch.Tensor]:
    """The env's observation rows, rebuilt from the compactly stored episodes
    (``rayrm.rl.episodes``): prompts from the first infos, tokens from the actions."""
    rows = token_rows(
        [e.get_infos(0)[PROMPT_IDS] for e in episodes],
        module_batch[Columns.ACTIONS],
        lens,
        [inserts_of(e) for e in episodes],
    )
    stored = module_batch[Columns.OBS]["length"].reshape(-1).long()
    if not torch.equal(rows["length"].reshape(-1), stored):
        raise RuntimeError("the batch's rows are not the episodes' steps in episode order")
    return rows


def as_numpy(x: Any) -> np.ndarray:
    """A tensor (detached, on the CPU) or array-like as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
