"""Real model and tokenizer kinds, without Ray: special tokens, exact text, stop tokens, chat
templates, KV-cached decoding per architecture, the LM head in chunks, mixed precision.

The tokenizers are built locally with ``tokenizers`` (byte-level BPE as GPT-2 and Qwen2,
SentencePiece-style Metaspace with byte fallback and ``<s>`` as Llama) and loaded back with
``AutoTokenizer.from_pretrained`` from their saved directories, as users' checkpoints are.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from helpers import episode_of
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from envs.text_generation import TextGenerationEnv
from rayrm.core_algos import logp_and_entropy
from rayrm.models.decoding import decode_start, decode_step, left_pad, sample_sequences
from rayrm.models.heads import check_head_path, head_logits, token_logp, token_logp_entropy
from rayrm.models.hf_files import stop_token_ids_of
from rayrm.models.precision import MasterWeightAdam
from rayrm.models.tiny import build_tiny_model
from rayrm.models.tokenization import PromptCodec
from rayrm.rl.module import LOGP, SEQ_ID, LMPolicyModule

torch.set_num_threads(1)

ARCHS = ("gpt2", "llama", "qwen2", "mistral", "gemma2")
PROMPTS = ["the cat said", "hello world, how", "a naïve café"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One tiny random model per architecture, each with its own kind of tokenizer."""
    root = tmp_path_factory.mktemp("archs")
    return {arch: build_tiny_model(root / arch, arch=arch, hidden=32, heads=4) for arch in ARCHS}


def tokenizer_of(model_dirs: dict[str, str], arch: str):
    return AutoTokenizer.from_pretrained(model_dirs[arch])


# --- tokenizers as real checkpoints ship them ----------------------------------------------------


def test_tokenizer_kinds_load_as_their_checkpoint_classes(model_dirs):
    # transformers 5 names the tokenizers-backed classes as the checkpoints do; 4.x adds "Fast".
    # (A Mistral checkpoint names LlamaTokenizer too; transformers 5 loads it as its generic
    # tokenizers-backed class for model_type mistral, 4.x as LlamaTokenizerFast.)
    kinds = {
        arch: type(tokenizer_of(model_dirs, arch)).__name__.removesuffix("Fast") for arch in ARCHS
    }
    assert kinds == {
        "gpt2": "GPT2Tokenizer", "llama": "LlamaTokenizer", "qwen2": "Qwen2Tokenizer",
        "mistral": kinds["mistral"], "gemma2": "GemmaTokenizer",
    }  # fmt: skip
    assert kinds["mistral"] in ("LlamaTokenizer", "TokenizersBackend")
    llama = tokenizer_of(model_dirs, "llama")
    ids = llama("hello ж")["input_ids"]
    tokens = llama.convert_ids_to_tokens(ids)
    assert tokens[0] == "<s>" and "<0xD0>" in tokens and "<0xB6>" in tokens  # byte fallback
    assert llama.decode(ids, skip_special_tokens=True) == "hello ж"
    qwen = tokenizer_of(model_dirs, "qwen2")
    assert qwen.eos_token == "<|im_end|>" and qwen.pad_token == "<|endoftext|>"
    assert qwen.chat_template and "<|im_start|>" in qwen.chat_template
    mistral = tokenizer_of(model_dirs, "mistral")
    assert mistral("hello ж")["input_ids"] == ids  # Llama's kind
    # Gemma: <bos> before every text, no dummy prefix (so decoding strips no space), its chat
    # template holds its own <bos>.
    gemma = tokenizer_of(model_dirs, "gemma2")
    ids = gemma("hello world")["input_ids"]
    assert ids[0] == gemma.bos_token_id == 2 and gemma.convert_ids_to_tokens(ids)[1] == "hello"
    assert gemma.decode(gemma(" hi", add_special_tokens=False)["input_ids"]) == " hi"
    chat = gemma.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert gemma(chat, add_special_tokens=False)["input_ids"].count(gemma.bos_token_id) == 1
    # Qwen2 ties its embeddings and uses grouped-query attention with one KV head.
    config = AutoConfig.from_pretrained(model_dirs["qwen2"])
    assert config.tie_word_embeddings and config.num_key_value_heads == 1
    assert config.num_attention_heads == 4


