"""Typed, validated configuration: one YAML file describes a whole run or stage.

* ``base``: the section base class (frozen pydantic models) and one-line errors;
* ``run``, ``reward`` and ``tune``: the run config of ``rayrm train``/``rayrm tune``;
* ``stage``: the SFT and reward-model stage configs;
* ``io``: YAML files, ``--set`` overrides, absolute paths;
* ``checks``: what the config points at (directories, functions, models, tokenizers);
* ``schema``: the JSON Schema for editors (``rayrm config schema``);
* ``reference``: the docs' configuration reference page (``rayrm config reference``).

Cheap to import: no ``ray``, no ``torch``; every check runs before Ray starts.
"""

from rayrm.config.base import REQUIRED, ConfigError
from rayrm.config.checks import validate_paths, validate_reward_paths
from rayrm.config.io import apply_override, config_from_dict, load_config, resolve_paths
from rayrm.config.reward import RewardComponent, RewardSettings
from rayrm.config.run import (
    PROMPT_SUFFIXES,
    AlgorithmSettings,
    DataSettings,
    EvalSettings,
    GenerationSettings,
    ModelSettings,
    ResourcesSettings,
    RLConfig,
    RunSettings,
    TuneSettings,
)

__all__ = [
    "PROMPT_SUFFIXES",
    "REQUIRED",
    "ConfigError",
    "DataSettings",
    "EvalSettings",
    "GenerationSettings",
    "ModelSettings",
    "AlgorithmSettings",
    "ResourcesSettings",
    "RewardComponent",
    "RewardSettings",
    "RLConfig",
    "RunSettings",
    "TuneSettings",
    "apply_override",
    "config_from_dict",
    "load_config",
    "resolve_paths",
    "validate_paths",
    "validate_reward_paths",
]
