"""`isoflop generate RUN_DIR --prompt TEXT`: continue a prompt with a trained run's latest checkpoint.

The run directory gives everything: `config.yaml` (the model), `checkpoints/` (the weights, restored
through the trainer's own `Checkpointer` into the trainer's own state), and the tokenizer the run
trained with (bytes need none; BPE's `tokenizer.json` sits in the data cache entry the summary names).
The prompt is encoded after one end-of-document token, because training saw every document start
right after one; generation stops at `--max-tokens` or at the next end of document.

Decoding is the model's own forward pass with a cache (`Transformer.__call__(tokens, cache)`, the cache
from `Transformer.empty_cache`): one prefill of the prompt, then one jitted step per token. A token is chosen greedily at temperature 0 (the argmax of the cached logits, which
equal the full forward's: tests/test_decode.py), else sampled from softmax(logits / temperature)
restricted to the `top_k` most likely tokens and then to the smallest set whose probability reaches
`top_p` (nucleus sampling, Holtzman et al. 2020), with a seeded key per step.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import numpy as np

from common.run_contract import CHECKPOINT_DIR, CONFIG_FILE, ContractError, read_summary
from common.validation import ConfigError, in_range, non_negative
from train import config as config_lib


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits (temperature 0: argmax; top_k None: no cut)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0

    def problems(self) -> list[str]:
        problems = non_negative("--temperature", self.temperature)
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            problems.append(f"--top-k: {self.top_k!r} must be an integer >= 1")
        problems += in_range("--top-p", self.top_p, 0.0, 1.0, low_open=True)
        return problems


def check_request(sampling: Sampling, max_tokens, seed) -> None:
    """Every option of a generation, as one ConfigError (exit 2) before anything is loaded."""
    problems = sampling.problems()
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        problems.append(f"--max-tokens: {max_tokens!r} must be an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(f"--seed: {seed!r} must be an integer >= 0")
    if problems:
        raise ConfigError(problems)


def context_problems(model_cfg, total_tokens: int, what: str) -> list[str]:
    """The cache is sized for prompt + generated tokens; the model was built for max_seq_len of them."""
    if total_tokens > model_cfg.max_seq_len:
        return [f"{what}: {total_tokens} tokens exceed model.max_seq_len={model_cfg.max_seq_len}"]
    return []


# ----------------------------------------------------------------------------- the run directory


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run's config and its latest checkpoint's model (an nnx Transformer), at `step`."""

    path: pathlib.Path
    config: config_lib.Config
    model: object
    step: int


def run_config(run_dir: str | pathlib.Path) -> config_lib.Config:
    """The config a run directory was trained with; one-line ConfigError when it is not a run directory."""
    path = pathlib.Path(run_dir)
    if not path.is_dir():
        raise ConfigError([f"RUN_DIR: {path} is not a directory"])
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError([f"RUN_DIR: {path} is not an isoflop run directory (no {CONFIG_FILE})"])
    return config_lib.load(path / CONFIG_FILE)


