"""The docs cannot drift (STYLE.md §20): the site builds with ``mkdocs build --strict``, the
configuration reference is what the code generates, and every example in README.md and
``docs/`` is validated or run.

* ```` ```yaml ```` blocks: a whole run config (``model`` and ``data``) through
  ``config_from_dict``; a block titled ``sft.yaml``/``rm.yaml`` as that stage's config; a
  partial snippet merged over a minimal run config first. Read as the CLI reads a config file.
* ```` ```bash ```` blocks: ``rayrm ...`` parses with the CLI's parser (``--set`` keys applied
  to the config kind the command reads, then validated); ``python jobs/<x>.py`` names a file
  (``jobs/benchmark.py``'s arguments parse with the benchmark's parser); ``tests/...`` paths
  exist; ``pip install '.[extras]'`` names extras pyproject.toml defines. Nothing is run.
* ```` ```python ```` blocks run (in a temp folder); ```` ```json ```` blocks parse.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

from rayrm.config import ConfigError, apply_override, config_from_dict
from rayrm.config.io import read_yaml_with_overrides
from rayrm.config.reference import markdown, undocumented
from rayrm.config.run import RLConfig
from rayrm.config.stage import RMConfig, SFTConfig, stage_config_from_dict
from rayrm.models.tokenization import check_conversation

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
REFERENCE = DOCS / "configuration-reference.md"
README_MAX_LINES = 250
CI_COMMANDS = (  # .ci/run and the README's two commands must agree
    "pip install torch==2.13.0 -e . && rayrm demo",
    "pip install torch==2.13.0 -e '.[test]' && python -m pytest -q -n 3 --dist loadfile",
)

MINIMAL: dict[str, dict[str, Any]] = {
    "run": {"model": {"path": "/models/policy"}, "data": {"prompts": "/data/prompts.jsonl"}},
    "sft": {"model": {"path": "/m"}, "data": {"path": "/d.jsonl"}, "output": {"dir": "/o"}},
    "rm": {"model": {"path": "/m"}, "data": {"path": "/d.jsonl"}, "output": {"dir": "/o"}},
}
"""The smallest valid config of each kind, under which partial snippets and --set are tried."""

STAGE_TITLES = {"sft.yaml": SFTConfig, "rm.yaml": RMConfig}
COMMAND_KINDS = {"train": "run", "tune": "run", "quickstart": "run", "sft": "sft", "train-rm": "rm"}
KIND_CLASSES = {"run": RLConfig, "sft": SFTConfig, "rm": RMConfig}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    title: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>[^`]*)$")


def _blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, indented ones (in list items) included, dedented."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        end = i + 1
        while end < len(lines) and not re.fullmatch(rf" *{fence}`*\s*", lines[end]):
            end += 1
        body = "\n".join(
            line[indent:] if line.startswith(" " * indent) else line.lstrip()
            for line in lines[i + 1 : end]
        )
        title = re.search(r'title="([^"]*)"', info)
        lang = info.split()[0] if info else ""
        found.append(Block(path, i + 1, lang, title[1] if title else "", body + "\n"))
        i = end + 1
    return found


BLOCKS = [b for page in PAGES for b in _blocks(page)]


def _of(lang: str) -> list[Any]:
    return [pytest.param(b, id=b.where) for b in BLOCKS if b.lang == lang]


# ------------------------------------------------------------------------------ the site
def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            "mkdocs.yml",
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr


def test_configuration_reference_is_generated_from_the_code():
    assert undocumented() == [], "add an Attributes: entry for each of these fields"
    assert REFERENCE.read_text(encoding="utf-8") == markdown(), (
        "docs/configuration-reference.md differs from the config classes: regenerate it with "
        "`rayrm config reference > docs/configuration-reference.md`"
    )


def test_readme_is_the_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for command in CI_COMMANDS:
        assert command in text, command
    assert CI_COMMANDS[1] in ci


def test_every_kind_of_example_is_found():
    """The checks below are not vacuous: the pages hold examples of each kind."""
    counts = {
        lang: sum(b.lang == lang for b in BLOCKS) for lang in ("yaml", "bash", "python", "json")
    }
    assert counts["yaml"] >= 10 and counts["bash"] >= 15 and counts["python"] >= 2, counts
    assert all(b.lang for b in BLOCKS if b.text.strip().startswith(("rayrm ", "python "))), (
        "a command block without a language is not checked: mark it ```bash"
    )


# ------------------------------------------------------------------------------ YAML
def _merged(base: Any, update: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(update, dict)):
        return copy.deepcopy(update)
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _merged(out.get(key), value)
    return out


@pytest.mark.parametrize("block", _of("yaml"))
def test_yaml_example_validates(block: Block, tmp_path):
    path = tmp_path / "example.yaml"
    path.write_text(block.text, encoding="utf-8")
    if not [
        line
        for line in block.text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]:
        return  # comments only (an editor's first line)
    stage = STAGE_TITLES.get(block.title)
    try:
        if stage is not None:
            stage_config_from_dict(stage, read_yaml_with_overrides(path, [], stage))
            return
        raw = read_yaml_with_overrides(path, [], RLConfig)
        config_from_dict(raw if {"model", "data"} <= set(raw) else _merged(MINIMAL["run"], raw))
    except ConfigError as exc:
        pytest.fail(f"{block.where}: {exc}")


# ------------------------------------------------------------------------------ commands
def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out + ([current] if current else [])


def _segments(line: str) -> list[list[str]]:
    """The simple commands of one shell line: split at ``&&``, ``|``, ``;`` and parentheses,
    redirections and their targets dropped, comments removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    skip = False
    for token in lexer:
        if skip:
            skip = False
        elif token in (">", ">>", "<", "&>"):
            skip = True
        elif set(token) <= set("&|;()"):
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


