"""A LoRA config without peft installed is a one-line error naming ``model.lora`` and the extra
to install (LoRA training: tests/ray/models/test_lora.py)."""

from __future__ import annotations

import pytest
from helpers import make_config

pytest.importorskip("peft")

LORA = {"r": 8, "alpha": 16}


def test_missing_peft_is_one_line(tiny_policy_dir, prompts_file, tmp_path, capsys, monkeypatch):
    import importlib.util

    from rayrm.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "peft" else find_spec(name, *a),
    )
    cfg = make_config(tiny_policy_dir, prompts_file, tmp_path, model={"lora": LORA})
    cfg.save_yaml(tmp_path / "config.yaml")
    assert main(["train", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.lora" in err[0] and "pip install 'rayrm[lora]'" in err[0], err
