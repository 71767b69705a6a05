"""Reward pools: reward actors scoring finished completions in parallel batches.

:class:`RewardPool` shards a batch over ``num_actors`` actors of one source (a reward model, a
reward function or a reference metric) and gathers the scores in order; with a name it is a
shared pool of detached actors that every trial of a sweep (or every job) scores through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from rayrm.errors import TimedOut
from rayrm.rewards.actors import RewardFunctionActor, RewardModelActor
from rayrm.rewards.base import (
    Conversations,
    References,
    RewardSourceError,
    check_pair,
    last_line,
)
from rayrm.rewards.text_metrics import RewardMetricActor

__all__ = ["POOL_NAMESPACE", "SOURCES", "RewardPool"]

SOURCES = ("model", "function", "metric")
"""Sources one :class:`RewardPool` serves (ensembles and composites: ``rayrm.rewards.compose``)."""

POOL_NAMESPACE = "rayrm"
"""Ray namespace of shared (named) reward pools."""


def _check_arguments(
    source: str,
    path: str | None,
    function: str | None,
    metric: str | None,
    num_actors: int,
    batch_size: int,
) -> None:
    if source not in SOURCES:
        raise ValueError(f"reward source must be one of {SOURCES}, got {source!r}")
    if source == "model" and not path:
        raise ValueError("reward source 'model' needs path= (a local model directory)")
    if source == "function" and not function:
        raise ValueError("reward source 'function' needs function= ('module:function')")
    if source == "metric" and not metric:
        raise ValueError("reward source 'metric' needs metric= ('chrf' or 'bleu')")
    if num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _actor_recipe(
    source: str,
    path: str | None,
    function: str | None,
    metric: str | None,
    max_length: int,
    tokenizer_path: str | None,
) -> tuple[type, tuple[Any, ...], dict[str, Any]]:
    """``(actor class, args, kwargs)`` of one source's actors."""
    if source == "model":
        kwargs = {"max_length": max_length, "tokenizer_path": tokenizer_path}
        return RewardModelActor, (path,), kwargs
    if source == "function":
        return RewardFunctionActor, (function,), {}
    return RewardMetricActor, (metric,), {}


