"""Multi-turn episodes: the environment's replies as context, never as actions.

Token-in/token-out from the environment to the learner (the rows rebuilt from the stored
episode are the sequence the sampler conditioned on), the KV cache extended with replies
(logits equal to a full forward of the unpadded sequence), the loss blind to environment
tokens, and per-turn rewards at each turn's last token.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.multi_turn import EPISODE_STATS, INSERTS, REPLY_IDS, MultiTurnTextEnv
from envs.protocol import Environment, Reply
from envs.tasks import arithmetic
from envs.tools import ToolCall, render_tool_calls
from rayrm.models.tiny import build_tokenizer
from rayrm.rl.episodes import token_rows

KINDS = ("qwen2", "llama", "gemma")
STOP = {"qwen2": "<|im_end|>", "llama": "</s>", "gemma": "<end_of_turn>"}


def scripted(env: MultiTurnTextEnv, tok, turns: list[str], stop: str, *, index: int = 0):
    """Plays ``turns`` (texts ended by the ``stop`` token) through ``env``; returns the
    opening ids, the actions, each step's reward and the last info."""
    obs, _ = env.reset(options={"prompt_index": index})
    opening = obs["input_ids"][: int(obs["length"][0])].tolist()
    actions, rewards, info = [], [], {}
    stop_id = tok.convert_tokens_to_ids(stop)
    for text in turns:
        for token in tok.encode(text, add_special_tokens=False) + [stop_id]:
            obs, reward, terminated, truncated, info = env.step(token)
            actions.append(token)
            rewards.append(reward)
            if terminated or truncated or REPLY_IDS in info:
                break
        if terminated or truncated:
            break
    return opening, actions, rewards, info, obs


