"""Reference-based rewards in training: the shipped reference-task config learns (chrF rises
through `rayrm train`), and `rayrm explain` reads the trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO

from rayrm import metrics as M
from rayrm.cli import main as rayrm_main
from rayrm.demo.reference_task import build_mean_value_reward_model, write_reference_task

CHRF = M.REWARD_COMPONENT.format(name="chrf")


def _results(exp_dir: Path) -> list[dict]:
    (result_file,) = exp_dir.glob("*/result.json")
    return [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reference_run(ray_local, tmp_path_factory) -> Path:
    """The shipped jobs/configs/reference_task.yaml, trained end to end through `rayrm train`."""
    config = write_reference_task(tmp_path_factory.mktemp("reference"))
    shipped = yaml.safe_load((REPO / "jobs/configs/reference_task.yaml").read_text())
    written = yaml.safe_load(config.read_text())
    for section in ("model", "data", "eval", "run"):  # only the paths differ
        for key in ("path", "prompts", "storage_path"):
            shipped.get(section, {}).pop(key, None)
            written.get(section, {}).pop(key, None)
    assert written == shipped
    assert rayrm_main(["train", str(config)]) == 0
    return config.parent / "runs" / "reference-task"


def test_reference_task_improves_chrf(reference_run: Path) -> None:
    results = _results(reference_run)
    chrf = [r[M.RLHF_RESULTS][CHRF] for r in results]
    assert len(chrf) == 80
    first, last = np.mean(chrf[:10]), np.mean(chrf[-10:])
    assert last > first + 0.08, (first, last)  # measured: about 0.04 -> 0.25-0.33
    # Held-out prompts (a second draw of the task) improve too: before any update vs. after 60.
    heldout = [r[M.RLHF_RESULTS][M.EVAL_PROXY_MEAN] for r in results[::20]]
    assert heldout[-1] > heldout[0], heldout
    assert "reference-task" in (reference_run / "report.md").read_text()


def test_explain_a_trained_run(reference_run: Path, tmp_path: Path, capsys) -> None:
    """Per-token KL of the trained policy, next to a known reward model's attribution."""
    rm = build_mean_value_reward_model(tmp_path / "rm", {c: 1.0 for c in "aeiou"})
    html = tmp_path / "explain.html"
    argv = ["explain", "--run", str(reference_run), "--prompt", "dog sun cat:"]
    argv += ["--completion", "cat", "--eos", "--reward-model", rm, "--html", str(html)]
    assert rayrm_explain(argv) == 0
    out = capsys.readouterr().out
    assert "reward: +0.2667 (prompt alone +0.2500" in out  # vowels: 3 of 12, then 4 of 15
    assert "KL to the reference:" in out and "'<eos>'" in out
    page = html.read_text()
    assert "KL to the reference by token" in page and "Reward by token" in page

    from rayrm.analysis.explain import policy_kl
    from rayrm.rl.checkpoint import load_policy, load_reference

    policy, tokenizer, cfg, _ = load_policy(reference_run)
    kl = policy_kl(policy, load_reference(reference_run), tokenizer, "dog sun cat:", "cat")
    assert kl.tokens == ["c", "a", "t"]
    assert np.all(kl.kl_exact >= 0) and kl.kl_exact.sum() > 1e-3  # training moved the policy
    np.testing.assert_allclose(kl.kl, kl.logp - kl.ref_logp)


def rayrm_explain(argv: list[str]) -> int:
    """`rayrm explain ...` through the module's own argument parser (the CLI wires the same)."""
    from rayrm.analysis import explain as explain
    from rayrm.cli import build_parser

    return explain.main(build_parser().parse_args(argv))
