"""Reward pools: reward actors scoring finished completions in parallel batches.

:class:`RewardPool` shards a batch over ``num_actors`` actors of one source (a reward model, a
reward function or a reference metric) and gathers the scores in order; with a name it is a
shared pool of detached actors that every trial of a sweep (or every job) scores through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from rayrm.errors import TimedOut
from rayrm.rewards.base import (
    Columns,
    Conversations,
    References,
    RewardSourceError,
    check_pair,
    exception_names,
    last_line,
)
from rayrm.rewards.functions import RewardFunctionActor
from rayrm.rewards.text_metrics import RewardMetricActor

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
    """One outstanding chunk: its actor's index, the call's arguments, resubmissions so far."""

    actor: int
    args: tuple[Any, ...]
    resubmitted: int = 0


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
        # Imported here: torch and transformers stay out of processes that score without them.
        from rayrm.rewards.actors import RewardModelActor

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
        max_restarts: int | None = None,
        retry_exceptions: bool | Sequence[str] = False,
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
            max_restarts: actor restarts after a crash or a timeout (-1: no limit; None: no
                limit for a shared pool, whose actors serve every job, else 2); also the
                resubmissions allowed per chunk: a chunk whose actor died, hung or raised a
                ``retry_exceptions`` error is sent again, to the next actor (scoring is
                at-least-once; ``ids`` let a side-effecting scorer deduplicate).
            retry_exceptions: exceptions of the scoring code that resubmit the chunk instead
                of failing: True for any, or names (bare or qualified, matched against the
                raised type and its bases, e.g. ``["OutOfMemoryError", "ConnectionError"]``).
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
        self.num_resubmitted = 0
        if max_restarts is None:
            max_restarts = -1 if self.shared else 2
        self.timeout_s, self.max_restarts = timeout_s, max_restarts
        self.retry_exceptions = retry_exceptions
        self._pending: dict[Any, _Chunk] = {}  # object ref -> the chunk it computes
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
        ids: Sequence[str] | None = None,
        finished: Sequence[bool] | None = None,
        lengths: Sequence[int] | None = None,
        columns: Columns = None,
    ) -> np.ndarray:
        """Scores all items, preserving input order.

        Args:
            prompts: N prompts.
            completions: N completions, same order.
            references: N reference texts (reference-based sources), or None.
            messages: N conversations of chat prompts (see :data:`Conversations`), or None.
            ids: N stable completion ids, passed to reward functions that take ``ids``.
            columns: N rows' other prompt-file columns (:data:`Columns`); a reward function
                receives each column it names as a keyword.
            finished, lengths: accepted for interface parity with the composed rewards of
                ``rayrm.rewards.compose`` (which apply length/EOS penalties); a single source
                ignores them.

        Returns:
            ``float32`` array of shape (N,), on CPU.

        Raises:
            ValueError: lengths differ.
        """
        return self.collect(
            self.submit(
                prompts,
                completions,
                references=references,
                messages=messages,
                ids=ids,
                columns=columns,
            )
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
        ids: Sequence[str] | None = None,
        columns: Columns = None,
    ) -> list[Any]:
        """Sends every chunk out and returns at once (with back-pressure; see ``__init__``).

        Composed rewards submit to all their pools before collecting any, so that several
        sources (ensemble members, components) score concurrently.

        Returns:
            Opaque handles for :meth:`collect`: Ray object refs, or arrays when ``local``.
        """
        check_pair(prompts, completions)
        for what, seq in (
            ("references", references),
            ("conversations", messages),
            ("ids", ids),
            ("column rows", columns),
        ):
            if seq is not None and len(seq) != len(prompts):
                raise ValueError(f"got {len(prompts)} prompts but {len(seq)} {what}")
        if not self.actors:
            raise RuntimeError("RewardPool was shut down")
        n = len(prompts)
        results: list[Any] = []
        for i in range(math.ceil(n / self.batch_size)):
            lo, hi = i * self.batch_size, min(n, (i + 1) * self.batch_size)
            actor = self.actors[i % len(self.actors)]
            refs = None if references is None else list(references[lo:hi])
            msgs = None if messages is None else list(messages[lo:hi])
            chunk_ids = None if ids is None else list(ids[lo:hi])
            cols = None if columns is None else list(columns[lo:hi])
            chunk = (list(prompts[lo:hi]), list(completions[lo:hi]), refs, msgs, chunk_ids, cols)
            if not self.local and i >= self.max_inflight:
                # Back-pressure: wait until the chunk sent max_inflight chunks ago is done.
                ray.wait([results[i - self.max_inflight]], num_returns=1)
            if self.local:
                results.append(actor.score(*chunk))
            else:
                results.append(actor.score.remote(*chunk))
                self._pending[results[-1]] = _Chunk(i % len(self.actors), chunk)
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
        return actor.score.remote(*chunk.args)

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
