"""The episode format: what a sampled completion carries beyond RLlib's columns, and the
functions that read it.

The env runner writes episodes (``rayrm.rl.env_runner``); the algorithm scores, selects and
deals them to learners; the learner connector rebuilds their token rows. Each reads the format
through this module, so a change to it is made here once.

An episode is one completion of one prompt, one step per generated token. Its first info
holds what the whole completion shares:

* ``PROMPT_IDS`` -- the prompt's token ids (int64). Observations store only each row's
  ``length``; the completion's tokens are the actions. :func:`token_rows` rebuilds the env's
  rows from them, so a completion costs O(P + T), not the padded row per step.
* ``GROUP`` -- with ``generation.samples_per_prompt`` > 1, the id that the samples of one
  prompt share (a group is sampled by one runner, trained by one learner).
* ``WEIGHTS_VERSION`` -- the learner updates the sampling weights had seen (policy lag).
* ``PROMPT_INDEX`` -- the prompt's row in the prompts file (set by the env).

Its last info holds the texts the reward reads (``prompt_text``, ``completion``) and
``STOP_TOKEN``: whether the last action is a stop token (not part of the text).

A multi-turn episode (``envs.multi_turn``) is the same with the environment's replies spliced
in: only the policy's tokens are steps (actions), so the loss, the KL and the entropy never see
a reply's tokens; its last info holds ``INSERTS``, every reply's ids with the index of the
action they follow, from which :func:`token_rows` rebuilds the exact sequence the sampler
conditioned on, and ``EPISODE_STATS`` (turns, tool calls, ...). Each turn's reward is the
reward of its last token's step; γ and λ discount per policy token, across turns too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from envs.multi_turn import EPISODE_STATS, INSERTS
from rayrm import metrics as M
from rayrm.rewards.base import Completion

__all__ = [
    "EPISODE_STATS",
    "GROUP",
    "INSERTS",
    "PROMPT_IDS",
    "PROMPT_INDEX",
    "STOP_TOKEN",
    "WEIGHTS_VERSION",
    "completion_of",
    "content_key",
    "dealable",
    "episode_metrics",
    "inserts_of",
    "group_key",
    "row_slices",
    "select_groups",
    "seq_ids",
    "shard_whole_episodes",
    "token_rows",
]

GROUP = "group"
"""Key of an episode's first info: the id its group of samples of one prompt shares."""
WEIGHTS_VERSION = "weights_version"
"""Key of an episode's first info: the learner updates the sampling weights had seen."""
PROMPT_INDEX = "prompt_index"
"""Key of an episode's first info (set by the env): the row of the prompts file it sampled
(-1 for a prompt given as text)."""
PROMPT_IDS = "prompt_ids"
"""Key of an episode's first info: the prompt's token ids (int64); the completion's follow as
the episode's actions."""
STOP_TOKEN = "stop_token"
"""Key of an episode's last info (set by the env): the last action is a stop token, which
ends the completion and is not part of its text. False when a stop string or the length
limit ended it."""


Inserts = list[tuple[int, list[int]]]
"""An episode's environment replies: ``(index of the action they follow, ids)``, in order."""


def inserts_of(episode: Any) -> Inserts:
    """The replies spliced into a (multi-turn) episode; [] for a single-turn one."""
    if not len(episode):
        return []
    return [(int(i), list(ids)) for i, ids in episode.get_infos(-1).get(INSERTS, ())]


