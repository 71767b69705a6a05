"""Gymnasium environments for rayrm; importing this package registers them.

``rayrm/TextGeneration-v0`` is the token-level RLHF MDP (see ``envs.text_generation``);
``rayrm/MultiTurn-v0`` runs an environment that answers back (``envs.protocol``,
``envs.multi_turn``).
Nothing here imports Ray or loads a model, and ``transformers``/``pyarrow`` are imported only
when a tokenizer or prompt file is actually needed, so ``import envs`` stays fast. Prompt files
and tokenization are the package's (``rayrm.data``, ``rayrm.models.tokenization``).
"""

import gymnasium

from envs.builtin import BUILTIN_CHARS, BUILTIN_PROMPTS, build_char_tokenizer, vowel_reward
from envs.protocol import Environment, Reply, ToolEnvironment
from envs.text_generation import TextGenerationEnv

TEXT_GENERATION_ENV_ID = "rayrm/TextGeneration-v0"
MULTI_TURN_ENV_ID = "rayrm/MultiTurn-v0"

# Re-importing (e.g. under another module name in a Ray worker) must not register twice:
# Gymnasium warns about overriding an existing id.
if TEXT_GENERATION_ENV_ID not in gymnasium.registry:
    # No max_episode_steps: the env truncates itself at max_new_tokens.
    gymnasium.register(
        id=TEXT_GENERATION_ENV_ID,
        entry_point="envs.text_generation:TextGenerationEnv",
    )
if MULTI_TURN_ENV_ID not in gymnasium.registry:
    gymnasium.register(id=MULTI_TURN_ENV_ID, entry_point="envs.multi_turn:MultiTurnTextEnv")

__all__ = [
    "BUILTIN_CHARS",
    "BUILTIN_PROMPTS",
    "MULTI_TURN_ENV_ID",
    "TEXT_GENERATION_ENV_ID",
    "Environment",
    "Reply",
    "ToolEnvironment",
    "TextGenerationEnv",
    "build_char_tokenizer",
    "vowel_reward",
]
