"""Tiny random models and real-kind tokenizers, built locally: nothing is downloaded.

Tests, demos and benchmarks build their models here and ``save_pretrained`` them, so the code
under test loads them exactly as users load theirs (``from_pretrained`` on a local directory).
The tokenizers are of the kinds real checkpoints ship, trained on a small corpus with the
``tokenizers`` library:

* ``char``: the built-in character tokenizer (``envs.builtin``);
* ``gpt2``: byte-level BPE, ``<|endoftext|>`` as BOS/EOS and no pad token (GPT-2);
* ``llama``: SentencePiece-style BPE (Metaspace ``▁``, byte fallback ``<0x..>``, ``<s>`` added
  before every text, ``</s>`` as EOS, a decoder that strips the leading space, and a
  Mistral-Instruct chat template (``[INST] ... [/INST]``): Llama-2, Mistral);
* ``qwen2``: byte-level BPE with ``<|im_start|>``/``<|im_end|>``, a ChatML chat template, EOS
  ``<|im_end|>`` and pad ``<|endoftext|>`` (Qwen2.5-Instruct); its models declare both as
  EOS in ``generation_config.json``;
* ``gemma``: SentencePiece-style BPE without the leading ``▁`` (no dummy prefix, so the
  decoder strips nothing), byte fallback, ``<pad>``/``<eos>``/``<bos>``/``<unk>``/``<mask>`` as
  ids 0-4, ``<bos>`` added before every text, and Gemma's chat template (``<start_of_turn>``...
  ``<end_of_turn>``, which holds its own ``<bos>``); its models declare ``<eos>`` and
  ``<end_of_turn>`` as EOS (Gemma 2 instruction-tuned checkpoints).

Architectures: ``gpt2`` (learned positions), ``llama`` (RoPE, grouped-query attention, untied
head), ``qwen2`` (RoPE, GQA with one KV head, tied embeddings), ``mistral`` (Llama's tokenizer
kind, a sliding attention window of :data:`SLIDING_WINDOW` tokens) and ``gemma2`` (Gemma's
tokenizer kind; alternating sliding-window and global layers, soft-capped attention and final
logits, scaled embeddings, tied head).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayrm.models.builtin_text import BUILTIN_PROMPTS, build_char_tokenizer
from rayrm.models.loading import DTYPES

__all__ = [
    "ARCHITECTURES",
    "ARCH_TOKENIZER",
    "SLIDING_WINDOW",
    "TOKENIZER_KINDS",
    "build_tiny_model",
    "build_tiny_policy",
    "build_tiny_reward_model",
    "build_tokenizer",
]

TOKENIZER_KINDS = ("char", "gpt2", "llama", "qwen2", "gemma")
ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral", "gemma2")
ARCH_TOKENIZER = {
    "gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2", "mistral": "llama", "gemma2": "gemma"
}  # fmt: skip
"""The tokenizer kind real checkpoints of each architecture ship."""
SLIDING_WINDOW = 8
"""Attention window of the tiny Mistral and Gemma 2 (4096 in the real ones): shorter than the
tests' prompt plus completion, so the window changes what positions read."""

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% set role = 'user' if role == 'tool' else role %}"
    "{% set content = message['content'] | trim %}"
    "{% if tools and loop.first %}"
    "{% set content = 'You can call these tools:\\n' + (tools | map('tojson') | join('\\n'))"
    " + '\\n\\n' + content %}"
    "{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + content + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
"""Gemma 2's chat format: it opens with ``<bos>`` and, as the real one, refuses a system role.

Gemma 2 has no tool role; as people do with it, a ``tool`` message is a user turn and the
``tools`` are listed at the top of the first user turn (without ``tools``: Gemma 2's own)."""

