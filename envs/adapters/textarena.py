"""TextArena's games (https://github.com/LeonGuertler/TextArena) as rayrm environments.

``env.environment: envs.adapters.textarena:TextArenaGame`` plays, per prompt row, the TextArena
game the row names, unchanged: the policy is player 0; every other player is an opponent
function (``"module:function"``, called with the opponent's new observations as text and
returning its move). The game's messages since the policy's last move are the next user
message (the policy's own move, which TextArena echoes back, is left out: it is in the
conversation already). When the game ends, the policy's TextArena reward is the turn's reward
(win 1, loss -1, draw 0 for most games), ``success`` is 1 for a positive one, and
``invalid_move`` says whether TextArena ended it for an invalid move.

Row columns:

- ``env_id``: a TextArena id, e.g. ``GuessTheNumber-v0`` or ``TicTacToe-v0`` (its ``-raw``
  variant is used, so that observations arrive as TextArena's messages, not re-rendered).
- ``seed``: the game's seed (optional).
- ``opponent``: ``"module:function"`` playing the other players (needed for games of two or
  more players).
- ``num_players``: optional; 2 when an opponent is given, 1 otherwise.

Needs the ``textarena`` extra: ``pip install 'rayrm[textarena]'``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from envs.protocol import Environment, Reply
from rayrm.resolver import import_function

__all__ = ["TextArenaGame", "first_available_move", "render"]

POLICY = 0
"""The player id the policy plays."""


def _textarena() -> Any:
    try:
        import textarena
    except ImportError as exc:
        raise ImportError(
            "envs.adapters.textarena needs TextArena: pip install 'rayrm[textarena]'"
        ) from exc
    return textarena


def first_available_move(observation: str) -> str:
    """An opponent for board games whose observations list the legal moves (TextArena's
    ``Available Moves: '[0]', '[1]', ...``): the first move of the latest list."""
    lists = re.findall(r"(?:Available|Valid) [Mm]oves:([^\n]*)", observation)
    moves = re.findall(r"\[[^\]]+\]", lists[-1]) if lists else []
    if not moves:
        raise ValueError(f"no list of available moves in the observation: {observation[-200:]!r}")
    return moves[0]


def render(observations: Any, player: int) -> str:
    """New TextArena observations of ``player`` as one text: each message on its own
    paragraph, other players' moves as ``Player k: move``, the player's own echoed move left
    out. (A wrapped environment's observation, already a text, is returned as it is.)"""
    if isinstance(observations, str):
        return observations.strip()
    parts = []
    for sender, message, _ in observations:
        if sender == player:
            continue
        parts.append(message if sender < 0 else f"Player {sender}: {message}")
    return "\n\n".join(p.strip() for p in parts if p.strip())


class TextArenaGame(Environment):
    """One TextArena game per episode (see the module docstring)."""

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__(row)
        ta = _textarena()
        if not row.get("env_id"):
            raise ValueError("a TextArenaGame row needs an env_id column (e.g. TicTacToe-v0)")
        env_id = str(row["env_id"])
        raw = f"{env_id}-raw"
        self.env = ta.make(raw if raw in ta.envs.registration.ENV_REGISTRY else env_id)
        spec = row.get("opponent")
        self.opponent: Callable[[str], str] | None = import_function(spec) if spec else None
        players = row.get("num_players")
        self.num_players = int(players) if players else (2 if self.opponent else 1)
        if self.num_players > 1 and self.opponent is None:
            raise ValueError(
                f"{env_id} with {self.num_players} players needs an opponent column "
                "('module:function' playing the other players)"
            )
        seed = row.get("seed")
        self.seed = None if seed is None else int(seed)

    def reset(self) -> str:
        self.env.reset(num_players=self.num_players, seed=self.seed)
        done = self._opponents_play()
        if done:
            raise ValueError(f"{self.row['env_id']}: the game ended before the policy's turn")
        return self._observation()

    def step(self, text: str) -> Reply:
        done, _ = self.env.step(action=text)
        done = done or self._opponents_play()
        if not done:
            return Reply(self._observation(), info={"success": 0.0})
        rewards, game_info = self.env.close()
        reward = float(rewards.get(POLICY, 0.0))
        invalid = float(bool(game_info.get(POLICY, {}).get("invalid_move", False)))
        return Reply(
            reward=reward, done=True, info={"success": float(reward > 0), "invalid_move": invalid}
        )

    def _opponents_play(self) -> bool:
        """Lets the opponent move until it is the policy's turn; whether the game ended."""
        while True:
            player, observations = self.env.get_observation()
            if player == POLICY:
                self._pending = observations
                return False
            if self.opponent is None:
                raise ValueError(f"{self.row['env_id']}: player {player} moves, no opponent")
            done, _ = self.env.step(action=str(self.opponent(render(observations, player))))
            if done:
                return True

    def _observation(self) -> str:
        return render(self._pending, POLICY)