def test_generation_config_stop_ids(model_dirs):
    qwen = tokenizer_of(model_dirs, "qwen2")
    ids = stop_token_ids_of(model_dirs["qwen2"])
    assert set(ids) == {qwen.convert_tokens_to_ids("<|im_end|>"), qwen.pad_token_id}
    assert stop_token_ids_of(model_dirs["llama"]) == [
        tokenizer_of(model_dirs, "llama").eos_token_id
    ]
    gemma = tokenizer_of(model_dirs, "gemma2")
    assert set(stop_token_ids_of(model_dirs["gemma2"])) == {
        gemma.eos_token_id,
        gemma.convert_tokens_to_ids("<end_of_turn>"),
    }


# --- special tokens and exact text ---------------------------------------------------------------


def test_prompts_get_bos_as_the_model_was_trained(model_dirs):
    llama = PromptCodec(tokenizer_of(model_dirs, "llama"), max_prompt_tokens=6)
    ids = llama.encode("the cat said")
    assert ids[0] == llama.bos_token_id == 1
    long = llama.encode("the quick brown fox jumps over the lazy dog")
    assert len(long) == 6 and long[0] == llama.bos_token_id  # truncation keeps the BOS
    assert (
        long[1:] == llama.tokenizer("the quick brown fox jumps over the lazy dog")["input_ids"][-5:]
    )
    gpt2 = PromptCodec(tokenizer_of(model_dirs, "gpt2"), max_prompt_tokens=16)
    assert (
        gpt2.encode("the cat") == gpt2.tokenizer("the cat", add_special_tokens=False)["input_ids"]
    )  # GPT-2 adds nothing: its BOS id is its EOS, never prepended


def test_trailing_special_tokens_are_not_prompted(model_dirs, tmp_path):
    """A tokenizer that appends EOS to every text must not end a prompt with it."""
    from tokenizers import processors

    tok = tokenizer_of(model_dirs, "llama")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    assert tok("the cat")["input_ids"][-1] == tok.eos_token_id
    ids = PromptCodec(tok, max_prompt_tokens=16).encode("the cat")
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id


@pytest.mark.parametrize("arch", ARCHS)
def test_texts_are_prompt_and_completion_decoded_together(model_dirs, arch):
    tok = tokenizer_of(model_dirs, arch)
    codec = PromptCodec(tok, max_prompt_tokens=32)
    prompt_ids = codec.encode("the cat said")
    completion = tok("the cat said hello to the dog", add_special_tokens=False)["input_ids"]
    body = prompt_ids[1:] if arch in ("llama", "mistral", "gemma2") else prompt_ids  # a BOS
    assert completion[: len(body)] == body
    generated = [*completion[len(body) :], tok.eos_token_id]
    prompt_text, completion_text = codec.texts(prompt_ids, generated)
    assert (prompt_text, completion_text) == ("the cat said", " hello to the dog")
    if arch in ("llama", "mistral"):  # the bug this rule fixes: the dummy prefix's space
        assert tok.decode(generated[:-1], skip_special_tokens=True) == "hello to the dog"


def test_env_reward_reads_exact_text_with_sentencepiece(model_dirs):
    calls = []

    def reward_fn(prompts, completions):
        calls.append((prompts[0], completions[0]))
        return [0.0]

    tok = tokenizer_of(model_dirs, "llama")
    env = TextGenerationEnv(
        tokenizer=tok, prompts=["the cat said"], reward_fn=reward_fn, max_new_tokens=8
    )
    obs, _ = env.reset(seed=0)
    words = tok("the cat said hello dog", add_special_tokens=False)["input_ids"][3:]
    for token in [*words, tok.eos_token_id]:
        obs, _, terminated, _, info = env.step(token)
    assert terminated and calls == [("the cat said", " hello dog")]
    ids = obs["input_ids"][: obs["length"][0] - 1].tolist()  # without the EOS
    assert info["prompt_text"] + info["completion"] == tok.decode(ids, skip_special_tokens=True)


