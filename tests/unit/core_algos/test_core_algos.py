"""Analytic tests of ``rayrm.core_algos`` against values computed by hand.

Every expected number below is written out (or derived in a comment) from the paper formulas,
never recomputed with a copy of the implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayrm.core_algos import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    aggregate_tokens,
    entropy_from_logits,
    gae_advantages,
    group_advantages,
    kl_estimate,
    kl_penalty_rewards,
    masked_mean,
    ppo_policy_loss,
    reinforce_returns,
    sample_tokens,
    token_advantages,
    value_loss,
    whiten,
)

torch.set_num_threads(1)

LN2, LN3 = math.log(2.0), math.log(3.0)
# softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6
LOGITS_123 = [0.0, LN2, LN3]


# --- GAE ---------------------------------------------------------------------------------------


def test_gae_gamma1_lambda1_is_reward_to_go_minus_constant_value():
    c = 0.5
    rewards = np.array([1.0, 2.0, 3.0, 4.0])
    values = np.full(4, c)
    adv, ret = gae_advantages(rewards=rewards, values=values, gamma=1.0, gae_lambda=1.0)
    # A_t = sum_{k>=t} r_k - c (the values telescope, V after the last token is 0).
    np.testing.assert_allclose(adv, [10.0 - c, 9.0 - c, 7.0 - c, 4.0 - c], atol=1e-6)
    # Returns are the reward-to-go itself.
    np.testing.assert_allclose(ret, [10.0, 9.0, 7.0, 4.0], atol=1e-6)
    assert adv.dtype == np.float32 and ret.dtype == np.float32


def test_gae_three_steps_term_by_term():
    gamma, lam, c = 0.9, 0.8, 0.5
    r0, r1, r2 = 0.1, -0.2, 1.0
    # TD errors, with V(s_3) = 0 (terminal):
    d2 = r2 + gamma * 0.0 - c  # 0.5
    d1 = r1 + gamma * c - c  # -0.2 + 0.45 - 0.5 = -0.25
    d0 = r0 + gamma * c - c  # 0.1 + 0.45 - 0.5 = 0.05
    a2 = d2  # 0.5
    a1 = d1 + gamma * lam * d2  # -0.25 + 0.72 * 0.5 = 0.11
    a0 = d0 + gamma * lam * d1 + (gamma * lam) ** 2 * d2  # 0.05 - 0.18 + 0.2592 = 0.1292
    np.testing.assert_allclose([a0, a1, a2], [0.1292, 0.11, 0.5], atol=1e-12)

    adv, ret = gae_advantages(
        rewards=np.array([r0, r1, r2]), values=np.full(3, c), gamma=gamma, gae_lambda=lam
    )
    np.testing.assert_allclose(adv, [0.1292, 0.11, 0.5], atol=1e-6)
    np.testing.assert_allclose(ret, [0.6292, 0.61, 1.0], atol=1e-6)


def test_gae_lambda0_is_one_step_td_error():
    gamma = 0.9
    rewards = np.array([0.0, 0.0, 1.0])
    values = np.array([0.2, 0.4, 0.6])
    adv, _ = gae_advantages(rewards=rewards, values=values, gamma=gamma, gae_lambda=0.0)
    # delta_t = r_t + gamma V_{t+1} - V_t
    np.testing.assert_allclose(adv, [0.9 * 0.4 - 0.2, 0.9 * 0.6 - 0.4, 1.0 - 0.6], atol=1e-6)


def test_gae_returns_are_advantages_plus_values():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=7), rng.normal(size=7)
    adv, ret = gae_advantages(rewards=rewards, values=values, gamma=0.97, gae_lambda=0.9)
    np.testing.assert_allclose(ret, adv + values, atol=1e-5)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8), (0.5, 0.0)])
def test_gae_last_step_never_bootstraps(gamma, lam):
    values = np.array([3.0, -2.0, 7.0])
    rewards = np.array([0.0, 0.0, 1.5])
    adv, ret = gae_advantages(rewards=rewards, values=values, gamma=gamma, gae_lambda=lam)
    assert adv[-1] == pytest.approx(1.5 - 7.0)
    assert ret[-1] == pytest.approx(1.5)  # the target of the last value is the last reward
    # A single-token completion: A = r - V whatever gamma and lambda are.
    adv1, ret1 = gae_advantages(
        rewards=np.array([2.0]), values=np.array([5.0]), gamma=gamma, gae_lambda=lam
    )
    np.testing.assert_allclose(adv1, [-3.0])
    np.testing.assert_allclose(ret1, [2.0])


# --- KL penalty --------------------------------------------------------------------------------


def test_kl_penalty_rewards_on_known_logits():
    beta, score = 0.1, 2.0
    policy_logits = torch.tensor([LOGITS_123] * 3, dtype=torch.float64)  # probs 1/6, 2/6, 3/6
    ref_logits = torch.tensor([LOGITS_123[::-1]] * 3, dtype=torch.float64)  # probs 3/6, 2/6, 1/6
    tokens = torch.tensor([2, 2, 1])
    # log-softmax by hand: logit - log(sum exp) = logit - ln 6
    logp_hand = np.array([LN3 - math.log(6), LN3 - math.log(6), LN2 - math.log(6)])
    ref_logp_hand = np.array([-math.log(6), -math.log(6), LN2 - math.log(6)])
    np.testing.assert_allclose(logp_hand, np.log([3 / 6, 3 / 6, 2 / 6]), atol=1e-12)
    np.testing.assert_allclose(ref_logp_hand, np.log([1 / 6, 1 / 6, 2 / 6]), atol=1e-12)
    for logits, hand in ((policy_logits, logp_hand), (ref_logits, ref_logp_hand)):
        gathered = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
        np.testing.assert_allclose(gathered.numpy(), hand, atol=1e-12)
    # The shipped sampler's log-probs of these tokens are the same numbers.
    _, logp_greedy = sample_tokens(policy_logits[:1], greedy=True)
    assert logp_greedy.item() == pytest.approx(math.log(0.5), abs=1e-6)

    env_rewards = np.array([0.0, 0.0, score])  # the score is paid at the last token
    kl = kl_estimate(logp=logp_hand, ref_logp=ref_logp_hand, kind="k1")
    token_rewards = kl_penalty_rewards(rewards=env_rewards, kl=kl, kl_coef=beta)
    # k1 per token: ln(3/6) - ln(1/6) = ln 3, ln 3, then ln(2/6) - ln(2/6) = 0.
    np.testing.assert_allclose(kl, [LN3, LN3, 0.0], atol=1e-12)
    np.testing.assert_allclose(token_rewards, [-beta * LN3, -beta * LN3, score], atol=1e-12)
    assert token_rewards.sum() == pytest.approx(score - beta * 2 * LN3, abs=1e-12)
    # What the learner does with them: REINFORCE++'s returns (γ = 1, before whitening) are
    # the shaped rewards to go; GRPO's sequence reward is their sum.
    _, returns = token_advantages(
        estimator="reinforce_pp", rewards=[env_rewards], kls=[kl], kl_coef=beta
    )
    expected = [score - 2 * beta * LN3, score - beta * LN3, score]
    np.testing.assert_allclose(returns[0], expected, atol=1e-6)


def test_kl_penalty_zero_when_policy_equals_reference():
    logp = np.log([0.2, 0.7, 0.1])
    kl = kl_estimate(logp=logp, ref_logp=logp.copy(), kind="k1")
    rewards = kl_penalty_rewards(rewards=np.array([0.0, 0.0, 1.0]), kl=kl, kl_coef=0.5)
    np.testing.assert_array_equal(kl, 0.0)
    np.testing.assert_allclose(rewards, [0.0, 0.0, 1.0])


def test_k1_sum_is_unbiased_for_sequence_kl():
    """E_pi[sum_t k1_t] = KL(pi || ref) for one token: a Monte Carlo check on hand probs."""
    p, q = np.array([1, 2, 3]) / 6, np.array([3, 2, 1]) / 6
    exact = float((p * np.log(p / q)).sum())  # = (3/6 - 1/6) ln 3 = ln3 / 3
    assert exact == pytest.approx(LN3 / 3)
    gen = torch.Generator().manual_seed(0)
    tokens, logp = sample_tokens(
        torch.tensor([LOGITS_123] * 20000, dtype=torch.float64), generator=gen
    )
    ref_logp = np.log(q)[tokens.numpy()]
    kl = kl_estimate(logp=logp.numpy(), ref_logp=ref_logp, kind="k1")
    assert kl.mean() == pytest.approx(exact, abs=0.02)


# --- PPO policy loss ---------------------------------------------------------------------------


def test_ppo_loss_ratio_one_is_minus_mean_advantage():
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 3.0])
    loss, stats = ppo_policy_loss(
        logp=logp, old_logp=logp.detach().clone(), advantages=adv, clip_ratio=0.2
    )
    assert loss.item() == pytest.approx(-2.0 / 3.0)
    assert stats["clip_fraction"].item() == 0.0
    assert stats["approx_kl"].item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    # d(-mean(A * ratio)) / d logp = -A * ratio / N with ratio 1.
    np.testing.assert_allclose(logp.grad.numpy(), [-1 / 3, 2 / 3, -1.0], atol=1e-6)


def test_ppo_loss_clip_branches_and_gradients():
    eps = 0.2
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    old_logp = torch.tensor([-1.0, -2.0, -0.3, -4.0, -1.2], dtype=torch.float64)
    logp = (old_logp + ratios.log()).requires_grad_(True)
    loss, stats = ppo_policy_loss(logp=logp, old_logp=old_logp, advantages=adv, clip_ratio=eps)
    # min(A r, A clip(r)) row by row:
    #   r=1.5, A=+1: min(1.5, 1.2) = 1.2   (clipped: the gain is capped)
    #   r=1.5, A=-1: min(-1.5, -1.2) = -1.5 (unclipped: the pessimistic branch)
    #   r=0.5, A=+1: min(0.5, 0.8) = 0.5   (unclipped)
    #   r=0.5, A=-1: min(-0.5, -0.8) = -0.8 (clipped)
    #   r=1.1, A=+2: min(2.2, 2.2) = 2.2   (inside the clip range)
    objective = [1.2, -1.5, 0.5, -0.8, 2.2]
    assert loss.item() == pytest.approx(-sum(objective) / 5)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)  # clipped: rows 0 and 3
    # approx_kl = mean((r - 1) - ln r)
    k3 = [0.5 - math.log(1.5)] * 2 + [-0.5 + LN2] * 2 + [0.1 - math.log(1.1)]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 5)
    loss.backward()
    # Unclipped rows: d(-A r / N)/d logp = -A r / N; clipped rows: exactly 0.
    expected_grad = [0.0, 1.5 / 5, -0.5 / 5, 0.0, -2.2 / 5]
    np.testing.assert_allclose(logp.grad.numpy(), expected_grad, atol=1e-12)
    assert logp.grad[0].item() == 0.0 and logp.grad[3].item() == 0.0


def test_ppo_loss_mask_ignores_rows():
    logp = torch.tensor([0.0, 0.0, 0.0])
    adv = torch.tensor([1.0, 5.0, 100.0])
    mask = torch.tensor([True, True, False])
    loss, stats = ppo_policy_loss(
        logp=logp, old_logp=logp, advantages=adv, clip_ratio=0.2, mask=mask
    )
    assert loss.item() == pytest.approx(-3.0)
    assert stats["clip_fraction"].item() == 0.0


# --- value loss --------------------------------------------------------------------------------


def _value_case():
    values = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    old_values = torch.tensor([1.1, 1.0, 0.5], dtype=torch.float64)
    returns = torch.tensor([0.0, 2.5, 1.0], dtype=torch.float64)
    return values, old_values, returns


def test_value_loss_unclipped():
    values, old_values, returns = _value_case()
    loss = value_loss(values=values, old_values=old_values, returns=returns, value_clip=None)
    # 0.5 * mean((1-0)^2, (2-2.5)^2, (0-1)^2) = 0.5 * 2.25 / 3
    assert loss.item() == pytest.approx(0.375)
    loss.backward()
    # d/dv 0.5 * mean((v - R)^2) = (v - R) / N
    np.testing.assert_allclose(values.grad.numpy(), [1 / 3, -0.5 / 3, -1 / 3], atol=1e-12)


def test_value_loss_clipped():
    values, old_values, returns = _value_case()
    loss = value_loss(values=values, old_values=old_values, returns=returns, value_clip=0.2)
    # clipped values = old + clip(v - old, -0.2, 0.2) = [1.0, 1.2, 0.3]
    # clipped errors^2 = [1.0, 1.69, 0.49]; unclipped = [1.0, 0.25, 1.0]; max = [1.0, 1.69, 1.0]
    assert loss.item() == pytest.approx(0.5 * 3.69 / 3)
    loss.backward()
    # row 0: inside the clip range, both branches give (v - R)/N = 1/3
    # row 1: the clipped branch wins and v moved past the clip -> no gradient
    # row 2: the unclipped branch wins -> (v - R)/N = -1/3
    np.testing.assert_allclose(values.grad.numpy(), [1 / 3, 0.0, -1 / 3], atol=1e-12)


def test_value_loss_mask():
    values, old_values, returns = _value_case()
    mask = torch.tensor([False, True, True])
    loss = value_loss(
        values=values, old_values=old_values, returns=returns, value_clip=None, mask=mask
    )
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0) / 2)


# --- small helpers -----------------------------------------------------------------------------


def test_masked_mean_and_whiten():
    x = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert masked_mean(x).item() == pytest.approx(4.0)
    assert masked_mean(x, torch.tensor([1, 1, 1, 0])).item() == pytest.approx(2.0)
    assert masked_mean(x, torch.zeros(4, dtype=torch.bool)).item() == 0.0
    w = whiten(np.array([1.0, 2.0, 3.0]))
    # mean 2, population std sqrt(2/3)
    np.testing.assert_allclose(w, np.array([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3), atol=1e-6)


def test_entropy_from_logits():
    logits = torch.tensor([LOGITS_123, [0.0, 0.0, 0.0]], dtype=torch.float64)
    h = entropy_from_logits(logits)
    p = np.array([1, 2, 3]) / 6
    assert h[0].item() == pytest.approx(float(-(p * np.log(p)).sum()))
    assert h[1].item() == pytest.approx(math.log(3))


# --- KL controllers ----------------------------------------------------------------------------


def test_adaptive_kl_controller_one_step():
    ctl = AdaptiveKLController(kl_coef=0.1, target=6.0, horizon=10000)
    # KL 9 -> e = clip(9/6 - 1, -0.2, 0.2) = 0.2 -> beta = 0.1 * (1 + 0.2 * 256 / 10000)
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.1 * 1.00512)
    # KL 5.4 -> e = -0.1 (inside the clip) -> beta *= 1 - 0.1 * 256 / 10000
    ctl.update(current_kl=5.4, n_steps=256)
    assert ctl.value == pytest.approx(0.1 * 1.00512 * 0.99744)
    # KL 0 -> e clipped at -0.2
    ctl2 = AdaptiveKLController(kl_coef=0.2, target=6.0, horizon=1000)
    ctl2.update(current_kl=0.0, n_steps=100)
    assert ctl2.value == pytest.approx(0.2 * (1 - 0.2 * 0.1))
    # At the target beta does not move; a non-finite KL is ignored.
    before = ctl2.value
    ctl2.update(current_kl=6.0, n_steps=100)
    ctl2.update(current_kl=float("nan"), n_steps=100)
    assert ctl2.value == pytest.approx(before)


def test_fixed_kl_controller_and_state_round_trip():
    fixed = FixedKLController(0.05)
    fixed.update(current_kl=100.0, n_steps=1000)
    assert fixed.value == 0.05

    ctl = AdaptiveKLController(kl_coef=0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_steps=10)
    restored = AdaptiveKLController(kl_coef=1.0, target=6.0, horizon=100)
    restored.set_state(ctl.get_state())
    assert restored.value == ctl.value
    restored.update(current_kl=1.0, n_steps=10)
    ctl.update(current_kl=1.0, n_steps=10)
    assert restored.value == ctl.value

    fixed2 = FixedKLController(1.0)
    fixed2.set_state(fixed.get_state())
    assert fixed2.value == 0.05


# --- running moments ---------------------------------------------------------------------------


def test_running_moments_match_numpy_on_concatenation():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (5, 1, 17, 8)]
    rm = RunningMoments()
    for i, b in enumerate(batches):
        rm.update(b)
        seen = np.concatenate(batches[: i + 1])
        assert rm.mean == pytest.approx(seen.mean(), rel=1e-10)
        assert rm.var == pytest.approx(seen.var(), rel=1e-10)
        assert rm.count == seen.size
    assert rm.std == pytest.approx(np.concatenate(batches).std(), rel=1e-10)
    rm.update(np.array([]))  # an empty batch changes nothing
    assert rm.count == sum(b.size for b in batches)

    restored = RunningMoments()
    restored.set_state(rm.get_state())
    assert (restored.mean, restored.var, restored.count) == (rm.mean, rm.var, rm.count)


def test_running_moments_hand_values():
    rm = RunningMoments()
    rm.update(np.array([1.0, 3.0]))
    rm.update(np.array([5.0]))
    assert rm.mean == pytest.approx(3.0)
    assert rm.var == pytest.approx(8.0 / 3.0)  # ((-2)^2 + 0 + 2^2) / 3


# --- sampling ----------------------------------------------------------------------------------


def test_sample_tokens_greedy_is_argmax_with_tempered_logp():
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    tokens, logp = sample_tokens(logits, temperature=0.7, greedy=True)
    torch.testing.assert_close(tokens, logits.argmax(-1))
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(logp, expected)
    assert tokens.dtype == torch.int64 and logp.dtype == torch.float32


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_tokens_logp_is_tempered_full_vocab_logp(temperature):
    logits = torch.tensor([LOGITS_123] * 64)
    tokens, logp = sample_tokens(
        logits, temperature=temperature, generator=torch.Generator().manual_seed(3)
    )
    # T=1: probs [1, 2, 3] / 6; T=0.5: logits [0, 2 ln2, 2 ln3] -> probs [1, 4, 9] / 14.
    probs = {1.0: np.array([1, 2, 3]) / 6, 0.5: np.array([1, 4, 9]) / 14}[temperature]
    np.testing.assert_allclose(logp.numpy(), np.log(probs)[tokens.numpy()], atol=1e-6)
    assert set(tokens.tolist()) == {0, 1, 2}


def test_sample_tokens_frequencies_follow_softmax():
    logits = torch.tensor([LOGITS_123] * 30000)
    tokens, _ = sample_tokens(logits, generator=torch.Generator().manual_seed(0))
    freq = np.bincount(tokens.numpy(), minlength=3) / len(tokens)
    np.testing.assert_allclose(freq, np.array([1, 2, 3]) / 6, atol=0.015)


def test_sample_tokens_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.tensor([LOGITS_123, [2.0, -1.0, 0.5]] * 200)
    argmax = logits.argmax(-1)
    gen = torch.Generator().manual_seed(0)
    full_logp = torch.log_softmax(logits, dim=-1).gather(-1, argmax[:, None]).squeeze(-1)
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}):
        tokens, logp = sample_tokens(logits, generator=gen, **kwargs)
        torch.testing.assert_close(tokens, argmax)
        # The log-prob stays the full-vocabulary one (not log 1 = 0).
        torch.testing.assert_close(logp, full_logp)
    assert full_logp[0].item() == pytest.approx(math.log(0.5))


def test_sample_tokens_top_k_and_top_p_renormalise():
    logits = torch.tensor([LOGITS_123] * 30000)  # probs [1, 2, 3] / 6
    gen = torch.Generator().manual_seed(1)
    # top_k=2 keeps tokens 1 and 2 -> renormalised [0, 2/5, 3/5]
    tokens, _ = sample_tokens(logits, top_k=2, generator=gen)
    freq = np.bincount(tokens.numpy(), minlength=3) / len(tokens)
    np.testing.assert_allclose(freq, [0.0, 0.4, 0.6], atol=0.015)
    assert freq[0] == 0.0
    # top_p=0.6: sorted probs [3/6, 2/6, 1/6]; mass before each = [0, 0.5, 0.83] -> keep the
    # first two (the token that crosses 0.6 is kept), renormalised [0, 2/5, 3/5].
    tokens, _ = sample_tokens(logits, top_p=0.6, generator=gen)
    freq = np.bincount(tokens.numpy(), minlength=3) / len(tokens)
    np.testing.assert_allclose(freq, [0.0, 0.4, 0.6], atol=0.015)
    assert freq[0] == 0.0


def test_sample_tokens_seeded_generator_is_reproducible():
    logits = torch.randn(32, 50, generator=torch.Generator().manual_seed(0))
    a, la = sample_tokens(logits, temperature=1.3, generator=torch.Generator().manual_seed(7))
    b, lb = sample_tokens(logits, temperature=1.3, generator=torch.Generator().manual_seed(7))
    c, _ = sample_tokens(logits, temperature=1.3, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(la, lb)
    assert not torch.equal(a, c)


# --- critic-free estimators (GRPO, RLOO, REINFORCE++) ----------------------------------------


def test_grpo_group_normalised_by_hand():
    # Group a: [1, 2, 3]: mean 2, sample std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1].
    # Group b: [0, 4]: mean 2, sample std sqrt((4 + 4) / 1) = 2*sqrt(2) -> -+1/sqrt(2).
    scores = np.array([1.0, 0.0, 2.0, 4.0, 3.0])
    groups = np.array(["a", "b", "a", "b", "a"])  # groups need not be contiguous
    adv = group_advantages(scores=scores, groups=groups, estimator="grpo", eps=0.0)
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(adv, [-1.0, -r, 0.0, r, 1.0], atol=1e-12)


def test_dr_grpo_is_the_unnormalised_group_centring():
    scores = np.array([1.0, 0.0, 2.0, 4.0, 3.0])
    groups = np.array([0, 1, 0, 1, 0])
    adv = group_advantages(scores=scores, groups=groups, estimator="grpo", std_normalize=False)
    np.testing.assert_allclose(adv, [-1.0, -2.0, 0.0, 2.0, 1.0], atol=1e-12)


def test_rloo_leave_one_out_baseline_by_hand():
    # [1, 2, 3]: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5; [0, 4]: -4, +4.
    scores = np.array([1.0, 2.0, 3.0, 0.0, 4.0])
    groups = np.array([7, 7, 7, 9, 9])
    adv = group_advantages(scores=scores, groups=groups, estimator="rloo")
    np.testing.assert_allclose(adv, [-1.5, 0.0, 1.5, -4.0, 4.0], atol=1e-12)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_uniform_and_single_groups_have_zero_advantage(estimator):
    scores = np.array([5.0, 5.0, 5.0, 2.0])
    adv = group_advantages(scores=scores, groups=np.array([0, 0, 0, 1]), estimator=estimator)
    np.testing.assert_array_equal(adv, [0.0, 0.0, 0.0, 0.0])


def test_reinforce_returns_are_reward_to_go():
    # [0.1, -0.2, 1.0] -> [0.1 - 0.2 + 1.0, -0.2 + 1.0, 1.0]
    np.testing.assert_allclose(reinforce_returns(np.array([0.1, -0.2, 1.0])), [0.9, 0.8, 1.0])


def test_kl_estimators_by_hand():
    # pi(a) = 1/2, pi_ref(a) = 1/4: log r = -ln 2.
    logp, ref = np.array([math.log(0.5)]), np.array([math.log(0.25)])
    assert kl_estimate(logp=logp, ref_logp=ref, kind="k1")[0] == pytest.approx(LN2)
    assert kl_estimate(logp=logp, ref_logp=ref, kind="k2")[0] == pytest.approx(LN2**2 / 2)
    assert kl_estimate(logp=logp, ref_logp=ref, kind="k3")[0] == pytest.approx(-0.5 + LN2)


def test_k1_and_k3_are_unbiased_k3_non_negative():
    pi, ref = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    kl = float((pi * np.log(pi / ref)).sum())  # KL(pi || ref), the exact value
    logp, ref_logp = np.log(pi), np.log(ref)
    for kind in ("k1", "k3"):  # the expectation under pi: weight each token by pi
        estimate = kl_estimate(logp=logp, ref_logp=ref_logp, kind=kind)
        assert float((pi * estimate).sum()) == pytest.approx(kl)
    assert (kl_estimate(logp=logp, ref_logp=ref_logp, kind="k3") >= 0).all()
    assert (kl_estimate(logp=logp, ref_logp=ref_logp, kind="k1") < 0).any()


def test_loss_aggregations_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    seq = torch.tensor([0, 0, 1, 1, 1])
    assert aggregate_tokens(values, mode="token_mean").item() == pytest.approx(3.0)
    # (mean(1, 2) + mean(3, 4, 5)) / 2 = (1.5 + 4) / 2
    got = aggregate_tokens(values, mode="seq_mean_token_mean", seq_id=seq)
    assert got.item() == pytest.approx(2.75)
    # (sum(1, 2) + sum(3, 4, 5)) / 2 / 4 = (3 + 12) / 8
    got = aggregate_tokens(values, mode="seq_mean_token_sum_norm", seq_id=seq, norm=4)
    assert got.item() == pytest.approx(1.875)
    mask = torch.tensor([True, True, True, True, False])
    got = aggregate_tokens(values, mode="seq_mean_token_mean", seq_id=seq, mask=mask)
    assert got.item() == pytest.approx((1.5 + 3.5) / 2)
    got = aggregate_tokens(values, mode="seq_mean_token_sum_norm", seq_id=seq, mask=mask, norm=4)
    assert got.item() == pytest.approx((3 + 7) / 2 / 4)


def test_clip_higher_lets_a_positive_advantage_rise_further():
    # ratio 1.25, A = 1: eps = 0.2 clips at 1.2; eps_high = 0.28 does not.
    logp, old = torch.tensor([math.log(1.25)]), torch.tensor([0.0])
    adv = torch.tensor([1.0])
    loss, _ = ppo_policy_loss(logp=logp, old_logp=old, advantages=adv, clip_ratio=0.2)
    assert loss.item() == pytest.approx(-1.2)
    loss, stats = ppo_policy_loss(
        logp=logp, old_logp=old, advantages=adv, clip_ratio=0.2, clip_ratio_high=0.28
    )
    assert loss.item() == pytest.approx(-1.25) and stats["clip_fraction"].item() == 0.0
    # The lower bound stays 1 - eps: ratio 0.7 with A = -1 -> min(-0.7, -0.8) = -0.8.
    low = torch.tensor([math.log(0.7)])
    loss, stats = ppo_policy_loss(
        logp=low, old_logp=old, advantages=-adv, clip_ratio=0.2, clip_ratio_high=0.28
    )
    assert loss.item() == pytest.approx(0.8) and stats["clip_fraction"].item() == 1.0


def test_token_advantages_grpo_is_the_scores_z_minus_the_centred_kl_penalty():
    # Scores 1 and 3: mean 2, sample std sqrt(2) -> z = -+1/sqrt(2). KL sums 0.2 and 0,
    # centred +-0.1, times beta 0.5: -0.05 and +0.05 taken after normalisation.
    adv, _ = token_advantages(
        estimator="grpo",
        rewards=[np.array([0.0, 1.0]), np.array([0.0, 0.0, 3.0])],
        kls=[np.array([0.2, 0.0]), np.zeros(3)],
        kl_coef=0.5,
        groups=["a", "a"],
    )
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(adv[0], [-r - 0.05, -r - 0.05], atol=1e-5)
    np.testing.assert_allclose(adv[1], [r + 0.05] * 3, atol=1e-5)


def test_token_advantages_reinforce_pp_by_hand():
    # Token rewards [0 - 1*0.5, 2] -> returns [1.5, 2]; [0, 0, -1] -> [-1, -1, -1].
    # All tokens [1.5, 2, -1, -1, -1]: mean 0.1, std sqrt((1.96 + 3.61 + 3 * 1.21) / 5).
    rewards = [np.array([0.0, 2.0]), np.array([0.0, 0.0, -1.0])]
    kls = [np.array([0.5, 0.0]), np.zeros(3)]
    adv, ret = token_advantages(estimator="reinforce_pp", rewards=rewards, kls=kls, kl_coef=1.0)
    np.testing.assert_allclose(ret[0], [1.5, 2.0])
    np.testing.assert_allclose(ret[1], [-1.0, -1.0, -1.0])
    std = math.sqrt((1.96 + 3.61 + 3 * 1.21) / 5)
    np.testing.assert_allclose(
        np.concatenate(adv), np.array([1.4, 1.9, -1.1, -1.1, -1.1]) / std, atol=1e-5
    )
    # With the group baseline: scores 2 and -1, group mean 0.5, taken off each last token:
    # [-0.5, 1.5] -> returns [1.0, 1.5]; [0, 0, -1.5] -> [-1.5, -1.5, -1.5].
    _, ret = token_advantages(
        estimator="reinforce_pp_baseline", rewards=rewards, kls=kls, kl_coef=1.0, groups=[3, 3]
    )
    np.testing.assert_allclose(np.concatenate(ret), [1.0, 1.5, -1.5, -1.5, -1.5])


def test_token_advantages_gae_is_whitened_gae():
    rewards, values = (
        [np.array([0.0, 1.0]), np.array([2.0])],
        [np.array([0.5, 0.5]), np.array([0.0])],
    )
    adv, ret = token_advantages(
        estimator="gae", rewards=rewards, kls=[np.zeros(2), np.zeros(1)], kl_coef=0.0,
        values=values, gamma=1.0, gae_lambda=1.0,
    )  # fmt: skip
    # GAE(1, 1): advantages = reward-to-go - value: [1 - 0.5, 1 - 0.5] and [2 - 0].
    raw = np.array([0.5, 0.5, 2.0])
    np.testing.assert_allclose(np.concatenate(adv), (raw - raw.mean()) / raw.std(), atol=1e-5)
    np.testing.assert_allclose(np.concatenate(ret), [1.0, 1.0, 2.0])


def _whiten_in_group(rank: int, shards: list[np.ndarray], address: str, out: dict) -> None:
    """One data-parallel learner: whitens its shard with the group's moments."""
    import torch.distributed as dist

    from rayrm.rl.connectors.advantages import whiten_across_learners

    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=len(shards))
    try:
        out[rank] = whiten_across_learners(shards[rank])
    finally:
        dist.destroy_process_group()


