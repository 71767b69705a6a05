"""Equivalence tests of the policy RLModule on a tiny random GPT-2 (no Ray cluster).

* KV-cached decoding (``decode_start``/``decode_step`` over LEFT-padded prompts) gives the same
  next-token distribution as a fresh full forward pass over the unpadded sequence.
* The learner's one-pass-per-completion forward (rows grouped by ``seq_id``) gives the same
  log-probs, entropies, values and gradients as one forward pass per row.
* The reference model is a frozen copy of the initial policy; dropout is off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from transformers import AutoConfig, GPT2LMHeadModel

from envs.text_generation import TextGenerationEnv
from rayrm.models.tiny import build_tiny_policy
from rayrm.rl.env_runner import left_pad
from rayrm.rl.module import (
    ENTROPY,
    LOGP,
    SEQ_ID,
    VF_PREDS,
    LMPolicyModule,
    group_rows,
    load_causal_lm,
)

torch.set_num_threads(1)

MAX_PROMPT, MAX_NEW = 8, 6
PROMPTS = ["hi", "hello you", "abc"]  # 2, 8 (left-truncated from 9) and 3 tokens
FIRST_TOKEN = 3  # ids 0, 1, 2 are pad, EOS, unk in the built-in char tokenizer
ATOL = 1e-5


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy")


@pytest.fixture(scope="module")
def env(model_dir: str) -> TextGenerationEnv:
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    return TextGenerationEnv(
        tokenizer=model_dir, max_prompt_tokens=MAX_PROMPT, max_new_tokens=MAX_NEW, vocab_size=vocab
    )


def build_module(model_dir: str, env: TextGenerationEnv) -> LMPolicyModule:
    spec = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"path": model_dir, "temperature": 1.0},
        inference_only=False,
    )
    return spec.build()


@pytest.fixture(scope="module")
def module(model_dir: str, env: TextGenerationEnv) -> LMPolicyModule:
    m = build_module(model_dir, env)
    m.train()  # the learner's mode; dropout is off so it is also the sampler's distribution
    return m


@pytest.fixture(scope="module")
def completions(env: TextGenerationEnv) -> list[list[int]]:
    """Three whole completions of different lengths: two end at EOS, the third truncates."""
    rng = np.random.default_rng(0)
    gen = [rng.integers(FIRST_TOKEN, env.vocab_size, size=n).tolist() for n in (4, 2, MAX_NEW)]
    gen[0][-1] = gen[1][-1] = env.eos_token_id
    return gen


def prompt_ids(env: TextGenerationEnv, prompt: str) -> np.ndarray:
    obs, _ = env.reset(options={"prompt": prompt})
    return obs["input_ids"][: int(obs["length"][0])]


def make_batch(
    env: TextGenerationEnv,
    completions: list[list[int]],
    *,
    with_seq_id: bool = True,
) -> dict:
    """Token rows as the env produces them: row t of a completion = state before action t.

    Each completion stops where the env ends the episode (EOS or ``max_new_tokens``).
    """
    ids, lengths, actions, seq_ids = [], [], [], []
    for k, (prompt, gen) in enumerate(zip(PROMPTS, completions, strict=True)):
        obs, _ = env.reset(options={"prompt": prompt})
        for tok in gen:
            ids.append(obs["input_ids"])
            lengths.append(obs["length"])
            actions.append(tok)
            seq_ids.append(10 * k + 7)  # any integer ids, not necessarily 0..G-1
            obs, _, terminated, truncated, _ = env.step(tok)
            if terminated or truncated:
                break
        assert terminated or truncated  # whole completions only, as the env runner samples
    batch = {
        Columns.OBS: {
            "input_ids": torch.from_numpy(np.stack(ids)),  # (N, L) right-padded
            "length": torch.from_numpy(np.stack(lengths)),  # (N, 1)
        },
        Columns.ACTIONS: torch.tensor(actions),  # (N,)
    }
    if with_seq_id:
        batch[SEQ_ID] = torch.tensor(seq_ids)  # (N,)
    return batch


def take_rows(batch: dict, rows: torch.Tensor) -> dict:
    out = {
        Columns.OBS: {k: v[rows] for k, v in batch[Columns.OBS].items()},
        Columns.ACTIONS: batch[Columns.ACTIONS][rows],
    }
    if SEQ_ID in batch:
        out[SEQ_ID] = batch[SEQ_ID][rows]
    return out


def full_forward_logits(module: LMPolicyModule, ids: list[int]) -> torch.Tensor:
    """(V,) next-token logits of ONE unpadded sequence, by a plain forward of the HF model."""
    with torch.no_grad():
        return module.lm(input_ids=torch.tensor([ids])).logits[0, -1].float()


def full_forward_value(module: LMPolicyModule, ids: list[int]) -> torch.Tensor:
    """V of ONE unpadded sequence: the value head on the trunk's last hidden state."""
    critic = getattr(module, "critic", None)
    with torch.no_grad():
        x = torch.tensor([ids])
        if critic is not None:
            hidden = critic(input_ids=x).last_hidden_state[0, -1]
        else:
            hidden = module.lm(input_ids=x, output_hidden_states=True).hidden_states[-1][0, -1]
        return module.value_head(hidden).squeeze(-1)