class RewardPool:
    """Shards scoring over ``num_actors`` reward actors in fixed-size chunks.

    Chunks go out round-robin, all at once, and are gathered together, so N items cost exactly
    ``ceil(N / batch_size)`` actor calls and the actors run concurrently.

    Attributes:
        num_calls: ``score`` calls this pool has sent to its actors (one per chunk).
    """

    def __init__(
        self,
        *,
        source: str,
        path: str | None = None,
        function: str | None = None,
        metric: str | None = None,
        num_actors: int = 1,
        batch_size: int = 32,
        num_cpus_per_actor: float = 1.0,
        num_gpus_per_actor: float = 0.0,
        max_length: int = 512,
        tokenizer_path: str | None = None,
        max_restarts: int = 2,
        custom_resources: dict[str, float] | None = None,
        name: str | None = None,
        namespace: str = POOL_NAMESPACE,
        max_inflight_per_actor: int = 2,
        local: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Builds the actors and waits until each has loaded.

        Args:
            source: ``"model"`` (needs ``path``), ``"function"`` (needs ``function``) or
                ``"metric"`` (needs ``metric``; see ``rayrm.rewards.text_metrics``).
            path: local reward-model directory.
            function: ``"module:function"`` spec; must be importable in the Ray workers.
            metric: ``"chrf"`` or ``"bleu"``.
            num_actors: actor count; also the in-process instance count when ``local``.
            batch_size: items per actor call.
            num_cpus_per_actor: Ray CPU reservation per actor.
            num_gpus_per_actor: Ray GPU reservation; with it, ``device="auto"`` picks CUDA.
            max_length: token budget per text (model source only).
            tokenizer_path: tokenizer directory for a reward model that has none.
            max_restarts: actor restarts after a crash or a timeout (-1: no limit); the
                same number of task retries is allowed, so a chunk whose actor died is scored
                again (at-least-once: a side-effecting scorer may see a chunk twice).
            custom_resources: extra Ray resources per actor (e.g. ``{"rayrm_reward": 1}``).
            name: makes the pool SHARED: its actors are detached, named ``{name}-{i}`` in
                ``namespace``, and reused by every pool built with the same name (e.g. all
                trials of a sweep), so N trials do not load N copies of a reward model.
                ``shutdown`` leaves shared actors running; :meth:`kill_shared` stops them.
            namespace: Ray namespace of a shared pool's actors.
            max_inflight_per_actor: back-pressure: at most this many chunks per actor are
                outstanding from this client; further chunks wait for earlier ones instead of
                piling up on a busy (shared) actor.
            local: build plain in-process instances instead of Ray actors.
            timeout_s: seconds one chunk may take; a slower chunk's actor is restarted and
                the chunk re-scored, up to ``max_restarts`` times (then :class:`TimedOut`).
                None waits forever; in-process instances are not timed.

        Raises:
            ValueError: inconsistent arguments.
            RewardSourceError: an actor failed to load (bad path, spec or head).
        """
        _check_arguments(source, path, function, metric, num_actors, batch_size)
        self.source = source
        self.batch_size = batch_size
        self.local = local
        self.shared = name is not None and not local
        self.max_inflight = max(1, max_inflight_per_actor) * num_actors
        self.num_calls = 0
        self.num_timeouts = 0
        self.timeout_s, self.max_restarts = timeout_s, max_restarts
        self._owner: dict[Any, int] = {}  # object ref of a chunk -> index of its actor
        cls, args, kwargs = _actor_recipe(
            source, path, function, metric, max_length, tokenizer_path
        )
        self.name = name if self.shared else None

        if local:
            self.actors: list[Any] = [cls(*args, **kwargs) for _ in range(num_actors)]
            return
        remote_cls = ray.remote(
            num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor,
            resources=custom_resources or None,
            max_restarts=max_restarts,
            max_task_retries=max_restarts,
        )(cls)
        if self.shared:
            # Outside any trial's placement group, alive until kill_shared.
            self.actors = [
                remote_cls.options(
                    name=f"{name}-{i}",
                    namespace=namespace,
                    lifetime="detached",
                    get_if_exists=True,
                    scheduling_strategy="DEFAULT",
                ).remote(*args, **kwargs)
                for i in range(num_actors)
            ]
        else:
            self.actors = [remote_cls.remote(*args, **kwargs) for _ in range(num_actors)]
        try:
            ray.get([a.ping.remote() for a in self.actors])
        except ray.exceptions.RayActorError as e:
            self.shutdown()
            raise RewardSourceError(
                f"reward {source} actor failed to start: {last_line(str(e))}"
            ) from e
        if self.shared:
            self._check_shared_actors(name, (source, str(args[0])))

    def _check_shared_actors(self, name: str | None, wanted: tuple[str, str]) -> None:
        """A shared pool joined by name must serve the source this client was configured with
        (otherwise a job would silently train against another reward)."""
        for found in ray.get([a.describe.remote() for a in self.actors]):
            if tuple(found) != wanted:
                self.actors = []  # not ours to kill
                raise RewardSourceError(
                    f"shared reward pool {name!r} already serves {found[0]} {found[1]!r}, but "
                    f"this job's reward config asks for {wanted[0]} {wanted[1]!r}; use the same "
                    f"reward section as the pool's owner, or another reward.pool_name"
                )

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        *,
        references: References = None,
        messages: Conversations = None,
        finished: Sequence[bool] | None = None,
        lengths: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Scores all items, preserving input order.

        Args:
            prompts: N prompts.
            completions: N completions, same order.
            references: N reference texts (reference-based sources), or None.
            messages: N conversations of chat prompts (see :data:`Conversations`), or None.
            finished, lengths: accepted for interface parity with the composed rewards of
                ``rayrm.rewards.compose`` (which apply length/EOS penalties); a single source
                ignores them.

        Returns:
            ``float32`` array of shape (N,), on CPU.

        Raises:
            ValueError: lengths differ.
        """
        return self.collect(
            self.submit(prompts, completions, references=references, messages=messages)
        )

    def score_detailed(
        self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(score(...), {})``: a single source has no breakdown."""
        return self.score(prompts, completions, **kwargs), {}

    def submit(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        *,
        references: References = None,
        messages: Conversations = None,
    ) -> list[Any]:
        """Sends every chunk out and returns at once (with back-pressure; see ``__init__``).

        Composed rewards submit to all their pools before collecting any, so that several
        sources (ensemble members, components) score concurrently.

        Returns:
            Opaque handles for :meth:`collect`: Ray object refs, or arrays when ``local``.
        """
        check_pair(prompts, completions)
        if references is not None and len(references) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(references)} references")
        if messages is not None and len(messages) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(messages)} conversations")
        if not self.actors:
            raise RuntimeError("RewardPool was shut down")
        n = len(prompts)
        results: list[Any] = []
        for i in range(math.ceil(n / self.batch_size)):
            lo, hi = i * self.batch_size, min(n, (i + 1) * self.batch_size)
            actor = self.actors[i % len(self.actors)]
            refs = None if references is None else list(references[lo:hi])
            msgs = None if messages is None else list(messages[lo:hi])
            chunk = (list(prompts[lo:hi]), list(completions[lo:hi]), refs, msgs)
            if not self.local and i >= self.max_inflight:
                # Back-pressure: wait until the chunk sent max_inflight chunks ago is done.
                ray.wait([results[i - self.max_inflight]], num_returns=1)
            if self.local:
                results.append(actor.score(*chunk))
            else:
                results.append(actor.score.remote(*chunk))
                self._owner[results[-1]] = i % len(self.actors)
            self.num_calls += 1
        return results

    def collect(self, handles: list[Any]) -> np.ndarray:
        """Waits for the chunks of one :meth:`submit` and concatenates them in order."""
        if not handles:
            return np.zeros((0,), dtype=np.float32)
        chunks = handles if self.local else [self._get(ref) for ref in handles]
        return np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks])

    def _get(self, ref: Any) -> Any:
        """One chunk's scores; a chunk slower than ``timeout_s`` restarts its actor (Ray then
        runs the chunk again on the restarted actor), up to ``max_restarts`` times."""
        owner = self._owner.pop(ref, None)
        restarts = 0
        while True:
            try:
                return ray.get(ref, timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:
                if owner is None or (0 <= self.max_restarts <= restarts):
                    raise TimedOut(
                        f"a reward {self.source} actor did not return a chunk within "
                        f"reward.timeout_s={self.timeout_s:g}s, {restarts + 1} times "
                        f"(restarted {restarts} times, reward.max_restarts={self.max_restarts})"
                    ) from None
                restarts += 1
                self.num_timeouts += 1
                actor = self.actors[owner]
                ray.kill(actor, no_restart=False)
                try:  # the restarted actor's start-up does not count against the chunk
                    ray.get(actor.ping.remote(), timeout=self.timeout_s)
                except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                    pass

    def stats(self) -> dict[str, Any]:
        """Sums actor counters; ``pool_num_calls`` also counts calls lost to actor restarts."""
        per_actor = (
            [a.stats() for a in self.actors]
            if self.local
            else ray.get([a.stats.remote() for a in self.actors])
        )
        return {
            "num_actors": len(self.actors),
            "num_calls": sum(s["num_calls"] for s in per_actor),
            "num_scored": sum(s["num_scored"] for s in per_actor),
            "pool_num_calls": self.num_calls,
            "pool_num_timeouts": self.num_timeouts,
            "per_actor": per_actor,
        }

    def shutdown(self) -> None:
        """Kills the actors (idempotent); a shared pool's actors and in-process instances are
        just dropped."""
        if not self.local and not self.shared:
            for actor in self.actors:
                ray.kill(actor)
        self.actors = []

    @staticmethod
    def kill_shared(name: str, num_actors: int, namespace: str = POOL_NAMESPACE) -> int:
        """Stops the actors of the shared pool ``name``; returns how many were running."""
        killed = 0
        for i in range(num_actors):
            try:
                actor = ray.get_actor(f"{name}-{i}", namespace=namespace)
            except ValueError:
                continue
            ray.kill(actor)
            killed += 1
        return killed

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
