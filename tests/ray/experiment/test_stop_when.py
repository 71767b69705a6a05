"""``run.stop_when`` through Tune: a run ends where its stop rule holds, with the monitors
published every iteration."""

from __future__ import annotations

from helpers import make_config

from rayrm import metrics as M


def test_a_run_ends_where_its_stop_rule_holds(ray_local, tiny_policy_dir, prompts_file, tmp_path):
    """Through Tune: a rule that holds from iteration 2 on ends a 6-iteration run at 2; every
    iteration published the monitors; the report says where the rule fired."""
    from rayrm.experiment.train import run_train

    cfg = make_config(
        tiny_policy_dir, prompts_file, tmp_path,
        algorithm={"batch_size": 8}, generation={"max_new_tokens": 6},
        run={"num_iterations": 6, "stop_when": {M.MONITOR_DISTINCT_2: {"above": 0.0, "after": 2}}},
    )  # fmt: skip
    exp_dir, last = run_train(cfg)
    assert last["training_iteration"] == 2
    stats = last[M.RLHF_RESULTS]
    assert 0.0 < stats[M.MONITOR_DISTINCT_2] <= 1.0 and stats[M.MONITOR_LENGTH_RATIO] > 0