def check_against_plain_forward(module: LMPolicyModule, batch: dict, out: dict) -> None:
    """Every row's logp and value against a plain HF forward over its real tokens."""
    ids = batch[Columns.OBS]["input_ids"]
    length = batch[Columns.OBS]["length"].reshape(-1)
    actions = batch[Columns.ACTIONS]
    for n in range(len(ids)):
        row = ids[n, : length[n]].tolist()
        logp = torch.log_softmax(full_forward_logits(module, row) / module.temperature, -1)
        torch.testing.assert_close(out[LOGP][n], logp[actions[n]], atol=ATOL, rtol=0)
        torch.testing.assert_close(
            out[VF_PREDS][n], full_forward_value(module, row), atol=ATOL, rtol=0
        )


def grads_of(module: LMPolicyModule, batch: dict) -> list[torch.Tensor]:
    module.zero_grad(set_to_none=True)
    out = module.forward_train(batch)
    (out[LOGP].sum() + out[VF_PREDS].sum() + 0.1 * out[ENTROPY].sum()).backward()
    grads = [
        torch.zeros_like(p) if p.grad is None else p.grad.clone()
        for p in module.trainable_parameters()
    ]
    module.zero_grad(set_to_none=True)
    return grads


# --- helpers -----------------------------------------------------------------------------------


def test_left_pad_hand_example():
    ids, mask = left_pad([np.array([5, 6, 7]), np.array([8]), np.array([9, 4])], pad_id=0)
    torch.testing.assert_close(ids, torch.tensor([[5, 6, 7], [0, 0, 8], [0, 9, 4]]))
    torch.testing.assert_close(mask, torch.tensor([[1, 1, 1], [0, 0, 1], [0, 1, 1]]))
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64


def test_group_rows_hand_example():
    seq_id = torch.tensor([5, 5, 2, 5, 2, 9])
    length = torch.tensor([3, 5, 2, 4, 4, 1])
    rep, inverse = group_rows(seq_id, length)
    # groups in sorted id order: 2 -> rows {2, 4}, 5 -> rows {0, 1, 3}, 9 -> row {5}
    torch.testing.assert_close(inverse, torch.tensor([1, 1, 0, 1, 0, 2]))
    # longest row of each: id 2 -> row 4 (len 4), id 5 -> row 1 (len 5), id 9 -> row 5
    torch.testing.assert_close(rep, torch.tensor([4, 1, 5]))
    # ties pick the first row
    rep, inverse = group_rows(torch.tensor([3, 3, 3]), torch.tensor([2, 4, 4]))
    torch.testing.assert_close(rep, torch.tensor([1]))
    torch.testing.assert_close(inverse, torch.tensor([0, 0, 0]))


