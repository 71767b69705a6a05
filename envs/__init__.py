"""Gymnasium environments for rayrm; importing this package registers them.

``rayrm/TextGeneration-v0`` is the token-level RLHF MDP (see ``envs.text_generation``).
Nothing here imports Ray or loads a model, and ``transformers``/``pyarrow`` are imported only
when a tokenizer or prompt file is actually needed, so ``import envs`` stays fast.
"""

import gymnasium

from envs.builtin import BUILTIN_CHARS, BUILTIN_PROMPTS, build_char_tokenizer, vowel_reward
from envs.prompts import load_prompts, write_prompts_jsonl
from envs.text_generation import TextGenerationEnv

TEXT_GENERATION_ENV_ID = "rayrm/TextGeneration-v0"

# Re-importing (e.g. under another module name in a Ray worker) must not register twice:
# Gymnasium warns about overriding an existing id.
if TEXT_GENERATION_ENV_ID not in gymnasium.registry:
    # No max_episode_steps: the env truncates itself at max_new_tokens.
    gymnasium.register(
        id=TEXT_GENERATION_ENV_ID,
        entry_point="envs.text_generation:TextGenerationEnv",
    )

__all__ = [
    "BUILTIN_CHARS",
    "BUILTIN_PROMPTS",
    "TEXT_GENERATION_ENV_ID",
    "TextGenerationEnv",
    "build_char_tokenizer",
    "load_prompts",
    "vowel_reward",
    "write_prompts_jsonl",
]