def test_several_stop_ids_and_stop_strings_end_episodes(model_dirs):
    tok = tokenizer_of(model_dirs, "qwen2")
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    env = TextGenerationEnv(
        tokenizer=tok,
        prompts=["hi"],
        reward_fn=None,
        max_new_tokens=20,
        stop_token_ids=[endoftext],
        stop_strings=["dog"],
    )
    word = tok(" the", add_special_tokens=False)["input_ids"]
    for stop in (tok.eos_token_id, endoftext):  # <|im_end|>, then <|endoftext|>
        env.reset(seed=0)
        for token in word:
            assert not env.step(token)[2]
        _, _, terminated, truncated, info = env.step(stop)
        assert terminated and not truncated and info["completion"] == " the"
        assert info["num_generated"] == len(word) + 1  # the stop token is the last action
    env.reset(seed=0)
    text_ids = tok(" the lazy dog jumps", add_special_tokens=False)["input_ids"]
    for token in text_ids:
        _, _, terminated, _, info = env.step(token)
        if terminated:
            break
    assert terminated and info["completion"] == " the lazy dog"
    assert info["num_generated"] < len(text_ids)  # ended at "dog", before " jumps"


def test_completion_length_is_the_texts_tokens_whatever_ended_it(model_dirs):
    """``Completion.num_tokens`` (the length penalty's length) leaves out a stop token, which
    is not in the text, but not the last token of a stop string, which is."""
    from rayrm.rl.episodes import completion_of

    tok = tokenizer_of(model_dirs, "qwen2")
    env = TextGenerationEnv(
        tokenizer=tok, prompts=["hi"], reward_fn=None, max_new_tokens=20, stop_strings=["dog"]
    )
    word = tok(" the", add_special_tokens=False)["input_ids"]
    by_token = completion_of(episode_of(env, [*word, tok.eos_token_id]))
    assert by_token.finished and by_token.num_tokens == len(word)
    text_ids = tok(" the lazy dog jumps", add_special_tokens=False)["input_ids"]
    episode = episode_of(env, text_ids)
    by_string = completion_of(episode)
    assert by_string.completion == " the lazy dog" and by_string.finished
    assert by_string.num_tokens == len(episode) == len(tok(" the lazy dog")["input_ids"])
    truncated = completion_of(episode_of(env, [*word] * 20))
    assert not truncated.finished and truncated.num_tokens == 20


def test_chat_prompts_render_with_the_template(model_dirs, tmp_path):
    from rayrm.data.prompts import write_prompts_jsonl

    tok = tokenizer_of(model_dirs, "qwen2")
    conversation = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    path = write_prompts_jsonl(tmp_path / "chat.jsonl", [conversation], column="messages")
    env = TextGenerationEnv(tokenizer=tok, prompts=str(path), reward_fn=None, max_prompt_tokens=64)
    obs, info = env.reset(seed=0)
    rendered = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    expected = tok(rendered, add_special_tokens=False)["input_ids"]
    assert obs["input_ids"][: obs["length"][0]].tolist() == expected
    assert info["messages"] == conversation and info["prompt"] == rendered
    # data.chat_template: a plain prompt becomes one user message.
    env = TextGenerationEnv(tokenizer=tok, prompts=["hello"], reward_fn=None, chat_template=True)
    _, info = env.reset(seed=0)
    assert info["messages"] == [{"role": "user", "content": "hello"}]
    with pytest.raises(ValueError, match="no chat template"):
        TextGenerationEnv(tokenizer=tokenizer_of(model_dirs, "gpt2"), chat_template=True)


def test_malformed_conversations_name_the_row(tmp_path):
    from rayrm.data.prompts import load_prompt_rows

    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a"}]}\n{"messages": [{"x": 1}]}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, column 'messages', row 1, message 0"):
        load_prompt_rows(path)