CHATML_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{% for tool in tools %}{{ '\\n' + tool | tojson }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n'
    "</tool_call><|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}"
    "{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}"
    "{{ '<|im_end|>\\n' }}{% endif %}"
    "{% elif message['role'] == 'assistant' and message.tool_calls %}"
    "{{ '<|im_start|>assistant' }}"
    "{% if message['content'] %}{{ '\\n' + message['content'] }}{% endif %}"
    "{% for call in message.tool_calls %}"
    "{% if call.function is defined %}{% set call = call.function %}{% endif %}"
    '{{ \'\\n<tool_call>\\n{"name": "\' + call.name + \'", "arguments": \' }}'
    "{{ call.arguments if call.arguments is string else call.arguments | tojson }}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% elif not (tools and loop.first and message['role'] == 'system') %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""Qwen2.5's chat format (ChatML), without its default system prompt.

With ``tools``, a system turn lists them as Qwen2.5's does (the system message's content
first); ``tool`` messages are user turns of ``<tool_response>`` blocks, consecutive ones in
one turn, as Qwen2.5 renders them. An assistant message's structured ``tool_calls`` (as TRL's
``GRPOTrainer`` writes them) render after its content as Qwen2.5's Hermes blocks; rayrm keeps
the calls in the content as sampled."""

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='', first_user=true) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if not loop.first %}{{ raise_exception('a system message must come first') }}{% endif %}"
    "{% set ns.system = message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}"
    "{% if ns.first_user %}"
    "{% if tools %}{{ '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{% endif %}"
    "{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.first_user = false %}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim + eos_token }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '[TOOL_RESULTS] ' + message['content'] + ' [/TOOL_RESULTS]' }}"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
)
"""Mistral-Instruct's format (``[INST] ... [/INST]``, assistant turns closed by ``</s>``) as
plain text, as Llama-2 and Mistral v0.1 tokenize it; no generation prompt (the model writes
right after ``[/INST]`` or ``[/TOOL_RESULTS]``). Unlike Mistral v3, which moves the system
message and the tool list to the *last* user turn, both go to the first one, so rendering a
longer conversation never changes what an earlier one rendered."""

_CORPUS = [
    "the cat said hello to the dog",
    "hello world, how are you today?",
    "the quick brown fox jumps over the lazy dog",
    "a naïve café serves déjà vu — with 🙂 and ünïcödé",
    "review: the steak was great but the service was slow",
    "question: what is two plus two? answer: four",
    "Once upon a time, there was a little robot who loved to sing.",
    "She sells sea shells by the sea shore; the shells she sells are sea shells.",
]


def _corpus() -> list[str]:

    return (_CORPUS + list(BUILTIN_PROMPTS)) * 4


def build_tokenizer(
    kind: str = "char", *, vocab_size: int = 400, corpus: Sequence[str] | None = None
) -> Any:
    """A tokenizer of ``kind`` (see the module docstring), as a ``PreTrainedTokenizerFast``.

    Save it with ``save_pretrained`` (or pass it to :func:`build_tiny_model`), then load it
    with ``AutoTokenizer.from_pretrained`` as any checkpoint's tokenizer.

    Args:
        kind: One of :data:`TOKENIZER_KINDS`.
        vocab_size: BPE vocabulary limit.
        corpus: Texts to train the BPE merges on (default: a few English sentences and the
            built-in prompts); a task's own texts give it short sequences (the demo's
            multi-turn tasks). Not for ``char``.
    """
    texts = _corpus() if corpus is None else list(corpus)
    if kind == "char":
        return build_char_tokenizer()
    if kind in ("llama", "gemma"):
        return _sentencepiece_style(kind, vocab_size, texts)
    if kind in ("gpt2", "qwen2"):
        return _byte_level(kind, vocab_size, texts)
    raise ValueError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, got {kind!r}")


def _byte_level(kind: str, vocab_size: int, corpus: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] + (["<|im_start|>", "<|im_end|>"] if kind == "qwen2" else [])
    tok = Tokenizer(models.BPE())
    # GPT-2's split regex, then bytes mapped to printable characters.
    split = Regex(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(split, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    if kind == "gpt2":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            clean_up_tokenization_spaces=False,
        )
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )
    out.chat_template = CHATML_TEMPLATE
    return out


def _sentencepiece_style(kind: str, vocab_size: int, corpus: list[str]) -> Any:
    """Llama-2's tokenizer (``kind="llama"``) or Gemma's (``"gemma"``): see the module
    docstring."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    gemma = kind == "gemma"
    if gemma:
        specials = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<mask>",
            "<start_of_turn>",
            "<end_of_turn>",
        ]
        bos, eos, unk = "<bos>", "<eos>", "<unk>"
    else:
        specials, (unk, bos, eos) = ["<unk>", "<s>", "</s>"], ("<unk>", "<s>", "</s>")
    # Llama prepends "▁" to a text (SentencePiece's dummy prefix); Gemma does not.
    prepend = "never" if gemma else "first"
    trained = Tokenizer(models.BPE(unk_token=unk))
    # Merges never cross a word boundary when training (as SentencePiece's); the saved
    # tokenizer.json then runs Metaspace without splitting.
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    trained.train_from_iterator(corpus, trainer)
    model = json.loads(trained.to_str())["model"]
    # The real layout: the specials, then the 256 byte tokens <0x00>..<0xFF> (ordinary tokens,
    # which byte fallback uses for characters the vocabulary lacks), then the pieces.
    vocab = {token: i for i, token in enumerate(specials)}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
    )
    tok.add_special_tokens(specials)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme=prepend, split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if not gemma:
        steps.append(decoders.Strip(" ", 1, 0))  # the dummy prefix's space
    tok.decoder = decoders.Sequence(steps)
    bos_id = vocab[bos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token="<pad>" if gemma else None,
        mask_token="<mask>" if gemma else None,
        additional_special_tokens=specials[5:],
        clean_up_tokenization_spaces=False,
    )
    out.chat_template = GEMMA_TEMPLATE if gemma else LLAMA_TEMPLATE
    return out


_TOKENIZER_CLASS = {
    "gpt2": "GPT2Tokenizer",
    "llama": "LlamaTokenizer",
    "qwen2": "Qwen2Tokenizer",
    "gemma": "GemmaTokenizer",
}


