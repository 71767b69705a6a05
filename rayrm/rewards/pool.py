"""Reward pools: reward actors scoring finished completions in parallel batches.

:class:`RewardPool` shards a batch of completion records over ``reward.num_actors`` actors of
one source (a reward model, a reward function or a reference metric) and gathers the scores in
order; with a name it is a shared pool of detached actors that every trial of a sweep (or every
job) scores through. It is built from the ``reward`` section (``rayrm.config.RewardSettings``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from rayrm.errors import TimedOut
from rayrm.rewards.base import (
    Completion,
    RewardSourceError,
    exception_names,
    last_line,
    lists_present,
)
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rewards.text_metrics import RewardMetricActor

if TYPE_CHECKING:  # the reward actors' processes never load the config schema
    from rayrm.config import RewardComponent, RewardSettings

    Source = RewardSettings | RewardComponent
    """A section that names one source: ``reward`` itself, a composite's component, or an
    ensemble member (a copy of either with ``source="model"`` and the member's ``path``)."""

__all__ = ["POOL_NAMESPACE", "SOURCES", "RewardPool"]

SOURCES = ("model", "function", "metric")
"""Sources one :class:`RewardPool` serves (ensembles and composites: ``rayrm.rewards.compose``)."""

POOL_NAMESPACE = "rayrm"
"""Ray namespace of shared (named) reward pools."""

BACKOFF_S = (0.5, 30.0)
"""A chunk's first resubmission after a crash or an exception waits 0.5 s, each further one
twice as long, at most 30 s (a crash-looping actor is not hammered; timeouts already waited)."""


_ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
"""A chunk's actor died or is restarting: the chunk may or may not have run."""


def _wait_until_up(actor: Any, timeout_s: float | None) -> None:
    """Waits for ``actor`` to answer a ping: through a restart (Ray refuses calls to a
    restarting actor at once), for up to ``timeout_s``. A dead actor, or one still silent,
    is left to the chunk's own call to report."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ray.get(actor.ping.remote(), timeout=left)
            return
        except ray.exceptions.ActorUnavailableError:  # restarting: ask again shortly
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.2)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            return


STARTUP_S = 300.0
"""Seconds a restarted actor may take to come up (load its model) before its chunk's
``timeout_s`` starts counting."""


@dataclass
class _Chunk:
    """One outstanding chunk: its actor's index, its records and the lists their batch carries
    (``rayrm.rewards.base.lists_present``), resubmissions so far."""

    actor: int
    records: list[Completion]
    present: frozenset[str]
    resubmitted: int = 0


def _check_source(part: Source) -> None:
    if part.source not in SOURCES:
        raise ValueError(f"reward source must be one of {SOURCES}, got {part.source!r}")
    if part.source == "model" and not part.path:
        raise ValueError("reward source 'model' needs a path (a local model directory)")
    if part.source == "function" and not part.function:
        raise ValueError("reward source 'function' needs a function ('module:function')")


def _actor_recipe(
    reward: RewardSettings, part: Source
) -> tuple[type, tuple[Any, ...], dict[str, Any]]:
    """``(actor class, args, kwargs)`` of the actors of ``part``'s source."""
    if part.source == "model":
        # Imported here: torch and transformers stay out of processes that score without them.
        from rayrm.rewards.actors import RewardModelActor

        tokenizer_path = part.tokenizer_path or reward.tokenizer_path
        kwargs = {"max_length": reward.max_length, "tokenizer_path": tokenizer_path}
        return RewardModelActor, (part.path,), kwargs
    if part.source == "function":
        return RewardFunctionActor, (part.function,), {}
    return RewardMetricActor, (part.metric,), {}


class RewardPool:
    """Shards scoring over ``reward.num_actors`` reward actors in fixed-size chunks.

    Chunks go out round-robin, all at once, and are gathered together, so N records cost
    exactly ``ceil(N / reward.batch_size)`` actor calls and the actors run concurrently.

    Attributes:
        num_calls: ``score`` calls this pool has sent to its actors (one per chunk).
    """

    def __init__(
        self,
        reward: RewardSettings,
        part: Source | None = None,
        *,
        name: str | None = None,
        namespace: str = POOL_NAMESPACE,
        local: bool = False,
        max_inflight_per_actor: int = 2,
    ) -> None:
        """Builds the actors of one source and waits until each has loaded.

        What scores comes from ``part`` (or ``reward`` itself): its ``source`` (``model``,
        ``function`` or ``metric``) and that source's ``path``, ``function`` or ``metric`` (and
        ``tokenizer_path``, else ``reward.tokenizer_path``). How the actors run comes from
        ``reward`` (see ``RewardSettings``): ``num_actors``, ``batch_size`` (records per actor
        call), ``num_cpus_per_actor``, ``num_gpus_per_actor`` (with a GPU a reward model runs
        on CUDA), ``custom_resources_per_actor``, ``max_length`` (reward models),
        ``timeout_s`` (a slower chunk's actor is restarted and the chunk re-scored; then
        :class:`TimedOut`), ``max_restarts`` (unset: no limit for a shared pool, whose actors
        serve every job, else 2) and ``retry_exceptions``: a chunk whose actor died, hung or
        raised a retried error is sent again, to the next actor, up to ``max_restarts``
        times (scoring is at-least-once; records carry stable ids to deduplicate by). A
        metric (chrF, BLEU) is string arithmetic: it scores in this process, in one
        instance, never shared.

        Args:
            reward: the run's ``reward`` section.
            part: the section naming what scores: a component of a composite, or an
                ensemble member (``source="model"`` and its ``path``); None: ``reward``.
            name: makes the pool SHARED: its actors are detached, named ``{name}-{i}`` in
                ``namespace``, and reused by every pool built with the same name (e.g. all
                trials of a sweep), so N trials do not load N copies of a reward model.
                ``shutdown`` leaves shared actors running; :meth:`kill_shared` stops them.
            namespace: Ray namespace of a shared pool's actors.
            local: build plain in-process instances instead of Ray actors (not timed).
            max_inflight_per_actor: back-pressure: at most this many chunks per actor are
                outstanding from this client; further chunks wait for earlier ones instead of
                piling up on a busy (shared) actor.

        Raises:
            ValueError: ``part`` is no single source, or lacks what it needs.
            RewardSourceError: an actor failed to load (bad path, spec or head).
        """
        part = reward if part is None else part
        _check_source(part)
        self.source = part.source
        self.local = local or part.source == "metric"
        num_actors = 1 if part.source == "metric" else reward.num_actors
        self.batch_size = reward.batch_size
        self.shared = name is not None and not self.local
        self.max_inflight = max(1, max_inflight_per_actor) * num_actors
        self.num_calls = 0
        self.num_timeouts = 0
        self.num_resubmitted = 0
        max_restarts = reward.max_restarts
        if max_restarts is None:
            max_restarts = -1 if self.shared else 2
        self.timeout_s, self.max_restarts = reward.timeout_s, max_restarts
        self.retry_exceptions = reward.retry_exceptions
        self._pending: dict[Any, _Chunk] = {}  # object ref -> the chunk it computes
        cls, args, kwargs = _actor_recipe(reward, part)
        self.name = name if self.shared else None

        if self.local:
            self.actors: list[Any] = [cls(*args, **kwargs) for _ in range(num_actors)]
            return
        remote_cls = ray.remote(
            num_cpus=reward.num_cpus_per_actor,
            num_gpus=reward.num_gpus_per_actor,
            resources=dict(reward.custom_resources_per_actor) or None,
            max_restarts=max_restarts,
            max_task_retries=0,  # the pool resubmits chunks itself (_get), and counts them
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
                f"reward {self.source} actor failed to start: {last_line(str(e))}"
            ) from e
        if self.shared:
            self._check_shared_actors(name, (self.source, str(args[0])))

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

    def score(self, records: Sequence[Completion]) -> np.ndarray:
        """Scores all records, preserving their order.

        Returns:
            ``float32`` array of shape (N,), on CPU.
        """
        return self.collect(self.submit(records))

    def score_detailed(
        self, records: Sequence[Completion]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(score(records), {})``: a single source has no breakdown."""
        return self.score(records), {}

    def submit(self, records: Sequence[Completion]) -> list[Any]:
        """Sends every chunk out and returns at once (with back-pressure; see ``__init__``).

        Composed rewards submit to all their pools before collecting any, so that several
        sources (ensemble members, components) score concurrently.

        Returns:
            Opaque handles for :meth:`collect`: Ray object refs, or arrays when ``local``.
        """
        if not self.actors:
            raise RuntimeError("RewardPool was shut down")
        present = lists_present(records)  # every chunk unpacks alike (see RewardFunctionActor)
        results: list[Any] = []
        for i in range(math.ceil(len(records) / self.batch_size)):
            chunk = list(records[i * self.batch_size : (i + 1) * self.batch_size])
            actor = self.actors[i % len(self.actors)]
            if not self.local and i >= self.max_inflight:
                # Back-pressure: wait until the chunk sent max_inflight chunks ago is done.
                ray.wait([results[i - self.max_inflight]], num_returns=1)
            if self.local:
                results.append(actor.score(chunk, present))
            else:
                results.append(actor.score.remote(chunk, present))
                self._pending[results[-1]] = _Chunk(i % len(self.actors), chunk, present)
            self.num_calls += 1
        return results

    def collect(self, handles: list[Any]) -> np.ndarray:
        """Waits for the chunks of one :meth:`submit` and concatenates them in order."""
        if not handles:
            return np.zeros((0,), dtype=np.float32)
        chunks = handles if self.local else [self._get(ref) for ref in handles]
        return np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks])

    def _get(self, ref: Any) -> Any:
        """One chunk's scores. A chunk whose actor hung (``timeout_s``; the actor is restarted),
        died, or raised one of ``retry_exceptions`` is resubmitted to the next actor, up to
        ``max_restarts`` times (then :class:`TimedOut` for a hang, the error otherwise)."""
        chunk = self._pending.pop(ref, None)
        while True:
            try:
                return ray.get(ref, timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:
                self.num_timeouts += 1
                if chunk is not None and not self._exhausted(chunk):
                    ray.kill(self.actors[chunk.actor], no_restart=False)
                    ref = self._resubmit(chunk, backoff=False)
                    continue
                restarts = 0 if chunk is None else chunk.resubmitted
                raise TimedOut(
                    f"a reward {self.source} actor did not return a chunk within "
                    f"reward.timeout_s={self.timeout_s:g}s, {restarts + 1} times "
                    f"(resubmitted {restarts} times, reward.max_restarts={self.max_restarts})"
                ) from None
            except _ACTOR_LOST:
                if chunk is None or self._exhausted(chunk):
                    raise
                ref = self._resubmit(chunk, backoff=True)
            except ray.exceptions.RayTaskError as e:
                if chunk is None or self._exhausted(chunk) or not self._retriable(e):
                    raise
                ref = self._resubmit(chunk, backoff=True)

    def _exhausted(self, chunk: _Chunk) -> bool:
        return 0 <= self.max_restarts <= chunk.resubmitted

    def _retriable(self, error: Any) -> bool:
        """Whether a task error is one of ``retry_exceptions`` (see ``__init__``)."""
        if self.retry_exceptions is True:
            return True
        if not self.retry_exceptions:
            return False
        cause = getattr(error, "cause", error)
        names = getattr(cause, "raised", None) or exception_names(cause)
        return any(name in names for name in self.retry_exceptions)

    def _resubmit(self, chunk: _Chunk, *, backoff: bool) -> Any:
        """Sends ``chunk`` again, to the next actor, after its start-up (a restart's model load
        does not count against the chunk's timeout) and, after a crash, a back-off."""
        chunk.resubmitted += 1
        self.num_resubmitted += 1
        if backoff:
            first, cap = BACKOFF_S
            time.sleep(min(cap, first * 2 ** (chunk.resubmitted - 1)))
        chunk.actor = (chunk.actor + 1) % len(self.actors)
        actor = self.actors[chunk.actor]
        startup = None if self.timeout_s is None else max(self.timeout_s, STARTUP_S)
        _wait_until_up(actor, startup)
        return actor.score.remote(chunk.records, chunk.present)

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
            "pool_num_resubmitted": self.num_resubmitted,
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