# --- KV-cached decoding == full forward, per architecture ----------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cached_sampling_logp_equals_full_forward(model_dirs, arch):
    tok = tokenizer_of(model_dirs, arch)
    model = AutoModelForCausalLM.from_pretrained(model_dirs[arch]).eval()
    codec = PromptCodec(tok, max_prompt_tokens=16)
    prompts = [codec.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    ids, mask = left_pad(prompts, codec.pad_token_id)
    generator = torch.Generator().manual_seed(0)
    generated: list[list[int]] = [[] for _ in prompts]
    logits, cache = decode_start(model, ids, mask)
    for _ in range(6):
        probs = torch.softmax(logits, -1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        for i, prompt in enumerate(prompts):
            with torch.no_grad():
                full = model(input_ids=torch.tensor([prompt + generated[i]])).logits[0, -1]
            torch.testing.assert_close(
                torch.log_softmax(logits[i], -1),
                torch.log_softmax(full.float(), -1),
                atol=1e-5,
                rtol=0,
            )
            generated[i].append(int(tokens[i]))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = decode_step(model, tokens, cache, mask)


@pytest.mark.parametrize("arch", ARCHS)
def test_learner_forward_equals_sampler_logp(model_dirs, arch):
    """The module's one-pass learner forward (trunk + head in chunks) reproduces the sampled
    tokens' log-probs of the KV-cached decode, for every architecture."""
    tok = tokenizer_of(model_dirs, arch)
    env = TextGenerationEnv(tokenizer=tok, prompts=PROMPTS, max_prompt_tokens=12, max_new_tokens=6)
    spec = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"path": model_dirs[arch], "forward_batch_size": 2},
        inference_only=False,
    )
    module = spec.build()
    codec = env.codec
    sequences = []

    def on_tokens(tokens: np.ndarray, logp: np.ndarray) -> list[bool]:
        sequences.append((tokens.copy(), logp.copy()))
        return [len(sequences) < 6] * len(tokens)

    from rayrm.models.decoding import decode_batch, sampler

    prompts = [codec.encode(p) for p in PROMPTS]
    decode_batch(
        module.lm,
        prompts,
        pad_id=codec.pad_token_id,
        sample=sampler(generator=torch.Generator().manual_seed(1)),
        on_tokens=on_tokens,
    )
    rows, actions, seq_ids, sampled = [], [], [], []
    L = env.max_seq_len
    for k, prompt in enumerate(prompts):
        context = list(prompt)
        for tokens, logp in sequences:
            row = np.full(L, codec.pad_token_id)
            row[: len(context)] = context
            rows.append((row, len(context)))
            actions.append(int(tokens[k]))
            seq_ids.append(k)
            sampled.append(float(logp[k]))
            context.append(int(tokens[k]))
    batch = {
        Columns.OBS: {
            "input_ids": torch.tensor(np.stack([r for r, _ in rows])),
            "length": torch.tensor([[n] for _, n in rows]),
        },
        Columns.ACTIONS: torch.tensor(actions),
        SEQ_ID: torch.tensor(seq_ids),
    }
    with torch.no_grad():
        out = module.forward_train(batch)
        minibatched = module.rollout_outputs(batch)  # 2 completions per forward
    torch.testing.assert_close(out[LOGP], torch.tensor(sampled), atol=1e-5, rtol=0)
    torch.testing.assert_close(minibatched[LOGP], out[LOGP], atol=1e-6, rtol=0)
    torch.testing.assert_close(minibatched["ref_logp"], out[LOGP], atol=1e-6, rtol=0)


def test_sample_sequences_stop_on_any_declared_eos(model_dirs):
    """The tools' sampler stops where the env does: on each EOS id, the stop token kept."""
    tok = tokenizer_of(model_dirs, "qwen2")
    model = AutoModelForCausalLM.from_pretrained(model_dirs["qwen2"]).eval()
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():  # make <|endoftext|> the only likely token
        model.lm_head.weight[endoftext] *= 0
        model.lm_head.weight[endoftext] += 50 * model.model.norm.weight.sign()
    codec = PromptCodec(
        tok, max_prompt_tokens=8, stop_token_ids=stop_token_ids_of(model_dirs["qwen2"])
    )
    [(_, generated)] = sample_sequences(model, codec, ["hi"], max_new_tokens=10, greedy=True)
    assert generated == [endoftext]


# --- the LM head in chunks -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_head_path_reproduces_model_logits(model_dirs, arch):
    model = AutoModelForCausalLM.from_pretrained(model_dirs[arch]).eval()
    check_head_path(model)  # raises if trunk + head != logits


