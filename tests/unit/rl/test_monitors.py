"""Over-optimisation monitors without a gold judge and ``run.stop_when`` (issue 33, item 3):
the drift measures by hand, the stop rule, a monitor that fires on a synthetic drift and not
on a flat run (the stopper as Tune calls it) and the report's mark."""

from __future__ import annotations

import math

import pytest

from rayrm import metrics as M
from rayrm.analysis.report import stop_fired
from rayrm.config import ConfigError, config_from_dict
from rayrm.config.stopping import StopRule, fired
from rayrm.rl.monitors import MIN_KL, DriftMonitors, distinct_n

BASE = {"model": {"path": "m"}, "data": {"prompts": "p.jsonl"}}


def test_distinct_bigrams_by_hand():
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4  # (1,2) twice
    assert distinct_n([[5, 5, 5, 5]], 2) == 1 / 3  # a repeated token
    assert distinct_n([[7], []], 2) == 1.0  # no bigrams at all
    assert distinct_n([[1, 2, 1, 2]], 1) == 2 / 4


def test_drift_monitors_against_the_first_iteration():
    m = DriftMonitors()
    first = m.update({M.REWARD_MEAN: 0.5, M.ROLLOUT_LENGTH: 10.0, M.KL_SEQUENCE: 0.0}, [[1, 2]])
    assert first == {M.MONITOR_DISTINCT_2: 1.0, M.MONITOR_LENGTH_RATIO: 1.0}
    later = m.update({M.REWARD_MEAN: 2.5, M.ROLLOUT_LENGTH: 15.0, M.KL_SEQUENCE: 4.0}, [[3] * 5])
    assert later[M.MONITOR_LENGTH_RATIO] == 1.5 and later[M.MONITOR_DISTINCT_2] == 0.25
    assert later[M.MONITOR_REWARD_GAIN_PER_KL] == (2.5 - 0.5) / 4.0
    small_kl = {M.REWARD_MEAN: 1.0, M.ROLLOUT_LENGTH: 10.0, M.KL_SEQUENCE: MIN_KL / 2}
    assert M.MONITOR_REWARD_GAIN_PER_KL not in m.update(small_kl, [[1, 2]])
    restored = DriftMonitors()
    restored.set_state(m.get_state())  # a resumed run keeps its baseline
    assert restored.update(small_kl, [[1, 2]]) == m.update(small_kl, [[1, 2]])


def test_stop_rules():
    below = StopRule(below=0.3, after=3)
    assert not fired(below, 2, 0.1)  # before `after`
    assert fired(below, 3, 0.1) and not fired(below, 3, 0.3) and not fired(below, 3, 0.5)
    assert not fired(below, 5, math.nan) and not fired(below, 5, None)
    above = StopRule(above=2.0)
    assert fired(above, 1, 2.5) and not fired(above, 1, 2.0)
    run = {"stop_when": {"monitor/distinct_2": {"below": 0.3}}}
    assert config_from_dict({**BASE, "run": run}).run.stop_when["monitor/distinct_2"] == StopRule(
        below=0.3
    )
    for bad, match in [
        ({"monitor/distinct_2": {}}, r"run\.stop_when\.monitor/distinct_2 needs above or below"),
        ({"rollout/entropy": {"above": 1}}, r"was renamed to 'loss/entropy'"),
        ({"entropy": {"above": 1}}, r"name a published metric"),
    ]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**BASE, "run": {"stop_when": bad}})


def _results(distinct: list[float]) -> list[dict]:
    return [
        {"training_iteration": i + 1, M.RLHF_RESULTS: {M.MONITOR_DISTINCT_2: d}}
        for i, d in enumerate(distinct)
    ]


def test_a_monitor_fires_on_a_synthetic_drift_and_not_on_a_flat_run():
    """Tune calls the stopper with every result: a run whose completions turn repetitive is
    stopped at the first iteration below the threshold; a flat run reaches its last
    iteration; the report marks the same iteration."""
    from rayrm.experiment.stopping import StopWhen, trial_stop

    rule = {"stop_when": {M.MONITOR_DISTINCT_2: {"below": 0.5, "after": 2}}}
    cfg = config_from_dict({**BASE, "run": {"num_iterations": 12, **rule}})
    stopper = trial_stop(cfg)
    assert isinstance(stopper, StopWhen) and not stopper.stop_all()
    flat = _results([0.9 + 0.01 * (i % 3) for i in range(12)])
    drift = _results([0.45, 0.9, 0.9, 0.85, 0.8, 0.7, 0.55, 0.45, 0.3, 0.2, 0.1, 0.1])
    assert [stopper("t", r) for r in flat] == [False] * 11 + [True]  # the iteration limit
    stops = [r["training_iteration"] for r in drift if stopper("t", r)]
    assert stops[0] == 8  # the dip at iteration 1 is before `after`
    assert stop_fired(cfg, flat) is None
    iteration, words = stop_fired(cfg, drift)
    assert iteration == 8 and words.startswith("monitor/distinct_2 below 0.5")
    plain = config_from_dict({**BASE, "run": {"num_iterations": 12}})
    assert trial_stop(plain) == {"training_iteration": 12}
