"""The checkpoint layout, and using a trained policy: find, load, export, sample.

A rayrm checkpoint is RLlib's algorithm checkpoint plus what the named constants below say:
the resolved run config (:data:`RESOLVED_CONFIG_FILE`, which also marks a directory as a rayrm
checkpoint), the tokenizer (:data:`TOKENIZER_DIR`) and the policy's original Hugging Face
config and generation config (:data:`HF_CONFIG_DIR`); the algorithm's own state (β, reward
moments) is under :data:`RAYRM_STATE` in RLlib's state. So loading needs neither Ray nor the
original model directory: the policy is rebuilt from its config and given the trained weights
(the ``lm.`` part of the learner's module state, ``rllib_compat.MODULE_STATE_FILE``). A LoRA
run (``model.lora``) keeps its adapters only: its base model is read from ``model.path`` again,
and the adapters are merged into it (or exported as a peft adapter directory).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from rayrm.config import ConfigError, RLConfig, load_config
from rayrm.models.decoding import sample_completions
from rayrm.models.loading import DTYPES, load_causal_lm
from rayrm.models.lora import peft_model
from rayrm.models.tokenization import PromptCodec
from rayrm.rl import rllib_compat as compat
from rayrm.rl.codec import run_codec
from rayrm.rl.rllib_compat import MODULE_STATE_FILE

RESOLVED_CONFIG_FILE = "rayrm_config.yaml"
"""The run config a checkpoint was trained with, paths absolute; marks a rayrm checkpoint."""
TOKENIZER_DIR = "tokenizer"
HF_CONFIG_DIR = "hf_config"
"""The policy's ``config.json`` (dropout as published) and ``generation_config.json``."""
COMPLETE_FILE = "rayrm_complete.json"
"""Written last, once Tune has persisted a checkpoint: its absence marks a torn checkpoint (a
kill mid-write). Holds the Tune counters the checkpoint resumes with (iteration, time)."""
CHECKPOINT_PREFIX = "checkpoint_"
RAYRM_STATE = "rayrm_state"
"""Key of the algorithm's own state (KL controller, reward moments) in RLlib's state."""
LM_PREFIX = "lm."
REF_PREFIX = "ref_model."


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint, a trial folder or an experiment folder.

    Picks the newest complete checkpoint when given a run folder.

    Raises:
        ConfigError: nothing rayrm-made under ``path``.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ConfigError(f"{p}: no such run or checkpoint")
    if (p / RESOLVED_CONFIG_FILE).exists():
        return p
    found = [c.parent for c in p.rglob(RESOLVED_CONFIG_FILE)]
    complete = [c for c in found if (c / COMPLETE_FILE).is_file()]
    # The newest complete checkpoint (a torn one, without COMPLETE_FILE, is skipped); runs
    # written before COMPLETE_FILE existed have none marked.
    found = sorted(complete or found, key=lambda c: (c.stat().st_mtime, c.name))
    if not found:
        raise ConfigError(f"{p}: no rayrm checkpoint found (looked for */{RESOLVED_CONFIG_FILE})")
    return found[-1]


def checkpoint_index(path: Path) -> int | None:
    """``N`` of a ``checkpoint_N`` folder, None for other names."""
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def mark_complete(checkpoint_dir: str | Path, counters: dict[str, Any]) -> None:
    """Writes :data:`COMPLETE_FILE` (atomically: a temporary name, then a rename)."""
    ckpt = Path(checkpoint_dir)
    tmp = ckpt / f".{COMPLETE_FILE}.tmp"
    tmp.write_text(json.dumps(counters), encoding="utf-8")
    os.replace(tmp, ckpt / COMPLETE_FILE)


def trial_checkpoints(trial_dir: Path) -> tuple[int, list[tuple[int, Path, dict[str, Any]]]]:
    """The highest ``checkpoint_N`` index in a trial folder (-1 if none), torn ones included,
    and its complete checkpoints ``(N, path, counters)``, oldest first."""
    highest, complete = -1, []
    for path in trial_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        index = checkpoint_index(path)
        if index is None or not path.is_dir():
            continue
        highest = max(highest, index)
        marker = path / COMPLETE_FILE
        if marker.is_file():
            complete.append((index, path, json.loads(marker.read_text(encoding="utf-8"))))
    return highest, sorted(complete, key=lambda c: c[0])