def test_fused_gelu_is_the_same_model_function(model_dirs, tmp_path):
    """GPT-2's ``gelu_new`` runs as torch's fused kernel once loaded: logits and gradients
    equal Hugging Face's own module's to rounding, and nothing saved changes."""
    from transformers.activations import NewGELUActivation

    from rayrm.models.fused import TanhGELU
    from rayrm.models.loading import load_causal_lm, load_critic, load_trunk

    x = torch.linspace(-8, 8, 10_001, dtype=torch.float64)  # the function itself, exactly
    torch.testing.assert_close(TanhGELU()(x), NewGELUActivation()(x), rtol=0, atol=1e-12)
    path = model_dirs["gpt2"]
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    fused = load_causal_lm(path)
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert sum(isinstance(m, TanhGELU) for m in fused.modules()) == plain.config.n_layer
    for other in (load_trunk(path), load_critic(path)[0]):  # a separate critic's trunk
        assert sum(isinstance(m, TanhGELU) for m in other.modules()) == plain.config.n_layer
    ids = {"input_ids": tokenizer_of(model_dirs, "gpt2")(PROMPTS[1], return_tensors="pt").input_ids}
    outputs = []
    for model in (plain, fused):
        model.zero_grad()
        logits = model(**ids).logits
        (logits.float().square().mean()).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        outputs.append((logits.detach(), grads))
    (a, grads_a), (b, grads_b) = outputs
    assert (a - b).abs().max() < 1e-5
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    fused.save_pretrained(tmp_path / "saved")
    saved = AutoConfig.from_pretrained(tmp_path / "saved")
    assert saved.activation_function == plain.config.activation_function == "gelu_new"


def _sliding_window_model(arch: str) -> torch.nn.Module:
    """A tiny random Mistral or Gemma 2 whose sliding window (3) is shorter than the check's
    sequences, so the window decides which positions each real position reads."""
    import transformers

    size = {
        "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "sliding_window": 3,
    }  # fmt: skip
    if arch == "gemma2":  # soft-capped logits, alternating sliding and global layers
        config = transformers.Gemma2Config(**size, head_dim=8)
    else:
        config = transformers.MistralConfig(**size)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_unmasked_trunk_reads_right_padded_rows_as_masked(arch, dtype):
    """The trunk's forward without an attention mask gives the real positions of right-padded
    rows the logits of the model's own masked forward, also under a sliding window."""
    check_head_path(_sliding_window_model(arch).to(dtype))


@pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) < 5,
    reason="on transformers 4.56 is_causal = False leaves a batched unmasked forward causal",
)
def test_non_causal_attention_is_detected(model_dirs):
    """An unmasked trunk forward is only right for causal attention: a model whose layers
    attend both ways is refused."""
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).eval()
    check_head_path(model)
    for layer in model.model.layers:
        layer.self_attn.is_causal = False  # the kernels' unmasked path then reads ahead
    with pytest.raises(ValueError, match="not causal"):
        check_head_path(model)


def test_unknown_logit_transform_is_detected(model_dirs):
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).eval()
    model.config.final_logit_softcapping = 0.5  # the head path applies it, forward does not
    with pytest.raises(ValueError, match="do not reproduce its logits"):
        check_head_path(model)