def token_rows(
    prompts: list[np.ndarray],
    actions: torch.Tensor,
    lens: list[int],
    inserts: list[Inserts] | None = None,
) -> dict[str, torch.Tensor]:
    """The env's observation rows of compactly stored completions (see module docstring).

    Args:
        prompts: each completion's prompt token ids, (P_k,).
        actions: every row's action, completions one after the other, (N,) with N = sum(lens).
        lens: each completion's number of steps T_k.
        inserts: each completion's environment replies (multi-turn), or None for none.

    Returns:
        ``input_ids`` (N, W), row t of completion k holding its prompt, its first t actions and
        the replies among them, zeros after; ``length`` (N, 1), that row's length (P_k + t
        plus the replies before action t); W the longest row.
    """
    if inserts is not None and any(inserts):
        return _rows_with_inserts(prompts, actions, lens, inserts)
    device = actions.device
    steps = torch.tensor(lens, device=device)
    plen = torch.tensor([len(p) for p in prompts], device=device)  # (G,)
    seq = torch.repeat_interleave(torch.arange(len(lens), device=device), steps)  # (N,)
    start = torch.cumsum(steps, 0) - steps  # (G,) each completion's first row
    t = torch.arange(len(seq), device=device) - start[seq]  # (N,) step within the completion
    length = plen[seq] + t  # (N,)
    width = int(length.max()) if len(seq) else 0
    full = torch.zeros(len(lens), width + 1, dtype=torch.int64, device=device)  # (G, W + 1)
    for k, prompt in enumerate(prompts):
        # A copy: prompts deserialized from the object store are read-only arrays.
        full[k, : len(prompt)] = torch.tensor(prompt, dtype=torch.int64, device=device)
    full[seq, length] = actions.long()  # the action of row t sits at position P_k + t
    cols = torch.arange(width, device=device)
    ids = full[seq, :width].masked_fill(cols[None, :] >= length[:, None], 0)  # (N, W)
    return {"input_ids": ids, "length": length[:, None]}


def _rows_with_inserts(
    prompts: list[np.ndarray], actions: torch.Tensor, lens: list[int], inserts: list[Inserts]
) -> dict[str, torch.Tensor]:
    """:func:`token_rows` of episodes with replies: each completion's whole sequence is laid
    out once (prompt, then actions with the replies after the actions they follow)."""
    device = actions.device
    acts = actions.long().cpu().numpy()
    sequences, lengths, start = [], [], 0
    for prompt, n, replies in zip(prompts, lens, inserts, strict=True):
        extra = np.zeros(n + 1, np.int64)  # extra[t]: reply tokens before action t
        for index, ids in replies:
            extra[index + 1 :] += len(ids)
        length = len(prompt) + np.arange(n) + extra[:n]  # (T,) where action t sits
        seq = np.zeros(len(prompt) + n + int(extra[n]), np.int64)
        seq[: len(prompt)] = prompt
        seq[length] = acts[start : start + n]
        for index, ids in replies:
            seq[length[index] + 1 : length[index] + 1 + len(ids)] = ids
        sequences.append(seq)
        lengths.append(length)
        start += n
    length_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    width = int(length_all.max()) if len(length_all) else 0
    ids = np.zeros((len(length_all), width), np.int64)
    row = 0
    for seq, length in zip(sequences, lengths, strict=True):
        for t, cut in enumerate(length.tolist()):
            ids[row + t, :cut] = seq[:cut]
        row += len(length)
    return {
        "input_ids": torch.from_numpy(ids).to(device),
        "length": torch.from_numpy(length_all).to(device)[:, None],
    }


def seq_ids(lens: list[int], device: Any) -> torch.Tensor:
    """(N,) each row's completion index, completions one after the other."""
    return torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)).to(device)


def row_slices(lens: list[int]) -> Iterator[slice]:
    """Each completion's rows in a batch of completions one after the other."""
    start = 0
    for n in lens:
        yield slice(start, start + n)
        start += n


def content_key(episode: Any) -> tuple[bytes, bytes]:
    """A completion's prompt ids and tokens (replies spliced in), as bytes: what its
    forwards depend on."""
    prompt = np.asarray(episode.get_infos(0)[PROMPT_IDS], np.int64)
    tokens = np.asarray(episode.get_actions(), np.int64).tobytes()
    for index, ids in inserts_of(episode):
        tokens += b"|%d:" % index + np.asarray(ids, np.int64).tobytes()
    return prompt.tobytes(), tokens


def completion_of(episode: Any) -> Completion:
    """What the reward sources read of a finished episode (its last step's info)."""
    info = episode.get_infos(-1)
    return Completion(
        prompt_text=info["prompt_text"],  # what the tokens decode to (rayrm.models.tokenization)
        completion=info["completion"],
        finished=bool(episode.is_terminated),  # a stop token or string, not the length limit
        num_tokens=len(episode) - int(bool(info.get(STOP_TOKEN, False))),  # text's tokens
        reference=info.get("reference"),
        messages=info.get("messages"),
        id=str(episode.id_),
        columns=info.get("columns"),
    )


def group_key(episode: Any, index: int) -> Any:
    """The unit an episode is dealt in: its group, or itself (``index``) without groups."""
    group = episode.get_infos(0).get(GROUP)
    return ("single", index) if group is None else group