# --- KV-cached decoding == full forward --------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kv_cached_decoding_matches_full_forward(module, env, monkeypatch, temperature):
    monkeypatch.setattr(module, "temperature", temperature)
    prompts = [prompt_ids(env, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # really different lengths
    ids, mask = left_pad(prompts, env.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    generated: list[list[int]] = [[] for _ in prompts]
    logits, cache = module.decode_start(ids, mask)
    for step in range(MAX_NEW):
        tokens, logp = module.sample_next(logits, generator=gen)
        for i, prompt in enumerate(prompts):
            context = prompt.tolist() + generated[i]
            ref_logits = full_forward_logits(module, context)  # (V,)
            torch.testing.assert_close(logits[i], ref_logits, atol=ATOL, rtol=0)
            ref_logp = torch.log_softmax(ref_logits / temperature, dim=-1)[tokens[i]]
            torch.testing.assert_close(logp[i], ref_logp, atol=ATOL, rtol=0)
            generated[i].append(int(tokens[i]))
        if step + 1 < MAX_NEW:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = module.decode_step(tokens, cache, mask)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logp_equals_learner_logp_before_update(module, env, monkeypatch, temperature):
    """PPO's first ratio is exactly 1: the sampler's and the learner's log-probs agree."""
    monkeypatch.setattr(module, "temperature", temperature)
    prompts = [prompt_ids(env, p) for p in PROMPTS]
    ids, mask = left_pad(prompts, env.pad_token_id)
    gen = torch.Generator().manual_seed(2)
    tokens_steps, logp_steps = [], []
    logits, cache = module.decode_start(ids, mask)
    for _ in range(MAX_NEW):
        tokens, logp = module.sample_next(logits, generator=gen)
        tokens_steps.append(tokens)
        logp_steps.append(logp)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = module.decode_step(tokens, cache, mask)
    tokens_all = torch.stack(tokens_steps, 1)  # (B, MAX_NEW)
    logp_all = torch.stack(logp_steps, 1)  # (B, MAX_NEW)
    completions = tokens_all.tolist()
    batch = make_batch(env, completions)  # cut at EOS like the env runner
    n_rows = [int((batch[SEQ_ID] == 10 * k + 7).sum()) for k in range(len(PROMPTS))]
    sampled_logp = torch.cat([logp_all[k, :n] for k, n in enumerate(n_rows)])
    with torch.no_grad():
        out = module.forward_train(batch)
    torch.testing.assert_close(out[LOGP], sampled_logp, atol=ATOL, rtol=0)
    # The reference is the initial policy, so the k1 KL of every token starts at 0.
    torch.testing.assert_close(module.compute_ref_logp(batch), sampled_logp, atol=ATOL, rtol=0)


def test_kv_cached_greedy_decoding_matches_full_forward_argmax(module, env):
    prompts = [prompt_ids(env, p) for p in PROMPTS]
    ids, mask = left_pad(prompts, env.pad_token_id)
    logits, cache = module.decode_start(ids, mask)
    cached: list[list[int]] = [[] for _ in prompts]
    for _ in range(MAX_NEW):
        tokens, _ = module.sample_next(logits, greedy=True)
        for i in range(len(prompts)):
            cached[i].append(int(tokens[i]))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = module.decode_step(tokens, cache, mask)
    for i, prompt in enumerate(prompts):
        seq = prompt.tolist()
        for _ in range(MAX_NEW):
            seq.append(int(full_forward_logits(module, seq).argmax()))
        assert seq[len(prompt) :] == cached[i]


# --- one-pass learner forward == per-step forward ----------------------------------------------


def test_batch_rows_are_prefixes(env, completions):
    """The premise of the one-pass forward: a completion's rows are prefixes of its last row."""
    batch = make_batch(env, completions)
    ids = batch[Columns.OBS]["input_ids"]
    length = batch[Columns.OBS]["length"].reshape(-1)
    assert ids.shape == (sum(map(len, completions)), MAX_PROMPT + MAX_NEW)
    assert length.tolist() == [2, 3, 4, 5, 8, 9, 3, 4, 5, 6, 7, 8]  # "hello you" keeps 8
    for sid in batch[SEQ_ID].unique():
        rows = torch.nonzero(batch[SEQ_ID] == sid).squeeze(-1)
        last = rows[-1]
        for r in rows:
            assert torch.equal(ids[r, : length[r]], ids[last, : length[r]])
            assert (ids[r, length[r] :] == env.pad_token_id).all()  # right-padded


def test_forward_train_one_pass_equals_per_row(module, env, completions):
    grouped = make_batch(env, completions)
    per_row = make_batch(env, completions, with_seq_id=False)
    with torch.no_grad():
        out_g = module.forward_train(grouped)
        out_r = module.forward_train(per_row)
    for key in (LOGP, ENTROPY, VF_PREDS):
        assert out_g[key].shape == (len(grouped[Columns.ACTIONS]),)
        torch.testing.assert_close(out_g[key], out_r[key], atol=ATOL, rtol=0)

    check_against_plain_forward(module, grouped, out_g)

    # compute_values is the same value head as forward_train's vf_preds.
    with torch.no_grad():
        torch.testing.assert_close(
            module.compute_values(grouped), out_r[VF_PREDS], atol=ATOL, rtol=0
        )


def test_forward_train_one_pass_gradients_equal_per_row(module, env, completions):
    grads_g = grads_of(module, make_batch(env, completions))
    grads_r = grads_of(module, make_batch(env, completions, with_seq_id=False))
    assert len(grads_g) == len(grads_r) > 0
    assert any(g.abs().sum() > 0 for g in grads_g)
    for g, r in zip(grads_g, grads_r, strict=True):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=1e-4)


def test_forward_train_follows_shuffled_rows(module, env, completions):
    batch = make_batch(env, completions)
    perm = torch.randperm(len(batch[Columns.ACTIONS]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = module.forward_train(batch)
        out_perm = module.forward_train(take_rows(batch, perm))
    for key in (LOGP, ENTROPY, VF_PREDS):
        torch.testing.assert_close(out_perm[key], out[key][perm], atol=ATOL, rtol=0)


def test_forward_exploration_logits_match_forward_train(module, env, completions):
    batch = make_batch(env, completions)
    with torch.no_grad():
        logits = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
        out = module.forward_train(batch)
    logp = torch.log_softmax(logits, -1).gather(-1, batch[Columns.ACTIONS][:, None]).squeeze(-1)
    torch.testing.assert_close(logp, out[LOGP], atol=ATOL, rtol=0)


def test_separate_critic_one_pass_equals_per_row(model_dir, env, completions):
    spec = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"path": model_dir, "critic": "separate"},
        inference_only=False,
    )
    module = spec.build()
    assert module.critic is not None
    grouped = make_batch(env, completions)
    per_row = make_batch(env, completions, with_seq_id=False)
    with torch.no_grad():
        out_g, out_r = module.forward_train(grouped), module.forward_train(per_row)
        values = module.compute_values(grouped)
    for key in (LOGP, ENTROPY, VF_PREDS):
        torch.testing.assert_close(out_g[key], out_r[key], atol=ATOL, rtol=0)
    torch.testing.assert_close(values, out_r[VF_PREDS], atol=ATOL, rtol=0)
    check_against_plain_forward(module, grouped, out_g)
    trainable = {id(p) for p in module.trainable_parameters()}
    assert {id(p) for p in module.critic.parameters()} <= trainable
    grads_g, grads_r = grads_of(module, grouped), grads_of(module, per_row)
    for g, r in zip(grads_g, grads_r, strict=True):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=1e-4)


def test_a_new_value_head_predicts_zero_so_first_advantages_are_the_return(
    model_dir, env, completions
):
    """A value head that does not start from a reward model's scorer predicts 0 for every
    token, so GAE's first advantages are the discounted return, (γλ)^(T-1-t)·R, not noise.
    (With a 1/sqrt(hidden) init the values were about ±1 per token, and their differences,
    whitened, became unit-scale advantages of random sign: on the tool task one PPO update
    broke the SFT policy's tool-call format, on 2 seeds of 3.)"""
    from rayrm.core_algos.advantages import gae_advantages

    module = build_module(model_dir, env)
    batch = make_batch(env, completions)
    with torch.no_grad():
        values = module.compute_values(batch)
    assert values.shape == (len(batch["actions"]),) and torch.count_nonzero(values) == 0
    T, reward = len(completions[0]), 1.0
    rewards = np.zeros(T)
    rewards[-1] = reward
    advantages, _ = gae_advantages(
        rewards=rewards, values=values[:T].numpy(), gamma=1.0, gae_lambda=0.95
    )
    np.testing.assert_allclose(advantages, reward * 0.95 ** np.arange(T - 1, -1, -1))


# --- reference model ---------------------------------------------------------------------------


def test_ref_model_is_frozen_copy_of_initial_policy(model_dir, env, completions):
    module = build_module(model_dir, env)
    batch = make_batch(env, completions)
    ref_logp = module.compute_ref_logp(batch)
    assert not ref_logp.requires_grad
    with torch.no_grad():
        logp = module.forward_train(batch)[LOGP]
    torch.testing.assert_close(ref_logp, logp, atol=1e-6, rtol=0)

    ref_params = list(module.ref_model.parameters())
    assert ref_params and not any(p.requires_grad for p in ref_params)
    trainable = {id(p) for p in module.trainable_parameters()}
    assert trainable.isdisjoint(id(p) for p in ref_params)
    expected = {id(p) for p in module.lm.parameters()} | {
        id(p) for p in module.value_head.parameters()
    }
    assert trainable == expected
    assert any(k.startswith("ref_model.") for k in module.state_dict())  # saved with the module

    # An update of the policy leaves the reference untouched (no shared storage).
    with torch.no_grad():
        for p in module.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
        moved = module.forward_train(batch)[LOGP]
    assert (moved - logp).abs().max() > 1e-3
    torch.testing.assert_close(module.compute_ref_logp(batch), ref_logp, atol=0, rtol=0)


def test_reference_path_loads_the_reference_from_another_model(
    model_dir, env, completions, tmp_path
):
    """``model.reference_path``: the policy goes on from one model (a trained policy), the KL
    is to another (where training began): ref log-probs are the other model's, exactly."""
    trained = build_module(model_dir, env)
    with torch.no_grad():
        for p in trained.lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trained.lm.save_pretrained(tmp_path / "trained")
    spec = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"path": str(tmp_path / "trained"), "reference_path": model_dir},
        inference_only=False,
    )
    module, original = spec.build(), build_module(model_dir, env)
    batch = make_batch(env, completions)
    with torch.no_grad():
        start = module.forward_train(batch)[LOGP]
        torch.testing.assert_close(start, trained.forward_train(batch)[LOGP], atol=1e-6, rtol=0)
        original_logp = original.forward_train(batch)[LOGP]
    ref_logp = module.compute_ref_logp(batch)
    torch.testing.assert_close(ref_logp, original_logp, atol=1e-6, rtol=0)
    assert (start - ref_logp).abs().max() > 1e-3  # a KL before the first update


