"""Adversarial rounds (iterated RLHF) on the over-optimisation task: RL, then the policy's own
completions labelled by the gold judge, the reward model retrained on old and new pairs, and
RL again from the last policy.

What belongs here: :func:`run_rounds`, the ``rounds`` variant of ``rayrm demo --task
overoptimise`` (:mod:`rayrm.demo.overoptimise`). The gold labels are split over the rounds so
that the rounds use as many as the single reward model: the first reward model learns from
``first_pairs`` pairs of SFT samples, and after each round but the last ``new_pairs`` more
pairs are labelled, each the round's policy's completion against the SFT policy's for the same
prompt (``rayrm data pairs --against``): what the policy learned to write that the judge
dislikes becomes a rejected completion. Each round's RL goes on from the last round's policy
(``rayrm export``) with the KL still taken to the SFT policy (``model.reference_path``), so one
KL axis and one update count run through all rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from rayrm.analysis.gao import curve_of, monitor_firing
from rayrm.analysis.report import load_results
from rayrm.config import config_from_dict
from rayrm.demo import steps as ds
from rayrm.demo.cache import StageResult, run_stage
from rayrm.experiment.train import TrainingFailed, run_train
from rayrm.stages.preference_data import build_preference_pairs

__all__ = ["ROUNDS", "RoundSizes", "merge_pairs", "run_rounds"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundSizes:
    """How the rounds split the single reward model's budget.

    Attributes:
        rounds: RL rounds (reward-model refreshes between them: ``rounds - 1``).
        first_pairs: Pairs of SFT samples the first reward model learns from.
        new_pairs: Pairs of the round's policy against the SFT policy, labelled after each
            round but the last.
    """

    rounds: int = 3
    first_pairs: int = 150
    new_pairs: int = 75

    def updates(self, total: int) -> list[int]:
        """Updates per round: ``total`` split evenly, the remainder to the last round."""
        share = total // self.rounds
        return [share] * (self.rounds - 1) + [total - share * (self.rounds - 1)]


ROUNDS = {"full": RoundSizes(), "smoke": RoundSizes(rounds=2, first_pairs=12, new_pairs=12)}
"""The rounds of ``rayrm demo --task overoptimise`` by size: 150 + 2 x 75 pairs against the
single reward model's 300."""


def merge_pairs(paths: list[str], out: Path) -> str:
    """One Parquet pairs file with the rows of ``paths``, in order (old pairs first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p).replace_schema_metadata(None) for p in paths])
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return str(out)


def _round_rl(
    d: Path,
    s: ds.DemoSizes,
    *,
    policy: str,
    sft_model: str,
    reward_model: str,
    data: Path,
    iterations: int,
) -> dict[str, Any]:
    """One round's RL from ``policy`` (KL to the SFT policy), its results and exported policy."""
    from rayrm.rl.checkpoint import export_policy

    raw = ds.ppo_config(d.name, d.parent, s, policy, reward_model, data).to_dict()
    raw["model"]["reference_path"] = sft_model
    raw["run"] |= {"num_iterations": iterations, "checkpoint_every": iterations}
    cfg = config_from_dict(raw, check_paths=True)
    exp_dir, last = run_train(cfg)
    if int(last.get("training_iteration", 0)) < iterations:
        raise TrainingFailed(f"{cfg.name} stopped early: {last.get('training_iteration')}")
    policy_dir = export_policy(exp_dir, d / "policy")
    return {"exp_dir": str(exp_dir), "policy": str(policy_dir)}


def _offset(results: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """A round's results with its iterations and evaluated update counts after ``start``."""
    from rayrm import metrics as M

    out = []
    for r in results:
        stats = dict(r.get(M.RLHF_RESULTS, {}))
        if M.EVAL_UPDATES in stats:
            stats[M.EVAL_UPDATES] = stats[M.EVAL_UPDATES] + start
        out.append({**r, "training_iteration": r["training_iteration"] + start,
                    M.RLHF_RESULTS: stats})  # fmt: skip
    return out


def run_rounds(
    work: Path,
    s: ds.DemoSizes,
    r: RoundSizes,
    done: Mapping[str, StageResult],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The rounds for one seed, each step a cached stage; ``done`` holds the seed's demo stages
    (``data``, ``sft``).

    Returns:
        ``{"curve", "firing", "rounds": [{"round", "pairs", "labels", "rm_accuracy",
        "updates", "gold_end", "proxy_end"}]}``: the curve and the monitors' firing run
        through all rounds (update counts and iterations continue).
    """
    data, sft_model = done["data"].dir, done["sft"].info["model"]
    rm_key = {k: getattr(s, k) for k in ds.STAGE_SETTINGS["reward_model"]}
    pair_key = {k: getattr(s, k) for k in ("pair_min_margin", "max_new_tokens", "judge", "seed")}

    def pairs_stage(index: int, policy: str, against: str | None, n: int, inputs: dict) -> Any:
        return run_stage(
            work / "stages", f"round_pairs_{index}", {"num_pairs": n, **pair_key, **inputs},
            lambda d: build_preference_pairs(
                policy, data / "prompts.jsonl", s.judge, d / "pairs.parquet", num_pairs=n,
                max_new_tokens=s.max_new_tokens, batch_size=64, min_margin=s.pair_min_margin,
                seed=s.seed + 100 * index, against=against,
            ),
            log,
        )  # fmt: skip

    pairs = [pairs_stage(0, sft_model, None, r.first_pairs, {"sft": done["sft"].hash})]
    policy, policy_hash, start, merged = sft_model, done["sft"].hash, 0, []
    rounds: list[dict[str, Any]] = []
    for index, updates in enumerate(r.updates(s.ppo_iterations)):
        rm = run_stage(
            work / "stages", f"round_rm_{index}",
            {**rm_key, "pairs": [p.hash for p in pairs], "sft": done["sft"].hash},
            lambda d, paths=[p.info["path"] for p in pairs]: ds.build_reward_model(
                d, s, sft_model, merge_pairs(paths, d / "pairs.parquet"), False,
            ),
            log,
        )  # fmt: skip
        rl = run_stage(
            work / "runs", f"round_rl_{index}",
            {**{k: getattr(s, k) for k in ds.STAGE_SETTINGS["ppo"]}, "updates": updates,
             "policy": policy_hash, "rm": rm.hash, "data": done["data"].hash},
            partial(_round_rl, s=s, policy=policy, sft_model=sft_model,
                    reward_model=rm.info["model"], data=data, iterations=updates),
            log,
        )  # fmt: skip
        results = _offset(load_results(Path(rl.info["exp_dir"])), start)
        merged += results
        curve = curve_of(results)
        rounds.append({
            "round": index, "pairs": sum(p.info["num_pairs"] for p in pairs),
            "labels": sum(p.info["num_attempts"] for p in pairs),
            "rm_accuracy": rm.info["eval_accuracy"], "updates": start + updates,
            "gold_end": curve[-1]["gold"], "proxy_end": curve[-1]["proxy"],
        })  # fmt: skip
        policy, policy_hash, start = rl.info["policy"], rl.hash, start + updates
        if index < r.rounds - 1:
            pairs.append(pairs_stage(index + 1, policy, sft_model, r.new_pairs, {"rl": rl.hash}))
    return {"curve": curve_of(merged), "firing": monitor_firing(merged), "rounds": rounds}
