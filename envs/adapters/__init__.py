"""Environments from other libraries, run unchanged through rayrm's protocol
(:mod:`envs.protocol`): :mod:`envs.adapters.textarena` (TextArena's games)."""
