"""Reward sources: reward-model and reward-function actors, and the pool that shards them.

What belongs here: everything that turns ``(prompts, completions)`` into one scalar reward per
item. Every source has the same batched signature,
``fn(prompts: list[str], completions: list[str]) -> Sequence[float]``, so the algorithm's
``score`` phase does not care whether a learned model or a Python rule produced the numbers.
Reference-based sources (``rayrm.rewards.text_metrics``: chrF, BLEU; reward functions with a
``references`` parameter) also receive each prompt's reference text.

Several sources combined (weighted sums, ensembles, length and missing-EOS penalties) live in
``rayrm.rewards.compose``; :func:`pool_from_config` builds whichever a ``RewardConfig`` asks for.

The actors are plain classes (house style): :class:`RewardPool` makes them remote where it
creates them, and with ``local=True`` builds them in-process, so the scoring logic is testable
without a Ray cluster. Actors return CPU ``float32`` numpy arrays.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from rayrm.models.hf_files import TOKENIZER_FILES, has_tokenizer
from rayrm.rewards.text_metrics import RewardMetricActor

RewardFn = Callable[[list[str], list[str]], Sequence[float]]

SOURCES = ("model", "function", "metric")
"""Sources one :class:`RewardPool` serves (ensembles and composites: ``rayrm.rewards.compose``)."""

References = Sequence[str | None] | None
"""Per-item reference texts for reference-based sources; None when the prompts have none."""

Conversations = Sequence[list[dict[str, str]] | None] | None
"""Per-item conversations (``{role, content}`` messages) the prompts were rendered from; None
for plain prompts. Reward models render ``messages + [assistant: completion]`` with their own
chat template; reward functions with a ``messages`` parameter receive them."""


class RewardSourceError(ValueError):
    """A reward source cannot be built or returned unusable output.

    A ``ValueError`` subclass so callers that validate configs can catch both alike.
    """


def resolve_function(spec: str) -> RewardFn:
    """Imports a reward function named as ``"module:function"``.

    The string form lets configs (YAML, Tune search spaces) name reward functions and lets
    Ray workers import them themselves instead of unpickling closures from the driver.

    Args:
        spec: ``"package.module:function"``; the module may be dotted.

    Returns:
        The callable, expected to follow the batched reward signature.

    Raises:
        RewardSourceError: spec malformed, module not importable, attribute missing or not
            callable. The one-line message names the spec.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise RewardSourceError(f"reward function spec {spec!r} must look like 'module:function'")
    module_name, attr = (part.strip() for part in spec.split(":"))
    if not module_name or not attr:
        raise RewardSourceError(f"reward function spec {spec!r} must look like 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardSourceError(
            f"reward function spec {spec!r}: cannot import module {module_name!r} ({e})"
        ) from e
    try:
        fn = getattr(module, attr)
    except AttributeError as e:
        raise RewardSourceError(
            f"reward function spec {spec!r}: module {module_name!r} has no attribute {attr!r}"
        ) from e
    if not callable(fn):
        raise RewardSourceError(
            f"reward function spec {spec!r}: {attr!r} is a {type(fn).__name__}, not callable"
        )
    return fn


def _resolve_device(device: str) -> torch.device:
    """Maps ``"auto"`` to CUDA when the actor was given a GPU, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _last_line(message: str) -> str:
    """Keeps the final line of a remote traceback: the original exception and its message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else message


def _check_pair(prompts: Sequence[str], completions: Sequence[str]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(completions)} completions; "
            "each completion needs the prompt it answers"
        )