# --- dropout -----------------------------------------------------------------------------------


def test_loaded_models_have_dropout_off(model_dir):
    raw = AutoConfig.from_pretrained(model_dir).to_dict()
    drop_keys = [
        k for k, v in raw.items() if isinstance(v, float) and ("pdrop" in k or "dropout" in k)
    ]
    assert any(raw[k] > 0 for k in drop_keys)  # GPT-2's defaults: the test is not vacuous
    config = load_causal_lm(model_dir).config.to_dict()
    assert {k: config[k] for k in drop_keys} == dict.fromkeys(drop_keys, 0.0)


def test_nested_configs_have_dropout_off_too():
    """Multimodal-style checkpoints keep their language model's settings in ``text_config``
    (and a vision tower's in ``vision_config``): their dropout goes off too."""
    from transformers import Gemma3Config, Gemma3TextConfig

    from rayrm.models.loading import zero_dropout

    text = Gemma3TextConfig(attention_dropout=0.1).to_dict()
    config = Gemma3Config(text_config=text, vision_config={"attention_dropout": 0.2})
    assert config.text_config.attention_dropout == 0.1  # not vacuous
    zero_dropout(config)
    assert config.text_config.attention_dropout == 0.0
    assert config.vision_config.attention_dropout == 0.0


def test_forward_train_deterministic_in_train_mode(module, env, completions):
    batch = make_batch(env, completions)
    assert module.training and module.lm.training
    with torch.no_grad():
        a, b = module.forward_train(batch), module.forward_train(batch)
    for key in (LOGP, ENTROPY, VF_PREDS):
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_dropout_would_be_detected(model_dir):
    """Control: the same model loaded with its default dropout is noisy in train mode."""
    lm = GPT2LMHeadModel.from_pretrained(model_dir).train()
    x = torch.tensor([[5, 6, 7, 8]])
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(lm(input_ids=x).logits, lm(input_ids=x).logits)


