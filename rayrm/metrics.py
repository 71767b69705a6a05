"""Metric keys, one place, namespaced ``group/name``.

Learner-side keys (logged per module by the learner and its connector) are plain names; the
algorithm re-publishes everything a user watches under the namespaced keys below, which is
what Tune's result folder, TensorBoard and the live terminal line show.
"""

# Learner-side names (under results["learners"][module_id]).
POLICY_LOSS = "policy_loss"
VF_LOSS = "vf_loss"
ENTROPY = "entropy"
CLIP_FRACTION = "clip_fraction"
APPROX_KL = "approx_kl"
VF_EXPLAINED_VAR = "vf_explained_var"
KL_PER_TOKEN = "kl_per_token"
KL_PER_SEQUENCE = "kl_per_sequence"
COMPLETION_LENGTH = "completion_length"
NUM_COMPLETIONS = "num_completions"
VALUE_MEAN = "value_mean"
GRAD_NORM = "grad_norm"
"""Global gradient norm before clipping (float32, after unscaling)."""
KL_LOSS = "kl_loss"
"""The KL loss term before β (``algorithm.kl_mode: loss``)."""
SKIPPED_STEPS = "skipped_steps"
"""Optimizer steps skipped because a gradient was not finite (float16 overflow), so far."""

# Published keys (top level of every training result).
REWARD_MEAN = "reward/mean"
ENV_PREFIX = "env/"
"""Multi-turn episodes' statistics: ``env/turns``, ``env/tool_calls``, ``env/success`` ..."""
ENV_RETURN = "env/return"
"""Mean over a batch of multi-turn episodes of the environment's rewards, summed per episode."""
ENV_TURNS = "env/turns"
"""Mean assistant turns per multi-turn episode."""
ENV_SUCCESS = "env/success"
"""Mean of the ``success`` an environment reports in its last reply's info (0 for an episode
whose environment never reported it, e.g. truncated): the fraction solved for 0/1 tasks."""
REWARD_STD = "reward/std"
REWARD_RAW_MEAN = "reward/raw_mean"
REWARD_SKIPPED = "reward/skipped"
"""Completions left out of the update for a NaN/infinite score (``reward.on_nan: skip``)."""
REWARD_RESUBMITTED = "reward/resubmitted_chunks"
"""Reward chunks sent again so far (after an actor crash, a hang or a retried exception):
scoring is at-least-once, so each may have run twice."""
# Breakdown of composed rewards (rayrm.rewards.compose), each published as its batch mean. An
# ensemble inside a composite nests: reward/component/<name>/member/<i>, .../disagreement.
REWARD_COMPONENT = "reward/component/{name}"
"""A composite's component score, unweighted (its contribution is ``weight`` times this)."""
REWARD_MEMBER = "reward/member/{index}"
"""An ensemble member's score (members numbered from 0 in ``reward.members`` order)."""
REWARD_DISAGREEMENT = "reward/disagreement"
"""Ensemble disagreement: the population std of the member scores of each completion."""
REWARD_PENALTY_LENGTH = "reward/penalty/length"
"""Length penalty subtracted (``length_penalty * max(0, tokens - target_length)``)."""
REWARD_PENALTY_MISSING_EOS = "reward/penalty/missing_eos"
"""Missing-EOS penalty subtracted (``missing_eos_penalty`` times the fraction truncated)."""
KL_TOKEN = "kl/per_token"
KL_SEQUENCE = "kl/per_sequence"
KL_COEF = "kl/coef"
"""β: the KL-penalty coefficient (``algorithm.kl_coef``, adapted when ``algorithm.adaptive_kl``)."""
ROLLOUT_LENGTH = "rollout/completion_length"
"""Mean generated tokens per completion (multi-turn: the policy's tokens per episode)."""
ROLLOUT_COMPLETIONS = "rollout/num_completions"
ROLLOUT_NUM_NODES = "rollout/num_nodes"
ROLLOUT_GROUP_STD = "rollout/group_reward_std"
"""Mean over groups (``generation.samples_per_prompt`` > 1) of the std of their raw scores."""
ROLLOUT_UNIFORM_GROUPS = "rollout/uniform_groups"
"""Fraction of groups whose raw scores are all equal (no signal for GRPO/RLOO)."""
ROLLOUT_HEALTHY_RUNNERS = "rollout/healthy_env_runners"
"""Remote env runners that sampled this iteration (fewer than configured: degraded capacity,
the others sampled the missing share)."""
ROLLOUT_POLICY_LAG = "rollout/policy_lag"
"""Learner updates between the weights that sampled the batch and those its update started
from: 0 synchronous, 1 with ``algorithm.async_rollouts`` (after the first iteration)."""
ROLLOUT_EPOCH = "rollout/epoch"
"""Passes over the training prompts trained on so far, fractional (``rayrm.rl.prompt_order``:
shuffled passes without replacement; ``run.num_epochs`` stops the run at a number of them)."""
LOSS_POLICY = "loss/policy"
LOSS_VALUE = "loss/value"
LOSS_CLIP_FRACTION = "loss/clip_fraction"
LOSS_APPROX_KL = "loss/approx_kl"
LOSS_ENTROPY = "loss/entropy"
"""The policy's per-token entropy on the training minibatches (the learner's, not the sampler's)."""
LOSS_VF_EXPLAINED_VAR = "loss/vf_explained_var"
LOSS_KL = "loss/kl"
"""The KL term of the loss, before β (``algorithm.kl_mode: loss``; absent otherwise)."""
LOSS_GRAD_NORM = "loss/grad_norm"
LOSS_SKIPPED_STEPS = "loss/skipped_steps"
THROUGHPUT_TOKENS_PER_S = "throughput/generated_tokens_per_s"
TIMER_SAMPLE = "timers/sample_s"
TIMER_SCORE = "timers/score_s"
TIMER_UPDATE = "timers/update_s"
TIMER_WAIT = "timers/wait_s"
"""Time the update waited for the next batch (``algorithm.async_rollouts``; 0 otherwise)."""
TIMER_SYNC = "timers/sync_s"
TIMER_ITERATION = "timers/iteration_s"
EVAL_UPDATES = "eval/num_updates"
EVAL_PROXY_MEAN = "eval/proxy_mean"
EVAL_PROXY_STD = "eval/proxy_std"
EVAL_GOLD_MEAN = "eval/gold_mean"
EVAL_GOLD_STD = "eval/gold_std"
EVAL_SUCCESS = "eval/success"
"""Multi-turn runs: mean ``success`` of one episode per held-out row (``env/success``'s rule)."""
EVAL_SUCCESS_SE = "eval/success_se"
"""Its standard error, ``sqrt(p (1 - p) / n)``."""
EVAL_RETURN = "eval/return"
"""Multi-turn runs: mean over the held-out episodes of the environment's rewards, summed."""
EVAL_TURNS = "eval/turns"
"""Multi-turn runs: mean assistant turns per held-out episode."""
MONITOR_DISTINCT_2 = "monitor/distinct_2"
"""Distinct token bigrams over all bigrams of the batch's completions: falls when the policy
repeats itself (a degenerate text that pleases the reward model)."""
MONITOR_LENGTH_RATIO = "monitor/length_ratio"
"""Mean completion length over the first trained iteration's: length drift."""
MONITOR_REWARD_GAIN_PER_KL = "monitor/reward_gain_per_kl"
"""Batch reward minus the first iteration's, per nat of KL to the reference (per sequence);
published once the KL reaches ``rayrm.rl.monitors.MIN_KL``. Falls when more KL buys less
reward: where over-optimisation begins (Gao et al. 2022)."""
OBJECTIVE_REWARD_MINUS_KL = "objective/reward_minus_kl"
"""Mean score minus β times the mean per-sequence KL: the KL-regularised RLHF objective."""

# Published key <- learner-side name.
FROM_LEARNER = {
    KL_TOKEN: KL_PER_TOKEN,
    KL_SEQUENCE: KL_PER_SEQUENCE,
    LOSS_ENTROPY: ENTROPY,
    ROLLOUT_LENGTH: COMPLETION_LENGTH,
    LOSS_POLICY: POLICY_LOSS,
    LOSS_VALUE: VF_LOSS,
    LOSS_CLIP_FRACTION: CLIP_FRACTION,
    LOSS_APPROX_KL: APPROX_KL,
    LOSS_VF_EXPLAINED_VAR: VF_EXPLAINED_VAR,
    LOSS_KL: KL_LOSS,
    LOSS_GRAD_NORM: GRAD_NORM,
    LOSS_SKIPPED_STEPS: SKIPPED_STEPS,
}

RENAMED = {
    "rollout/entropy": LOSS_ENTROPY,
    "rollout/response_length": ROLLOUT_LENGTH,
}
"""Published keys renamed since 0.x: old -> new (a config naming an old key is refused)."""

RLHF_RESULTS = "rlhf"
"""Top-level results key holding the published metrics (``result["rlhf"]["reward/mean"]``)."""