_PARSER: argparse.ArgumentParser | None = None


def _rayrm_parser() -> argparse.ArgumentParser:
    global _PARSER
    if _PARSER is None:
        from rayrm.cli import build_parser

        _PARSER = build_parser()
    return _PARSER


def _parse(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{' '.join(argv)}` does not parse (argparse's message above)")


def _check_rayrm(argv: list[str], where: str) -> None:
    args = _parse(_rayrm_parser(), argv, where)
    kind = COMMAND_KINDS.get(args.command)
    if kind is None or not getattr(args, "overrides", None):
        return
    raw = copy.deepcopy(MINIMAL[kind])
    try:
        for override in args.overrides:
            apply_override(raw, override, KIND_CLASSES[kind])
        if kind == "run":
            config_from_dict(raw)
        else:
            stage_config_from_dict(KIND_CLASSES[kind], raw)
    except ConfigError as exc:
        pytest.fail(f"{where}: {exc}")


def _check_python(argv: list[str], where: str) -> None:
    script = next((a for a in argv if a.startswith("jobs/") and a.endswith(".py")), None)
    if script is not None:
        if not (REPO / script).is_file():
            pytest.fail(f"{where}: {script} does not exist")
        if script == "jobs/benchmark.py":
            from rayrm.bench.options import add_bench_arguments
            from rayrm.cli import add_verbose

            parser = argparse.ArgumentParser(prog="benchmark.py")
            add_verbose(add_bench_arguments(parser))
            _parse(parser, argv[argv.index(script) + 1 :], where)


def _extras() -> set[str]:
    """The extras pyproject.toml defines (read without tomllib, which Python 3.10 lacks)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = \[", section, flags=re.M))


def _check_segment(argv: list[str], where: str) -> None:
    for token in argv:
        path = token.split("::")[0]
        if path.startswith("tests/") and not (REPO / path).exists():
            pytest.fail(f"{where}: {path} does not exist")
        extras = re.fullmatch(r"\.\[([\w,-]+)\]", token)
        if argv[:2] == ["pip", "install"] and extras:
            unknown = set(extras[1].split(",")) - _extras()
            if unknown:
                pytest.fail(f"{where}: pyproject.toml defines no extra {sorted(unknown)}")
    if argv[0] == "rayrm":
        _check_rayrm(argv[1:], where)
    elif argv[0] == "python":
        _check_python(argv[1:], where)
    elif "python" in argv:  # e.g. `ray job submit ... -- python jobs/train.py CONFIG`
        _check_python(argv[argv.index("python") + 1 :], where)


LOG = DOCS / "benchmarks"
"""The append-only benchmark log records each command as it was run, with the flags of its day
(``--trial-cpus`` before 2026-12-07): its commands are history, not examples to run."""


@pytest.mark.parametrize("block", [b for b in _of("bash") if LOG not in b.values[0].path.parents])
def test_bash_example_commands(block: Block):
    for n, line in enumerate(_logical_lines(block.text)):
        for argv in _segments(line):
            _check_segment(argv, f"{block.where} (+{n + 1})")


def test_the_checks_catch_a_wrong_example(tmp_path):
    """The checks fail where they should (guarding against a check that passes anything)."""
    for bad in ("rayrm train", "rayrm trian x.yaml", "rayrm train x.yaml --set algorithm.lrr=1",
                "python jobs/nope.py", "python jobs/benchmark.py --sections", "pip install -e '.[nope]'"):  # fmt: skip
        with pytest.raises(pytest.fail.Exception):
            for argv in _segments(bad):
                _check_segment(argv, "bad")
    broken = Block(
        REPO / "README.md", 0, "yaml", "", "algorithm: {batch_size: 3, num_minibatches: 2}\n"
    )
    with pytest.raises(pytest.fail.Exception):
        test_yaml_example_validates(broken, tmp_path)


# ------------------------------------------------------------------------------ Python, JSON
@pytest.mark.parametrize("block", _of("python"))
def test_python_example_runs(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block.text, block.where, "exec"), {"__name__": "__docs_example__"})


@pytest.mark.parametrize("block", _of("json"))
def test_json_example_parses(block: Block):
    for line in block.text.splitlines():  # JSON Lines: one object per line
        if line.strip():
            row = json.loads(line)
            if "messages" in row:
                check_conversation(row["messages"], block.where)
