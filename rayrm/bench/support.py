"""What ``rayrm bench`` runs on: the locally built workload, RSS sampling, child processes.

What belongs here: the benchmark's character tokenizer and GPT-2 policy / reward model (built
locally, nothing downloaded), the rayrm run config of a benchmark configuration, the peak-RSS
sampler, and the spawned child processes every configuration runs in (so that each has its
own peak RSS, its own local Ray, and prints nothing on the benchmark's stdout). The
measurements themselves are in ``rayrm.bench.run`` and ``rayrm.bench.trl``; the local Ray and
the trial, as ``rayrm train`` would start them, in ``rayrm.bench.trial``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.builtin import BUILTIN_PROMPTS
from rayrm.bench.spec import BenchSpec
from rayrm.config import ConfigError, config_from_dict
from rayrm.console import say
from rayrm.data.prompts import write_prompts_jsonl
from rayrm.models.tiny import build_tiny_policy

REPO = Path(__file__).resolve().parents[2]
BENCH_CHARS = "".join(chr(c) for c in range(32, 127)) + "\t\n"
"""Printable ASCII plus tab and newline: with 3 special tokens, a 100-token vocabulary."""
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
SUPPRESSED_LOGIT_SHIFT = 10.0
NOTE_NO_EOS = (
    "the benchmark policy is built with its <pad>/<eos>/<unk> logits pushed to about -100 "
    "(final layer-norm bias plus their tied embedding rows), so every completion runs to "
    "max_new_tokens in every trainer; the token counts reported are the measured ones"
)


# ------------------------------------------------------------------------------ workload
@dataclass
class Workload:
    """Directories and sizes of a locally built benchmark workload."""

    policy: str
    reward: str | None
    prompts: str
    vocab_size: int
    n_positions: int
    policy_params: int
    reward_params: int


ESTIMATOR_SETTINGS: dict[str, dict[str, Any]] = {
    "gae": {},
    # TRL 1.12 GRPOTrainer's defaults: beta as a k3 loss term, loss_type="dapo" (token mean
    # over the minibatch), scale_rewards="group".
    "grpo": {
        "advantage_estimator": "grpo",
        "kl_mode": "loss",
        "kl_estimator": "k3",
        "loss_aggregation": "token_mean",
    },
    # TRL 1.12 RLOOTrainer: beta times the summed k1 KL subtracted from the sequence reward,
    # leave-one-out baseline, the loss averaged per completion.
    "rloo": {
        "advantage_estimator": "rloo",
        "kl_mode": "reward",
        "kl_estimator": "k1",
        "loss_aggregation": "seq_mean_token_mean",
    },
}
"""The ``algorithm`` settings of a benchmark configuration per ``BenchSpec.estimator``: for the
critic-free ones, those that match TRL's trainer of the same name."""


def build_bench_tokenizer(vocab_size: int = 100) -> Any:
    """A character tokenizer over ``BENCH_CHARS``, padded with ``<xN>`` tokens to ``vocab_size``.

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, then one id per character; the ``<xN>`` filler
    tokens (only for vocabularies above 100) are never produced by encoding text but decode to
    themselves, so a 50k-vocabulary model samples valid, decodable ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in BENCH_CHARS:
        vocab[char] = len(vocab)
    if vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size must be >= {len(vocab)} (the character set), got {vocab_size}"
        )
    for i in range(len(vocab), vocab_size):
        vocab[f"<x{i}>"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def _suppress_tokens(model_dir: str, token_ids: list[int]) -> int:
    """Makes ``token_ids`` (practically) never sampled by the GPT-2 LM saved in ``model_dir``.

    ``logit_v = ln_f(x) . E_v``: a bias of ``c`` on dimension 0 of the final layer norm and
    ``-c`` in dimension 0 of those tokens' (tied) embedding rows put their logits near
    ``-c**2``, while every other logit moves by ``c * E_v[0]`` (about 0.2 at GPT-2's init).

    Returns:
        The model's parameter count.
    """
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir)
    with torch.no_grad():
        model.transformer.ln_f.bias[0] = SUPPRESSED_LOGIT_SHIFT
        for token in token_ids:
            model.transformer.wte.weight[token, 0] = -SUPPRESSED_LOGIT_SHIFT
    model.save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def build_workload(
    workdir: str | Path,
    spec: BenchSpec,
    *,
    n_positions: int,
    reward_model: bool = True,
) -> Workload:
    """Writes policy, reward model (same size) and prompts for ``spec`` into ``workdir``."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bench_tokenizer(spec.vocab_size)
    policy = build_tiny_policy(
        work / "policy",
        tokenizer,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        n_embd=spec.n_embd,
        n_positions=n_positions,
        seed=spec.seed,
    )
    specials = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    policy_params = _suppress_tokens(policy, specials)
    reward_dir, reward_params = None, 0
    if reward_model:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=n_positions,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            n_layer=spec.n_layer,
            n_head=spec.n_head,
            n_embd=spec.n_embd,
        )
        torch.manual_seed(spec.seed + 1)
        rm = GPT2ForSequenceClassification(config)
        reward_dir = str(work / "reward")
        rm.save_pretrained(reward_dir)
        tokenizer.save_pretrained(reward_dir)
        reward_params = sum(p.numel() for p in rm.parameters())
    prompts = write_prompts_jsonl(work / "prompts.jsonl", BUILTIN_PROMPTS)
    return Workload(
        policy, reward_dir, str(prompts), len(tokenizer), n_positions, policy_params, reward_params
    )


