"""Config-time checks of the models a run names: each fails in one line naming the key or file,
before Ray starts (exit code 2 through the CLI)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from rayrm.config import ConfigError, config_from_dict
from rayrm.data.prompts import write_prompts_jsonl
from rayrm.models.tiny import build_tiny_model, build_tiny_reward_model, build_tokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("checks")
    gpt2 = build_tiny_model(root / "gpt2", arch="gpt2", hidden=32, positions=48)
    qwen = build_tiny_model(root / "qwen2", arch="qwen2", hidden=32, heads=4)
    rm = build_tiny_reward_model(root / "rm", build_tokenizer("gpt2"))
    chat_rm = build_tiny_reward_model(root / "chat_rm", build_tokenizer("qwen2"), arch="qwen2")
    prompts = write_prompts_jsonl(root / "p.jsonl", ["the cat said", "hello"])
    chats = write_prompts_jsonl(
        root / "chat.jsonl", [[{"role": "user", "content": "hi"}]], column="messages"
    )
    return {
        "gpt2": gpt2,
        "qwen2": qwen,
        "rm": rm,
        "chat_rm": chat_rm,
        "prompts": str(prompts),
        "chats": str(chats),
        "root": str(root),
    }


def run_dict(models: dict[str, str], **sections: dict) -> dict:
    d = {
        "model": {"path": models["gpt2"]},
        "data": {"prompts": models["prompts"], "max_prompt_tokens": 16},
        "generation": {"max_new_tokens": 16},
        "run": {"storage_path": str(Path(models["root"]) / "runs")},
    }
    for name, values in sections.items():
        d[name] = {**d.get(name, {}), **values}
    return d


def check(d: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_dict(d, check_paths=True)
    assert "\n" not in str(info.value)
    return info.value


def test_a_valid_config_passes(models):
    config_from_dict(run_dict(models), check_paths=True)
    chat = run_dict(
        models,
        model={"path": models["qwen2"]},
        data={"prompts": models["chats"], "max_prompt_tokens": 32},
        reward={"source": "model", "path": models["chat_rm"]},
    )
    config_from_dict(chat, check_paths=True)


def test_position_limit(models):
    e = check(run_dict(models, generation={"max_new_tokens": 40}))  # 16 + 40 > 48
    assert e.key == "generation.max_new_tokens"
    assert "16" in str(e) and "40" in str(e) and "= 56 tokens exceeds the position limit" in str(e)


def test_policy_without_tokenizer(models, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(models["gpt2"], bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    e = check(run_dict(models, model={"path": str(bare)}))
    assert e.key == "model.path" and "no tokenizer files" in str(e)
    ok = run_dict(models, model={"path": str(bare), "tokenizer_path": models["gpt2"]})
    config_from_dict(ok, check_paths=True)


def test_tokenizer_larger_than_the_embedding(models, tmp_path):
    small = tmp_path / "small"
    shutil.copytree(models["gpt2"], small)
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 50
    (small / "config.json").write_text(json.dumps(config))
    e = check(run_dict(models, model={"path": str(small)}))
    assert (
        e.key == "model.path"
        and "the tokenizer has 400 tokens but model.path embeds only 50" in str(e)
    )


def test_reward_model_without_tokenizer(models, tmp_path):
    rm = tmp_path / "rm"
    shutil.copytree(models["rm"], rm)
    (rm / "tokenizer.json").unlink()
    reward = {"source": "model", "path": str(rm)}
    e = check(run_dict(models, reward=reward))
    assert e.key == "reward.path" and "reward.tokenizer_path" in str(e)
    config_from_dict(
        run_dict(models, reward={**reward, "tokenizer_path": models["rm"]}), check_paths=True
    )
    ensemble = {"source": "ensemble", "members": [models["rm"], str(rm)]}
    assert check(run_dict(models, reward=ensemble)).key == "reward.members[1]"


def test_chat_prompts_need_templates(models):
    e = check(run_dict(models, data={"prompts": models["chats"]}))  # GPT-2: no template
    assert e.key == "data.prompts" and "no chat template" in str(e)
    e = check(run_dict(models, data={"chat_template": True}))
    assert e.key == "data.chat_template"
    chat_policy = {"path": models["qwen2"]}
    data = {"prompts": models["chats"], "max_prompt_tokens": 32}
    e = check(run_dict(models, model=chat_policy, data=data, reward={"source": "model", "path": models["rm"]}))  # fmt: skip
    assert e.key == "reward.path" and "own template" in str(e)


def test_cli_exits_2_with_one_line(models, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_dict(models, generation={"max_new_tokens": 40})))
    proc = subprocess.run(
        [sys.executable, "-m", "rayrm.cli", "train", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "generation.max_new_tokens" in lines[0], proc.stderr
