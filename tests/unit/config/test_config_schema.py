"""``rayrm config schema``: the JSON Schema editors use, generated from the typed configs; every
shipped example config validates against it, and it rejects what the configs reject."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml
from helpers import REPO

from rayrm.config.schema import json_schema

EXAMPLES = {
    "jobs/configs/reference_task.yaml": "run",
    "jobs/configs/sft_example.yaml": "sft",
    "jobs/configs/rm_example.yaml": "rm",
}


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_cli_prints_the_schema():
    proc = subprocess.run(
        [sys.executable, "-m", "rayrm.cli", "config", "schema"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    schema = json.loads(proc.stdout)
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"model", "data", "algorithm", "reward"} <= set(schema["properties"])
    algorithm = schema["$defs"]["AlgorithmSettings"]["properties"]
    lr = algorithm["lr"]
    assert lr["exclusiveMinimum"] == 0 and "learning rate" in lr["description"]


@pytest.mark.parametrize(("path", "kind"), sorted(EXAMPLES.items()))
def test_shipped_example_configs_validate(path: str, kind: str):
    config = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
    errors = list(_validator(kind).iter_errors(config))
    assert not errors, [e.message for e in errors]


def test_quickstart_config_validates(tmp_path):
    from rayrm.demo.quickstart import write_quickstart

    config = yaml.safe_load(write_quickstart(tmp_path / "qs").read_text())
    assert not list(_validator("run").iter_errors(config))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("ppo", "lrr", 1e-5),  # unknown key
        ("ppo", "lr", 0),  # out of range
        ("ppo", "batch_size", "16"),  # wrong type
        ("model", "dtype", "fp8"),  # not an enum value
        ("reward", "components", [{"name": "x"}]),  # a component without a source
    ],
)
def test_schema_rejects_what_the_config_rejects(section: str, key: str, value):
    config = yaml.safe_load((REPO / "jobs/configs/reference_task.yaml").read_text())
    config.setdefault(section, {})[key] = value
    assert list(_validator("run").iter_errors(config))
