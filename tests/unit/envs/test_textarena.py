"""TextArena's games through rayrm's environment protocol (envs/adapters/textarena.py),
unchanged: a one-player game and a two-player game against an opponent function, at the
protocol level and as token-level episodes of the multi-turn Gymnasium env."""

from __future__ import annotations

import re

import pytest

from envs.adapters.textarena import TextArenaGame, first_available_move, render
from envs.multi_turn import EPISODE_STATS, MultiTurnTextEnv


def test_guess_the_number_is_played_from_the_games_own_hints():
    """Binary search on TextArena's hints wins: each reply is the game's new message alone,
    and the win pays TextArena's reward with success 1."""
    game = TextArenaGame({"env_id": "GuessTheNumber-v0", "seed": 3})
    opening = game.reset()
    assert "Guess The Number" in opening and "[5]" in opening
    low, high = 1, 20
    for _ in range(10):
        guess = (low + high) // 2
        reply = game.step(f"I guess [{guess}]")
        if reply.done:
            break
        assert reply.messages in ("The target number is higher.", "The target number is lower.")
        assert reply.reward == 0.0 and reply.info == {"success": 0.0}
        low, high = (guess + 1, high) if "higher" in reply.messages else (low, guess - 1)
    assert reply.done and reply.reward == 1.0
    assert reply.info == {"success": 1.0, "invalid_move": 0.0}


def test_tic_tac_toe_against_an_opponent_function():
    """Two players: the opponent (player 1) moves between the policy's turns and its move
    reaches the policy as ``Player 1: [k]`` with the new board; the policy's own move is not
    echoed. The game's result is the last turn's reward (1, -1 or 0), success a positive one."""
    row = {"env_id": "TicTacToe-v0", "seed": 0,
           "opponent": "envs.adapters.textarena:first_available_move"}  # fmt: skip
    game = TextArenaGame(row)
    assert game.num_players == 2
    observation = game.reset()
    assert "Tic Tac Toe" in observation
    for _ in range(5):
        move = first_available_move(observation)
        reply = game.step(move)
        if reply.done:
            break
        observation = reply.messages
        assert f"Player 0: {move}" not in observation
        assert re.search(r"^Player 1: \[\d\]$", observation, re.MULTILINE), observation
    assert reply.done and reply.reward in (-1.0, 0.0, 1.0)
    assert reply.info["success"] == float(reply.reward > 0) and reply.info["invalid_move"] == 0.0


def test_an_invalid_move_ends_the_game_as_textarena_says():
    game = TextArenaGame({"env_id": "TicTacToe-v0", "seed": 0,
                          "opponent": "envs.adapters.textarena:first_available_move"})  # fmt: skip
    game.reset()
    reply = game.step("no move here")
    if not reply.done:  # TextArena may give a second chance: a second invalid move ends it
        reply = game.step("still none")
    assert reply.done and reply.reward < 0 and reply.info["invalid_move"] == 1.0


def test_rows_that_cannot_be_played_say_why():
    with pytest.raises(ValueError, match="env_id"):
        TextArenaGame({"seed": 1})
    with pytest.raises(ValueError, match="needs an opponent column"):
        TextArenaGame({"env_id": "TicTacToe-v0", "num_players": 2})
    with pytest.raises(ValueError, match="no list of available moves"):
        first_available_move("Your turn.")
    assert render([(-1, "Board", None), (0, "[4]", None), (1, "[0]", None)], 0) == (
        "Board\n\nPlayer 1: [0]"
    )


def test_a_textarena_game_as_token_level_episodes(archs):
    """Through the multi-turn Gymnasium env with a ChatML tokenizer: every TextArena reply is
    spliced in as chat-template ids, and the episode ends with the game's reward."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(archs["qwen2"])
    env = MultiTurnTextEnv(
        environment="envs.adapters.textarena:TextArenaGame",
        prompts=[{"env_id": "GuessTheNumber-v0", "seed": 3}], tokenizer=tok,
        max_prompt_tokens=400, max_new_tokens=8, max_turns=3, max_total_tokens=900,
    )  # fmt: skip
    obs, info = env.reset(options={"prompt_index": 0})
    assert "Guess The Number" in info["prompt"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    total, replies = 0.0, 0
    for guess in ("[1]", "[2]", "[3]"):
        for token in [*tok.encode(guess, add_special_tokens=False), end]:
            obs, reward, terminated, truncated, info = env.step(token)
            total += reward
        if terminated or truncated:
            break
        replies += "reply_ids" in info
        assert "The target number is" in tok.decode(info["reply_ids"])
    assert terminated or truncated
    stats = info[EPISODE_STATS]
    assert stats["turns"] == 3 and replies == 2
    assert stats["success"] == float(total > 0)
