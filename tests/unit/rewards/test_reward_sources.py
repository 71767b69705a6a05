"""Reference metrics, ensembles, composites, penalties and their config: known answers, no Ray.

The reward models here are built by ``rayrm.demo.reference_task.build_mean_value_reward_model``: GPT-2
sequence classifiers whose score is exactly the mean of fixed per-character values over the
text, so every member score is known by hand.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from envs.text_generation import TextGenerationEnv
from rayrm import metrics as M
from rayrm.config import (
    ConfigError,
    RewardSettings,
    config_from_dict,
    resolve_paths,
    validate_paths,
)
from rayrm.demo.reference_task import (
    build_mean_value_reward_model,
    last_word_rows,
    write_rows_jsonl,
)
from rayrm.rewards import Completion, RewardPool, pool_from_config
from rayrm.rewards import completion_records as records
from rayrm.rewards.compose import (
    ComposedReward,
    EnsembleReward,
    combine_scores,
    length_penalties,
    missing_eos_penalties,
)
from rayrm.rewards.text_metrics import bleu, chrf, sentence_scores

torch.set_num_threads(1)
VOWELS = {c: 1.0 for c in "aeiou"}
A_ONLY = {"a": 1.0}
E_HALF = {"e": 0.5}


def references_fn(prompts, completions, references=None):
    """A reward function that reads references: 1 if the completion equals it."""
    return [float(c == r) for c, r in zip(completions, references, strict=True)]


def mean_value(text: str, values: dict[str, float]) -> float:
    """The known score of a mean-value reward model (test-side arithmetic, by definition)."""
    return sum(values.get(ch, 0.0) for ch in text) / len(text)


@pytest.fixture(scope="module")
def rms(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("rms")
    return {
        "vowels": build_mean_value_reward_model(root / "vowels", VOWELS),
        "a_only": build_mean_value_reward_model(root / "a_only", A_ONLY),
        "e_half": build_mean_value_reward_model(root / "e_half", E_HALF),
    }


PROMPTS = ["ab ", "xy ", "hello "]
COMPLETIONS = ["aaa", "eee", "zzz"]
TEXTS = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]


# --- metrics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["chrf", "bleu"])
@pytest.mark.parametrize("text", ["the cat sat on the mat", "cat", ""])
def test_identical_completion_scores_one(metric: str, text: str) -> None:
    assert sentence_scores(metric, [text], [text]).tolist() == [1.0]


def test_chrf_and_bleu_known_values() -> None:
    # Unrelated texts share no character n-gram: chrF 0, BLEU 0.
    assert chrf(["p"], ["xyz"], ["abc"]) == [0.0]
    assert bleu(["p"], ["qqq www"], ["abc def"]) == [0.0]
    # A hypothesis that is the reference's first 2 of 6 words: every n-gram it has is right
    # (precision 1 at the orders it has, sacrebleu's effective order), so BLEU is the brevity
    # penalty exp(1 - 6/2) = exp(-2).
    (b,) = bleu(["p"], ["the cat"], ["the cat sat on the mat"])
    assert b == pytest.approx(np.exp(-2.0), abs=1e-6)
    # chrF is recall-weighted (beta = 2): a correct prefix beats an equally long wrong text,
    # and it rises as the completion approaches the reference.
    scores = chrf(["p"] * 3, ["zzz", "ca", "cat"], ["cat"] * 3)
    assert scores[0] == 0.0 < scores[1] < scores[2] == 1.0


def test_metric_needs_references() -> None:
    with pytest.raises(ValueError, match="needs references"):
        chrf(["p"], ["x"])
    with pytest.raises(ValueError, match="item 1 has no reference"):
        sentence_scores("chrf", ["a", "b"], ["a", None])


# --- ensembles ------------------------------------------------------------------------------------


def test_combine_scores_by_hand() -> None:
    s = np.array([[1.0, 2.0, 0.0], [3.0, 2.0, -1.0]])  # 2 members, 3 completions
    mean, std = np.array([2.0, 2.0, -0.5]), np.array([1.0, 0.0, 0.5])
    np.testing.assert_allclose(combine_scores(s, combine="mean")[0], mean)
    np.testing.assert_allclose(combine_scores(s, combine="min")[0], [1.0, 2.0, -1.0])
    out, disagreement = combine_scores(s, combine="mean_minus_std", uncertainty_coef=2.0)
    np.testing.assert_allclose(out, mean - 2.0 * std)
    np.testing.assert_allclose(disagreement, std)


@pytest.mark.parametrize("combine", ["mean", "min", "mean_minus_std"])
def test_ensemble_of_reward_models(rms: dict[str, str], combine: str) -> None:
    members = [RewardPool(RewardSettings(source="model", path=rms[k]), local=True) for k in rms]
    ensemble = ComposedReward(
        [("", 1.0, EnsembleReward(members, combine=combine, uncertainty_coef=0.5))]
    )
    scores, breakdown = ensemble.score_detailed(records(PROMPTS, COMPLETIONS))
    known = np.array([[mean_value(t, v) for t in TEXTS] for v in (VOWELS, A_ONLY, E_HALF)])
    for i in range(3):
        np.testing.assert_allclose(breakdown[M.REWARD_MEMBER.format(index=i)], known[i], atol=1e-5)
    np.testing.assert_allclose(breakdown[M.REWARD_DISAGREEMENT], known.std(axis=0), atol=1e-5)
    expected = {
        "mean": known.mean(axis=0),
        "min": known.min(axis=0),  # the smallest member score
        "mean_minus_std": known.mean(axis=0) - 0.5 * known.std(axis=0),
    }[combine]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


# --- composites and penalties ---------------------------------------------------------------------


def test_penalties_by_hand() -> None:
    np.testing.assert_allclose(length_penalties([0, 3, 5, 9], coef=0.1, target=4), [0, 0, 0.1, 0.5])
    np.testing.assert_allclose(missing_eos_penalties([True, False], penalty=0.3), [0.0, 0.3])


def composite_config(rms: dict[str, str], **reward: Any):
    base = {
        "source": "composite",
        "components": [
            {"name": "rm", "weight": 2.0, "source": "model", "path": rms["vowels"]},
            {"name": "chrf", "weight": 0.5, "source": "metric", "metric": "chrf"},
            {"name": "ref", "weight": -1.0, "source": "function", "function": FN_SPEC},
            {
                "name": "ens",
                "weight": 1.0,
                "source": "ensemble",
                "members": [rms["a_only"], rms["e_half"]],
                "combine": "min",
            },
        ],
    }
    d = {"model": {"path": "m"}, "data": {"prompts": "p.jsonl"}, "reward": {**base, **reward}}
    return config_from_dict(d).reward


FN_SPEC = f"{__name__}:references_fn"


def test_composite_is_the_weighted_sum_minus_penalties(rms: dict[str, str]) -> None:
    reward = composite_config(rms, length_penalty=0.25, target_length=2, missing_eos_penalty=0.75)
    refs = ["aaa", "eex", "zzz"]
    finished, lengths = [True, False, True], [3, 3, 1]
    with pool_from_config(reward, local=True) as pool:
        assert isinstance(pool, ComposedReward)
        scores, breakdown = pool.score_detailed(
            [
                Completion(p, c, finished=f, num_tokens=n, reference=r)
                for p, c, f, n, r in zip(PROMPTS, COMPLETIONS, finished, lengths, refs, strict=True)
            ]
        )
    rm = np.array([mean_value(t, VOWELS) for t in TEXTS])
    chrf_ = np.array(chrf(PROMPTS, COMPLETIONS, refs))
    ref = np.array([1.0, 0.0, 1.0])
    a, e = (np.array([mean_value(t, v) for t in TEXTS]) for v in (A_ONLY, E_HALF))
    ens = np.minimum(a, e)
    length = 0.25 * np.maximum(0, np.array(lengths) - 2)
    eos = 0.75 * (1 - np.array(finished))
    expected = 2.0 * rm + 0.5 * chrf_ - 1.0 * ref + ens - length - eos
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    comp = M.REWARD_COMPONENT.format
    for key, want in [
        (comp(name="rm"), rm),
        (comp(name="chrf"), chrf_),
        (comp(name="ref"), ref),
        (comp(name="ens"), ens),
        (comp(name="ens") + "/member/0", a),
        (comp(name="ens") + "/member/1", e),
        (comp(name="ens") + "/disagreement", np.abs(a - e) / 2),
        (M.REWARD_PENALTY_LENGTH, length),
        (M.REWARD_PENALTY_MISSING_EOS, eos),
    ]:
        np.testing.assert_allclose(breakdown[key], want, atol=1e-5, err_msg=key)
    assert len(breakdown) == 9


def test_length_penalty_counts_tokens_without_lengths(rms: dict[str, str]) -> None:
    from envs.builtin import build_char_tokenizer

    d = {
        "model": {"path": "m"},
        "data": {"prompts": "p.jsonl"},
        "reward": {"source": "model", "path": rms["vowels"], "length_penalty": 0.5},
    }
    reward = config_from_dict(d).reward
    pool = pool_from_config(reward, local=True, tokenizer=build_char_tokenizer())
    scores, breakdown = pool.score_detailed(records(["ab"], ["eeee"]))  # 4 characters = 4 tokens
    assert breakdown[M.REWARD_PENALTY_LENGTH].tolist() == [2.0]
    assert scores[0] == pytest.approx(mean_value("abeeee", VOWELS) - 2.0, abs=1e-5)
    # Without `finished` no missing-EOS penalty is charged (the ending is unknown).
    assert M.REWARD_PENALTY_MISSING_EOS not in breakdown


def test_env_source_pays_only_the_penalties() -> None:
    """``reward.source: env`` adds nothing at the end of an episode, but its penalties apply."""
    from rayrm.config import RewardSettings

    reward = RewardSettings(
        source="env", length_penalty=0.5, target_length=1, missing_eos_penalty=0.25
    )
    scorer = pool_from_config(reward, local=True)
    items = [Completion("p", "abc", finished=True, num_tokens=3), Completion("p", "", False, 0)]
    scores, breakdown = scorer.score_detailed(items)
    np.testing.assert_allclose(scores, [-1.0, -0.25])
    assert breakdown[M.REWARD_PENALTY_MISSING_EOS].tolist() == [0.0, 0.25]
    assert pool_from_config(RewardSettings(source="env")).score(items).tolist() == [0.0, 0.0]


def test_plain_sources_stay_plain_pools(rms: dict[str, str]) -> None:
    d = {"model": {"path": "m"}, "data": {"prompts": "p.jsonl"}}
    fn = config_from_dict({**d, "reward": {"function": FN_SPEC}}).reward
    pool = pool_from_config(fn, local=True)
    assert isinstance(pool, RewardPool)
    assert pool.score(records(["p"], ["x"], references=["x"])).tolist() == [1.0]
    assert pool.score_detailed(records(["p"], ["x"], references=["y"])) == (
        pytest.approx([0.0]),
        {},
    )
    metric = config_from_dict({**d, "reward": {"source": "metric", "metric": "bleu"}}).reward
    assert pool_from_config(metric).local  # metrics score in-process, no actors
    assert metric.num_actor_pools == 0 and metric.needs_references


# --- config ---------------------------------------------------------------------------------------


def reward_dict(**reward: Any) -> dict[str, Any]:
    return {"model": {"path": "m"}, "data": {"prompts": "p.jsonl"}, "reward": reward}


@pytest.mark.parametrize(
    ("reward", "key"),
    [
        ({"source": "composite"}, "reward.components"),
        ({"source": "composite", "components": [{"name": "a"}]}, "reward.components[0].source"),
        (
            {"source": "composite", "components": [{"name": "a", "source": "metric"}, 3]},
            "reward.components[1]",
        ),
        (
            {"source": "composite", "components": [{"name": "x", "source": "model"}]},
            "reward.components[0].path",
        ),
        (
            {"source": "composite", "components": [{"name": "x", "source": "function"}]},
            "reward.components[0].function",
        ),
        (
            {
                "source": "composite",
                "components": [{"name": "x", "source": "metric", "metric": "rouge"}],
            },
            "reward.components[0].metric",
        ),
        (
            {
                "source": "composite",
                "components": [{"name": "x", "source": "metric", "weight": "a"}],
            },
            "reward.components[0].weight",
        ),
        (
            {
                "source": "composite",
                "components": [
                    {"name": "x", "source": "metric"},
                    {"name": "x", "source": "metric"},
                ],
            },
            "reward.components[1].name",
        ),
        (
            {"source": "composite", "components": [{"name": "a b", "source": "metric"}]},
            "reward.components[0].name",
        ),
        (
            {"source": "composite", "components": [{"name": "x", "source": "metric", "pth": "."}]},
            "reward.components[0].pth",
        ),
        ({"source": "ensemble", "members": ["one"]}, "reward.members"),
        ({"source": "model", "path": "m", "members": ["a", "b"]}, "reward.members"),
        (
            {"source": "metric", "components": [{"name": "x", "source": "metric"}]},
            "reward.components",
        ),
        ({"source": "metric", "metric": "meteor"}, "reward.metric"),
        ({"source": "ensemble", "members": ["a", "b"], "combine": "max"}, "reward.combine"),
        (
            {"source": "ensemble", "members": ["a", "b"], "uncertainty_coef": -1},
            "reward.uncertainty_coef",
        ),
        ({"length_penalty": -0.1}, "reward.length_penalty"),
        ({"missing_eos_penalty": "yes"}, "reward.missing_eos_penalty"),
    ],
)
def test_config_errors_name_the_key(reward: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict(reward_dict(**reward))
    assert e.value.key == key and key in str(e.value)


@pytest.fixture
def workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rms: dict[str, str], tiny_policy_dir: str
) -> Path:
    shutil.copytree(tiny_policy_dir, tmp_path / "m")  # a policy with its tokenizer
    write_rows_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    write_rows_jsonl(tmp_path / "r.jsonl", [{"prompt": "a", "reference": "b"}])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def checked(d: dict[str, Any]) -> Any:
    return config_from_dict(d, check_paths=True)


def test_paths_of_components_are_resolved_and_checked(workdir: Path, rms: dict[str, str]) -> None:
    rel = os.path.relpath(rms["vowels"], workdir)
    d = reward_dict(
        source="composite",
        components=[
            {"name": "rm", "source": "model", "path": rel},
            {"name": "ens", "source": "ensemble", "members": [rel, rms["a_only"]]},
        ],
    )
    cfg = checked(d)
    assert cfg.reward.components[0].path == rms["vowels"]  # typed components
    assert cfg.reward.components[1].members[0] == rms["vowels"]
    assert cfg.reward.num_actor_pools == 3 and not cfg.reward.needs_references
    assert resolve_paths(cfg) == cfg
    bad = [
        ({"name": "rm", "source": "model", "path": "missing"}, "reward.components[0].path"),
        (
            {"name": "e", "source": "ensemble", "members": [rel, "nope"]},
            "reward.components[0].members[1]",
        ),
        (
            {"name": "f", "source": "function", "function": "no_mod:f"},
            "reward.components[0].function",
        ),
    ]
    for component, key in bad:
        with pytest.raises(ConfigError) as e:
            checked(reward_dict(source="composite", components=[component]))
        assert e.value.key == key, e.value
    with pytest.raises(ConfigError) as e:
        checked(reward_dict(source="ensemble", members=[rel, "gone"]))
    assert e.value.key == "reward.members[1]"


def test_metric_rewards_need_a_reference_column(workdir: Path) -> None:
    with pytest.raises(ConfigError) as e:
        checked(reward_dict(source="metric"))
    assert e.value.key == "data.reference_column" and "p.jsonl" in str(e.value)
    cfg = checked({**reward_dict(source="metric"), "data": {"prompts": "r.jsonl"}})
    validate_paths(cfg)
    d = {**reward_dict(source="metric"), "data": {"prompts": "r.jsonl", "reference_column": "x"}}
    with pytest.raises(ConfigError) as e:
        checked(d)
    assert e.value.key == "data.reference_column"
    with pytest.raises(ConfigError) as e:  # held-out prompts need references too
        checked({**d, "data": {"prompts": "r.jsonl"}, "eval": {"prompts": "p.jsonl"}})
    assert e.value.key == "data.reference_column" and "eval.prompts" in str(e.value)


# --- the environment carries references -----------------------------------------------------------


def test_env_puts_each_prompts_reference_in_info(tmp_path: Path) -> None:
    rows = last_word_rows(8, seed=3)
    path = write_rows_jsonl(tmp_path / "task.jsonl", rows)
    env = TextGenerationEnv(prompts=str(path), reward_fn=None, max_new_tokens=2)
    for seed in range(4):
        _, info = env.reset(seed=seed)
        assert info["reference"] == rows[info["prompt_index"]]["reference"]
        assert info["prompt"].split()[-1] == info["reference"] + ":"
        _, _, _, _, step_info = env.step(5)
        assert step_info["reference"] == info["reference"]
    _, info = env.reset(options={"prompt": "free text", "reference": "gold"})
    assert info["reference"] == "gold"
    plain = write_rows_jsonl(tmp_path / "plain.jsonl", [{"prompt": "hi"}])
    _, info = TextGenerationEnv(prompts=str(plain)).reset(seed=0)
    assert "reference" not in info
    assert json.loads(path.read_text().splitlines()[0]).keys() == {"prompt", "reference"}