@pytest.mark.parametrize(
    "weights", [(1.0, 0.3), (1.0, 0.0), (0.0, 0.3)], ids=["both", "logp", "entropy"]
)
@pytest.mark.parametrize("keep", [True, False], ids=["softmax-kept", "recomputed"])
def test_chunked_logp_entropy_equal_full_softmax_with_gradients(
    model_dirs, weights, keep, monkeypatch
):
    """Values and gradients, also when the loss uses only one of the two outputs (the other's
    gradient is None, not zeros, and its terms are skipped), with the forward's softmax kept
    for the backward or recomputed there."""
    import rayrm.models.heads as heads

    monkeypatch.setattr(heads, "KEEP_SOFTMAX_ELEMENTS", heads.KEEP_SOFTMAX_ELEMENTS if keep else 0)
    model = AutoModelForCausalLM.from_pretrained(model_dirs["qwen2"])  # tied head
    V = model.config.vocab_size
    hidden = torch.randn(37, model.config.hidden_size, requires_grad=True)
    actions = torch.randint(0, V, (37,))

    def full() -> tuple[torch.Tensor, torch.Tensor]:
        z = head_logits(model, hidden) / 0.7  # (N, V)
        logp_all = torch.log_softmax(z, -1)
        return logp_all.gather(-1, actions[:, None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(
            -1
        )

    results = []
    for fn in (
        full,
        lambda: token_logp_entropy(model, hidden, actions, temperature=0.7, chunk_rows=5),
    ):
        model.zero_grad()
        hidden.grad = None
        logp, entropy = fn()
        loss = sum(w * x.sum() for w, x in zip(weights, (logp, entropy), strict=True) if w)
        loss.backward()
        results.append(
            (
                logp.detach(),
                entropy.detach(),
                hidden.grad.clone(),
                model.lm_head.weight.grad.clone(),
            )
        )
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # The log-probs alone (reference and old policy: no graph, no softmax) are the same.
    alone = token_logp(model, hidden, actions, temperature=0.7, chunk_rows=5)
    torch.testing.assert_close(alone, results[0][0], atol=1e-5, rtol=1e-5)


def test_logp_and_entropy_hand_example():
    logits = torch.tensor([[0.0, 0.0], [float(np.log(3.0)), 0.0]])
    logp, entropy = logp_and_entropy(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(logp, torch.log(torch.tensor([0.5, 0.25])))
    torch.testing.assert_close(
        entropy, torch.tensor([np.log(2.0), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))]).float()
    )


# --- mixed precision ---------------------------------------------------------------------------


def test_master_weights_keep_small_bf16_updates():
    """At lr 1e-5 Adam's step (~lr) is below half a bfloat16 step of a 0.02 weight: stepping the
    bfloat16 parameter directly rounds it away, the float32 master keeps it."""
    assert torch.tensor(0.02, dtype=torch.bfloat16) - 1e-5 == torch.tensor(
        0.02, dtype=torch.bfloat16
    )
    weight = torch.full((64,), 0.02)
    naive = torch.nn.Parameter(weight.to(torch.bfloat16))
    mixed = torch.nn.Parameter(weight.to(torch.bfloat16))
    plain = torch.optim.Adam([naive], lr=1e-5)
    master = MasterWeightAdam([mixed], lr=1e-5)
    for _ in range(20):
        for p, opt in ((naive, plain), (mixed, master)):
            opt.zero_grad()
            p.grad = torch.ones_like(p)
            opt.step()
    assert torch.equal(naive.detach().float(), weight.to(torch.bfloat16).float())  # lost
    assert master.masters[0].dtype == torch.float32
    start = weight.to(torch.bfloat16).float()
    torch.testing.assert_close(master.masters[0], start - 20e-5, atol=1e-7, rtol=0)
    assert not torch.equal(mixed.detach().float(), weight.to(torch.bfloat16).float())
    assert torch.equal(mixed.detach(), master.masters[0].to(torch.bfloat16))


def test_master_weight_adam_is_adam_with_rllib_clip_in_float32():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = MasterWeightAdam(a, lr=1e-2, eps=1e-5, max_grad_norm=0.5)
    reference = torch.optim.Adam(b, lr=1e-2, eps=1e-5)
    assert ours.masters[0] is a[0]  # float32 parameters are their own masters
    for step in range(3):
        grads = [torch.randn_like(p) * (step + 1) for p in a]
        for p, g in zip(a, grads, strict=True):
            p.grad = g.clone()
        ours.step()
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        coef = min(0.5 / max(float(norm) + 1e-6, 0.5), 1.0)
        for p, g in zip(b, grads, strict=True):
            p.grad = g * coef
        reference.step()
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=1e-7, rtol=0)


def test_float16_loss_scaling_skips_overflow_and_halves_the_scale():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = MasterWeightAdam(
        [p], lr=1e-3, dynamic_loss_scale=True, init_scale=1024.0, growth_interval=2
    )
    p.grad = torch.full_like(p, float("inf"))
    assert opt.step() is False and opt.skipped_steps == 1 and opt.loss_scale == 512.0
    assert torch.equal(p.detach(), torch.ones(4, dtype=torch.float16))
    for _ in range(2):
        p.grad = torch.full_like(p, 512.0 * 1e-3)  # a scaled gradient of 1e-3
        assert opt.step() is True
    assert opt.loss_scale == 1024.0  # two clean steps doubled it
    assert (p.detach() < 1).all()
    # The unscaled gradient is what Adam saw: the first moment is 0.1 * 1e-3 after one step.