def test_whitening_across_learners_equals_whitening_the_whole_batch(tmp_path):
    """Two learners (a real gloo process group) with unequal shards of different spread get
    the advantages one learner computes for the whole batch; whitening each shard alone would
    not."""
    import multiprocessing as mp

    rng = np.random.default_rng(0)
    shards = [rng.normal(1.0, 1.0, 37), rng.normal(-2.0, 3.0, 11)]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        address = f"file://{tmp_path / 'rendezvous'}"
        procs = [
            ctx.Process(target=_whiten_in_group, args=(rank, shards, address, out))
            for rank in range(2)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0]
        got = np.concatenate([out[0], out[1]])
    whole = whiten(np.concatenate(shards))
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-12)
    alone = np.concatenate([whiten(s) for s in shards])
    assert np.abs(alone - whole).max() > 0.1


# --- the gradients the KL terms give, clamps, clip fraction (issue 32) ----------------------


def _kl_loss_gradient(kind: str, theta: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The exact expected gradient of the KL loss term: every token a of the vocabulary
    weighted by the probability the sampler drew it with (a constant), the gradient flowing
    through log pi(a) alone, as in the learner's loss."""
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, dim=-1)
    weights = logp.detach().exp()
    loss = (weights * kl_estimate(logp=logp, ref_logp=ref_logp, kind=kind)).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    return grad


