"""Tests for rayrm.config.run: defaults, YAML loading, --set overrides and every kind of check."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from rayrm import metrics as M
from rayrm.config import (
    ConfigError,
    RLConfig,
    config_from_dict,
    load_config,
    resolve_paths,
    validate_paths,
)

# A stdlib callable, so these tests do not depend on envs.builtin.
FUNCTION = "os.path:basename"


def minimal() -> dict[str, Any]:
    """The smallest dict that validates (paths are not checked by config_from_dict)."""
    return {
        "model": {"path": "models/tiny"},
        "data": {"prompts": "prompts.jsonl"},
        "reward": {"function": FUNCTION},
    }


def with_value(dotted: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``base`` (default: :func:`minimal`) with ``dotted`` set to ``value``."""
    d = copy.deepcopy(base if base is not None else minimal())
    *sections, last = dotted.split(".")
    node = d
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    return d


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_policy_dir: str) -> Path:
    """A cwd holding a model dir (a tiny GPT-2 with its tokenizer) and a prompts file."""
    shutil.copytree(tiny_policy_dir, tmp_path / "models" / "tiny")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hello"}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------------------------
# Defaults, round trips, derived values
# ---------------------------------------------------------------------------------------------


def test_defaults_match_documented_values() -> None:
    cfg = config_from_dict(minimal())
    assert (cfg.name, cfg.seed) == ("rayrm", 0)
    assert cfg.model.critic == "shared" and cfg.model.dtype == "float32"
    assert cfg.model.tokenizer_path is None and cfg.model.critic_path is None
    assert cfg.data.prompt_column == "prompt" and cfg.data.max_prompt_tokens == 32
    assert cfg.generation.max_new_tokens == 16 and cfg.generation.top_p == 1.0
    assert cfg.reward.source == "function" and cfg.reward.clip is None
    assert (
        cfg.algorithm.batch_size == 16
        and cfg.algorithm.lr == 1.0e-5
        and cfg.algorithm.value_clip == 0.2
    )
    assert cfg.resources.num_env_runners == 0 and cfg.resources.num_learners == 0
    assert cfg.run.num_iterations == 20 and cfg.run.num_cpus is None
    assert cfg.run.storage_path == "./rayrm_runs"


def test_documented_reward_function_default() -> None:
    d = minimal()
    del d["reward"]
    assert config_from_dict(d).reward.function == "envs.builtin:vowel_reward"


def test_defaults_round_trip_through_dict_and_yaml(tmp_path: Path) -> None:
    cfg = config_from_dict(minimal())
    d = cfg.to_dict()
    assert type(d) is dict and type(d["algorithm"]) is dict
    assert config_from_dict(d) == cfg
    cfg.save_yaml(tmp_path / "sub" / "config.yaml")
    assert load_config(tmp_path / "sub" / "config.yaml", check_paths=False) == cfg


def test_derived_values() -> None:
    d = minimal()
    d["algorithm"] = {"batch_size": 24, "num_minibatches": 3}
    d["resources"] = {"num_env_runners": 4, "num_learners": 2}
    d["data"]["max_prompt_tokens"] = 10
    d["generation"] = {"max_new_tokens": 7}
    cfg = config_from_dict(with_value("algorithm.batch_size", 48, d))
    assert cfg.envs_per_env_runner == 12
    assert cfg.max_seq_len == 17
    assert cfg.algorithm.completions_per_minibatch == 16
    assert cfg.completions_per_learner_minibatch == 8
    assert config_from_dict(minimal()).envs_per_env_runner == 16  # no env runners


def test_resolved_model_paths() -> None:
    cfg = config_from_dict(minimal())
    assert cfg.model.resolved_tokenizer_path == "models/tiny"
    assert cfg.model.resolved_critic_path == "models/tiny"
    d = minimal()
    d["model"].update(tokenizer_path="tok", critic="separate", critic_path="critic")
    cfg = config_from_dict(d)
    assert cfg.model.resolved_tokenizer_path == "tok"
    assert cfg.model.resolved_critic_path == "critic"