def load_run(run_dir: str | pathlib.Path) -> LoadedRun:
    """Restore the latest checkpoint's parameters into the trainer's model; a run without one is a one-line
    ConfigError (nothing is written: the checkpoint directory must already exist)."""
    path = pathlib.Path(run_dir)
    config = run_config(path)
    if not (path / CHECKPOINT_DIR).is_dir():
        raise ConfigError([f"RUN_DIR: {path} has no {CHECKPOINT_DIR}/ (training has not saved a checkpoint)"])
    from flax import nnx

    from train import budget as budget_lib
    from train.checkpoint import Checkpointer
    from train.loop import build_training

    checkpointer = Checkpointer(path / CHECKPOINT_DIR, keep=config.run.keep_checkpoints, async_save=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise ConfigError([f"RUN_DIR: {path} has no complete checkpoint yet (training has not saved one)"])
        setup = build_training(config, budget_lib.plan_for(config).steps)  # the structure the trainer saved
        params, _, _, _ = checkpointer.restore(step, setup.params, setup.opt_state)
    finally:
        checkpointer.close()
    return LoadedRun(path, config, nnx.merge(setup.graphdef, params), step)


def run_tokenizer(run: LoadedRun):
    """The tokenizer the run trained with; one line when its data had none (pre-tokenized files)."""
    from train.data.build import TOKENIZER_FILE
    from train.data.tokenizer import load_tokenizer

    data = run.config.data
    if data.source == "tokens":
        raise ConfigError([f"RUN_DIR: {run.path} trained on pre-tokenized data (data.source=tokens): "
                           "there is no tokenizer to encode a prompt with"])
    if data.tokenizer != "bpe":
        return load_tokenizer(data.tokenizer, None)
    try:
        summary = read_summary(run.path, missing_ok=True)
    except ContractError:
        summary = None  # the data cache is found from the config instead
    if summary is not None and summary.data.get("cache_path"):
        return load_tokenizer("bpe", pathlib.Path(summary.data["cache_path"]) / TOKENIZER_FILE)
    from train import data as data_lib

    return data_lib.prepare(run.config).tokenizer  # reuses the cache entry training built


# ----------------------------------------------------------------------------- decoding


def choose(logits, key, sampling: Sampling):
    """Next token ids [B] from last-position logits [B, V]: argmax at temperature 0, else a sample from
    the temperature-scaled distribution cut to top-k, then to the top-p nucleus (at least one token)."""
    import jax
    import jax.numpy as jnp

    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    scaled = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scaled.shape[-1]:
        kth = jax.lax.top_k(scaled, sampling.top_k)[0][..., -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if sampling.top_p < 1.0:
        ordered = jnp.sort(scaled, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above each one
        kept = jnp.where(before < sampling.top_p, ordered, jnp.inf)  # the nucleus; the top token always
        cutoff = jnp.min(kept, axis=-1, keepdims=True)
        scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
    return jax.random.categorical(key, scaled, axis=-1)


def stream_tokens(model, prompt_ids, max_tokens: int, sampling: Sampling = Sampling(), seed: int = 0,
                  stop_id: int | None = None) -> Iterator[int]:
    """Yield up to `max_tokens` continuation ids of one prompt (a non-empty 1-D int sequence), each as
    soon as it is chosen; stops after yielding `stop_id`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    prompt = jnp.asarray(np.asarray(prompt_ids, dtype=np.int32)[None, :])
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, cache, key):
        logits, cache = nnx.merge(graphdef, state)(tokens, cache)
        return choose(logits[:, -1], key, sampling).astype(jnp.int32), cache

    cache = model.empty_cache(1, prompt.shape[1] + max_tokens)
    keys = jax.random.split(jax.random.key(seed), max_tokens)
    tokens = prompt
    for i in range(max_tokens):
        token, cache = step(state, tokens, cache, keys[i])
        value = int(token[0])
        yield value
        if value == stop_id:
            return
        tokens = token[:, None]


class TextStream:
    """Text of a growing id sequence, piece by piece: a piece ending inside a multi-byte character is held
    back until the character completes (or the stream ends)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        stable = len(text.rstrip("\ufffd"))
        return self._emit(text, stable)

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        return self._emit(text, len(text))

    def _emit(self, text: str, upto: int) -> str:
        piece = text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return piece


def encode_prompt(tokenizer, prompt: str) -> np.ndarray:
    """End-of-document, then the prompt's ids: where every training document started."""
    return np.concatenate([[tokenizer.eod_id], np.asarray(tokenizer.encode(prompt), dtype=np.int64)])


def generate_text(run_dir, prompt: str, max_tokens: int, sampling: Sampling = Sampling(), seed: int = 0,
                  write=None) -> dict:
    """Load the run, then stream the prompt and its continuation through `write(piece)` as it is
    generated (nothing is written for bad input); returns what was generated (ids, text, seconds, step)."""
    import time

    check_request(sampling, max_tokens, seed)
    run = load_run(run_dir)
    tokenizer = run_tokenizer(run)
    ids = encode_prompt(tokenizer, prompt)
    problems = context_problems(run.config.model, len(ids) + max_tokens, "--prompt plus --max-tokens")
    if problems:
        raise ConfigError(problems)
    stream, generated = TextStream(tokenizer), []
    if write is not None:
        write(prompt)
    start = time.perf_counter()
    for token in stream_tokens(run.model, ids, max_tokens, sampling, seed, stop_id=tokenizer.eod_id):
        if token == tokenizer.eod_id:
            break
        generated.append(token)
        if write is not None:
            write(stream.push(token))
    if write is not None:
        write(stream.flush())
    return {"ids": generated, "text": tokenizer.decode(generated), "seconds": time.perf_counter() - start,
            "step": run.step, "prompt_tokens": len(ids)}