def test_kl_loss_k1_has_no_gradient_k2_reverse_kl_k3_forward_kl():
    """As a loss, k1 puts no pressure on the policy (E_pi[grad log pi] = 0); k2's gradient is
    that of KL(pi || pi_ref), k3's that of KL(pi_ref || pi) (GRPO's). Exact expectation over
    a 20-token categorical, float64."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(20, generator=gen, dtype=torch.float64)
    ref_logp = torch.log_softmax(torch.randn(20, generator=gen, dtype=torch.float64), dim=-1)
    assert _kl_loss_gradient("k1", theta, ref_logp).norm() < 1e-12

    t = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(t, dim=-1)
    reverse = (logp.exp() * (logp - ref_logp)).sum()  # KL(pi || pi_ref)
    (reverse_grad,) = torch.autograd.grad(reverse, t)
    t = theta.clone().requires_grad_(True)
    forward = (ref_logp.exp() * (ref_logp - torch.log_softmax(t, dim=-1))).sum()  # KL(ref || pi)
    (forward_grad,) = torch.autograd.grad(forward, t)
    assert reverse_grad.norm() > 0.1 and (reverse_grad - forward_grad).norm() > 0.01
    torch.testing.assert_close(_kl_loss_gradient("k2", theta, ref_logp), reverse_grad)
    torch.testing.assert_close(_kl_loss_gradient("k3", theta, ref_logp), forward_grad)


def test_grpo_kl_in_the_reward_is_not_normalised_by_the_scores_std():
    """Equal scores: the advantages are beta times the centred KL sums (not unit-scale KL
    noise whatever beta is); unequal scores: the scores' z-score minus that."""
    kl_sums = np.array([2.0, 2.1, 1.9, 2.05])
    centred = kl_sums - kl_sums.mean()
    for beta in (0.05, 0.001):
        adv, _ = token_advantages(
            estimator="grpo",
            rewards=[np.array([0.0, 1.0])] * 4,
            kls=[np.array([k, 0.0]) for k in kl_sums],
            kl_coef=beta,
            groups=[0, 0, 0, 0],
        )
        np.testing.assert_allclose([a[0] for a in adv], -beta * centred, atol=1e-7)
    scores = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3, sample std sqrt(14 / 3)
    adv, _ = token_advantages(
        estimator="grpo",
        rewards=[np.array([s]) for s in scores],
        kls=[np.array([k]) for k in kl_sums],
        kl_coef=0.1,
        groups=[0, 0, 0, 0],
    )
    z = (scores - 3.0) / (math.sqrt(14 / 3) + 1e-6)
    np.testing.assert_allclose([a[0] for a in adv], z - 0.1 * centred, atol=1e-6)
    # Dr. GRPO and RLOO are linear in the reward: KL inside or after is the same thing.
    adv, _ = token_advantages(
        estimator="rloo",
        rewards=[np.array([s]) for s in scores],
        kls=[np.array([k]) for k in kl_sums],
        kl_coef=0.1,
        groups=[0, 0, 0, 0],
    )
    shaped = scores - 0.1 * kl_sums
    loo = shaped - (shaped.sum() - shaped) / 3
    np.testing.assert_allclose([a[0] for a in adv], loo, atol=1e-6)