def test_ints_accepted_for_floats_and_stored_as_floats() -> None:
    cfg = config_from_dict(with_value("algorithm.max_grad_norm", 2, with_value("algorithm.lr", 1)))
    assert cfg.algorithm.lr == 1.0 and type(cfg.algorithm.lr) is float
    assert type(cfg.algorithm.max_grad_norm) is float


def test_empty_section_means_defaults() -> None:
    assert (
        config_from_dict(with_value("algorithm", None)).algorithm
        == config_from_dict(minimal()).algorithm
    )


def test_import_does_not_pull_in_ray_or_torch() -> None:
    code = "import sys, rayrm.config.run; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Every kind of error names its key
# ---------------------------------------------------------------------------------------------

BAD_VALUES = [
    # unknown keys, at every level
    ("frobnicate", 1, "frobnicate"),
    ("algorithm.lrr", 1.0, "algorithm.lrr"),
    ("resources.num_learner", 2, "resources.num_learner"),
    # sections that are not mappings
    ("algorithm", 3, "algorithm"),
    ("model", ["a"], "model"),
    # wrong types
    ("algorithm.batch_size", 16.0, "algorithm.batch_size"),
    ("algorithm.batch_size", True, "algorithm.batch_size"),
    ("algorithm.lr", "fast", "algorithm.lr"),
    ("algorithm.lr", False, "algorithm.lr"),
    ("algorithm.adaptive_kl", 1, "algorithm.adaptive_kl"),
    ("model.path", 3, "model.path"),
    ("name", "", "name"),
    ("run.num_cpus", 1.5, "run.num_cpus"),
    ("algorithm.lr", float("nan"), "algorithm.lr"),
    # enums
    ("model.critic", "joint", "model.critic"),
    ("model.dtype", "fp8", "model.dtype"),
    ("reward.source", "human", "reward.source"),
    # numeric ranges
    ("seed", -1, "seed"),
    ("data.max_prompt_tokens", 0, "data.max_prompt_tokens"),
    ("generation.max_new_tokens", 0, "generation.max_new_tokens"),
    ("generation.temperature", 0.0, "generation.temperature"),
    ("generation.top_k", -1, "generation.top_k"),
    ("generation.top_p", 0.0, "generation.top_p"),
    ("generation.top_p", 1.5, "generation.top_p"),
    ("reward.num_actors", 0, "reward.num_actors"),
    ("reward.batch_size", 0, "reward.batch_size"),
    ("reward.num_cpus_per_actor", -1.0, "reward.num_cpus_per_actor"),
    ("reward.num_gpus_per_actor", -0.5, "reward.num_gpus_per_actor"),
    ("reward.clip", 0.0, "reward.clip"),
    ("algorithm.lr", 0.0, "algorithm.lr"),
    ("algorithm.gamma", 1.01, "algorithm.gamma"),
    ("algorithm.gae_lambda", -0.1, "algorithm.gae_lambda"),
    ("algorithm.clip_ratio", 0.0, "algorithm.clip_ratio"),
    ("algorithm.value_clip", 0.0, "algorithm.value_clip"),
    ("algorithm.vf_coef", -1.0, "algorithm.vf_coef"),
    ("algorithm.entropy_coef", -1.0, "algorithm.entropy_coef"),
    ("algorithm.max_grad_norm", 0.0, "algorithm.max_grad_norm"),
    ("algorithm.kl_coef", -0.1, "algorithm.kl_coef"),
    ("algorithm.target_kl", 0.0, "algorithm.target_kl"),
    ("algorithm.kl_horizon", 0, "algorithm.kl_horizon"),
    ("resources.num_env_runners", -1, "resources.num_env_runners"),
    ("resources.num_learners", -1, "resources.num_learners"),
    ("run.num_iterations", 0, "run.num_iterations"),
    ("run.checkpoint_every", 0, "run.checkpoint_every"),
    ("run.num_cpus", 0, "run.num_cpus"),
    ("model.lora.r", 0, "model.lora.r"),  # inside an optional section
    # required
    ("model.path", None, "model.path"),
    ("model.path", "???", "model.path"),
    # relations
    ("model.critic_path", "critic", "model.critic_path"),  # critic is shared
    ("data.prompts", "prompts.csv", "data.prompts"),
    ("reward.function", None, "reward.function"),  # source is function
    ("reward.function", "no_colon", "reward.function"),
    ("reward.source", "model", "reward.path"),  # no reward.path
    ("name", "a/b", "name"),
    # renamed metrics
    ("tune.metric", "rollout/entropy", "tune.metric"),
    ("tune.metric", "rollout/response_length", "tune.metric"),
]