def calculator_env(tok, **kw) -> MultiTurnTextEnv:
    return MultiTurnTextEnv(
        environment="envs.tasks.arithmetic:Calculator",
        prompts=arithmetic.rows(4, seed=1),
        tokenizer=tok,
        max_prompt_tokens=2000,
        max_new_tokens=200,
        max_total_tokens=3000,
        **kw,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_learner_rows_are_the_sampled_sequence(kind):
    """A 3-turn tool episode (two tool calls, then the answer): the rows the learner
    rebuilds from the stored episode (prompt ids, actions, inserted replies) hold, token for
    token, the sequence the environment built, and each row ends right before its action."""
    tok = build_tokenizer(kind)
    # the stop ids a run takes from the model's generation_config (Gemma: <end_of_turn>)
    env = calculator_env(tok, stop_token_ids=[tok.convert_tokens_to_ids(STOP[kind])])
    row = env.rows[0]
    call = ToolCall(name="calculate", arguments={"a": row["a"], "op": "*", "b": row["b"]})
    bad = ToolCall(name="calculate", arguments={"a": row["a"], "op": "/", "b": row["b"]})
    turns = [render_tool_calls([bad]), render_tool_calls([call]), f"It is {row['answer']}."]
    opening, actions, rewards, info, obs = scripted(env, tok, turns, STOP[kind])
    stats = info[EPISODE_STATS]
    assert (stats["turns"], stats["tool_calls"], stats["tool_errors"]) == (3, 2, 1)
    assert stats["success"] == 1.0 and rewards[-1] == 1.0 and sum(rewards) == 1.0
    inserts = info[INSERTS]
    assert len(inserts) == 2
    rows = token_rows([np.array(opening)], torch.tensor(actions), [len(actions)], [inserts])
    ids, length = rows["input_ids"], rows["length"].reshape(-1)
    full = env.ids  # what the environment (and the sampler) conditioned on
    assert int(obs["length"][0]) == len(full)
    for t, action in enumerate(actions):
        n = int(length[t])
        assert ids[t, :n].tolist() == full[:n]
        assert full[n] == action  # the row's action is the token right after its context
    assert length[-1] + 1 == len(full)
    # every reply sits after the action it follows, as its own ids
    for index, reply in inserts:
        start = int(length[index]) + 1
        assert full[start : start + len(reply)] == reply


def test_per_turn_rewards_sit_at_each_turns_last_token_and_gae_runs_across_turns():
    """A 2-turn game: a wrong guess (-0.05) then the right one (1.0); each turn's reward is
    paid at its last token, every other step pays 0; GAE over the policy tokens alone (by hand,
    γ = 0.9, λ = 0.8, values 0) carries the second turn's reward back into the first turn."""
    from rayrm.core_algos import token_advantages

    tok = build_tokenizer("qwen2")
    env = MultiTurnTextEnv(
        environment="envs.tasks.guess:GuessTheNumber",
        prompts=[{"secret": 7, "high": 16}],
        tokenizer=tok,
        max_prompt_tokens=200,
        max_new_tokens=20,
        max_total_tokens=400,
    )
    _, actions, rewards, info, _ = scripted(env, tok, ["3", "7"], "<|im_end|>")
    first = len(tok.encode("3", add_special_tokens=False)) + 1
    expected = np.zeros(len(actions))
    expected[first - 1], expected[-1] = -0.05, 1.0
    np.testing.assert_allclose(rewards, expected)
    assert info[INSERTS][0][0] == first - 1  # the reply follows the first turn's last token
    gamma, lam = 0.9, 0.8
    advs, rets = token_advantages(
        estimator="gae",
        rewards=[np.array(rewards, np.float32)],
        kls=[np.zeros(len(actions), np.float32)],
        kl_coef=0.0,
        groups=[None],
        values=[np.zeros(len(actions), np.float32)],
        gamma=gamma,
        gae_lambda=lam,
        std_normalize=True,
        whiten_with=lambda x: x,
    )
    by_hand = np.zeros(len(actions))
    running = 0.0
    for t in reversed(range(len(actions))):
        running = rewards[t] + gamma * lam * running  # δ_t = r_t with V = 0
        by_hand[t] = running
    np.testing.assert_allclose(advs[0], by_hand, rtol=1e-5, atol=1e-6)


class Echo(Environment):
    """Answers every turn with a fixed user message; never done."""

    max_turns = 3

    def reset(self):
        return "Say something."

    def step(self, text):
        return Reply("Again, please.", 0.25)


def test_limits_truncate_and_are_recorded():
    """``max_turns`` and ``max_total_tokens`` end an episode as truncated (recorded), the last
    turn's reward still paid; a turn stops at ``max_new_tokens``."""
    tok = build_tokenizer("qwen2")
    env = MultiTurnTextEnv(
        environment=Echo, prompts=[{}], tokenizer=tok, max_new_tokens=3, max_total_tokens=400
    )
    _, actions, rewards, info, _ = scripted(env, tok, ["a b c d e f"] * 5, "<|im_end|>")
    assert len(actions) == 9 and info[EPISODE_STATS] == {
        **info[EPISODE_STATS], "turns": 3.0, "truncated": 1.0,
    }  # fmt: skip
    assert sum(rewards) == pytest.approx(0.75)
    obs, _ = env.reset()
    short = MultiTurnTextEnv(
        environment=Echo,
        prompts=[{}],
        tokenizer=tok,
        max_prompt_tokens=int(obs["length"][0]),
        max_new_tokens=50,
        max_total_tokens=int(obs["length"][0]) + 12,
    )
    _, actions, _, info, _ = scripted(short, tok, ["a b c d e f g h i j"] * 3, "<|im_end|>")
    assert info[EPISODE_STATS]["truncated"] == 1.0 and info[EPISODE_STATS]["turns"] == 1.0


def test_environment_spec_errors_name_the_spec():
    with pytest.raises(ValueError, match="env.environment 'envs.tasks.guess:nope'"):
        MultiTurnTextEnv(environment="envs.tasks.guess:nope", prompts=[{}])
    with pytest.raises(ValueError, match="not a subclass of envs.protocol.Environment"):
        MultiTurnTextEnv(environment="envs.tasks.guess:rows", prompts=[{}])


SHORT = {(0, 1): [20, 21, 22], (1, 1): [23], (1, 3): [24, 25, 26, 27], (0, 4): [28]}
LONG = {(0, 1): list(range(20, 32)), (1, 2): list(range(40, 52)), (2, 3): list(range(60, 72))}


@pytest.mark.parametrize("replies", ["short", "long"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_decoding_extends_the_cache_with_replies(archs, arch, replies, monkeypatch):
    """Rows that get replies at different steps (and one that gets none): every step's logits
    equal a full forward of the row's sequence so far (the cache grew by the replies, with
    holes where other rows fed more, and was never rebuilt); with long replies the holes are
    dropped from the cache (compacted) on the way."""
    from transformers import AutoModelForCausalLM

    from rayrm.models import decoding
    from rayrm.models.decoding import decode_batch

    widths = []

    def compact(cache, mask):
        out = decoding_compact(cache, mask)
        widths.append((mask.shape[1], out.shape[1]))
        return out

    decoding_compact = decoding.compact_cache
    monkeypatch.setattr(decoding, "compact_cache", compact)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(archs[arch]).eval()
    vocab = model.config.vocab_size
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    plan = SHORT if replies == "short" else LONG
    seqs = [list(p) for p in prompts]
    step = [0]
    seen: list[tuple[int, list[int], torch.Tensor]] = []

    def sample(logits):
        for row in range(len(prompts)):
            seen.append((row, list(seqs[row]), logits[row].clone()))
        tokens = (torch.arange(len(prompts)) * 7 + step[0] * 3 + 30) % vocab
        return tokens, torch.zeros(len(prompts))

    def on_tokens(tokens, logp):
        for row, token in enumerate(tokens.tolist()):
            seqs[row].append(int(token))
        return [step[0] < 6] * len(prompts)

    def inserts():
        out = {row: ids for (row, at), ids in plan.items() if at == step[0]}
        for row, ids in out.items():
            seqs[row].extend(ids)
        step[0] += 1
        return out

    decode_batch(model, prompts, pad_id=0, sample=sample, on_tokens=on_tokens, inserts=inserts)
    assert any(len(s) > len(p) + 7 for s, p in zip(seqs, prompts, strict=True))
    compacted = any(after < before for before, after in widths)
    assert compacted == (replies == "long"), widths
    for _row, context, logits in seen:
        with torch.no_grad():
            full = model(input_ids=torch.tensor([context])).logits[0, -1]
        torch.testing.assert_close(logits, full.float(), atol=2e-4, rtol=1e-4)


def test_loss_has_no_term_at_environment_tokens(archs):
    """The learner's loss (policy gradient, entropy bonus, KL as a loss) over a 2-turn
    episode: the gradient w.r.t. the final hidden state at every position that predicts an
    environment token is exactly zero (no term reads it), and not at the policy's tokens; and
    perturbing those hidden states (hence the reply tokens' log-probs) leaves the loss as it
    was."""
    from transformers import AutoModelForCausalLM

    from rayrm.core_algos import kl_estimate, ppo_policy_loss
    from rayrm.models.heads import token_logp_entropy, trunk, trunk_hidden

    model = AutoModelForCausalLM.from_pretrained(archs["qwen2"]).float()
    prompt = np.array([3, 4, 5, 6])
    actions = torch.tensor([40, 41, 42, 43, 44, 45])
    inserts = [(2, [50, 51, 52, 53])]  # a reply after the third action
    rows = token_rows([prompt], actions, [len(actions)], [inserts])
    ids, length = rows["input_ids"], rows["length"].reshape(-1)
    sequence = ids[-1, : int(length[-1])].tolist() + [int(actions[-1])]
    env_targets = [length[2].item() + 1 + k for k in range(4)]  # positions of reply tokens
    captured = {}

    def keep(_module, _inputs, out):
        out.last_hidden_state.retain_grad()
        captured["h"] = out.last_hidden_state

    def loss_of(m) -> torch.Tensor:
        hook = trunk(m).register_forward_hook(keep)
        try:
            full = torch.tensor([sequence[:-1]])
            hidden = trunk_hidden(m, full, torch.zeros(len(actions), dtype=torch.long), length - 1)
        finally:
            hook.remove()
        logp, entropy = token_logp_entropy(m, hidden, actions, temperature=1.0)
        adv = torch.linspace(-1, 1, len(actions))
        pg, _ = ppo_policy_loss(
            logp=logp, old_logp=logp.detach() + 0.1, advantages=adv, clip_ratio=0.2
        )
        kl = kl_estimate(logp=logp, ref_logp=logp.detach() - 0.3, kind="k3").mean()
        return pg - 0.01 * entropy.mean() + 0.05 * kl

    loss = loss_of(model)
    loss.backward()
    grad = captured["h"].grad[0]  # (L, H)
    predicts = [p - 1 for p in env_targets]  # hidden state at p - 1 predicts token p
    assert torch.count_nonzero(grad[predicts]) == 0
    policy_positions = (length - 1).tolist()
    assert all(grad[p].abs().sum() > 0 for p in policy_positions)
    # Perturb the hidden states at the positions that predict reply tokens: no change.
    before = float(loss.detach())
    hook_scale = {}

    def perturb(_module, _inputs, out):
        h = out.last_hidden_state.clone()
        h[0, predicts] += torch.randn_like(h[0, predicts])
        hook_scale["done"] = True
        out.last_hidden_state = h
        return out

    handle = trunk(model).register_forward_hook(perturb)
    try:
        after = float(loss_of(model))
    finally:
        handle.remove()
    assert hook_scale and after == pytest.approx(before, abs=1e-6)


def test_config_checks_the_env_section(tmp_path, archs):
    """The env section's errors name their key: a class that does not import, a sequence
    longer than the model's positions, reward.source env without it."""
    from envs.tasks import guess
    from rayrm.config import ConfigError, config_from_dict

    rows = str(guess.write_rows(tmp_path / "g.jsonl", 4))
    base = {
        "model": {"path": archs["qwen2"]},
        "data": {"prompts": rows},
        "env": {"environment": "envs.tasks.guess:GuessTheNumber", "max_total_tokens": 90},
        "reward": {"source": "env"},
        "eval": {"every": 0, "report": False},
        "run": {"storage_path": str(tmp_path / "runs")},
    }
    config_from_dict(base, check_paths=True)
    too_long = {**base, "env": {**base["env"], "max_total_tokens": 512}}
    with pytest.raises(ConfigError, match="position limit") as err:
        config_from_dict(too_long, check_paths=True)
    assert err.value.key == "env.max_total_tokens"
    bad = {**base, "env": {**base["env"], "environment": "envs.tasks.guess:Nope"}}
    with pytest.raises(ConfigError, match="env.environment") as err:
        config_from_dict(bad, check_paths=True)
    assert err.value.key == "env.environment"
    with pytest.raises(ConfigError, match="no env section") as err:
        config_from_dict({k: v for k, v in base.items() if k != "env"}, check_paths=False)
    assert err.value.key == "reward.source"


def test_turn_decoding_benchmark_lines(archs):
    """``rayrm bench --sections turns`` lines: per-turn costs and the ratio, per variant."""
    from rayrm.bench.turns import measure_turn_decoding

    lines = measure_turn_decoding(
        archs["gpt2"], batch=3, prompt_tokens=4, turns=3, turn_tokens=4, reply_tokens=3, repeats=1
    )
    assert [line["variant"] for line in lines] == ["aligned", "staggered"]
    for line in lines:
        assert len(line["s_per_token_by_turn"]) == 3 and min(line["s_per_token_by_turn"]) > 0
        assert line["last_over_first"]["median"] > 0 and line["s_per_reply_token"] > 0
        assert line["met"] == (line["last_over_first"]["median"] <= line["target"])