def model_info(spec: BenchSpec, workload: Workload) -> dict[str, Any]:
    """The ``model`` entry of a JSON line."""
    return {
        "type": "gpt2",
        "n_layer": spec.n_layer,
        "n_head": spec.n_head,
        "n_embd": spec.n_embd,
        "n_positions": workload.n_positions,
        "vocab_size": workload.vocab_size,
        "policy_params": workload.policy_params,
        "reward_params": workload.reward_params,
    }


def run_config(spec: BenchSpec, workload: Workload, storage: str) -> Any:
    """The rayrm RLConfig of one benchmark configuration: the config file a user would give
    ``rayrm train``, every resource at its default unless the spec sets it (``num_cpus``,
    ``num_cpus_per_learner``, remote env runners and learners). The trial reserves what
    ``rayrm train`` then derives from it (``rayrm.bench.trial``)."""

    reward: dict[str, Any] = {"batch_size": spec.batch_size}
    if workload.reward is not None:
        reward.update(source="model", path=workload.reward)
    else:
        reward.update(source="function", function="envs.builtin:vowel_reward")
    critic = {"critic": spec.critic} if spec.estimator == "gae" else {}
    learner = (
        {}
        if spec.num_cpus_per_learner is None
        else {"num_cpus_per_learner": spec.num_cpus_per_learner}
    )
    return config_from_dict(
        {
            "name": "bench",
            "seed": spec.seed,
            "model": {"path": workload.policy, **critic},
            "data": {"prompts": workload.prompts, "max_prompt_tokens": spec.max_prompt_tokens},
            "generation": {
                "max_new_tokens": spec.max_new_tokens,
                "samples_per_prompt": spec.samples_per_prompt,
            },
            "reward": reward,
            "algorithm": {
                "batch_size": spec.batch_size,
                "num_minibatches": spec.num_minibatches,
                "num_epochs": spec.num_epochs,
                "lr": spec.lr,
                "kl_coef": spec.kl_coef,
                "async_rollouts": spec.async_rollouts,
                **ESTIMATOR_SETTINGS[spec.estimator],
            },
            "resources": {
                "num_env_runners": spec.num_env_runners,
                "num_learners": spec.num_learners,
                **learner,
            },
            "run": {
                "num_iterations": spec.warmup + spec.iterations,
                "storage_path": storage,
                "num_cpus": spec.num_cpus,
                # Its own local Ray never grows: a trial that does not fit fails at once, with
                # the line rayrm train prints after this wait.
                "pending_timeout_s": 0,
            },
            # Held-out evaluation would sample and score inside some algo.train() calls.
            "eval": {"every": 0},
        },
        check_paths=True,
    )


# ------------------------------------------------------------------------------ measuring
class PeakRSS:
    """Peak RSS of this process (``ru_maxrss``) and of its Ray worker processes (``ray::<Actor>``).

    Worker RSS is polled (every ``interval_s``; the process list is refreshed every
    ``refresh_every`` polls, so polling costs the measured process next to nothing). Ray's own
    services (raylet, GCS, log monitor) and idle pre-started workers are not counted: they are
    the same for any job. Descendants only, so concurrent Ray sessions of other users on the
    machine are never counted.
    """

    def __init__(self, interval_s: float = 0.25, refresh_every: int = 8) -> None:
        import psutil  # vendored by Ray (ray/thirdparty_files); importing ray puts it on the path

        self._psutil = psutil
        self._me = psutil.Process(os.getpid())
        self._interval = interval_s
        self._refresh_every = refresh_every
        self._workers: list[Any] = []
        self._polls = 0
        self.workers_peak = 0
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _find_workers(self) -> list[Any]:
        workers = []
        for proc in self._me.children(recursive=True):
            try:
                cmd = proc.cmdline()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            label = cmd[0] if cmd else ""
            if label.startswith("ray::") and not label.startswith("ray::IDLE"):
                workers.append(proc)
        return workers

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> None:
        """Takes one sample (also called directly, e.g. right before stopping)."""
        if self._polls % self._refresh_every == 0:
            self._workers = self._find_workers()
        self._polls += 1
        workers = 0
        for proc in self._workers:
            try:
                workers += proc.memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
        self.workers_peak = max(self.workers_peak, workers)
        self.total_peak = max(self.total_peak, workers + self._me.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        """``driver`` (ru_maxrss), ``workers`` (peak of their sum), ``total`` (peak, MB)."""
        driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
        return {
            "driver": round(driver, 1),
            "workers": round(self.workers_peak / 2**20, 1),
            "total": round(max(self.total_peak / 2**20, driver), 1),
        }


# ------------------------------------------------------------------------------ processes
class ChildError(RuntimeError):
    """A benchmark child process failed; the message is its traceback."""


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], serve: bool) -> None:
    """Child-process entry: stdout goes to stderr, so that only the parent's JSON is on stdout.

    Sends ``("ok", result)`` or ``("error", traceback)`` as its last message (a config
    error: the one line ``rayrm train`` prints for it, e.g. a trial that does not fit); a server
    (``serve=True``) gets the connection as its first argument and talks over it before that.
    """
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        result = fn(conn, *args) if serve else fn(*args)
        conn.send(("ok", result))
    except ConfigError as e:  # the one line rayrm train prints for it
        conn.send(("error", f"rayrm: error: {e}"))
    except BaseException:  # noqa: BLE001  (reported to the parent)
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