def test_reference_path_is_checked(workdir: Path) -> None:
    """``model.reference_path``: not with LoRA, an existing directory, the policy's vocabulary."""
    d = with_value("model.reference_path", "models/tiny")
    assert config_from_dict(d, check_paths=True).model.reference_path.endswith("models/tiny")
    bad = [
        (with_value("model.lora", {"r": 4}, d), "the reference is the base model"),
        (with_value("model.reference_path", "models/none"), "does not exist"),
    ]
    other = workdir / "models" / "other"
    shutil.copytree(workdir / "models" / "tiny", other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": 7}))
    bad.append((with_value("model.reference_path", "models/other"), "share one vocabulary"))
    for raw, says in bad:
        with pytest.raises(ConfigError, match=says) as info:
            config_from_dict(raw, check_paths=True)
        assert info.value.key == "model.reference_path" and "\n" not in str(info.value)


@pytest.mark.parametrize(("dotted", "value", "key"), BAD_VALUES)
def test_bad_value_names_its_key(dotted: str, value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(with_value(dotted, value))
    message = str(info.value)
    assert key in message and "\n" not in message
    assert info.value.key == key
    assert isinstance(info.value, ValueError)
    if isinstance(value, str) and value in M.RENAMED:
        assert f"renamed to {M.RENAMED[value]!r}" in message


@pytest.mark.parametrize("section", ["model", "data"])
def test_missing_required_section(section: str) -> None:
    d = minimal()
    del d[section]
    with pytest.raises(ConfigError, match=rf"{section}\.\w+ is required"):
        config_from_dict(d)


def test_unknown_key_suggests_closest() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key algorithm\.lrr \(did you mean algorithm\.lr\?\)"
    ):
        config_from_dict(with_value("algorithm.lrr", 1.0))
    with pytest.raises(ConfigError, match=r"unknown key modle \(did you mean model\?\)"):
        config_from_dict(with_value("modle", {}))


def test_wrong_type_message_says_what_was_expected() -> None:
    with pytest.raises(
        ConfigError, match=r"algorithm\.batch_size must be an integer \(got bool True\)"
    ):
        config_from_dict(with_value("algorithm.batch_size", True))
    with pytest.raises(ConfigError, match=r"model\.critic must be one of shared, separate"):
        config_from_dict(with_value("model.critic", "joint"))
    with pytest.raises(ConfigError, match=r"generation\.top_p must be in \(0, 1\]"):
        config_from_dict(with_value("generation.top_p", 2.0))


def test_batch_must_split_over_env_runners() -> None:
    d = with_value("algorithm.batch_size", 30, with_value("resources.num_env_runners", 4))
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    assert str(info.value) == (
        "algorithm.batch_size (30) must be divisible by resources.num_env_runners (4): "
        "each env runner samples the same number of completions"
    )


@pytest.mark.parametrize(("batch_size", "num_minibatches", "num_learners"), [(16, 3, 0), (8, 2, 3)])
def test_batch_must_split_over_learners_and_minibatches(
    batch_size: int, num_minibatches: int, num_learners: int
) -> None:
    d = with_value("algorithm.batch_size", batch_size)
    d = with_value("algorithm.num_minibatches", num_minibatches, d)
    d = with_value("resources.num_learners", num_learners, d)
    with pytest.raises(
        ConfigError, match=r"algorithm\.batch_size .*algorithm\.num_minibatches.*learner"
    ):
        config_from_dict(d)


def test_kl_as_a_loss_refuses_k1_and_defaults_to_k3() -> None:
    """As a loss k1's expected gradient is zero: no KL pressure at all (see
    tests/unit/core_algos/test_core_algos.py); the reward penalty keeps k1 by default."""
    d = with_value("algorithm.kl_mode", "loss", with_value("algorithm.kl_estimator", "k1"))
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    assert info.value.key == "algorithm.kl_estimator" and "no KL pressure" in str(info.value)
    assert (
        config_from_dict(with_value("algorithm.kl_mode", "loss")).algorithm.resolved_kl_estimator
        == "k3"
    )
    assert config_from_dict(minimal()).algorithm.resolved_kl_estimator == "k1"
    k2 = with_value("algorithm.kl_mode", "loss", with_value("algorithm.kl_estimator", "k2"))
    assert config_from_dict(k2).algorithm.resolved_kl_estimator == "k2"


def test_lora_dropout_is_refused_in_rl_training() -> None:
    """Dropout in the adapters makes two forwards of the same weights differ: PPO's first
    ratio would not be 1 (every other dropout of the policy is off for that reason)."""
    d = with_value("model.lora", {"r": 4, "dropout": 0.05})
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    assert info.value.key == "model.lora.dropout"
    config_from_dict(with_value("model.lora", {"r": 4}))


def test_valid_relations_pass() -> None:
    d = with_value("resources.num_env_runners", 4, with_value("resources.num_learners", 2))
    config_from_dict(d)  # 16 = 4 runners * 4 = 2 learners * 2 minibatches * 4
    d = with_value("model.critic_path", "critic", with_value("model.critic", "separate"))
    config_from_dict(d)
    config_from_dict(with_value("reward.path", "rm", with_value("reward.source", "model")))


# ---------------------------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------------------------


def test_minimal_yaml_loads_with_absolute_paths(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = workdir / "run.yaml"
    path.write_text("model:\n  path: models/tiny\ndata:\n  prompts: prompts.jsonl\n")
    cfg = load_config(path, [f"reward.function={FUNCTION}"])
    assert cfg.model.path == str(workdir / "models" / "tiny")
    assert cfg.data.prompts == str(workdir / "prompts.jsonl")
    assert cfg.run.storage_path == str(workdir / "rayrm_runs")
    assert cfg.model.resolved_tokenizer_path == cfg.model.path
    for p in (cfg.model.path, cfg.data.prompts, cfg.run.storage_path):
        assert os.path.isabs(p)
    # The saved resolved config is self-contained: it loads from anywhere.
    cfg.save_yaml(workdir / "resolved.yaml")
    monkeypatch.chdir("/")
    assert load_config(workdir / "resolved.yaml") == cfg


def test_yaml_reads_exponents_without_a_dot(workdir: Path) -> None:
    path = write_yaml(workdir / "run.yaml", minimal())
    with path.open("a") as f:
        f.write("algorithm:\n  lr: 3e-6\n")
    assert load_config(path).algorithm.lr == 3e-6
    assert load_config(path, ["algorithm.lr=1e-4"]).algorithm.lr == 1e-4


@pytest.mark.parametrize(
    ("override", "dotted", "expected"),
    [
        ("algorithm.batch_size=32", "algorithm.batch_size", 32),
        ("algorithm.lr=3.0e-6", "algorithm.lr", 3.0e-6),
        ("algorithm.clip_ratio=1", "algorithm.clip_ratio", 1.0),
        ("algorithm.adaptive_kl=true", "algorithm.adaptive_kl", True),
        ("reward.normalize=false", "reward.normalize", False),
        ("algorithm.value_clip=null", "algorithm.value_clip", None),
        ("name=my-run", "name", "my-run"),
        ("name = spaced ", "name", "spaced"),
        ("model.dtype=bfloat16", "model.dtype", "bfloat16"),
        ("seed=7", "seed", 7),
        ("generation={top_k: 5, top_p: 0.9}", "generation.top_k", 5),
        ("generation={top_k: 5, top_p: 0.9}", "generation.top_p", 0.9),
    ],
)
def test_overrides(workdir: Path, override: str, dotted: str, expected: Any) -> None:
    path = write_yaml(workdir / "run.yaml", minimal())
    node: Any = load_config(path, [override])
    for part in dotted.split("."):
        node = getattr(node, part)
    assert node == expected and type(node) is type(expected)


def test_overrides_apply_in_order_and_keep_other_keys(workdir: Path) -> None:
    path = write_yaml(workdir / "run.yaml", with_value("algorithm.num_epochs", 4))
    cfg = load_config(path, ["algorithm.lr=0.1", "algorithm.lr=0.2", "algorithm={vf_coef: 0.5}"])
    assert (cfg.algorithm.lr, cfg.algorithm.vf_coef, cfg.algorithm.num_epochs) == (0.2, 0.5, 4)


def test_override_creates_missing_section(workdir: Path) -> None:
    path = write_yaml(workdir / "run.yaml", minimal())
    cfg = load_config(path, ["resources.num_env_runners=2", "resources.num_learners=2"])
    assert cfg.resources.num_env_runners == 2 and cfg.envs_per_env_runner == 8


def test_dotted_override_creates_an_optional_section_with_its_defaults(workdir: Path) -> None:
    path = write_yaml(workdir / "run.yaml", minimal())
    cfg = load_config(path, ["model.lora.r=8"])
    assert cfg.model.lora is not None and cfg.model.lora.r == 8
    assert cfg.model.lora.alpha == 16.0  # the section's default
    cfg = load_config(path, ["model.lora.r=8", "model.lora.alpha=4"])
    assert (cfg.model.lora.r, cfg.model.lora.alpha) == (8, 4.0)
    with pytest.raises(ConfigError, match=r"unknown key model\.lora\.rank .*valid keys: r, alpha"):
        load_config(path, ["model.lora.rank=8"])


def test_override_with_new_path_is_resolved_and_checked(workdir: Path) -> None:
    path = write_yaml(workdir / "run.yaml", minimal())
    with pytest.raises(ConfigError, match=r"model\.path '.*elsewhere' does not exist"):
        load_config(path, ["model.path=elsewhere"])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("algorithm.lr", r"malformed override 'algorithm\.lr'"),
        ("=3", r"malformed override '=3'"),
        ("algorithm..lr=3", r"malformed override 'algorithm\.\.lr=3'"),
        (
            "algorithm.lrr=0.1",
            r"unknown key algorithm\.lrr in override 'algorithm\.lrr=0\.1' \(did you mean algorithm\.lr",
        ),
        ("nmae=x", r"unknown key nmae .*did you mean name"),
        (
            "algorithm.lr.x=1",
            r"unknown key algorithm\.lr\.x in override .*algorithm\.lr is a value",
        ),
        ("algorithm.lr=[", r"override 'algorithm\.lr=\[': value is not valid YAML"),
        ("algorithm.batch_size=0", r"algorithm\.batch_size must be >= 1"),
        ("algorithm.batch_size=abc", r"algorithm\.batch_size must be an integer"),
    ],
)
def test_bad_overrides(workdir: Path, override: str, match: str) -> None:
    path = write_yaml(workdir / "run.yaml", minimal())
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path, [override])
    assert "\n" not in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(missing)

    broken = tmp_path / "broken.yaml"
    broken.write_text("algorithm:\n  lr: [1, 2\nname: x\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line \d+") as info:
        load_config(broken)
    assert "\n" not in str(info.value)

    for text, got in [("- a\n- b\n", "list"), ("", "empty file"), ("42\n", "int")]:
        path = tmp_path / "top.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"top\.yaml: top level must be a mapping.*{got}"):
            load_config(path)


