"""Over-optimisation curves, monitor firing and the study's summary (rayrm.analysis.gao), on
result dicts shaped as Tune's result.json rows."""

from __future__ import annotations

import math

import pytest

from rayrm import metrics as M
from rayrm.analysis.gao import curve_of, monitor_firing, plot_gao, study_table, summarise


def result(iteration: int, **rlhf: float) -> dict:
    return {"training_iteration": iteration, M.RLHF_RESULTS: rlhf}


def gao_run(n: int = 12, peak: int = 6, drift: bool = True) -> list[dict]:
    """Gold rises to ``peak`` updates then falls; the proxy keeps rising; evaluations every
    2 updates (an evaluation of the policy after u updates is reported at iteration u + 1,
    the last one after the last iteration, at iteration n)."""
    rows = []
    for i in range(1, n + 1):
        u = i - 1
        stats = {M.KL_SEQUENCE: 0.5 * i, M.REWARD_MEAN: 0.1 * i}
        stats[M.MONITOR_DISTINCT_2] = 0.6 - (0.04 * i if drift else 0.0)
        stats[M.MONITOR_LENGTH_RATIO] = 1.0 + (0.05 * i if drift else 0.0)
        if u % 2 == 0:
            stats[M.EVAL_UPDATES] = u
            stats[M.EVAL_GOLD_MEAN] = 0.5 - 0.05 * abs(u - peak)
            stats[M.EVAL_PROXY_MEAN] = 0.2 * u
        else:
            stats[M.EVAL_GOLD_MEAN] = math.nan  # iterations without an evaluation
        rows.append(result(i, **stats))
    return rows


def test_curve_pairs_each_evaluation_with_the_kl_of_the_policy_it_evaluated() -> None:
    curve = curve_of(gao_run())
    assert [p["updates"] for p in curve] == [0, 2, 4, 6, 8, 10]
    assert curve[0]["kl"] == 0.0  # the reference itself
    assert curve[1]["kl"] == 0.5 * 3  # updates 2: the batch of iteration 3 was sampled by it
    assert [p["gold"] for p in curve] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.4, 0.3])
    assert curve[-1]["proxy"] == pytest.approx(2.0)


def test_a_monitor_fires_on_drift_and_not_on_a_flat_run() -> None:
    drifting = monitor_firing(gao_run(drift=True), after=1)
    assert drifting[M.MONITOR_DISTINCT_2] == 5  # 0.40 < 0.75 x 0.56 (iteration 1's)
    assert drifting[M.MONITOR_LENGTH_RATIO] == 6  # 1.30: more than 0.25 from 1
    # Iterations before `after` set the baseline and never fire (the first updates move a
    # policy most): counted from iteration 8, distinct_2 has been falling for a while.
    assert monitor_firing(gao_run(drift=True), after=8)[M.MONITOR_DISTINCT_2] == 8
    flat = monitor_firing(gao_run(drift=False), after=1)
    assert flat[M.MONITOR_DISTINCT_2] is None and flat[M.MONITOR_LENGTH_RATIO] is None
    assert flat[M.REWARD_DISAGREEMENT] is None  # not published by a single reward model


def test_summary_over_seeds_gives_peak_fall_and_firing_against_the_peak() -> None:
    runs = {
        "single": [
            {
                "seed": s,
                "curve": curve_of(gao_run(peak=p)),
                "firing": monitor_firing(gao_run(), after=1),
            }
            for s, p in ((0, 6), (1, 4))
        ]
    }
    s = summarise(runs)["single"]
    assert s["peak"]["mean"] == pytest.approx(0.5)
    assert s["peak_at"] == [6, 4]
    finals = [0.5 - 0.05 * 4, 0.5 - 0.05 * 6]
    assert s["final"]["mean"] == pytest.approx(sum(finals) / 2)
    assert s["final"]["se"] == pytest.approx(abs(finals[0] - finals[1]) / 2)
    assert s["fall"]["mean"] == pytest.approx(0.5 - sum(finals) / 2)
    fired = monitor_firing(gao_run(), after=1)[M.MONITOR_DISTINCT_2]
    assert s["firing_minus_peak"][M.MONITOR_DISTINCT_2] == [fired - 6, fired - 4]
    table = study_table(summarise(runs))
    assert len(table) == 3 and table[2].startswith("| single | 2 |")


def test_plot_is_written(tmp_path) -> None:
    runs = {v: [{"seed": 0, "curve": curve_of(gao_run())}] for v in ("single", "min")}
    assert plot_gao(tmp_path / "gao.png", runs).stat().st_size > 1000
