"""EnvRunner that samples exactly one whole completion per env, with batched KV-cached decoding.

RLlib's stock runners either cut episodes at a timestep budget or, with
``batch_mode="complete_episodes"``, keep the first episodes to finish and drop the rest —
a silent bias toward short completions. Here every call to ``sample`` resets all
``num_envs_per_env_runner`` envs (one prompt each), decodes all of them together through the
policy's KV cache (one new token per row per step, no re-run of the context), steps each env
once per token (the env decides termination and reward), and returns every episode whole.

With ``generation.samples_per_prompt = n`` the envs go in blocks of n: the first of a block
draws a prompt, the others take the same one, and all n carry the block's group id in their
first info (``GROUP``), so a group is always sampled by one runner and the learner can find it.
Every first info also carries the version of the weights that sampled it (``WEIGHTS_VERSION``:
the learner updates they had seen), from which the algorithm measures the policy lag.

Episodes are stored compactly (the format: ``rayrm.rl.episodes``): each observation keeps only
the row's ``length``; the prompt's token ids go once into the first info (``PROMPT_IDS``) and
the completion's tokens are the actions, so a completion costs O(P + T), not O(T·L).

A multi-turn env (``envs.multi_turn``) answers a finished turn with reply ids in the step's
info; they are fed through the same KV cache before the row's next token is sampled
(``decode_batch``'s ``inserts``), so a turn costs its own tokens, not the history's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

import envs  # noqa: F401  (registers rayrm/TextGeneration-v0 in this process)
from envs.multi_turn import REPLY_IDS
from rayrm.models.decoding import decode_batch, left_pad
from rayrm.rl.episodes import GROUP, PROMPT_IDS, WEIGHTS_VERSION
from rayrm.rl.module import LMPolicyModule
from rayrm.rl.rllib_compat import (
    SampleHook,
    initial_reset_seed,
    record_sampled,
    runner_seed,
    sub_envs,
    weights_seq_no,
)
from rayrm.threads import use_reserved_cpus

__all__ = ["RLHFEnvRunner", "left_pad", "sync_weights"]


def sync_weights(env_runner_group: Any, learner_group: Any) -> None:
    """The learners' inference-only weights (and their version) to every env runner.

    ``EnvRunnerGroup.sync_weights`` first puts the weights into the object store for its
    remote runners, also when there are none: with only the local runner (``num_env_runners:
    0``) this hands it the learner's state directly, which on the tiny benchmark workload cut
    the sync from 3.1–3.9 ms to 0.27 ms of a 235 ms pipelined iteration, on its critical path.
    """
    runner = env_runner_group.local_env_runner
    if env_runner_group.num_remote_workers() or runner is None:
        env_runner_group.sync_weights(
            from_worker_or_learner_group=learner_group, inference_only=True
        )
        return
    state = learner_group.get_state(
        components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}", inference_only=True
    )[COMPONENT_LEARNER]
    runner.set_state({k: state[k] for k in (COMPONENT_RL_MODULE, WEIGHTS_SEQ_NO) if k in state})


class RLHFEnvRunner(SampleHook, SingleAgentEnvRunner):
    """Samples one complete completion per env per ``sample()`` call (see module docstring)."""

    def __init__(self, *, config: Any, **kwargs: Any) -> None:
        use_reserved_cpus()  # a remote runner: num_cpus_per_env_runner
        super().__init__(config=config, **kwargs)
        seed = runner_seed(self)
        self._sampling_seed = seed if seed is not None else time.time_ns() % 2**31
        self._generator: torch.Generator | None = None  # made on the module's device
        rayrm = getattr(config, "rayrm", None) or {}
        self.samples_per_prompt = int(rayrm.get("generation", {}).get("samples_per_prompt", 1))
        self._prompt_plan: list[int] | None = None

    def plan_prompts(self, rows: list[int] | None) -> None:
        """The prompt rows the next ``sample()`` takes, one per group of
        ``samples_per_prompt`` envs (the algorithm deals each iteration's prompts, see
        ``rayrm.rl.prompt_order``); None: each group's env draws one at random."""
        groups = len(self.sub_envs) // self.samples_per_prompt
        if rows is not None and len(rows) != groups:
            raise ValueError(f"{len(rows)} prompts planned for {groups} groups of envs")
        self._prompt_plan = None if rows is None else list(rows)

    @property
    def sub_envs(self) -> list[Any]:
        """The individual Gymnasium envs (stepped directly: no vector autoreset)."""
        return sub_envs(self)

    def collect_episodes(self, *, explore: bool) -> list[SingleAgentEpisode]:
        """One completion per env (what ``sample()`` returns; no timestep budget applies)."""
        episodes = self.generate(explore=explore)
        record_sampled(self, sum(len(e) for e in episodes), len(episodes))
        return [e.to_numpy() for e in episodes] if self.episodes_to_numpy else episodes

    def generate(
        self, *, explore: bool = True, options: list[dict[str, Any]] | None = None
    ) -> list[SingleAgentEpisode]:
        """Resets every env and decodes all completions together.

        Args:
            explore: sample from the policy (True) or take greedy tokens (False).
            options: optional per-env reset options (e.g. ``{"prompt": "..."}``); without
                them the planned prompts (:meth:`plan_prompts`), else random ones.

        Returns:
            One finished ``SingleAgentEpisode`` per env, in env order.
        """
        module = self.module
        if not isinstance(module, LMPolicyModule):
            raise TypeError(f"RLHFEnvRunner needs an LMPolicyModule, got {type(module).__name__}")
        runner_envs = self.sub_envs
        episodes = self._reset_envs(runner_envs, options)
        prompts = [e.get_infos(0)[PROMPT_IDS] for e in episodes]

        device = next(module.lm.parameters()).device
        if self._generator is None or self._generator.device != device:
            # torch.multinomial needs a generator on the device of the probabilities (GPU runners).
            self._generator = torch.Generator(device=device).manual_seed(self._sampling_seed)
        generator = self._generator if explore else None
        active = [True] * len(runner_envs)
        replies: dict[int, np.ndarray] = {}  # row -> a multi-turn env's reply to feed next

        def sample(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return module.sample_next(logits, greedy=not explore, generator=generator)

        def on_tokens(tokens: np.ndarray, logp: np.ndarray) -> list[bool]:
            """Steps every unfinished env once; the env decides termination and reward."""
            for i, env in enumerate(runner_envs):
                if not active[i]:
                    continue
                obs, reward, terminated, truncated, info = env.step(int(tokens[i]))
                episodes[i].add_env_step(
                    observation={"length": obs["length"]},
                    action=int(tokens[i]),
                    reward=float(reward),
                    infos=info,
                    terminated=terminated,
                    truncated=truncated,
                    extra_model_outputs={Columns.ACTION_LOGP: np.float32(logp[i])},
                )
                active[i] = not (terminated or truncated)
                if REPLY_IDS in info:
                    replies[i] = info[REPLY_IDS]
            return active

        def take_replies() -> dict[int, np.ndarray]:
            out = dict(replies)
            replies.clear()
            return out

        pad_id = int(runner_envs[0].unwrapped.pad_token_id)
        decode_batch(
            module.lm,
            prompts,
            pad_id=pad_id,
            sample=sample,
            on_tokens=on_tokens,
            inserts=take_replies,
        )
        return episodes

    def _reset_envs(
        self, runner_envs: list[Any], options: list[dict[str, Any]] | None
    ) -> list[SingleAgentEpisode]:
        """Resets every env on its planned prompt (the samples of a group on one prompt, with
        the group's id), or on ``options``; one started episode per env."""
        seed = initial_reset_seed(self)
        episodes: list[SingleAgentEpisode] = []
        n = 1 if options else self.samples_per_prompt
        plan, self._prompt_plan = (
            (None, self._prompt_plan) if options else (self._prompt_plan, None)
        )
        group: dict[str, Any] = {}
        version = weights_seq_no(self)
        space = compact_space(self.env.single_observation_space)
        action_space = self.env.single_action_space
        for i, env in enumerate(runner_envs):
            option = options[i] if options else None
            if i % n:  # a later sample of the block's prompt
                option = {"prompt_index": group["prompt_index"]}
            elif plan is not None:
                option = {"prompt_index": plan[i // n]}
            obs, info = env.reset(seed=None if seed is None else seed * 1000 + i, options=option)
            if n > 1:
                if i % n == 0:
                    group = {"prompt_index": info["prompt_index"], "id": uuid.uuid4().hex}
                info = {**info, GROUP: group["id"]}
            prompt = obs["input_ids"][: int(obs["length"][0])].copy()
            info = {**info, WEIGHTS_VERSION: version, PROMPT_IDS: prompt}
            episode = SingleAgentEpisode(observation_space=space, action_space=action_space)
            episode.add_env_reset(observation={"length": obs["length"]}, infos=info)
            episodes.append(episode)
        return episodes


def compact_space(space: gym.spaces.Dict) -> gym.spaces.Dict:
    """The stored episodes' observation space: the env's without ``input_ids``."""
    return gym.spaces.Dict({"length": space["length"]})