class RewardModelActor:
    """Scores ``prompt + completion`` with a scalar-head sequence-classification model.

    Attributes:
        num_calls: ``score`` calls served (since the last restart, when remote).
        num_scored: items scored.
    """

    def __init__(
        self,
        path: str,
        *,
        max_length: int = 512,
        device: str = "auto",
        tokenizer_path: str | None = None,
    ) -> None:
        """Loads tokenizer and model from a local directory.

        Args:
            path: directory written by ``save_pretrained`` (model, usually tokenizer too).
            tokenizer_path: tokenizer directory when ``path`` has none.
            max_length: token budget per text; clamped to the model's position limit so long
                texts truncate instead of indexing past the position embeddings.
            device: ``"auto"`` (CUDA if visible, else CPU), or any torch device string.

        Raises:
            RewardSourceError: the model has more than one label, or the tokenizer has
                neither a pad nor an eos token to pad with.
        """
        self.path = str(path)
        self.device = _resolve_device(device)
        tokenizer_dir = str(tokenizer_path or path)
        if not has_tokenizer(tokenizer_dir):
            raise RewardSourceError(
                f"reward model {self.path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                "set reward.tokenizer_path to the tokenizer it was trained with"
            )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise RewardSourceError(
                    f"reward model tokenizer at {self.path!r} has neither a pad nor an eos "
                    "token; batched scoring needs one to pad with"
                )
            tokenizer.pad_token = tokenizer.eos_token
        # Right padding keeps absolute position ids identical to the unpadded text (GPT-2 has
        # learned positions), and the seq-cls head pools the last non-pad token either way.
        tokenizer.padding_side = "right"
        # Keep the end of the text when truncating: the head reads the last token, which
        # must belong to the completion, not the middle of a long prompt.
        tokenizer.truncation_side = "left"
        self.tokenizer = tokenizer

        model = AutoModelForSequenceClassification.from_pretrained(self.path)
        if model.config.num_labels != 1:
            raise RewardSourceError(
                f"reward model at {self.path!r} has num_labels={model.config.num_labels}; "
                "a reward model needs a single scalar head (num_labels=1)"
            )
        # The head finds each row's last real token by comparing ids to pad_token_id, so it
        # must be the id the tokenizer actually pads with.
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.to(self.device).eval()

        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if isinstance(limit, int) else max_length
        self.num_calls = 0
        self.num_scored = 0

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        references: References = None,
        messages: Conversations = None,
    ) -> np.ndarray:
        """Scores a batch in one forward pass.

        Args:
            prompts: N prompt texts.
            completions: N completions, same order.
            references: ignored (a reward model reads prompt and completion only).
            messages: N conversations (or None each) the prompts came from: those items are
                scored as ``messages + [{"role": "assistant", "content": completion}]``
                rendered with this model's chat template.

        Returns:
            ``float32`` array of shape (N,), on CPU: the scalar head's logit per text.
        """
        _check_pair(prompts, completions)
        self.num_calls += 1
        if len(prompts) == 0:
            return np.zeros((0,), dtype=np.float32)
        texts = reward_model_texts(self.tokenizer, prompts, completions, messages)
        # Chat renderings hold their own special tokens; plain texts get the tokenizer's.
        special = messages is None or all(m is None for m in messages)
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=special,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits  # (N, 1)
        self.num_scored += len(texts)
        return logits[:, 0].float().cpu().numpy()

    def stats(self) -> dict[str, int]:
        """Counters for the pool's aggregate and for tests that count calls."""
        return {"num_calls": self.num_calls, "num_scored": self.num_scored}

    def ping(self) -> bool:
        """Returns once ``__init__`` finished; lets the pool surface load errors early."""
        return True

    def describe(self) -> tuple[str, str]:
        """``(source, what)``: lets a client check a shared actor serves what it asked for."""
        return ("model", self.path)