@contextmanager
def without_env(name: str) -> Iterator[None]:
    """``name`` removed from this process's environment within the block (children started
    in it do not inherit it)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def start_child(fn: Callable[..., Any], *args: Any, serve: bool = False) -> tuple[Any, Any]:
    """Starts ``fn`` in a fresh spawned process; returns ``(process, connection)``."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, fn, args, serve))
    proc.start()
    child.close()
    return proc, parent


def receive(proc: Any, conn: Any) -> tuple[str, Any]:
    """The child's next message; raises :class:`ChildError` on its error or death."""
    try:
        kind, payload = conn.recv()
    except EOFError:
        proc.join(timeout=10)
        raise ChildError(f"child process died (exit code {proc.exitcode})") from None
    if kind == "error":
        raise ChildError(payload)
    return kind, payload


def finish(proc: Any, conn: Any) -> Any:
    """Waits for the child's final ``("ok", result)`` and for the process to exit."""
    kind, payload = receive(proc, conn)
    while kind != "ok":
        kind, payload = receive(proc, conn)
    proc.join()
    return payload


def error_record(fn_name: str, error: BaseException) -> dict[str, Any]:
    """One JSON-able line for a configuration that failed."""
    text = str(error).strip()
    return {
        "bench": "error",
        "function": fn_name,
        "error": text.splitlines()[-1] if text else type(error).__name__,
        "traceback": text,
    }


def run_lockstep(
    servers: dict[str, tuple[Any, Any]], turns: list[tuple[str, str]], rounds: int
) -> dict[str, Any]:
    """Drives benchmark servers in lockstep and returns each server's final result.

    Every server is a child process that warms up, sends ``("ready", None)``, then runs one
    iteration per command it receives and answers ``("row", ...)``. ``turns`` is one round:
    ``(server, command)`` pairs sent one after the other, so only one server computes at a
    time and all of them see the same machine load, round after round -- ratios measured
    this way do not drift with what else the machine is doing. After ``rounds`` rounds every
    server gets ``"stop"`` and sends its summary as its final ``("ok", result)``.

    Raises:
        ChildError: a server failed (the others are stopped).
    """
    try:
        for proc, conn in servers.values():
            kind, _ = receive(proc, conn)
            if kind != "ready":
                raise ChildError(f"expected the server to be ready, got {kind!r}")
        for _ in range(rounds):
            for name, command in turns:
                proc, conn = servers[name]
                conn.send(command)
                kind, _ = receive(proc, conn)
                if kind != "row":
                    raise ChildError(f"expected an iteration row, got {kind!r}")
        for _, conn in servers.values():
            try:
                conn.send("stop")
            except BrokenPipeError:  # a trainer that ends after its last step is gone already
                pass
        return {name: finish(proc, conn) for name, (proc, conn) in servers.items()}
    except BaseException:
        _stop_all(servers)
        raise


def _stop_all(servers: dict[str, tuple[Any, Any]], timeout_s: float = 120.0) -> None:
    """Asks every live server to stop (so it shuts its Ray down), terminates stragglers."""
    for proc, conn in servers.values():
        if proc.is_alive():
            try:
                conn.send("stop")
            except OSError:
                pass
    for proc, _ in servers.values():
        proc.join(timeout=timeout_s)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)


def emit(record: dict[str, Any]) -> None:
    """Prints one JSON line on stdout (the benchmark's only stdout output)."""
    say(json.dumps(_rounded(record)))


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.4g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x
