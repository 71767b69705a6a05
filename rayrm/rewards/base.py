"""What every reward source shares: the completion record, errors, and the actor base.

Every source scores a sequence of :class:`Completion` records -- a prompt's text, the
completion's text and what else is known of them: how it ended, its reference text, the
conversation its prompt was rendered from, a stable id and the prompts-file row's other
columns -- into one float per record, returned as a CPU ``float32`` numpy array. Records are
unpacked into parallel lists only where user code is called (``rayrm.rewards.functions``) and
where a source reads its texts (reward models, metrics). :class:`RewardActor` is the base of
the reward-model, reward-function and metric actors (plain classes, made remote where a pool
creates them): it counts calls and items and answers the pool's ``ping``/``describe``/``stats``.
:class:`Scorer` is the protocol of what the RL loop scores through (a pool, or a composition
of pools).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rayrm.resolver import import_function
from rayrm.threads import use_reserved_cpus

if TYPE_CHECKING:
    import torch

__all__ = [
    "LISTS",
    "Columns",
    "Completion",
    "Conversations",
    "References",
    "RewardActor",
    "RewardFn",
    "RewardSourceError",
    "ScoredBatch",
    "Scorer",
    "call_scorer",
    "check_scores",
    "completion_records",
    "exception_names",
    "last_line",
    "lists_present",
    "resolve_device",
    "resolve_function",
    "unpack",
]

RewardFn = Callable[[list[str], list[str]], Sequence[float]]

Columns = Sequence[dict[str, Any] | None] | None
"""Per-item other columns of the prompts file's row (:attr:`Completion.columns`); None when the
file has none. A reward function receives each column it names as a keyword (a list)."""

References = Sequence[str | None] | None
"""Per-item reference texts for reference-based sources; None when the prompts have none."""

Conversations = Sequence[list[dict[str, str]] | None] | None
"""Per-item conversations (``{role, content}`` messages) the prompts were rendered from; None
for plain prompts. Reward models render ``messages + [assistant: completion]`` with their own
chat template; reward functions with a ``messages`` parameter receive them."""


class RewardSourceError(ValueError):
    """A reward source cannot be built or returned unusable output.

    A ``ValueError`` subclass so callers that validate configs can catch both alike.

    Attributes:
        raised: when user scoring code raised, the names of what it raised
            (:func:`exception_names`); they travel with the error out of a Ray actor.
    """

    raised: list[str] = []  # noqa: RUF012  (class default; instances set their own list)


class Scorer(Protocol):
    """What the RL loop scores through: :class:`~rayrm.rewards.pool.RewardPool` or
    :class:`~rayrm.rewards.compose.ComposedReward` (``rayrm.rewards.pool_from_config``)."""

    def score(self, records: Sequence[Completion]) -> np.ndarray:
        """One ``float32`` score per record, (N,), in their order."""
        ...

    def score_detailed(
        self, records: Sequence[Completion]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(score(records), breakdown)``: published metric key -> (N,) values."""
        ...

    def stats(self) -> dict[str, Any]: ...

    @property
    def num_resubmitted(self) -> int: ...

    def shutdown(self) -> None: ...


class RewardActor:
    """Base of the reward actors: call and item counters, liveness and identity.

    Attributes:
        num_calls: ``score`` calls served (since the last restart, when remote).
        num_scored: items scored.
    """

    def __init__(self, source: str, what: str) -> None:
        use_reserved_cpus()  # a remote actor: num_cpus_per_actor
        self._identity = (source, str(what))
        self.num_calls = 0
        self.num_scored = 0

    def stats(self) -> dict[str, int]:
        """Counters for the pool's aggregate and for tests that count calls."""
        return {"num_calls": self.num_calls, "num_scored": self.num_scored}

    def ping(self) -> bool:
        """Returns once ``__init__`` finished; lets the pool surface load errors early."""
        return True

    def describe(self) -> tuple[str, str]:
        """``(source, what)``: lets a client check a shared actor serves what it asked for."""
        return self._identity


def resolve_function(spec: str) -> RewardFn:
    """Imports a reward function named as ``"module:function"`` (``rayrm.resolver``).

    Raises:
        RewardSourceError: One line naming the spec.
    """
    try:
        return import_function(spec)
    except ValueError as exc:
        raise RewardSourceError(f"reward function spec {exc}") from exc