class NeverLoseCheckpoints:
    """Mixin for a Tune ``Trainable``: resume from the newest complete checkpoint on disk,
    never overwrite one, mark each complete once persisted.

    Tune resumes a run from its experiment snapshot, saved every few seconds; after a driver
    killed between a checkpoint and the next snapshot, it would restart from an older
    checkpoint (or from scratch) and write its next checkpoints over newer ones. So at
    :meth:`resume_from_disk` (the end of ``setup``) the trial folder decides: the newest
    checkpoint with :data:`COMPLETE_FILE` is restored with its counters, the next index is
    past every existing ``checkpoint_N`` (torn ones too), and Tune's own ``restore`` of an older
    checkpoint of this trial is then skipped. A checkpoint from elsewhere (PBT's exploit
    step) is restored as Tune asks.
    """

    _restored_from_disk: Path | None = None

    def resume_from_disk(self) -> None:
        trial = compat.trial_dir(self)
        if trial is None:
            return
        highest, complete = trial_checkpoints(trial)
        compat.skip_checkpoint_indices(self, highest)
        if complete:
            _, path, counters = complete[-1]
            compat.restore_counted(self, path, counters)
            self._restored_from_disk = path

    def restore(self, checkpoint_path: Any) -> None:
        path, newest = compat.restored_path(checkpoint_path), self._restored_from_disk
        if path is not None and newest is not None and path.parent == newest.parent:
            index, restored = checkpoint_index(path), checkpoint_index(newest)
            if index is not None and restored is not None and index <= restored:
                return  # resume_from_disk restored this trial's newest complete checkpoint
        super().restore(checkpoint_path)  # type: ignore[misc]

    def checkpoint_score(self) -> float | None:
        """Higher is better: which old checkpoint retention keeps (None: none scored)."""
        return None

    def checkpoints_to_keep(self) -> int | None:
        """Newest complete checkpoints kept per trial, besides the best; None keeps all."""
        return None

    def save(self, checkpoint_dir: str | None = None) -> Any:
        result = super().save(checkpoint_dir)  # type: ignore[misc]
        path = compat.restored_path(result)
        if path is not None and path.is_dir():
            score = self.checkpoint_score()
            valid = score is not None and math.isfinite(score)
            mark_complete(path, {**compat.tune_counters(self), "score": score if valid else None})
            self._prune(path.parent)
        return result

    def _prune(self, trial: Path) -> None:
        """Deletes complete checkpoints older than the newest ``checkpoints_to_keep()``, except
        the best scored; torn ones are left for a person to look at."""
        keep = self.checkpoints_to_keep()
        if keep is None:
            return
        _, complete = trial_checkpoints(trial)
        scored = [c for c in complete if c[2].get("score") is not None]
        best = max(scored, key=lambda c: c[2]["score"])[0] if scored else None
        for index, path, _ in complete[:-keep]:
            if index != best and path != self._restored_from_disk:
                shutil.rmtree(path, ignore_errors=True)