def save_tokenizer(tokenizer: Any, out_dir: str | Path, kind: str | None = None) -> None:
    """``save_pretrained``, recording the tokenizer class real checkpoints of ``kind`` name."""
    tokenizer.save_pretrained(str(out_dir))
    if kind in _TOKENIZER_CLASS:
        path = Path(out_dir) / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = _TOKENIZER_CLASS[kind]
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _model_config(arch: str, tokenizer: Any, **size: Any) -> Any:
    """A small ``PretrainedConfig`` of ``arch`` sized for ``tokenizer``."""
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    hidden, layers, heads = size["hidden"], size["layers"], size["heads"]
    positions, vocab = size["positions"], size["vocab_size"] or len(tokenizer)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    ids = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_positions=positions, n_embd=hidden, n_layer=layers, n_head=heads,
            **ids,
        )  # fmt: skip
    common = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": positions,
        **ids,
    }
    if arch == "llama":
        return LlamaConfig(**common, num_key_value_heads=size["kv_heads"] or max(1, heads // 2))
    if arch == "qwen2":
        return Qwen2Config(
            **common, num_key_value_heads=size["kv_heads"] or 1, tie_word_embeddings=True
        )
    window = min(SLIDING_WINDOW, positions)
    if arch == "mistral":
        return MistralConfig(
            **common, num_key_value_heads=size["kv_heads"] or max(1, heads // 2),
            sliding_window=window,
        )  # fmt: skip
    if arch == "gemma2":  # Gemma 2's soft-capping values; its head_dim is set, not derived
        return Gemma2Config(
            **common, num_key_value_heads=size["kv_heads"] or max(1, heads // 2),
            head_dim=hidden // heads, query_pre_attn_scalar=hidden // heads,
            sliding_window=window, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        )  # fmt: skip
    raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "gpt2",
    tokenizer: Any = None,
    tokenizer_kind: str | None = None,
    head: str = "causal_lm",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int | None = None,
    positions: int = 128,
    vocab_size: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
) -> str:
    """Writes a randomly initialised model of ``arch`` plus its tokenizer to ``out_dir``.

    Args:
        out_dir: Target directory (created).
        arch: One of :data:`ARCHITECTURES`.
        tokenizer: A tokenizer object; default: :func:`build_tokenizer` of ``tokenizer_kind``
            (default: the architecture's own kind).
        tokenizer_kind: Kind recorded in ``tokenizer_config.json`` (the real checkpoints'
            tokenizer class).
        head: ``causal_lm`` (``AutoModelForCausalLM``) or ``reward`` (a one-label
            ``AutoModelForSequenceClassification``, a reward model).
        hidden, layers, heads, kv_heads, positions: Size (``kv_heads``: GQA key/value heads).
        vocab_size: Embedding rows; default ``len(tokenizer)`` (may be larger, as real models'
            padded embeddings).
        dtype: Dtype of the saved weights (``float32``, ``bfloat16``, ``float16``).
        seed: Torch seed of the initial weights.

    Returns:
        ``out_dir`` as a string.
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        GenerationConfig,
    )

    kind = tokenizer_kind or (ARCH_TOKENIZER.get(arch) if tokenizer is None else None)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(kind or "char")
    config = _model_config(
        arch, tokenizer, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
        positions=positions, vocab_size=vocab_size,
    )  # fmt: skip
    torch.manual_seed(seed)
    if head == "reward":
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config)
    elif head == "causal_lm":
        model = AutoModelForCausalLM.from_config(config)
    else:
        raise ValueError(f"head must be 'causal_lm' or 'reward', got {head!r}")

    model = model.to(DTYPES[dtype])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out, kind)
    if head == "causal_lm":
        stop = [tokenizer.eos_token_id]
        second = {"qwen2": "<|endoftext|>", "gemma": "<end_of_turn>"}.get(kind or "")
        if second in tokenizer.get_vocab():
            stop.append(tokenizer.convert_tokens_to_ids(second))  # two EOS ids
        GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=stop if len(stop) > 1 else stop[0],
            pad_token_id=config.pad_token_id,
        ).save_pretrained(out)
    return str(out)


def build_tiny_policy(
    out_dir: str | Path,
    tokenizer: Any = None,
    *,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 128,
    seed: int = 0,
) -> str:
    """A tiny GPT-2 causal LM (default: the built-in character tokenizer) in ``out_dir``."""
    return build_tiny_model(
        out_dir,
        arch="gpt2",
        tokenizer=tokenizer if tokenizer is not None else build_tokenizer("char"),
        hidden=n_embd,
        layers=n_layer,
        heads=n_head,
        positions=n_positions,
        seed=seed,
    )


def build_tiny_reward_model(out_dir: str | Path, tokenizer: Any, *, arch: str = "gpt2") -> str:
    """A tiny random one-label reward model (width 32, 2 layers) for ``tokenizer``."""
    return build_tiny_model(
        out_dir, arch=arch, tokenizer=tokenizer, head="reward", hidden=32, heads=2, seed=0
    )