def resolve_device(device: str) -> torch.device:
    """Maps ``"auto"`` to CUDA when the actor was given a GPU, else CPU."""
    import torch  # here, not at the top: reward-function actors run without torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def last_line(message: str) -> str:
    """Keeps the final line of a remote traceback: the original exception and its message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else message


def check_scores(out: Any, n: int, what: str) -> np.ndarray:
    """A scorer's output as ``float32`` (N,), or a one-line error naming ``what``.

    NaN and infinite scores pass through (the reward pipeline applies ``reward.on_nan``).

    Raises:
        RewardSourceError: Not numbers, or not one per item.
    """
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)  # a scorer that made one has torch
    if tensor is not None and isinstance(out, tensor):
        out = out.detach().cpu().numpy()
    try:
        scores = np.asarray(out, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise RewardSourceError(
            f"{what} returned {type(out).__name__} that is not convertible to float32 numbers "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e
    if scores.shape != (n,):
        raise RewardSourceError(
            f"{what} returned shape {scores.shape} for {n} items; it must return one float per "
            f"(prompt, completion), i.e. shape ({n},)"
        )
    return scores


def call_scorer(fn: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> Any:
    """Calls user scoring code; what it raises becomes one line naming ``what``.

    Raises:
        RewardSourceError: ``fn`` raised (its type and message, first line).
    """
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # user code: anything it raises is the user's to see
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        error = RewardSourceError(f"{what} raised {type(e).__name__}: {first}")
        error.raised = exception_names(e)
        raise error from e


def exception_names(exc: BaseException) -> list[str]:
    """Names ``exc`` answers to, for ``reward.retry_exceptions``: each class of its type's MRO
    by bare and by qualified name (``OutOfMemoryError``, ``torch.OutOfMemoryError``, ...)."""
    names = []
    for cls in type(exc).__mro__:
        names += [cls.__name__, f"{cls.__module__}.{cls.__qualname__}"]
    return names


@dataclass(frozen=True)
class Completion:
    """One finished completion as a reward source reads it: the record every scorer takes.

    Built from an episode's last info in training (``rayrm.rl.episodes.completion_of``), or
    from sampled texts (:func:`completion_records`: held-out evaluation, report, preflight).
    Records travel to reward actors by pickle, a chunk of them per call.

    Attributes:
        prompt_text: The prompt's tokens decoded (``rayrm.models.tokenization``), the exact text.
        completion: The completion's text: prompt and completion decoded together, split at
            the prompt; the stop token excluded.
        finished: It ended at a stop token or string (terminated), not at the length limit;
            None where the ending is not recorded (held-out samples: no missing-EOS penalty).
        num_tokens: Generated tokens, the stop token excluded; None where not counted (a length
            penalty then counts the completion's tokens with the policy's tokenizer).
        reference: The prompt's reference text, for reference-based sources.
        messages: The conversation the prompt was rendered from, for chat prompts.
        id: A stable, unique id (the episode's): the same when a chunk is scored again.
        columns: The prompt's other columns in the prompts file (an answer, test cases, a
            seed), for reward functions that take them by name.
    """

    prompt_text: str
    completion: str
    finished: bool | None = None
    num_tokens: int | None = None
    reference: str | None = None
    messages: list[dict[str, str]] | None = None
    id: str | None = None
    columns: dict[str, Any] | None = None


def completion_records(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    references: References = None,
    messages: Conversations = None,
    ids: Sequence[str] | None = None,
    columns: Columns = None,
) -> list[Completion]:
    """Records of parallel lists: for callers that sampled or wrote texts themselves.

    Raises:
        ValueError: A list's length differs from the prompts'.
    """
    n = len(prompts)
    if len(completions) != n:
        raise ValueError(
            f"got {n} prompts but {len(completions)} completions; "
            "each completion needs the prompt it answers"
        )
    per_item = (
        ("references", references),
        ("conversations", messages),
        ("ids", ids),
        ("column rows", columns),
    )
    for what, values in per_item:
        if values is not None and len(values) != n:
            raise ValueError(f"got {n} prompts but {len(values)} {what}")

    def at(values: Sequence[Any] | None, i: int) -> Any:
        return None if values is None else values[i]

    return [
        Completion(
            prompt_text=prompt,
            completion=completion,
            reference=at(references, i),
            messages=at(messages, i),
            id=at(ids, i),
            columns=at(columns, i),
        )
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True))
    ]


LISTS = {"references": "reference", "messages": "messages", "ids": "id"}
"""The optional lists a reward function may take by name -> the record field each is made of."""


def lists_present(records: Sequence[Completion]) -> frozenset[str]:
    """The optional lists (:data:`LISTS`) a batch of records carries: ``references`` when a
    record has a reference, ``messages`` when one has a conversation, ``ids`` when each has an
    id. A pool decides once per batch, so every chunk of it is unpacked alike."""
    present = {
        name
        for name, field_name in LISTS.items()
        if any(getattr(r, field_name) is not None for r in records)
    }
    if any(r.id is None for r in records):
        present.discard("ids")
    return frozenset(present)


def unpack(
    records: Sequence[Completion], name: str, present: frozenset[str] | None = None
) -> list[Any] | None:
    """The records' list ``name`` (a key of :data:`LISTS`), in their order; None when the
    batch (``present``, from :func:`lists_present`; None: these records) carries none."""
    if name not in (lists_present(records) if present is None else present):
        return None
    return [getattr(r, LISTS[name]) for r in records]


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of a batch of completions, shape (N,) each.

    Attributes:
        raw: What the reward source returned (penalties of composed rewards included).
        scores: ``raw`` shaped (normalised, clipped): what the RL update is paid.
        breakdown: Published metric key -> (N,) values (components, members, penalties).
        skipped: (N,) bool, completions whose score was NaN or infinite and that the update
            leaves out (``reward.on_nan: skip``); None when none were.
    """

    raw: np.ndarray
    scores: np.ndarray
    breakdown: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: np.ndarray | None = None