def test_ppo_log_ratio_is_clamped():
    """A token whose log-ratio is 100 (e^100 overflows float32) leaves the loss and its
    gradient finite: the log-ratio is clamped to +-20 before exp, as verl does."""
    logp = torch.tensor([100.0, 0.0], requires_grad=True)
    old = torch.zeros(2)
    loss, stats = ppo_policy_loss(
        logp=logp, old_logp=old, advantages=torch.tensor([-1.0, 1.0]), clip_ratio=0.2
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert loss.item() == pytest.approx((math.exp(20.0) - 1.0) / 2, rel=1e-5)
    assert torch.isfinite(stats["approx_kl"])


def test_k3_loss_gradient_is_bounded_for_a_token_pushed_far_down():
    """k3's gradient in log pi is 1 - pi_ref/pi: a token the policy pushed far below the
    reference would dominate the loss (here by 1e12). k3 is clamped to 10 (its log-ratio to
    +-20 first), as verl clamps it: past that the token adds no gradient."""
    logp = torch.tensor([-1.0, -1.2, -30.0], requires_grad=True)
    ref = torch.tensor([-1.1, -1.0, -1.0])
    k3 = kl_estimate(logp=logp, ref_logp=ref, kind="k3")
    k3.sum().backward()
    assert torch.isfinite(k3).all() and k3.max().item() == pytest.approx(10.0)
    assert logp.grad.abs().max().item() < 1.0
    assert logp.grad[2].item() == 0.0
    # Below the clamp nothing changes: 1 - exp(ref - logp) on the first two tokens.
    np.testing.assert_allclose(
        logp.grad[:2].numpy(), [1 - math.exp(-0.1), 1 - math.exp(0.2)], rtol=1e-5
    )
    far = kl_estimate(logp=np.array([-30.0]), ref_logp=np.array([-1.0]), kind="k3")
    assert far[0] == pytest.approx(10.0)  # the reward penalty's estimate alike


def test_clip_fraction_counts_where_clipping_is_active():
    """Clipping acts where min picks the clipped term (A * clip(r) < A * r): a ratio below
    1 - eps with a positive advantage, or above 1 + eps with a negative one, is not clipped."""
    eps = 0.2
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    logp = ratios.log()
    _, stats = ppo_policy_loss(
        logp=logp, old_logp=torch.zeros(5, dtype=torch.float64), advantages=adv, clip_ratio=eps
    )
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)  # rows 0 and 3