def test_critic_started_from_a_reward_model_predicts_its_scores(
    model_dir, env, completions, tmp_path
):
    """``model.critic_path`` at a reward model: trunk AND score head, so before any update the
    value of every state equals the reward model's score of that prefix (as InstructGPT and
    TRL start the value model)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    with torch.no_grad():
        rm.score.weight.normal_()  # a head that is not the value head's initialisation
    rm.config.pad_token_id = rm.config.eos_token_id
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp_path / "rm")
    spec = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"path": model_dir, "critic": "separate", "critic_path": str(tmp_path / "rm")},
        inference_only=False,
    )
    module = spec.build()
    batch = make_batch(env, completions)
    values = module.compute_values(batch)  # (N,)
    ids, lengths = batch[Columns.OBS]["input_ids"], batch[Columns.OBS]["length"].reshape(-1)
    rm.eval()
    with torch.no_grad():
        scores = torch.stack(
            [rm(input_ids=ids[i : i + 1, : lengths[i]]).logits[0, 0] for i in range(len(ids))]
        )
    torch.testing.assert_close(values, scores, atol=1e-5, rtol=0)


def test_a_bidirectional_critic_is_refused(model_dir, env, completions, tmp_path):
    """An encoder reward model (BERT-style, as DeBERTa reward models are) as the critic: its
    value of a state would read the tokens after it, so the first forward refuses it by name."""
    from transformers import BertConfig, BertForSequenceClassification

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    config = BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=1,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert-rm")
    spec = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={
            "path": model_dir, "critic": "separate", "critic_path": str(tmp_path / "bert-rm")
        },
        inference_only=False,
    )  # fmt: skip
    module = spec.build()
    with pytest.raises(ValueError, match=r"critic .*bert-rm \(BertModel\).*not causal"):
        module.compute_values(make_batch(env, completions))
