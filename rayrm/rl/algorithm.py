"""The RLHF-PPO algorithm on RLlib's PPO (new API stack) and its AlgorithmConfig.

``training_step`` is a short list of named, timed phases:

    sample   every EnvRunner decodes one whole completion per env (rayrm.rl.env_runner)
    score    the RewardPool scores all finished completions in parallel batches
    update   learners: reference log-probs, KL-penalised rewards, GAE, clipped PPO
    sync     new weights go back to the EnvRunners

With ``algorithm.async_rollouts`` the next iteration's sample and score run in a background thread
while this iteration's update runs (one-step off-policy: the batch an update trains on was
sampled by the weights one update older; ``rollout/policy_lag`` says by how many).

The algorithm owns the state that must survive restores besides the weights: the KL
controller (β) and the running reward statistics.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    WEIGHTS_SEQ_NO,
)
from ray.tune.execution.placement_groups import PlacementGroupFactory

from rayrm import metrics as M
from rayrm.config import RLConfig, config_from_dict
from rayrm.errors import TimedOut
from rayrm.models.loading import load_tokenizer
from rayrm.rewards import pool_from_config
from rayrm.rewards.base import RewardSourceError, ScoredBatch
from rayrm.rewards.shaping import RewardPipeline, describe_reward
from rayrm.rl.checkpoint import RAYRM_STATE, NeverLoseCheckpoints, write_rayrm_files
from rayrm.rl.codec import run_codec
from rayrm.rl.connectors.precomputed import score_alongside
from rayrm.rl.env_evaluation import HeldOutEpisodes
from rayrm.rl.env_runner import sync_weights
from rayrm.rl.episodes import (
    WEIGHTS_VERSION,
    completion_of,
    dealable,
    episode_metrics,
    select_groups,
    shard_whole_episodes,
)
from rayrm.rl.evaluation import HeldOutEvaluation
from rayrm.rl.monitors import DriftMonitors
from rayrm.rl.prompt_order import (
    PromptOrder,
    deal_prompts,
    planned_iterations,
    take_planned,
    training_rows,
)
from rayrm.rl.reservations import local_sampler_cpus, local_sampler_threads, trial_request
from rayrm.rl.rllib_compat import local_learner, restart_env_runners, sample_episodes
from rayrm.rl.settings import configure, make_kl_controller
from rayrm.rl.watchdog import iteration_watchdog
from rayrm.threads import ThreadLoan, use_reserved_cpus


class RLHFConfig(PPOConfig):
    """PPOConfig derived entirely from a rayrm run config (``self.rayrm``, a plain dict).

    The run config is the single source of truth: :meth:`apply_run_config` sets every RLlib
    field from it, and ``update_from_dict({"rayrm": {...}})`` does the same. That is how Tune
    builds each trial: the param space is ``{"rayrm": <run config with search samplers>}``,
    Tune resolves the samplers, and RLlib turns the dict into a full config through
    ``update_from_dict``.
    """

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or RLHFPPO)
        self.rayrm: dict[str, Any] = {}

    @property
    def run_config(self) -> RLConfig:
        return config_from_dict(self.rayrm, check_paths=False)

    def update_from_dict(self, config_dict: dict[str, Any]) -> RLHFConfig:
        rest = {k: v for k, v in config_dict.items() if k != "rayrm"}
        super().update_from_dict(rest)
        if "rayrm" in config_dict:
            self.apply_run_config(config_from_dict(config_dict["rayrm"], check_paths=False))
        return self

    def apply_run_config(self, cfg: RLConfig) -> RLHFConfig:
        """Sets every RLlib field from ``cfg`` (see the class docstring)."""
        configure(self, cfg)
        self.rayrm = cfg.to_dict()
        return self


def build_algo_config(cfg: RLConfig) -> RLHFConfig:
    """The RLlib AlgorithmConfig of a validated rayrm RLConfig."""
    return RLHFConfig().apply_run_config(cfg)


@dataclass
class Rollout:
    """One sampled and scored batch (made in the background under ``algorithm.async_rollouts``)."""

    episodes: list[Any]
    runner_results: list[Any]
    scored: ScoredBatch
    healthy_runners: int
    sample_s: float
    score_s: float
    prompts_after: dict[str, int]  # the prompt order's position once this batch was taken


class RLHFPPO(NeverLoseCheckpoints, PPO):
    """RLlib PPO specialised for token-level RLHF against a reward pool (see module docstring)."""

    @classmethod
    def get_default_config(cls) -> RLHFConfig:
        return RLHFConfig(algo_class=cls)

    @classmethod
    def default_resource_request(cls, config: Any) -> PlacementGroupFactory:
        """PPO's bundles plus the reward actors' and the sampler thread's, so the trial
        reserves them too (``rayrm.rl.reservations``)."""
        rayrm = config["rayrm"] if isinstance(config, dict) else config.rayrm
        cfg = config_from_dict(rayrm, check_paths=False)
        return trial_request(super().default_resource_request(config), cfg)

    def setup(self, config: Any) -> None:
        # The trial's bundle: its local learner (and env runner) use it; the sampler thread
        # of algorithm.async_rollouts its own share of it (torch's threads are per process).
        rayrm = config["rayrm"] if isinstance(config, dict) else config.rayrm
        cfg = self.run_config = config_from_dict(rayrm, check_paths=False)
        lent = local_sampler_threads(cfg)
        own = use_reserved_cpus(exclude=local_sampler_cpus(cfg)) or torch.get_num_threads()
        super().setup(config)
        self.kl_ctl = make_kl_controller(cfg)
        r = cfg.reward
        scorer = pool_from_config(r, name=r.pool_name, tokenizer=cfg.model.resolved_tokenizer_path)
        self.rewards = RewardPipeline(
            scorer, normalize=r.normalize, clip=r.clip, on_nan=r.on_nan, what=describe_reward(r)
        )
        self.rollout_node_ids: list[str] = []
        self.tokenizer = load_tokenizer(cfg.model.resolved_tokenizer_path)
        self.held_out: HeldOutEvaluation | HeldOutEpisodes = (
            HeldOutEvaluation(cfg, run_codec(cfg, self.tokenizer))
            if cfg.env is None
            else HeldOutEpisodes(cfg, self.config.env_config)
        )
        rows = training_rows(cfg)  # shuffled passes over them (rayrm.rl.prompt_order)
        self.prompt_order = PromptOrder(rows, cfg.seed)
        self.planned_iterations = planned_iterations(cfg, len(rows))
        self.trained_prompts = self.prompt_order.get_state()  # after the last trained batch
        self.monitors = DriftMonitors()
        # algorithm.async_rollouts: the next batch, sampled while the learners update.
        self.next_rollout: Rollout | None = None
        self.sampler = (
            ThreadPoolExecutor(1, "rayrm-sampler") if cfg.algorithm.async_rollouts else None
        )
        # The sampler thread's CPUs, which a local learner borrows while that thread idles.
        self.threads = ThreadLoan(own, lent) if self.sampler and lent >= 1 else None
        # Synchronous, local learner: its no-grad forwards run while the batch is scored.
        local = cfg.resources.num_learners == 0 and not self.sampler
        self.forwards_alongside = local_learner(self.learner_group) if local else None
        if self.threads is not None and cfg.resources.num_learners == 0:
            local_learner(self.learner_group).thread_loan = self.threads
        # Held by an update, and by the sampler thread while it restores lost env runners
        # (which reads the learners' weights): never a half-updated model.
        self.weights_lock = threading.Lock()
        self.resume_from_disk()

    def cleanup(self) -> None:
        if getattr(self, "sampler", None) is not None:
            self.sampler.shutdown(wait=False, cancel_futures=True)
        rewards = getattr(self, "rewards", None)
        if rewards is not None:
            rewards.shutdown()
        super().cleanup()

    # ------------------------------------------------------------------ training step
    def training_step(self) -> None:
        """One iteration (``run_iteration``), bounded by ``run.iteration_timeout_s``."""
        self.phase = "start"
        with iteration_watchdog(
            self.run_config.run.iteration_timeout_s,
            lambda: f"iteration {self.iteration + 1} (in its {self.phase} phase)",
        ):
            self.run_iteration()

    def run_iteration(self) -> None:
        if self.threads is not None:
            self.threads.apply()  # the sampler idles: its CPUs evaluate and sample here
        if self.held_out.due(self.iteration):
            self.phase = "held-out evaluation"
            # The policy after `self.iteration` updates, before this iteration's.
            lm = self.env_runner.module.lm
            for key, value in self.held_out.evaluate(
                lm, self.rewards.scorer, self.iteration
            ).items():
                self.metrics.log_value((M.RLHF_RESULTS, key), value, window=1)
        t_start = time.perf_counter()
        self.phase = "sample"
        rollout, self.next_rollout = self.next_rollout or self._rollout(), None
        ahead = self._sample_ahead()
        self.phase = "update" if ahead is None else "update (sampling the next batch alongside)"
        try:
            self.metrics.aggregate(rollout.runner_results, key=ENV_RUNNER_RESULTS)
            for key, values in rollout.scored.breakdown.items():  # components, members, ...
                self.metrics.log_value((M.RLHF_RESULTS, key), float(np.mean(values)), window=1)
            episodes, kept, train_on, group_stats = self._select(rollout.episodes, rollout.scored)
            t_update = time.perf_counter()
            learner_stats = self._update(train_on)
        except BaseException:
            if ahead is not None:  # no thread left sampling into a failed iteration
                ahead.cancel() or ahead.exception()
            raise
        t_updated = time.perf_counter()
        if ahead is not None:
            self.phase = "sample (the next batch)"
            self.next_rollout = ahead.result()
        t_waited = time.perf_counter()
        self.phase = "weight sync"
        sync_weights(self.env_runner_group, self.learner_group)
        t_end = time.perf_counter()
        self._find_rollout_nodes()
        scored, num_tokens = rollout.scored, sum(len(e) for e in episodes)
        scores = np.array([float(e.get_rewards()[-1]) for e in episodes])
        published = {
            M.REWARD_MEAN: float(scores.mean()),
            M.REWARD_STD: float(scores.std()),
            M.REWARD_RAW_MEAN: float(scored.raw[kept].mean()),
            M.REWARD_SKIPPED: int((~kept).sum()),
            M.REWARD_RESUBMITTED: int(self.rewards.scorer.num_resubmitted),
            M.KL_COEF: learner_stats.pop(M.KL_COEF),
            M.ROLLOUT_COMPLETIONS: len(episodes),
            M.ROLLOUT_NUM_NODES: max(1, len(self.rollout_node_ids)),
            M.ROLLOUT_HEALTHY_RUNNERS: rollout.healthy_runners,
            M.ROLLOUT_POLICY_LAG: self._policy_lag(train_on),
            **group_stats,
            M.THROUGHPUT_TOKENS_PER_S: num_tokens / max(t_end - t_start, 1e-9),
            M.TIMER_SAMPLE: rollout.sample_s,
            M.TIMER_SCORE: rollout.score_s,
            M.TIMER_UPDATE: t_updated - t_update,
            M.TIMER_WAIT: t_waited - t_updated,
            M.TIMER_SYNC: t_end - t_waited,
            M.TIMER_ITERATION: t_end - t_start,
            **learner_stats,
        }
        published[M.OBJECTIVE_REWARD_MINUS_KL] = (
            published[M.REWARD_MEAN] - published[M.KL_COEF] * published[M.KL_SEQUENCE]
        )
        published |= self.monitors.update(published, [e.get_actions() for e in episodes])
        self.trained_prompts = rollout.prompts_after
        published[M.ROLLOUT_EPOCH] = self.prompt_order.epochs_done(self.trained_prompts)
        self.last_published = published
        for key, value in published.items():
            self.metrics.log_value((M.RLHF_RESULTS, key), value, window=1)

    def _rollout(self) -> Rollout:
        """Samples ``algorithm.batch_size`` completions and scores them (maybe in the sampler
        thread: nothing here logs metrics or touches the learners)."""
        t_start = time.perf_counter()
        episodes, results, healthy = self._sample_batch()
        t_sampled = time.perf_counter()
        prompts_after = self.prompt_order.get_state()
        scored = score_alongside(self._score, episodes, self.forwards_alongside)
        t_scored = time.perf_counter()
        return Rollout(
            episodes,
            results,
            scored,
            healthy,
            t_sampled - t_start,
            t_scored - t_sampled,
            prompts_after,
        )

    def _sample_ahead(self) -> Future | None:
        """Under ``algorithm.async_rollouts``, starts sampling the next iteration's batch with the
        current weights (none after the run's last iteration: every batch is trained on)."""
        if self.sampler is None or self.iteration + 1 >= self.planned_iterations:
            return None
        if self.threads is not None:
            return self.threads.submit(self.sampler, self._rollout)
        return self.sampler.submit(self._rollout)

    def _policy_lag(self, episodes: list[Any]) -> int:
        """Updates between the weights that sampled ``episodes`` and those this iteration's
        update started from (0 synchronous, 1 with ``algorithm.async_rollouts``)."""
        updated = self.metrics.peek((LEARNER_RESULTS, DEFAULT_MODULE_ID, WEIGHTS_SEQ_NO), default=0)
        sampled = min(int(e.get_infos(0).get(WEIGHTS_VERSION, 0)) for e in episodes)
        return max(0, int(updated) - 1 - sampled)

    def _find_rollout_nodes(self) -> None:
        if self.env_runner_group.num_remote_env_runners() > 0:
            self.rollout_node_ids = sorted(
                set(
                    self.env_runner_group.foreach_env_runner(
                        lambda er: ray.get_runtime_context().get_node_id(),
                        local_env_runner=False,
                    )
                )
            )

    def _select(
        self, episodes: list[Any], scored: ScoredBatch
    ) -> tuple[list[Any], np.ndarray, list[Any], dict[str, float]]:
        """Leaves out completions with non-finite scores (``reward.on_nan: skip``) and, with
        ``algorithm.filter_uniform_groups``, uniform groups from the update: ``(episodes kept,
        kept mask, episodes to train on, group metrics)``."""
        algorithm, learners = self.run_config.algorithm, self.run_config.resources.num_learners
        deal = {"num_learners": learners, "num_minibatches": algorithm.num_minibatches}
        kept = np.ones(len(episodes), bool) if scored.skipped is None else ~scored.skipped
        if not kept.all():  # reward.on_nan: skip
            episodes = [e for e, k in zip(episodes, kept, strict=True) if k]
            # Every learner runs the same number of minibatch steps (DDP): each needs a
            # completion per minibatch, groups dealt whole.
            if not dealable(episodes, **deal):
                raise RewardSourceError(
                    f"{self.rewards.what} gave non-finite scores to {int((~kept).sum())} of "
                    f"{len(kept)} completions: the {len(episodes)} left cannot give each of "
                    f"max(1, resources.num_learners) = {max(1, learners)} learners a "
                    f"completion per minibatch (algorithm.num_minibatches = {algorithm.num_minibatches}), "
                    "groups kept whole"
                )
        train_on, group_stats = select_groups(
            episodes, scored.raw[kept], drop_uniform=algorithm.filter_uniform_groups, **deal
        )
        return episodes, kept, train_on, group_stats

    def _sample_batch(self) -> tuple[list[Any], list[Any], int]:
        """``algorithm.batch_size`` completions of the prompt order's next prompts, whatever
        runners were lost or hung: the healthy ones sample the missing share while RLlib
        restores the others (a runner silent for ``resources.sample_timeout_s`` is
        restarted); no new completion for that long raises :class:`~rayrm.errors.TimedOut`.
        Returns the episodes, the runners' metrics and how many remote runners were healthy
        when it began."""
        cfg = self.run_config
        want, timeout = cfg.algorithm.batch_size, cfg.resources.sample_timeout_s
        n = cfg.generation.samples_per_prompt
        needed = Counter(self.prompt_order.take(want // n))  # prompt row -> groups to sample
        per_runner = cfg.envs_per_env_runner // n
        group = self.env_runner_group
        episodes: list[Any] = []
        results: list[Any] = []
        progress = time.monotonic()
        healthy: int | None = None
        while True:
            rows = list(needed.elements())
            more, more_results, silent = sample_episodes(
                group, timeout, lambda ids, rows=rows: deal_prompts(rows, ids, per_runner)
            )
            restart_env_runners(group, silent)  # hung: Ray restarts the process
            more = take_planned(more, needed)
            if more:
                episodes, results = episodes + more, results + more_results
                progress = time.monotonic()
            if healthy is None:  # what this iteration started with (published)
                healthy = group.num_healthy_remote_workers()
            if not needed:
                return episodes, results, healthy
            if timeout is not None and time.monotonic() - progress > timeout:
                raise TimedOut(
                    f"sampling gave {len(episodes)} of algorithm.batch_size={want} completions and "
                    f"no more for resources.sample_timeout_s={timeout:g}s "
                    f"({group.num_healthy_remote_workers()} of "
                    f"{group.num_remote_env_runners()} env runners healthy)"
                )
            with self.weights_lock:  # probes lost runners back, with current weights
                self.restore_env_runners(group)
            if group.num_remote_env_runners() > 0 and group.num_healthy_remote_workers() == 0:
                time.sleep(1.0)  # every runner lost: wait for Ray to restart one

    def _score(self, episodes: list[Any]) -> ScoredBatch:
        """Scores every finished completion (``rayrm.rewards.shaping``) and pays each shaped
        score at its completion's last token.

        A multi-turn environment has paid its turns' rewards already: they count in the raw
        scores (so groups compare whole episodes) and, with its episode statistics, are
        published as ``env/...``."""
        scored = self.rewards.score([completion_of(e) for e in episodes])
        if self.run_config.env is not None:
            returns = np.array([float(np.sum(e.get_rewards())) for e in episodes])
            scored = replace(
                scored,
                raw=scored.raw + returns,
                breakdown={**scored.breakdown, **episode_metrics(episodes, returns)},
            )
        for episode, score in zip(episodes, scored.scores, strict=True):
            buffer = episode.rewards
            if isinstance(buffer.data, np.ndarray) and not buffer.data.flags.writeable:
                buffer.data = buffer.data.copy()  # episodes from remote runners are read-only
            rewards = episode.get_rewards()
            episode.set_rewards(new_data=np.asarray(rewards[-1] + score, np.float32), at_indices=-1)
        return scored

    def _update(self, episodes: list[Any]) -> dict[str, float]:
        """Pushes β, runs the PPO update on whole completions, then steps the KL controller."""
        kl_coef = self.kl_ctl.value
        self.learner_group.foreach_learner(lambda learner: learner.set_kl_coef(kl_coef))
        kwargs = dict(
            timesteps={
                NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                    (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
                )
            },
            num_epochs=self.run_config.algorithm.num_epochs,
        )
        num_learners = self.run_config.resources.num_learners
        with self.weights_lock:
            if num_learners >= 2:
                shards = shard_whole_episodes(episodes, num_learners)
                results = self.learner_group.update(
                    episodes_refs=[ray.put(s) for s in shards], **kwargs
                )
            else:
                results = self.learner_group.update(episodes=episodes, **kwargs)
        self.metrics.aggregate(results, key=LEARNER_RESULTS)

        def peek(name: str) -> float | None:
            try:  # (default=None means "no default" to RLlib)
                return float(self.metrics.peek((LEARNER_RESULTS, DEFAULT_MODULE_ID, name)))
            except KeyError:
                return None

        # Absent keys stay absent (a critic-free estimator has no value loss).
        peeked = {key: peek(name) for key, name in M.FROM_LEARNER.items()}
        stats = {key: value for key, value in peeked.items() if value is not None}
        self.kl_ctl.update(stats[M.KL_SEQUENCE], n_steps=len(episodes))
        stats[M.KL_COEF] = kl_coef
        return stats

    def step(self) -> dict[str, Any]:
        """One Tune step; ``done`` once the run's planned iterations (``run.num_epochs``'s
        passes, or ``run.num_iterations``) are trained, so sweeps of any batch size stop."""
        result: dict[str, Any] = super().step()
        if self.iteration + 1 >= self.planned_iterations:
            result["done"] = True
        return result

    # ------------------------------------------------------------------ state
    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state[RAYRM_STATE] = {
            "kl_ctl": self.kl_ctl.get_state(),
            "reward_moments": self.rewards.moments.get_state(),
            "config_kl_coef": self.run_config.algorithm.kl_coef,
            "prompt_order": self.trained_prompts,
            "monitors": self.monitors.get_state(),
        }
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if RAYRM_STATE in state:
            saved = state[RAYRM_STATE]
            self.rewards.moments.set_state(saved["reward_moments"])
            self.monitors.set_state(saved.get("monitors", {}))
            if "prompt_order" in saved:  # the pass goes on from the last trained batch
                self.prompt_order.set_state(saved["prompt_order"])
                self.trained_prompts = self.prompt_order.get_state()
                self.next_rollout = None  # sampled ahead from prompts now taken again
            # The adaptive β travels with the checkpoint, unless this trial's config changed
            # the coefficient (PBT's explore step): then the new value is the perturbed β.
            kl_coef = self.run_config.algorithm.kl_coef
            if saved.get("config_kl_coef", kl_coef) == kl_coef:
                self.kl_ctl.set_state(saved["kl_ctl"])
        # The config's learning rate wins over the one stored with the optimizer state (PBT).
        lr = self.run_config.algorithm.lr
        self.learner_group.foreach_learner(lambda learner: learner.set_lr(lr))

    def checkpoint_score(self) -> float | None:
        """``tune.metric`` of the last iteration, signed so that higher is better."""
        value = getattr(self, "last_published", {}).get(self.run_config.tune.metric)
        if value is None:
            return None
        return float(value) if self.run_config.tune.mode == "max" else -float(value)

    def checkpoints_to_keep(self) -> int | None:
        return self.run_config.run.keep_checkpoints

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """RLlib's checkpoint plus the resolved config, the tokenizer and the policy's Hugging
        Face configs (``rayrm.rl.checkpoint``), so export and generate need no model.path."""
        super().save_checkpoint(checkpoint_dir)
        write_rayrm_files(checkpoint_dir, self.run_config, self.tokenizer)