def shard_whole_episodes(episodes: list[Any], num_shards: int) -> list[list[Any]]:
    """Deals completions to learners whole, and groups of samples of one prompt (GRPO, RLOO)
    whole: each unit, largest first, to the shard with the fewest completions so far (then
    the fewest tokens), so that completion counts differ by at most one unit.

    RLlib's own sharding cuts episodes to balance timesteps; a cut completion would lose its
    end (and its score) on one learner, and a split group its baseline.
    """
    units: dict[Any, list[Any]] = {}
    for i, episode in enumerate(episodes):
        units.setdefault(group_key(episode, i), []).append(episode)
    order = sorted(units.values(), key=lambda unit: (-len(unit), -sum(len(e) for e in unit)))
    shards: list[list[Any]] = [[] for _ in range(num_shards)]
    tokens = [0] * num_shards
    for unit in order:
        pos = min(range(num_shards), key=lambda s: (len(shards[s]), tokens[s]))
        shards[pos].extend(unit)
        tokens[pos] += sum(len(e) for e in unit)
    return shards


def dealable(episodes: list[Any], *, num_learners: int, num_minibatches: int) -> bool:
    """Whether every learner's share of ``episodes`` (dealt by :func:`shard_whole_episodes`)
    holds a completion for each of its ``num_minibatches`` minibatches: data-parallel
    learners must take the same number of optimizer steps."""
    if num_learners < 2:
        return len(episodes) >= num_minibatches
    shards = shard_whole_episodes(episodes, num_learners)
    return all(len(shard) >= num_minibatches for shard in shards)


def select_groups(
    episodes: list[Any],
    raw: np.ndarray,
    *,
    drop_uniform: bool,
    num_learners: int,
    num_minibatches: int,
) -> tuple[list[Any], dict[str, float]]:
    """The completions to train on, and the group metrics (with samples_per_prompt > 1).

    A group whose raw scores are all equal carries no signal under GRPO/RLOO (zero advantage);
    with ``drop_uniform`` (``algorithm.filter_uniform_groups``, DAPO's dynamic sampling, Yu et al.
    2025, https://arxiv.org/abs/2503.14476, §3.2) such groups are left out of the update, but
    as many of them are kept (in batch order) as dealing whole groups to ``num_learners``
    learners, a completion per minibatch each, needs (:func:`dealable`).

    Args:
        episodes: the scored completions (``dealable`` as a whole).
        raw: (B,) their raw scores.
        drop_uniform: leave uniform groups out.
        num_learners, num_minibatches: how the update deals and splits them.

    Returns:
        ``(episodes to train on, {rollout/group_reward_std, rollout/uniform_groups})``; no
        metrics without groups.
    """
    keys = [e.get_infos(0).get(GROUP) for e in episodes]
    if all(key is None for key in keys):
        return episodes, {}
    members: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    uniform = [key for key, idx in members.items() if np.ptp(raw[idx]) == 0]
    stats = {
        M.ROLLOUT_GROUP_STD: float(np.mean([raw[idx].std() for idx in members.values()])),
        M.ROLLOUT_UNIFORM_GROUPS: len(uniform) / len(members),
    }
    if not drop_uniform or not uniform:
        return episodes, stats
    keep = set(members) - set(uniform)
    back = iter(uniform)
    while True:
        train_on = [e for e, key in zip(episodes, keys, strict=True) if key in keep]
        if dealable(train_on, num_learners=num_learners, num_minibatches=num_minibatches):
            return train_on, stats
        keep.add(next(back))  # the whole batch is dealable: this ends by then


def episode_metrics(episodes: list[Any], returns: np.ndarray) -> dict[str, np.ndarray]:
    """Per-episode values of multi-turn episodes to publish (each as its batch mean):
    ``env/return`` (the environment's rewards summed) and every ``EPISODE_STATS`` number
    (``env/turns``, ``env/tool_calls``, ``env/tool_errors``, ``env/tool_timeouts``,
    ``env/truncated``, the environment's own such as ``env/success``; 0 for an episode whose
    environment never reported it)."""
    stats = [dict(e.get_infos(-1).get(EPISODE_STATS, {})) for e in episodes]
    keys = sorted({k for s in stats for k in s})
    out = {M.ENV_RETURN: np.asarray(returns, np.float64)}
    for key in keys:
        out[f"{M.ENV_PREFIX}{key}"] = np.array([float(s.get(key, 0.0)) for s in stats])
    return out