def test_master_weight_state_round_trip_restores_masters_exactly():
    p = torch.nn.Parameter(torch.full((8,), 0.02, dtype=torch.bfloat16))
    opt = MasterWeightAdam([p], lr=1e-5)
    for _ in range(3):
        p.grad = torch.ones_like(p)
        opt.step()
    state = opt.state_dict()
    from ray.rllib.utils.numpy import convert_to_numpy
    from ray.rllib.utils.torch_utils import convert_to_torch_tensor

    state = convert_to_numpy(state)  # as RLlib stores optimizer state in checkpoints
    state = {**state, "state": convert_to_torch_tensor(state["state"])}
    q = torch.nn.Parameter(torch.full((8,), 0.02, dtype=torch.bfloat16))
    restored = MasterWeightAdam([q], lr=1e-5)
    restored.load_state_dict(state)
    assert torch.equal(restored.masters[0], opt.masters[0])
    assert torch.equal(q.detach(), p.detach())
    p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    opt.step()
    restored.step()
    assert torch.equal(restored.masters[0], opt.masters[0])


def test_module_state_keeps_bfloat16_and_inference_state_is_the_lm(model_dirs):
    env = TextGenerationEnv(tokenizer=model_dirs["llama"], max_new_tokens=4)
    spec = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"path": model_dirs["llama"], "dtype": "bfloat16"},
        inference_only=False,
    )
    module = spec.build()
    state = module.get_state()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["lm.model.embed_tokens.weight"].dtype == torch.bfloat16
    assert state["value_head.weight"].dtype == torch.float32
    sync = module.get_state(inference_only=True)
    assert set(sync) == {k for k in state if k.startswith("lm.")}
    fp32_bytes = sum(v.numel() * 4 for v in sync.values())
    assert sum(v.numel() * v.element_size() for v in sync.values()) == fp32_bytes // 2
    runner_copy = RLModuleSpec(
        module_class=LMPolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"path": model_dirs["llama"], "dtype": "bfloat16"},
        inference_only=True,
    ).build()
    with torch.no_grad():
        for p in module.lm.parameters():
            p.add_(0.5)
    runner_copy.set_state(module.get_state(inference_only=True))
    for a, b in zip(runner_copy.lm.parameters(), module.lm.parameters(), strict=True):
        assert torch.equal(a, b)


def test_gradient_checkpointing_gives_the_same_gradients(model_dirs):
    """``model.gradient_checkpointing`` recomputes activations; the gradients do not change."""
    env = TextGenerationEnv(tokenizer=model_dirs["llama"], prompts=PROMPTS, max_new_tokens=4)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same value-head initialisation
        module = RLModuleSpec(
            module_class=LMPolicyModule,
            observation_space=env.observation_space,
            action_space=env.action_space,
            model_config={"path": model_dirs["llama"], "gradient_checkpointing": checkpointing},
            inference_only=False,
        ).build()
        # transformers 5 renames it "activation checkpointing"; 4.x has the old name only.
        flag = getattr(module.lm, "is_activation_checkpointing", None)
        if flag is None:
            flag = module.lm.is_gradient_checkpointing
        assert flag == checkpointing
        rows, lengths, actions = [], [], []
        for k, prompt in enumerate(PROMPTS):
            obs, _ = env.reset(options={"prompt": prompt})
            for token in (5 + k, 9, 11):
                rows.append(obs["input_ids"])
                lengths.append(obs["length"])
                actions.append(token)
                obs = env.step(token)[0]
        batch = {
            Columns.OBS: {
                "input_ids": torch.tensor(np.stack(rows)),
                "length": torch.tensor(np.stack(lengths)),
            },
            Columns.ACTIONS: torch.tensor(actions),
            SEQ_ID: torch.repeat_interleave(torch.arange(len(PROMPTS)), 3),
        }
        out = module.forward_train(batch)
        (out[LOGP].sum() + out["vf_preds"].sum()).backward()
        grads.append([p.grad.clone() for p in module.lm.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