# ---------------------------------------------------------------------------------------------
# Filesystem checks
# ---------------------------------------------------------------------------------------------


def checked(d: dict[str, Any]) -> None:
    validate_paths(resolve_paths(config_from_dict(d)))


def test_valid_paths_pass(workdir: Path) -> None:
    for name in ("tok", "critic", "rm"):  # directories with a tokenizer (and a model)
        shutil.copytree(workdir / "models" / "tiny", workdir / name)
    d = minimal()
    d["model"].update(tokenizer_path="tok", critic="separate", critic_path="critic")
    d["reward"].update(source="model", path="rm")
    checked(d)
    assert config_from_dict(d, check_paths=True).reward.path == str(workdir / "rm")


@pytest.mark.parametrize(
    ("dotted", "value", "match"),
    [
        ("model.path", "missing", r"model\.path '.*missing' does not exist"),
        ("model.path", "prompts.jsonl", r"model\.path '.*prompts\.jsonl' is not a directory"),
        ("model.path", ".", r"model\.path '.*' has no config\.json"),
        ("model.tokenizer_path", "tok", r"model\.tokenizer_path '.*tok' does not exist"),
        ("data.prompts", "other.jsonl", r"data\.prompts '.*other\.jsonl' does not exist"),
        ("data.prompts", "models.json", r"data\.prompts '.*models\.json' is not a file"),
        ("reward.function", "no_such_mod:f", r"reward\.function 'no_such_mod:f': cannot import"),
        ("reward.function", "os.path:nope", r"reward\.function 'os\.path:nope': .* has no 'nope'"),
        ("reward.function", "os.path:sep", r"reward\.function 'os\.path:sep': .*not callable"),
        ("run.storage_path", "prompts.jsonl", r"run\.storage_path '.*' exists and is not a dir"),
    ],
)
def test_bad_paths_name_key_and_value(workdir: Path, dotted: str, value: str, match: str) -> None:
    (workdir / "models.json").mkdir()
    with pytest.raises(ConfigError, match=match) as info:
        checked(with_value(dotted, value))
    assert info.value.key == dotted


