"""Reward actors in use: a composite with an ensemble inside the training loop, and the reward
service -- one detached, named pool used by two jobs at once, then stopped.

The two jobs are two separate Python processes connected to the same Ray cluster (as two
``ray job submit`` jobs would be); each builds its reward from the same config by name and
scores through the service's actors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml
from helpers import make_config

from rayrm import metrics as M
from rayrm.cli import build_parser
from rayrm.demo.reference_task import build_mean_value_reward_model
from rayrm.rewards import RewardSourceError, pool_from_config
from rayrm.rewards.compose import shared_actor_names
from rayrm.rewards.service import load_reward_config, main, serve
from rayrm.rl.algorithm import RLHFPPO, build_algo_config

NAME = "rayrm-test-service"
PROMPTS = ["ab ", "xy ", "hello ", "q "]
COMPLETIONS = ["aaa", "eee", "zzz", "oi"]

CLIENT = """
import json, sys
import ray
from rayrm.rewards import completion_records, pool_from_config
from rayrm.rewards.service import load_reward_config

address, config, prompts, completions = sys.argv[1], sys.argv[2], *json.loads(sys.argv[3])
ray.init(address=address, log_to_driver=False)
reward = load_reward_config(config)
pool = pool_from_config(reward, name=reward.pool_name)
out = []
for _ in range(3):
    scores, breakdown = pool.score_detailed(completion_records(prompts, completions))
    out.append({"scores": scores.tolist(), **{k: v.tolist() for k, v in breakdown.items()}})
pool.shutdown()
print(json.dumps(out))
"""


def mean_value(text: str, values: dict[str, float]) -> float:
    return sum(values.get(ch, 0.0) for ch in text) / len(text)


@pytest.fixture(scope="module")
def service_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("service")
    vowels = build_mean_value_reward_model(root / "vowels", {c: 1.0 for c in "aeiou"})
    a_only = build_mean_value_reward_model(root / "a_only", {"a": 1.0})
    cfg = {
        "reward": {
            "source": "composite",
            "pool_name": NAME,
            "num_cpus_per_actor": 0.25,
            "components": [
                {"name": "rm", "weight": 1.0, "source": "model", "path": vowels},
                {"name": "ens", "weight": 0.5, "source": "ensemble", "members": [vowels, a_only]},
            ],
        }
    }
    path = root / "service.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_jobs_share_the_service_and_it_stops_cleanly(ray_local, service_config: Path) -> None:
    info = serve(service_config)
    assert info["actors"] == [f"{NAME}.ens.member0-0", f"{NAME}.ens.member1-0", f"{NAME}.rm-0"]
    address = ray.get_runtime_context().gcs_address
    texts = json.dumps([PROMPTS, COMPLETIONS])
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, address, str(service_config), texts],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=120) for job in jobs]
    for job, (_, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err[-2000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    texts_ = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    rm = np.array([mean_value(t, {c: 1.0 for c in "aeiou"}) for t in texts_])
    a = np.array([mean_value(t, {"a": 1.0}) for t in texts_])
    for result in (r for job in results for r in job):
        np.testing.assert_allclose(result["scores"], rm + 0.5 * (rm + a) / 2, atol=1e-5)
        np.testing.assert_allclose(result[M.REWARD_COMPONENT.format(name="rm")], rm, atol=1e-5)

    # Both jobs scored on the SAME actors: each actor served 2 jobs x 3 calls, and the
    # actors outlived the jobs.
    for actor_name in info["actors"]:
        actor = ray.get_actor(actor_name, namespace="rayrm")
        assert ray.get(actor.stats.remote())["num_calls"] == 6, actor_name

    # A job whose reward section names another model cannot join by the same name.
    other = load_reward_config(service_config)
    first = other.components[0].model_copy(update={"path": other.components[1].members[1]})
    other = other.model_copy(update={"components": [first, *other.components[1:]]})
    with pytest.raises(RewardSourceError, match="already serves model"):
        pool_from_config(other, name=NAME)

    parser = build_parser()
    assert main(parser.parse_args(["serve-rm", "--stop", NAME])) == 0
    assert shared_actor_names(NAME) == []
    assert main(parser.parse_args(["serve-rm", "--stop", NAME])) == 1  # nothing left to stop


def test_composite_with_ensemble_in_training(
    ray_local, tiny_policy_dir, prompts_file, tmp_path
) -> None:
    vowels = build_mean_value_reward_model(tmp_path / "v", {c: 1.0 for c in "aeiou"})
    a_only = build_mean_value_reward_model(tmp_path / "a", {"a": 1.0})
    reward = {
        "source": "composite",
        "components": [
            {"name": "rule", "weight": 0.5, "source": "function",
             "function": "envs.builtin:vowel_reward"},
            {"name": "ens", "weight": 2.0, "source": "ensemble", "members": [vowels, a_only],
             "combine": "mean_minus_std", "uncertainty_coef": 0.5},
        ],
        "length_penalty": 0.01,
        "target_length": 4,
        "missing_eos_penalty": 0.2,
    }  # fmt: skip
    cfg = make_config(tiny_policy_dir, prompts_file, tmp_path, reward=reward)
    algo_config = build_algo_config(cfg)
    # Three reward actor groups (the rule and two members), one actor each, reserved per trial.
    bundles = RLHFPPO.default_resource_request(algo_config).bundles
    assert bundles[-3:] == [{"CPU": 0.25}] * 3
    algo = algo_config.build_algo()
    try:
        r = algo.train()[M.RLHF_RESULTS]
    finally:
        algo.stop()
    comp = M.REWARD_COMPONENT.format
    ens = comp(name="ens")
    for key in (f"{ens}/member/0", f"{ens}/member/1", f"{ens}/disagreement"):
        assert np.isfinite(r[key]), key
    # Means are linear: the raw reward's mean is the weighted component means minus penalties.
    expected = (
        0.5 * r[comp(name="rule")]
        + 2.0 * r[ens]
        - r[M.REWARD_PENALTY_LENGTH]
        - r[M.REWARD_PENALTY_MISSING_EOS]
    )
    assert r[M.REWARD_RAW_MEAN] == pytest.approx(expected, abs=1e-5)
    # A random tiny policy rarely emits EOS within 10 tokens: most completions pay the penalty,
    # and every completion of 10 tokens pays 0.01 * (10 - 4) for length.
    assert 0.1 < r[M.REWARD_PENALTY_MISSING_EOS] <= 0.2
    assert 0 < r[M.REWARD_PENALTY_LENGTH] <= 0.06 + 1e-9
    member_gap = r[f"{ens}/member/0"] - r[f"{ens}/member/1"]
    assert member_gap > 0  # vowels include 'a': the first member scores at least the second