class RewardFunctionActor:
    """Scores with a Python function named by ``"module:function"``.

    Same interface as :class:`RewardModelActor`, so rule-based rewards (exact match, length,
    format checks) run in the same pool and scale out the same way.
    """

    def __init__(self, function: str) -> None:
        """Resolves the function in this process (so Ray workers import it themselves).

        Raises:
            RewardSourceError: see :func:`resolve_function`.
        """
        self.function = function
        self.fn = resolve_function(function)
        self.takes_references = _takes_keyword(self.fn, "references")
        self.takes_messages = _takes_keyword(self.fn, "messages")
        self.num_calls = 0
        self.num_scored = 0

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        references: References = None,
        messages: Conversations = None,
    ) -> np.ndarray:
        """Calls the function once on the whole batch.

        A function with a ``references`` parameter is called as
        ``fn(prompts, completions, references=references)``; others get no references. The
        same for ``messages`` (the conversations of chat prompts).

        Returns:
            ``float32`` array of shape (N,), on CPU.

        Raises:
            RewardSourceError: the function returned something that is not N scalars.
        """
        _check_pair(prompts, completions)
        self.num_calls += 1
        n = len(prompts)
        extra: dict[str, Any] = {}
        if self.takes_references:
            extra["references"] = None if references is None else list(references)
        if self.takes_messages:
            extra["messages"] = None if messages is None else list(messages)
        fn: Any = self.fn  # the batched signature plus optional keywords
        out: Any = fn(list(prompts), list(completions), **extra)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        try:
            scores = np.asarray(out, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise RewardSourceError(
                f"reward function {self.function!r} returned {type(out).__name__} that is not "
                f"convertible to float32 numbers ({e})"
            ) from e
        if scores.shape != (n,):
            raise RewardSourceError(
                f"reward function {self.function!r} returned shape {scores.shape} for {n} "
                f"items; it must return one float per (prompt, completion), i.e. shape ({n},)"
            )
        self.num_scored += n
        return scores

    def stats(self) -> dict[str, int]:
        """Counters for the pool's aggregate and for tests that count calls."""
        return {"num_calls": self.num_calls, "num_scored": self.num_scored}

    def ping(self) -> bool:
        """Returns once ``__init__`` finished; lets the pool surface load errors early."""
        return True

    def describe(self) -> tuple[str, str]:
        """``(source, what)``: lets a client check a shared actor serves what it asked for."""
        return ("function", self.function)


def _takes_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` accepts ``name=`` (a named parameter or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def reward_model_texts(
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    messages: Conversations = None,
) -> list[str]:
    """What a reward model reads per item: ``prompt + completion``, or for a conversation the
    reward model's own chat template over ``messages + [assistant: completion]``.

    Raises:
        RewardSourceError: A conversation arrives and the tokenizer has no chat template.
    """
    texts = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        conversation = None if messages is None else messages[i]
        if conversation is None:
            texts.append(prompt + completion)
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise RewardSourceError(
                "the reward model's tokenizer has no chat template, but the prompts are "
                "conversations; set reward.tokenizer_path to a tokenizer with one"
            )
        turn = {"role": "assistant", "content": completion}
        texts.append(str(tokenizer.apply_chat_template([*conversation, turn], tokenize=False)))
    return texts


POOL_NAMESPACE = "rayrm"
"""Ray namespace of shared (named) reward pools."""


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
            max_restarts: actor restarts after a crash; scoring is idempotent, so the same
                number of task retries is allowed.
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

        Raises:
            ValueError: inconsistent arguments.
            RewardSourceError: an actor failed to load (bad path, spec or head).
        """
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

        self.source = source
        self.batch_size = batch_size
        self.local = local
        self.shared = name is not None and not local
        self.max_inflight = max(1, max_inflight_per_actor) * num_actors
        self.num_calls = 0
        if source == "model":
            cls: type = RewardModelActor
            args: tuple[Any, ...] = (path,)
            kwargs: dict[str, Any] = {"max_length": max_length, "tokenizer_path": tokenizer_path}
        elif source == "function":
            cls, args, kwargs = RewardFunctionActor, (function,), {}
        else:
            cls, args, kwargs = RewardMetricActor, (metric,), {}
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
                f"reward {source} actor failed to start: {_last_line(str(e))}"
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
        _check_pair(prompts, completions)
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
            results.append(actor.score(*chunk) if self.local else actor.score.remote(*chunk))
            self.num_calls += 1
        return results

    def collect(self, handles: list[Any]) -> np.ndarray:
        """Waits for the chunks of one :meth:`submit` and concatenates them in order."""
        if not handles:
            return np.zeros((0,), dtype=np.float32)
        chunks = handles if self.local else ray.get(handles)
        return np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks])

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


def pool_from_config(
    reward: Any,
    *,
    name: str | None = None,
    local: bool = False,
    tokenizer: Any = None,
    namespace: str = POOL_NAMESPACE,
) -> Any:
    """The scorer a ``RewardConfig`` describes: the one factory for every reward source.

    A single ``model``/``function``/``metric`` source without penalties is a plain
    :class:`RewardPool`; ``ensemble``, ``composite`` or any penalty gives a
    ``rayrm.rewards.compose.ComposedReward``. Both offer ``score(prompts, completions, *,
    references=None, finished=None, lengths=None)``, ``score_detailed(...) -> (scores,
    breakdown)``, ``stats()`` and ``shutdown()``.

    Args:
        reward: a validated ``rayrm.config.run.RewardConfig``.
        name: shared pool name (``reward.pool_name``): actors are detached and named, see
            :class:`RewardPool`; components and ensemble members get sub-pools ``{name}.{part}``.
        local: build in-process instances instead of Ray actors.
        tokenizer: the policy's tokenizer (or its directory), used to count completion tokens
            for ``reward.length_penalty`` when the caller passes no ``lengths``.
        namespace: Ray namespace of shared actors.
    """
    from rayrm.rewards.compose import build_reward

    return build_reward(reward, name=name, local=local, tokenizer=tokenizer, namespace=namespace)