def write_rayrm_files(checkpoint_dir: str | Path, cfg: RLConfig, tokenizer: Any) -> None:
    """What a rayrm checkpoint holds beside RLlib's state (see the module docstring)."""
    from transformers import AutoConfig, GenerationConfig

    ckpt = Path(checkpoint_dir)
    cfg.save_yaml(ckpt / RESOLVED_CONFIG_FILE)
    tokenizer.save_pretrained(str(ckpt / TOKENIZER_DIR))
    hf_dir = str(ckpt / HF_CONFIG_DIR)
    AutoConfig.from_pretrained(cfg.model.path).save_pretrained(hf_dir)
    if (Path(cfg.model.path) / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(cfg.model.path).save_pretrained(hf_dir)


def _module_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / MODULE_STATE_FILE
    if not path.exists():
        raise ConfigError(f"{ckpt}: not a complete rayrm checkpoint (missing {MODULE_STATE_FILE})")
    with open(path, "rb") as f:
        return pickle.load(f)


def _build(ckpt: Path, state: dict[str, Any], prefix: str, dtype: str) -> torch.nn.Module:
    """The causal LM under ``prefix`` of the module state, in ``dtype`` (the run's)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ckpt / HF_CONFIG_DIR)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    weights = {
        k[len(prefix) :]: torch.as_tensor(v) for k, v in state.items() if k.startswith(prefix)
    }
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _lora_base(ckpt: Path, cfg: RLConfig) -> torch.nn.Module:
    """A LoRA run's base model (``model.path``, which its checkpoints do not hold)."""
    if not (Path(cfg.model.path) / "config.json").is_file():
        raise ConfigError(
            f"{ckpt}: a LoRA run's checkpoint holds its adapters, not its base model; the "
            f"base model.path {cfg.model.path} is needed and is not there",
            key="model.path",
        )
    return load_causal_lm(cfg.model.path, cfg.model.dtype)


def lora_policy(run_or_checkpoint: str | Path) -> tuple[Any, RLConfig, Path]:
    """A LoRA run's policy as a ``peft.PeftModel``: base (``model.path``) and trained adapters.

    Returns:
        ``(peft_model, run_config, checkpoint_dir)``.
    """
    ckpt = find_checkpoint(run_or_checkpoint)
    cfg = load_config(ckpt / RESOLVED_CONFIG_FILE, check_paths=False)
    if cfg.model.lora is None:
        raise ConfigError(f"{ckpt}: not a LoRA run (model.lora is not set)", key="model.lora")
    adapters = {
        k[len(LM_PREFIX) :]: v for k, v in _module_state(ckpt).items() if k.startswith(LM_PREFIX)
    }
    model = peft_model(_lora_base(ckpt, cfg), cfg.model.lora.to_dict(), adapters)
    return model.eval(), cfg, ckpt


def load_policy(run_or_checkpoint: str | Path) -> tuple[torch.nn.Module, Any, RLConfig, Path]:
    """Loads the trained policy LM, in the run's ``model.dtype`` (a LoRA run's merged).

    Returns:
        ``(model, tokenizer, run_config, checkpoint_dir)``.
    """
    from transformers import AutoTokenizer

    ckpt = find_checkpoint(run_or_checkpoint)
    cfg = load_config(ckpt / RESOLVED_CONFIG_FILE, check_paths=False)
    if cfg.model.lora is not None:
        model = lora_policy(ckpt)[0].merge_and_unload().eval()
    else:
        model = _build(ckpt, _module_state(ckpt), LM_PREFIX, cfg.model.dtype)
    tokenizer = AutoTokenizer.from_pretrained(ckpt / TOKENIZER_DIR)
    return model, tokenizer, cfg, ckpt


def load_reference(run_or_checkpoint: str | Path) -> torch.nn.Module:
    """The frozen reference model stored in a checkpoint (a LoRA run's: its base model)."""
    ckpt = find_checkpoint(run_or_checkpoint)
    cfg = load_config(ckpt / RESOLVED_CONFIG_FILE, check_paths=False)
    if cfg.model.lora is not None:
        return _lora_base(ckpt, cfg).eval()
    return _build(ckpt, _module_state(ckpt), REF_PREFIX, cfg.model.dtype)


def checkpoint_codec(
    ckpt: Path, cfg: RLConfig, tokenizer: Any, *, max_prompt_tokens: int | None = None
) -> PromptCodec:
    """The run's prompt codec, its stop ids read from the checkpoint (no model.path needed)."""
    return run_codec(
        cfg, tokenizer, model_dir=ckpt / HF_CONFIG_DIR, max_prompt_tokens=max_prompt_tokens
    )


def export_policy(
    run_or_checkpoint: str | Path, out_dir: str | Path, *, adapter: bool = False
) -> Path:
    """Writes the policy as a Hugging Face model directory (weights in the run's dtype, config,
    generation config, tokenizer); a LoRA run's merged, or with ``adapter`` as a peft adapter
    directory (``adapter_config.json``, adapter weights; the base is ``model.path``)."""
    from transformers import AutoTokenizer, GenerationConfig

    out = Path(out_dir)
    if adapter:
        model, _, ckpt = lora_policy(run_or_checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(ckpt / TOKENIZER_DIR)
    else:
        model, tokenizer, _, ckpt = load_policy(run_or_checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if (ckpt / HF_CONFIG_DIR / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(ckpt / HF_CONFIG_DIR).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def generate(
    run_or_checkpoint: str | Path,
    prompts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int | None = None,
    greedy: bool = False,
    seed: int = 0,
) -> list[tuple[str, list[str]]]:
    """``rayrm generate``: completions per prompt from a trained policy (run's sampling settings,
    special tokens, chat template and stop tokens)."""
    model, tokenizer, cfg, ckpt = load_policy(run_or_checkpoint)
    codec = checkpoint_codec(ckpt, cfg, tokenizer)
    g = cfg.generation
    results = []
    for prompt in prompts:
        completions = sample_completions(
            model,
            codec,
            [prompt] * num_samples,
            max_new_tokens=max_new_tokens or g.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            greedy=greedy,
            seed=seed,
        )
        results.append((prompt, completions))
    return results