def test_value_loss_follows_the_loss_aggregation():
    values = torch.tensor([1.0, 2.0, 3.0, 5.0])
    returns = torch.zeros(4)
    seq = torch.tensor([0, 0, 0, 1])
    # Squared errors [1, 4, 9, 25]; per completion means 14/3 and 25 -> (14/3 + 25) / 2.
    got = value_loss(
        values=values,
        old_values=values,
        returns=returns,
        value_clip=None,
        aggregate=lambda x: aggregate_tokens(x, mode="seq_mean_token_mean", seq_id=seq),
    )
    assert got.item() == pytest.approx(0.5 * (14 / 3 + 25) / 2)


def test_reinforce_pp_discounts_with_gamma():
    # gamma 0.5: [0.1 + 0.5 * (-0.2) + 0.25 * 1.0, -0.2 + 0.5 * 1.0, 1.0]
    r = np.array([0.1, -0.2, 1.0])
    np.testing.assert_allclose(reinforce_returns(r, gamma=0.5), [0.25, 0.3, 1.0])
    _, ret = token_advantages(
        estimator="reinforce_pp", rewards=[r], kls=[np.zeros(3)], kl_coef=0.0, gamma=0.5
    )
    np.testing.assert_allclose(ret[0], [0.25, 0.3, 1.0], rtol=1e-6)


