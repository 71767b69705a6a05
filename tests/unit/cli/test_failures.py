"""Malformed inputs through the real CLI: each ends with its exit code, one line on stderr naming
the problem, and no traceback (issue 12).

Config, data, model and reward-function mistakes are found in the driver before Ray starts
(exit 2). The policy is a tiny Qwen2 with a byte-level BPE tokenizer and a chat template; the
reward model a tiny one-label GPT-2 with its tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import Workspace, run_cli

# ---------------------------------------------------------------------------- the cases


Edit = Callable[[Workspace], "list[str] | None"]


def _set(section: str, **values: Any) -> Edit:
    def edit(w: Workspace) -> None:
        w.cfg.setdefault(section, {}).update(values)

    return edit


def _prompts_file(name: str, text: str, key: str = "prompts") -> Edit:
    def edit(w: Workspace) -> None:
        path = w.write(name, text)
        if key == "prompts":
            w.cfg["data"]["prompts"] = path
        else:
            w.cfg["eval"].update(prompts=path, every=1)

    return edit


def _parquet(table: dict[str, list[Any]]) -> Edit:
    def edit(w: Workspace) -> None:
        path = w.root / "prompts.parquet"
        pq.write_table(pa.table(table), path)
        w.cfg["data"]["prompts"] = str(path)

    return edit


def _corrupt_parquet(w: Workspace) -> None:
    path = w.root / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"]}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    w.cfg["data"]["prompts"] = str(path)


def _reward_fn(name: str) -> Edit:
    return _set("reward", function=f"scorers:{name}")


def _gold_fn(name: str) -> Edit:
    return _set("eval", every=1, gold_function=f"scorers:{name}")


def _model_edit(fix: Callable[[Path], None], key: str = "model") -> Edit:
    """A copy of the policy (or the reward model) with ``fix`` applied."""

    def edit(w: Workspace) -> None:
        if key == "model":
            out = w.copy_model(w.policy, "policy")
            w.cfg["model"]["path"] = str(out)
        else:
            out = w.copy_model(w.reward_model, "rm")
            w.cfg["reward"] = {"source": "model", "path": str(out)}
        fix(out)

    return edit


def _json_edit(name: str, **values: Any) -> Callable[[Path], None]:
    def fix(d: Path) -> None:
        data = json.loads((d / name).read_text())
        data.update(values)
        (d / name).write_text(json.dumps(data))

    return fix


def _remove(*names: str) -> Callable[[Path], None]:
    def fix(d: Path) -> None:
        for name in names:
            (d / name).unlink(missing_ok=True)

    return fix


def _write(name: str, text: str) -> Callable[[Path], None]:
    def fix(d: Path) -> None:
        (d / name).write_text(text)

    return fix


def _config_text(text: str) -> Edit:
    def edit(w: Workspace) -> None:
        w.write("run.yaml", text)

    return edit


def _argv(*args: str) -> Edit:
    def edit(w: Workspace) -> list[str]:
        return list(args)

    return edit


def _config_missing(w: Workspace) -> None:
    w.config_name = "missing.yaml"


def _not_utf8(w: Workspace) -> None:
    path = w.root / "p.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    w.cfg["data"]["prompts"] = str(path)


def _storage_is_a_file(w: Workspace) -> None:
    w.cfg["run"]["storage_path"] = w.write("a-file", "x") + "/runs"


def _existing_run(w: Workspace) -> None:
    run = Path(w.cfg["run"]["storage_path"]) / w.cfg["name"]
    run.mkdir(parents=True)
    (run / "experiment_state.json").write_text("{}")


# (id, edit, exit code, text the one line must hold)
CASES: list[tuple[str, Edit, int, str]] = [
    # --- configs and command lines
    ("config-missing", _config_missing, 2, "missing.yaml"),
    ("config-not-yaml", _config_text("model: [unclosed\n"), 2, "run.yaml"),
    ("config-a-list", _config_text("- model\n- data\n"), 2, "run.yaml"),
    ("unknown-key", _set("algorithm", lrr=1e-5), 2, "algorithm.lrr"),
    ("wrong-type", _set("algorithm", lr="fast"), 2, "algorithm.lr"),
    ("negative-batch", _set("algorithm", batch_size=-4), 2, "algorithm.batch_size"),
    ("batch-not-divisible", _set("algorithm", batch_size=5), 2, "algorithm.batch_size"),
    ("bad-set-syntax", _argv("--set", "algorithm.lr"), 2, "override"),
    ("set-unknown-key", _argv("--set", "algorithm.nope=1"), 2, "algorithm.nope"),
    ("resume-nothing", _argv("--resume"), 2, "nothing to resume"),
    ("run-exists", _existing_run, 2, "already holds a run"),
    ("storage-under-a-file", _storage_is_a_file, 2, "run.storage_path"),
    # --- prompts files
    ("prompts-missing", _set("data", prompts="/nonexistent/prompts.jsonl"), 2, "data.prompts"),
    ("prompts-empty-file", _prompts_file("p.jsonl", ""), 2, "no rows"),
    ("prompts-no-column", _prompts_file("p.jsonl", '{"text": "hi"}\n'), 2, "prompt"),
    ("prompts-bad-line", _prompts_file("p.jsonl", '{"prompt": "a"}\n{"prompt": \n'), 2, "p.jsonl"),
    ("prompts-not-strings", _prompts_file("p.jsonl", '{"prompt": 3}\n'), 2, "row 0"),
    ("prompts-null", _prompts_file("p.jsonl", '{"prompt": "a"}\n{"prompt": null}\n'), 2, "row 1"),
    (
        "prompts-empty-prompt",
        _prompts_file("p.jsonl", '{"prompt": "a"}\n{"prompt": ""}\n'),
        2,
        "row 1",
    ),  # fmt: skip
    ("prompts-blank-prompt", _prompts_file("p.jsonl", '{"prompt": "   "}\n'), 2, "row 0"),
    ("prompts-extension", _prompts_file("p.csv", "prompt\nhi\n"), 2, ".csv"),
    ("prompts-not-utf8", _not_utf8, 2, "p.jsonl"),
    ("prompts-corrupt-parquet", _corrupt_parquet, 2, "Parquet"),
    ("prompts-parquet-no-column", _parquet({"question": ["hi"]}), 2, "prompt"),
    (
        "prompts-bad-messages",
        _prompts_file("p.jsonl", '{"messages": [{"role": "user"}]}\n'),
        2,
        "row 0",
    ),  # fmt: skip
    (
        "prompts-messages-not-list",
        _prompts_file("p.jsonl", '{"messages": "hello"}\n'),
        2,
        "row 0",
    ),  # fmt: skip
    # --- held-out prompts
    ("eval-missing", _set("eval", every=1, prompts="/nonexistent/held.jsonl"), 2, "eval.prompts"),
    ("eval-empty", _prompts_file("held.jsonl", "", key="eval"), 2, "eval.prompts"),
    (
        "eval-no-column",
        _prompts_file("held.jsonl", '{"q": "x"}\n', key="eval"),
        2,
        "eval.prompts",
    ),  # fmt: skip
    (
        "eval-empty-prompt",
        _prompts_file("held.jsonl", '{"prompt": ""}\n', key="eval"),
        2,
        "eval.prompts",
    ),  # fmt: skip
    # --- reward functions that misbehave
    ("reward-module-missing", _set("reward", function="no_such_module:f"), 2, "reward.function"),
    ("reward-attr-missing", _reward_fn("no_such_function"), 2, "no_such_function"),
    (
        "reward-no-colon",
        _set("reward", function="envs.builtin.vowel_reward"),
        2,
        "reward.function",
    ),  # fmt: skip
    ("reward-not-callable", _reward_fn("not_callable"), 2, "not_callable"),
    ("reward-raises", _reward_fn("raises"), 2, "KeyError"),
    ("reward-wrong-length", _reward_fn("wrong_length"), 2, "shape"),
    ("reward-not-numbers", _reward_fn("not_numbers"), 2, "not_numbers"),
    ("reward-none", _reward_fn("returns_none"), 2, "returns_none"),
    ("reward-nan", _reward_fn("nan_scores"), 2, "item 1"),
    ("reward-inf", _reward_fn("inf_scores"), 2, "item 0"),
    ("reward-no-arguments", _reward_fn("no_arguments"), 2, "no_arguments"),
    ("reward-nested", _reward_fn("nested"), 2, "shape"),
    # --- gold functions
    ("gold-missing", _gold_fn("nope"), 2, "eval.gold_function"),
    ("gold-raises", _gold_fn("raises"), 2, "eval.gold_function"),
    ("gold-nan", _gold_fn("nan_scores"), 2, "eval.gold_function"),
    # --- model and tokenizer directories
    ("model-missing", _set("model", path="/nonexistent/model"), 2, "model.path"),
    ("model-no-config", _model_edit(_remove("config.json")), 2, "config.json"),
    ("model-config-corrupt", _model_edit(_write("config.json", "{not json")), 2, "config.json"),
    (
        "model-no-tokenizer",
        _model_edit(_remove("tokenizer.json", "tokenizer_config.json")),
        2,
        "tokenizer",
    ),  # fmt: skip
    ("tokenizer-corrupt", _model_edit(_write("tokenizer.json", "{}")), 2, "tokenizer"),
    (
        "tokenizer-path-missing",
        _set("model", tokenizer_path="/nonexistent/tok"),
        2,
        "model.tokenizer_path",
    ),  # fmt: skip
    (
        "vocab-larger-than-model",
        _model_edit(_json_edit("config.json", vocab_size=8)),
        2,
        "vocab",
    ),  # fmt: skip
    (
        "rm-two-labels",
        _model_edit(
            _json_edit(
                "config.json",
                num_labels=2,
                id2label={"0": "a", "1": "b"},
                label2id={"a": 0, "b": 1},
            ),
            key="rm",
        ),
        2,
        "labels",
    ),  # fmt: skip
    (
        "rm-no-tokenizer",
        _model_edit(_remove("tokenizer.json", "tokenizer_config.json"), key="rm"),
        2,
        "tokenizer",
    ),  # fmt: skip
    ("rm-missing", _set("reward", source="model", path="/nonexistent/rm"), 2, "reward.path"),
]


@pytest.mark.parametrize(("edit", "code", "needle"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_malformed_input_fails_in_one_line(ws, capfd, edit, code, needle):
    got, err = run_cli(ws, capfd, *(edit(ws) or []))
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert lines[0].startswith("rayrm: error: "), lines[0]


def test_at_least_forty_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 40
