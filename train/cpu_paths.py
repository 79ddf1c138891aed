"""Which CPU-specific paths a training step takes on this host, and why.

Findings and how to re-run it: docs/PERFORMANCE.md, 'Host-adaptive paths'.

Two model knobs have CPU-specific paths: `model.attention_impl` (xla | blocked, the blocked kernel with
`model.attention_block_size` queries per block) and `model.bf16_matmul` (xla | f32_result). Only "auto"
is decided here; an explicit value always wins (and attention_impl=blocked keeps the config's block
size). On the CPU backend, "auto" is settled by timing the candidates on the run's shape class, in
turn and best of a few rounds so that a neighbour's load falls on all of them alike, and the times are
cached per host beside the CPU peak (`train.hardware.calibrated`, key: CPU, cores, jax, shape class).
The choice is a pure function of the cached times: a host with a cache chooses the same every time and
measures nothing; a missing or malformed entry is measured again. Off the CPU, "auto" stays the
accelerator default (modeling resolves it per backend); a multi-process run takes the static CPU default,
so that every process compiles the same step. The process-start settings (host allocator, XLA flags)
cannot be chosen per run: `train.runtime.host_runtime()` says what is in effect.

    python -m train.cpu_paths CONFIG [key=value ...] [--recalibrate] [--json]
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import functools
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp

from common import cpuinfo
from common.warn import warn_once
from modeling import attention_kinds, matvec
from modeling.config import ModelConfig
from modeling.precision import WEIGHT_GRAD_AUTO, f32_result_matmul, policy
from train import hardware, runtime

# Blocked attention's queries per block: those cutting the sequence into 2..MAX_BLOCKS blocks (each block is
# more ops to compile and run; one block skips nothing), or one block when the sequence is that short.
BLOCK_CANDIDATES = (32, 64, 128, 256, 512)
MAX_BLOCKS = 8
SCORE_BUDGET = 1 << 21  # batch x heads x T^2 scores per timed attention call: ~0.05-0.2 s forward + backward
MATMUL_TOKENS = 2048  # rows of the timed dense matmul
# Timed rounds after one warm-up call: at least ROUNDS, more (up to MAX_ROUNDS) while the rounds have taken
# less than TIMING_SECONDS, so a short kernel gets more chances past a neighbour's bursts; the best counts.
ROUNDS, MAX_ROUNDS, TIMING_SECONDS = 5, 30, 1.0


# Where a choice came from: the config's value; timed on this host; the backend's default (an accelerator, a
# multi-process run, a failed measurement); not read by the model at all.
SOURCES = ("explicit", "measured", "default", "unused")


def default_cache_path() -> pathlib.Path:
    return hardware.default_cache_path().with_name("cpu_paths.json")


def _choice(value, source: str, reason: str) -> dict:
    if source not in SOURCES:
        raise ValueError(f"choice source {source!r} is not one of {', '.join(SOURCES)}")
    return {"value": value, "source": source, "reason": reason}


# ----------------------------------------------------------------------------- timing


def time_in_turn(calls: dict[str, collections.abc.Callable]) -> dict[str, float]:
    """Best seconds per call of each candidate, timed round robin after one compiling warm-up call each."""
    for call in calls.values():
        jax.block_until_ready(call())
    best = dict.fromkeys(calls, math.inf)
    start_all, rounds = time.perf_counter(), 0
    while rounds < ROUNDS or (rounds < MAX_ROUNDS and time.perf_counter() - start_all < TIMING_SECONDS):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            best[name] = min(best[name], time.perf_counter() - start)
        rounds += 1
    return best


def fastest(seconds: dict[str, float]) -> str:
    """The fastest candidate; a tie goes to the first named (the candidates' order is fixed)."""
    return min(seconds, key=lambda name: (seconds[name], list(seconds).index(name)))


def _measured(what: str, key: str, candidates: list[str], measure, cache_path, recalibrate) -> tuple[dict, str]:
    """The cached entry of `key` (its `seconds` naming exactly `candidates`), measured when absent."""
    valid = lambda entry: (list(entry["seconds"]) == candidates  # noqa: E731
                           and all(float(entry["seconds"][name]) > 0 for name in candidates))
    path = pathlib.Path(cache_path) if cache_path else default_cache_path()
    return hardware.calibrated(what, key, lambda: {"seconds": measure()}, path, recalibrate, valid=valid,
                               cache_when_busy=True)


def _provenance(entry: dict, where: str) -> str:
    load = entry.get("others_cpu_share", 0.0)
    busy = (f", other processes used {load:.0%} of the CPU meanwhile (re-measure when idle: python -m"
            " train.cpu_paths CONFIG --recalibrate)") if load > 0.2 else ""
    return f"on {entry['cpu']} at {entry['measured_at']}{busy}, {where}"


def _times(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {1e3 * value:.1f} ms" for name, value in seconds.items())


# ----------------------------------------------------------------------------- attention


def _softmax_attention(model: ModelConfig) -> bool:
    from modeling.attention import ATTENTION, SoftmaxAttention

    return issubclass(ATTENTION[model.attention], SoftmaxAttention)


def attention_shape(model: ModelConfig, seq_len: int) -> dict:
    """The shape class an attention choice is measured on and cached for (the batch only scales time)."""
    heads, length = model.n_heads, seq_len
    window = model.window if model.layer_kind(0) == "local" else None
    return {"attention": model.attention, "seq_len": length, "heads": heads, "kv_heads": model.kv_heads,
            "head_dim": model.head_size, "dtype": jnp.dtype(policy(model.precision).compute_dtype).name,
            "window": window, "batch": max(1, SCORE_BUDGET // (heads * length * length))}


def attention_candidates(seq_len: int) -> list[str]:
    """"xla" and "blocked <size>" for each candidate block size at this sequence length."""
    sizes = [size for size in BLOCK_CANDIDATES if 2 <= math.ceil(seq_len / size) <= MAX_BLOCKS]
    if not sizes:  # too short for two blocks of the smallest size, or too long for MAX_BLOCKS of the largest
        sizes = [seq_len] if seq_len <= BLOCK_CANDIDATES[0] else [BLOCK_CANDIDATES[-1]]
    return ["xla"] + [f"blocked {size}" for size in sizes]


def measure_attention(model: ModelConfig, shape: dict) -> dict[str, float]:
    """Seconds of one forward + backward of layer 0's attention core (after the projections) per candidate,
    through the model's own `attend`, on random q/k/v of the shape class."""
    from flax import nnx

    from modeling.attention import ATTENTION

    dtype = jnp.dtype(shape["dtype"])
    batch, length, hd = shape["batch"], shape["seq_len"], shape["head_dim"]
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, length, shape["heads"], hd), dtype)
    k, v = (jax.random.normal(key, (batch, length, shape["kv_heads"], hd), dtype) for key in keys[1:])
    calls = {}
    for name in attention_candidates(length):
        impl, _, block = name.partition(" ")
        cfg = dataclasses.replace(model, attention_impl=impl, attention_block_size=int(block or 1))
        attend = ATTENTION[model.attention](cfg, 0, nnx.Rngs(0)).attend
        out = jax.eval_shape(attend, q, k, v)
        cotangent = jnp.ones(out.shape, out.dtype)
        step = jax.jit(lambda q, k, v, attend=attend: jax.vjp(attend, q, k, v)[1](cotangent))
        calls[name] = functools.partial(step, q, k, v)
    return time_in_turn(calls)


def _attention(model: ModelConfig, seq_len: int, backend: str, cache_path, recalibrate) -> tuple[dict, dict]:
    """(attention_impl, attention_block_size) choices as {value, source, reason}."""
    block = model.attention_block_size
    xla_block = _choice(block, "unused", "not used by the xla kernel")
    if not _softmax_attention(model):
        unused = f"not used: {model.attention} attention has no softmax kernel to choose"
        return _choice(model.attention_impl, "unused", unused), _choice(block, "unused", unused)
    if model.attention_impl != "auto":
        explicit_block = _choice(block, "explicit", "explicit in config (model.attention_block_size)")
        return (_choice(model.attention_impl, "explicit", "explicit in config"),
                explicit_block if model.attention_impl == "blocked" else xla_block)
    static = attention_kinds.softmax_impl("auto", backend)
    static_block = _choice(block, "default", "model.attention_block_size") if static == "blocked" else xla_block
    if backend != "cpu":
        return (_choice(static, "default", f"accelerator default on {backend} (auto = jax.nn.dot_product_attention)"),
                static_block)
    if jax.process_count() > 1:
        return (_choice(static, "default", "multi-process run: the static CPU default, so every process compiles"
                                           " the same step"), static_block)
    shape = attention_shape(model, seq_len)
    key = f"{hardware.identity_key()} | attention " + " ".join(f"{k} {v}" for k, v in shape.items())
    candidates = attention_candidates(seq_len)
    try:
        entry, where = _measured("CPU attention choice", key, candidates,
                                 lambda: measure_attention(model, shape), cache_path, recalibrate)
    except Exception as err:  # a kernel that fails to build here must not stop the run
        warn_once(f"CPU attention choice: measurement failed ({type(err).__name__}: {err}); using {static}")
        return _choice(static, "default", f"static CPU default: the measurement failed ({type(err).__name__})"), \
            static_block
    seconds = {name: float(entry["seconds"][name]) for name in candidates}
    best = fastest(seconds)
    impl, _, size = best.partition(" ")
    if impl == "blocked":
        versus = f"{seconds['xla'] / seconds[best]:.2f}x faster than xla"
    else:
        runner_up = fastest({name: t for name, t in seconds.items() if name != "xla"})
        versus = f"{seconds[runner_up] / seconds['xla']:.2f}x faster than {runner_up}"
    window = f" window {shape['window']}" if shape["window"] else ""
    shape_text = (f"forward+backward B{shape['batch']} T{shape['seq_len']} H{shape['heads']} KV{shape['kv_heads']}"
                  f" hd{shape['head_dim']} {shape['dtype']}{window}")
    reason = f"measured: {best} {versus} ({_times(seconds)}; {shape_text}) {_provenance(entry, where)}"
    if impl == "blocked":
        return _choice("blocked", "measured", reason), _choice(int(size), "measured", f"measured with it: {best}")
    return _choice("xla", "measured", reason), xla_block


# ----------------------------------------------------------------------------- bf16 matmuls


def matmul_shape(model: ModelConfig) -> dict:
    return {"tokens": MATMUL_TOKENS, "d_model": model.d_model, "d_ff": model.d_ff}


def measure_bf16_matmul(shape: dict) -> dict[str, float]:
    """Seconds of one forward + backward of a [tokens, d_model] @ [d_model, d_ff] dense matmul: the fp32
    reference, bf16 with a bf16 result (`xla`), and `f32_result` through the model's own kernel (which on a
    CPU without native bf16 multiplies fp32 copies: modeling/precision.py)."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (shape["tokens"], shape["d_model"]), jnp.float32)
    w = jax.random.normal(keys[1], (shape["d_model"], shape["d_ff"]), jnp.float32)
    cotangent = jax.random.normal(keys[2], (shape["tokens"], shape["d_ff"]), jnp.float32)
    bf16 = [a.astype(jnp.bfloat16) for a in (x, w, cotangent)]
    kernels = {"fp32": (jnp.dot, (x, w, cotangent)), "xla": (jnp.dot, bf16),
               "f32_result": (lambda a, b: f32_result_matmul(a, b, None, jnp.bfloat16), bf16)}
    calls = {}
    for name, (kernel, (a, b, ct)) in kernels.items():
        step = jax.jit(lambda a, b, ct, kernel=kernel: jax.vjp(kernel, a, b)[1](ct))
        calls[name] = functools.partial(step, a, b, ct)
    return time_in_turn(calls)


BF16_CANDIDATES = ["fp32", "xla", "f32_result"]  # fp32 is the reference, never chosen


def _bf16_matmul(model: ModelConfig, backend: str, cache_path, recalibrate) -> dict:
    native = cpuinfo.native_bf16(cpuinfo.host()) if backend == "cpu" else None
    no_native = ("host has no native bf16 (no avx512_bf16, amx_bf16 or Arm bf16 flag): f32_result's dots run on"
                 " fp32 copies of the operands; ") if native is False else ""
    compute = jnp.dtype(policy(model.precision).compute_dtype).name
    if compute != "bfloat16":
        return _choice(model.bf16_matmul, "unused", f"not used: precision {model.precision} computes in {compute}")
    if model.bf16_matmul != "auto":
        return _choice(model.bf16_matmul, "explicit",
                       (no_native if model.bf16_matmul == "f32_result" else "") + "explicit in config")
    if backend != "cpu":
        return _choice("xla", "default", f"accelerator default on {backend} (auto = bf16 operands and results)")
    if jax.process_count() > 1:
        return _choice("f32_result", "default", f"{no_native}multi-process run: the static CPU default, so every"
                                                " process compiles the same step")
    shape = matmul_shape(model)
    key = f"{hardware.identity_key()} | bf16 matmul " + " ".join(f"{k} {v}" for k, v in shape.items())
    try:
        entry, where = _measured("CPU bf16 matmul choice", key, BF16_CANDIDATES, lambda: measure_bf16_matmul(shape),
                                 cache_path, recalibrate)
    except Exception as err:
        warn_once(f"CPU bf16 matmul choice: measurement failed ({type(err).__name__}: {err}); using f32_result")
        return _choice("f32_result", "default",
                       f"{no_native}static CPU default: the measurement failed ({type(err).__name__})")
    seconds = {name: float(entry["seconds"][name]) for name in BF16_CANDIDATES}
    best = fastest({name: seconds[name] for name in ("xla", "f32_result")})
    other = "xla" if best == "f32_result" else "f32_result"
    versus_fp32 = seconds["fp32"] / seconds[best]
    slower = "; slower than fp32 on this host: bf16 pays here only in memory" if versus_fp32 < 0.9 else ""
    shape_text = f"forward+backward {shape['tokens']}x{shape['d_model']} @ {shape['d_model']}x{shape['d_ff']}"
    return _choice(best, "measured",
                   f"{no_native}measured: {best} {seconds[other] / seconds[best]:.2f}x faster than {other},"
                   f" {versus_fp32:.2f}x the fp32 matmul's speed{slower} ({_times(seconds)}; {shape_text})"
                   f" {_provenance(entry, where)}")


def _weight_grad(model: ModelConfig, backend: str) -> dict:
    """A rule by backend, not a measurement (modeling/precision.py WEIGHT_GRAD_AUTO): (g^T·x)^T moves less
    data than x^T·g when x is the wider operand, which is what XLA:CPU's transpose copy cost."""
    compute = jnp.dtype(policy(model.precision).compute_dtype).name
    if compute != "float32":
        return _choice(model.weight_grad, "unused", f"not used: precision {model.precision} computes in {compute}")
    if model.weight_grad != "auto":
        return _choice(model.weight_grad, "explicit", "explicit in config")
    value = WEIGHT_GRAD_AUTO["cpu" if backend == "cpu" else "other"]
    why = ("the weight gradient transposes the smaller operand, docs/PERFORMANCE.md" if value == "small_transpose"
           else "autodiff's x^T·g")
    return _choice(value, "default", f"auto on {backend} ({why})")


def _matvec(model: ModelConfig, backend: str) -> dict:
    """A rule by backend, not a measurement (modeling/matvec.py): only one-row products are split, i.e.
    batch-1 decoding; a training step has none."""
    value = matvec.resolve(model.matvec)
    source = "explicit" if model.matvec != "auto" else "default"
    where = "explicit in config" if source == "explicit" else f"auto on {backend}"
    how = (f"one-row products split over up to {matvec.cores_per_device()} cores per CPU device"
           if value == "split_k" else "one product per one-row matmul")
    return _choice(value, source, f"{where}: {how}; only batch-1 decoding has one-row products (modeling/matvec.py)")


# ----------------------------------------------------------------------------- the choice


def resolve(model: ModelConfig, seq_len: int, *, cache_path=None, recalibrate: bool = False
            ) -> tuple[ModelConfig, dict]:
    """(the model config with this host's measured choices in place of "auto", the `host_paths` record).

    The record names, for each knob, the value in effect, its source and why (`{"value", "source",
    "reason"}`), beside what the host offers and the process-start settings of train/runtime.py.
    """
    backend = jax.default_backend()
    record: dict = {"backend": backend}
    if backend == "cpu":
        info = cpuinfo.host()
        record |= {"cpu": hardware.identity_key(), "cpu_flags": cpuinfo.simd_flags(info),
                   "native_bf16": cpuinfo.native_bf16(info)}
    impl, block = _attention(model, seq_len, backend, cache_path, recalibrate)
    bf16 = _bf16_matmul(model, backend, cache_path, recalibrate)
    record |= {"attention_impl": impl, "attention_block_size": block, "bf16_matmul": bf16,
               "weight_grad": _weight_grad(model, backend), "matvec": _matvec(model, backend),
               **runtime.host_runtime()}
    updates = {}
    if impl["source"] == "measured":
        updates |= {"attention_impl": impl["value"], "attention_block_size": block["value"]}
    if bf16["source"] == "measured":
        updates["bf16_matmul"] = bf16["value"]
    return dataclasses.replace(model, **updates), record


def format_paths(record: dict) -> str:
    """One line per knob: `name: value (source) — reason`."""
    lines = [f"host paths ({record['backend']}" + (f", {record['cpu']}, flags {' '.join(record['cpu_flags'])}"
                                                   if "cpu" in record else "") + "):"]
    for name, choice in record.items():
        if isinstance(choice, dict):
            source = f" ({choice['source']})" if "source" in choice else ""
            lines.append(f"  {name}: {choice['value']}{source} — {choice['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m train.cpu_paths CONFIG [key=value ...] [--recalibrate] [--json]`."""
    from train import config as config_lib

    runtime.configure_host_runtime()
    parser = argparse.ArgumentParser(prog="python -m train.cpu_paths", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--recalibrate", action="store_true", help="measure again and update the cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = config_lib.load(args.config, args.overrides)
    _, record = resolve(config.model, config.data.seq_len, recalibrate=args.recalibrate)
    print(json.dumps(record, indent=2) if args.json else format_paths(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