def test_bad_critic_and_reward_model_dirs(workdir: Path) -> None:
    d = with_value("model.critic_path", "nocritic", with_value("model.critic", "separate"))
    with pytest.raises(ConfigError, match=r"model\.critic_path '.*nocritic' does not exist"):
        checked(d)
    d = with_value("reward.path", "norm", with_value("reward.source", "model"))
    with pytest.raises(ConfigError, match=r"reward\.path '.*norm' does not exist"):
        checked(d)


def test_ignored_reward_function_is_not_imported(workdir: Path) -> None:
    shutil.copytree(workdir / "models" / "tiny", workdir / "rm")
    d = with_value("reward.source", "model", with_value("reward.path", "rm"))
    checked(with_value("reward.function", "no_such_mod:f", d))


def test_config_from_dict_does_not_touch_the_filesystem() -> None:
    d = with_value("model.path", "/definitely/not/here")
    assert config_from_dict(d).model.path == "/definitely/not/here"
    with pytest.raises(ConfigError, match=r"model\.path"):
        config_from_dict(d, check_paths=True)


def test_run_config_is_the_documented_type() -> None:
    assert isinstance(config_from_dict(minimal()), RLConfig)


def test_the_renamed_ppo_section_is_refused_in_one_line_naming_algorithm(workdir: Path) -> None:
    """The section of the update and its estimator was ``ppo`` (GRPO and RLOO included); a
    file, an override or a searched key that still says so gets the new name, not a guess."""
    old = "ppo"  # the renamed section's old name
    with pytest.raises(ConfigError, match=r"^ppo: renamed to algorithm \(same keys inside\)$"):
        config_from_dict({**minimal(), old: {"lr": 1e-5}})
    path = write_yaml(workdir / "run.yaml", minimal())
    with pytest.raises(ConfigError, match=r"^ppo in override 'ppo\.lr=1e-5': renamed to algorithm"):
        load_config(path, [f"{old}.lr=1e-5"])
    space = {"tune": {"search_space": {f"{old}.lr": {"grid": [1e-5, 1e-4]}}}}
    with pytest.raises(
        ConfigError, match=r"search_space\.ppo\.lr: ppo was renamed to algorithm\.lr"
    ):
        config_from_dict({**minimal(), **space})
    space = {"tune": {"search_space": {"algorithm.lr": {"grid": [1e-5, 1e-4]}}}}
    assert config_from_dict({**minimal(), **space}).tune.search_space
