"""The shape of the house (DESIGN.md), checked: packages without import cycles, pure math
without Ray, environments without rayrm, small modules and functions, RLlib and Ray internals
behind one door, no ``assert`` as a runtime guard."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "rayrm"
COMPAT = PACKAGE / "rl" / "rllib_compat.py"
COMPAT_TESTS = (
    REPO / "tests/unit/rl/test_rllib_compat.py",
    REPO / "tests/ray/rl/test_rllib_compat_on_ray.py",
)
"""The tests of what is behind the door: they name what they test."""
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module name an ``import``/``from`` anywhere in the file names (functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules(PACKAGE)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)  # a package's __init__ is not a dependency of its modules
        graph[name] = targets
    return graph


def test_no_import_cycles_among_rayrm_modules():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


ENVS_MAY_IMPORT = (
    "rayrm.models.tokenization",
    "rayrm.models.turns",
    "rayrm.models.builtin_text",
    "rayrm.data",
    "rayrm.resolver",
)
"""What envs/ takes from the package: the text and data helpers (Ray-free, torch-free)."""


def test_core_algos_imports_no_ray_and_envs_only_the_text_and_data_helpers():
    for path in sorted((PACKAGE / "core_algos").glob("*.py")):  # torch, numpy and itself
        outside = {
            n
            for n in _imports(path)
            if n.split(".")[0] in ("ray", "rayrm", "transformers", "envs")
            and not n.startswith("rayrm.core_algos")
        }
        assert not outside, f"core_algos/{path.name} imports {outside}"
    code = "import sys, rayrm.core_algos; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    for path in sorted((REPO / "envs").rglob("*.py")):
        rayrm = {n for n in _imports(path) if n.split(".")[0] == "rayrm"}
        other = {n for n in rayrm if not n.startswith(ENVS_MAY_IMPORT)}
        assert not other, f"{path.name} imports {other}"
    code = (
        "import sys, envs, envs.multi_turn; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'transformers'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    doc = 0
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            doc = first.end_lineno - first.lineno + 1  # type: ignore[operator]
    return node.end_lineno - node.lineno + 1 - doc  # type: ignore[operator]


def test_modules_and_functions_stay_small():
    problems = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(REPO / "envs").glob("*.py")]):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            problems.append(f"{path.relative_to(REPO)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = _function_lines(node)
                if n > MAX_FUNCTION_LINES:
                    problems.append(
                        f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines"
                    )
    assert not problems, problems


PRIVATE = re.compile(
    r"ray\._private|\._internal\b|\._global_node\b|\._sample\b|_create_iterator_if_necessary"
    r"|_make_batch_if_necessary|\._learner_connector\b|\._weights_seq_no\b"
    r"|_increase_sampled_metrics|\._log_env_steps\b|_metrics_num_env_steps_sampled"
    r"|\._needs_initial_reset\b|\._seed\b|_uses_new_env_runners|_return_metrics"
    r"|_create_default_callbacks|\._grad_scalers\b|\._params\b|_module_optimizers"
    r"|_named_optimizers|learner_group\._learner\b|\._learner\b|\._trial_runs\b"
)


def test_private_rllib_and_ray_names_only_in_the_compat_module():
    found = []
    for path in sorted(
        [*PACKAGE.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "jobs").glob("*.py")]
    ):
        if path in (COMPAT, Path(__file__), *COMPAT_TESTS):
            continue  # the door, and the tests of what is behind it
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE.search(line) and "self._learner" not in line:
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, found


def test_no_assert_as_a_runtime_guard():
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(REPO / "envs").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, f"use an explicit error (python -O strips assert): {found}"