# --- registries ----------------------------------------------------------------------------


def test_config_names_are_the_registered_estimators_and_aggregations():
    """``algorithm.advantage_estimator`` and ``algorithm.loss_aggregation`` accept exactly the names
    registered in core_algos (the config stays torch-free, so it lists them itself)."""
    import typing

    from rayrm.config import AlgorithmSettings
    from rayrm.core_algos import AGGREGATIONS, ESTIMATOR_FUNCTIONS

    fields = AlgorithmSettings.model_fields
    assert set(typing.get_args(fields["advantage_estimator"].annotation)) == set(
        ESTIMATOR_FUNCTIONS
    )
    assert set(typing.get_args(fields["loss_aggregation"].annotation)) == set(AGGREGATIONS)


def test_a_registered_estimator_and_aggregation_are_used_by_name():
    from rayrm.core_algos import (
        AGGREGATIONS,
        ESTIMATOR_FUNCTIONS,
        register_aggregation,
        register_estimator,
    )

    @register_estimator("last_token_score")
    def last_token_score(x):  # the raw score on every token, no baseline
        out = [np.full(len(r), float(r[-1]), dtype=np.float32) for r in x.rewards]
        return out, out

    @register_aggregation("token_max")
    def token_max(values, *, mask, seq_id, norm):
        return values.max()

    try:
        adv, _ = token_advantages(
            estimator="last_token_score",
            rewards=[np.array([0.0, 2.0]), np.array([3.0])],
            kls=[np.zeros(2), np.zeros(1)],
            kl_coef=0.0,
        )
        np.testing.assert_array_equal(np.concatenate(adv), [2.0, 2.0, 3.0])
        got = aggregate_tokens(torch.tensor([1.0, 5.0, 2.0]), mode="token_max")
        assert got.item() == 5.0
        with pytest.raises(ValueError, match="estimator must be one of"):
            token_advantages(estimator="nope", rewards=[], kls=[], kl_coef=0.0)
    finally:
        del ESTIMATOR_FUNCTIONS["last_token_score"], AGGREGATIONS["token_max"]
