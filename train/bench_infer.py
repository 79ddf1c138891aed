"""`isoflop bench infer (CONFIG | RUN_DIR)`: prefill and decode latency, throughput, cache size, memory,
energy and the memory-bandwidth bound of decoding, per batch size. A benchmark: it prints what this
machine measured, with the load average beside it (docs/INFERENCE.md explains every field).

Per batch size B, `repeats` requests of a random prompt of P tokens and G generated tokens each run as a
server would: a fresh cache (`Transformer.empty_cache`, sized P + G), one prefill step that also
chooses the first token, then G - 1 one-token decode steps, each timed with `block_until_ready`. Both
steps are the model's forward pass with the cache (`model(tokens, cache)`), jitted with the cache donated
(updated in place, not copied). Tokens are chosen greedily (the argmax is part of the step, as in
`isoflop generate`).

The bandwidth bound: a decode step must read every weight a token passes through once (the lookup
tables only at B rows, negligible; a tied embedding table in full, as the output head) and, per
sequence, the decode state of its context (`modeling.accounting.decode_state_bytes`). At B tokens per
step that many bytes ÷ the device's memory bandwidth (`train.hardware.device_bandwidth`: the HBM table,
or the CPU's measured calibration) is the least time a step can take; the achieved fraction is that
bound ÷ the median measured step. The KV written per step (one token per sequence) is not counted.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import statistics
import time

import numpy as np

from common.validation import ConfigError
from modeling import accounting, matvec
from modeling.accounting.flops import TRAINING_MULTIPLIER
from modeling.accounting.memory import PRECISION_BYTES
from modeling.accounting.params import param_breakdown
from train.generate import context_problems, load_run, run_config

DEFAULT_BATCHES = (1, 4, 16, 64)


# ----------------------------------------------------------------------------- the analytic side


def weight_bytes_per_step(cfg) -> int:
    """Bytes of weights one decode step reads: every parameter but the lookup-only tables (the token
    embedding unless tied to the head, learned positions), at the stored parameter dtype."""
    parts = param_breakdown(cfg)
    lookups = parts["pos_embed"] + (0 if cfg.tie_embeddings else parts["embed"])
    return (sum(parts.values()) - lookups) * PRECISION_BYTES[cfg.precision][0]


def decode_bytes_per_step(cfg, batch_size: int, prompt_len: int, gen_len: int) -> dict[str, float]:
    """Mean bytes a decode step must read over the G - 1 steps: weights, plus each sequence's decode state
    at the context that step attends to (P + i tokens at step i = 1 .. G - 1)."""
    contexts = range(prompt_len + 1, prompt_len + gen_len)
    kv = batch_size * statistics.fmean(accounting.decode_state_bytes(cfg, c) for c in contexts)
    weights = weight_bytes_per_step(cfg)
    return {"weights": float(weights), "kv_cache": kv, "total": weights + kv}


def bandwidth_bound_seconds(bytes_per_step: float, bytes_per_second: float | None) -> float | None:
    """The least time a step moving `bytes_per_step` can take at `bytes_per_second`; None when unknown."""
    if bytes_per_second is None or bytes_per_second <= 0:
        return None
    return bytes_per_step / bytes_per_second


def percentile(values, q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), 100 * q))


# ----------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class Request:
    """One benchmark's shape: batch sizes (ascending), prompt and generation length, repeats per batch."""

    batches: tuple[int, ...] = DEFAULT_BATCHES
    prompt_len: int = 128
    gen_len: int = 64
    repeats: int = 3


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,4,16,64' -> (1, 4, 16, 64); one-line ConfigError for anything but distinct positive integers."""
    items = [item.strip() for item in str(text).split(",")]
    if not items or not all(item.isdigit() and int(item) > 0 for item in items):
        raise ConfigError([f"--batch: {text!r} must be a comma-separated list of integers > 0, e.g. 1,4,16,64"])
    values = [int(item) for item in items]
    if len(set(values)) != len(values):
        raise ConfigError([f"--batch: {text!r} lists a batch size twice"])
    return tuple(sorted(values))


def check_request(request: Request, model_cfg) -> None:
    """The shape fits the model and yields at least one timed decode step; one ConfigError (exit 2)."""
    problems = []
    for name, value, least in (("--prompt-len", request.prompt_len, 1), ("--gen-len", request.gen_len, 2),
                               ("--repeats", request.repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            why = " (the first token comes from the prefill; decode steps start at the second)" if least == 2 else ""
            problems.append(f"{name}: {value!r} must be an integer >= {least}{why}")
    if not problems:
        problems = context_problems(model_cfg, request.prompt_len + request.gen_len, "--prompt-len + --gen-len")
    if problems:
        raise ConfigError(problems)


# ----------------------------------------------------------------------------- measuring


def _steps(model):
    """(state, step): one jitted step over the split state for prefill and decode alike (each shape is
    compiled once; the position is the cache's), the cache donated: (state, tokens, cache) -> (next ids, cache)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    def step(state, tokens, cache):
        logits, cache = nnx.merge(graphdef, state)(tokens, cache)
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

    return state, jax.jit(step, donate_argnums=2)


def _request(prefill_step, decode_step, state, cache, prompt, gen_len: int) -> tuple[float, list[float], list[float]]:
    """One request of `gen_len` tokens: (prefill seconds, each decode step's seconds, each decode step's
    process CPU seconds)."""
    start = time.perf_counter()
    token, cache = prefill_step(state, prompt, cache)
    token.block_until_ready()
    prefill = time.perf_counter() - start
    decode, cpu = [], []
    for _ in range(gen_len - 1):
        t0, c0 = time.perf_counter(), time.process_time()
        token, cache = decode_step(state, token[:, None], cache)
        token.block_until_ready()
        decode.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return prefill, decode, cpu


def compiled_memory_bytes(compiled) -> int | None:
    """What XLA allocates for one call of a compiled step: arguments + outputs + temporaries, less the
    donated (aliased) cache counted twice; None where the backend does not say."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


def cache_bytes(cache) -> int:
    """Bytes the layers' cache arrays hold (measured from the arrays, not the accounting); the 4-byte fill
    counter `cache.end` is not decode state the accounting counts."""
    import jax

    return int(sum(leaf.nbytes for leaf in jax.tree.leaves(cache.layers)))


def bench_batch(model, cfg, batch: int, request: Request, device, peak, bandwidth, hardware_config) -> dict:
    """Every figure of one batch size (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    from train.energy import JOULES_PER_KWH, EnergyMeter
    from train.hardware import mfu
    from train.metric_log import peak_memory_bytes

    total_len = request.prompt_len + request.gen_len
    state, step = _steps(model)
    prompt = jax.random.randint(jax.random.key(batch), (batch, request.prompt_len), 0, cfg.vocab_size)
    compile_start = time.perf_counter()
    cache = model.empty_cache(batch, total_len)
    measured_cache = cache_bytes(cache)
    prefill_step = step.lower(state, prompt, cache).compile()
    one_token = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
    decode_step = step.lower(state, one_token, cache).compile()
    _request(prefill_step, decode_step, state, cache, prompt, request.gen_len)  # warm-up
    compile_seconds = time.perf_counter() - compile_start

    prefills, decodes, cpus, totals = [], [], [], []
    with EnergyMeter([device], hardware_config) as meter:
        for _ in range(request.repeats):
            cache = model.empty_cache(batch, total_len)
            prefill, decode, cpu = _request(prefill_step, decode_step, state, cache, prompt, request.gen_len)
            prefills.append(prefill)
            decodes += decode
            cpus += cpu
            totals.append(prefill + sum(decode))
        meter.update()
        energy_kwh, energy_source = meter.energy_kwh, meter.energy_source
    generated = request.repeats * batch * request.gen_len

    prefill_median = statistics.median(prefills)
    step_median = statistics.median(decodes)
    moved = decode_bytes_per_step(cfg, batch, request.prompt_len, request.gen_len)
    bound = bandwidth_bound_seconds(moved["total"], bandwidth.bytes_per_second)
    forward_flops_per_token = accounting.mfu_flops_per_token(cfg, request.prompt_len) / TRAINING_MULTIPLIER
    prefill_flops = batch * request.prompt_len * forward_flops_per_token
    memory, memory_source = peak_memory_bytes(device)
    return {
        "batch_size": batch,
        "compile_and_warmup_seconds": compile_seconds,
        "time_to_first_token_seconds": prefill_median,
        "prefill_tokens_per_second": batch * request.prompt_len / prefill_median,
        "prefill_model_flops": prefill_flops,
        "prefill_mfu": mfu(prefill_flops / prefill_median, 1, peak),
        "decode_latency_seconds_median": step_median,
        "decode_latency_seconds_p90": percentile(decodes, 0.9),
        "decode_cpu_seconds_median": statistics.median(cpus),
        "decode_tokens_per_second": batch / step_median,
        "total_tokens_per_second": batch * total_len / statistics.median(totals),
        "generated_tokens_per_second": batch * request.gen_len / statistics.median(totals),
        "kv_cache_bytes_measured": measured_cache,
        "kv_cache_bytes_analytic": batch * accounting.decode_state_bytes(cfg, total_len),
        "kv_cache_bytes_per_token_analytic": accounting.kv_cache_bytes_per_token(cfg),
        "decode_weight_bytes_per_step": moved["weights"],
        "decode_kv_bytes_per_step": moved["kv_cache"],
        "decode_bytes_per_step": moved["total"],
        "bandwidth_bound_seconds_per_step": bound,
        "bandwidth_bound_fraction": None if bound is None else bound / step_median,
        "prefill_memory_bytes_compiled": compiled_memory_bytes(prefill_step),
        "decode_memory_bytes_compiled": compiled_memory_bytes(decode_step),
        "peak_memory_bytes": memory,
        "peak_memory_source": memory_source,
        "energy_joules_per_generated_token": None if energy_kwh is None else energy_kwh * JOULES_PER_KWH / generated,
        "energy_source": energy_source,
        "load_average_1m": os.getloadavg()[0],
    }


def bench_infer(model, cfg, request: Request, hardware_config=None, *, bandwidth_cache_path=None,
                peak_cache_path=None) -> dict:
    """The benchmark of an initialised or restored model: machine facts once, then one row per batch size."""
    import jax

    from train import runtime
    from train.hardware import compute_dtype_of, device_bandwidth, device_peak

    device = jax.devices()[0]
    peak = device_peak(device, compute_dtype_of(cfg.precision), hardware_config, cache_path=peak_cache_path)
    bandwidth = device_bandwidth(device, cache_path=bandwidth_cache_path)
    load_before = os.getloadavg()[0]
    rows = [bench_batch(model, cfg, batch, request, device, peak, bandwidth, hardware_config)
            for batch in request.batches]
    return {
        "prompt_len": request.prompt_len,
        "gen_len": request.gen_len,
        "repeats": request.repeats,
        "attention": cfg.attention,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.kv_heads,
        "precision": cfg.precision,
        "matvec": {"value": matvec.resolve(cfg.matvec), "cores_per_device": matvec.cores_per_device()},
        "params": accounting.param_counts(cfg),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "memory_bandwidth_bytes_per_second": bandwidth.bytes_per_second,
        "memory_bandwidth_source": bandwidth.source,
        "peak_flops_per_second": peak.flops_per_second,
        "peak_flops_source": peak.source,
        "load_average_1m_before": load_before,
        "host_runtime": runtime.host_runtime(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }


# ----------------------------------------------------------------------------- the command


def target_config(target: str, overrides: list[str]):
    """The validated config of a CONFIG (with its overrides) or of a RUN_DIR (which takes none)."""
    from train import config as config_lib

    if not pathlib.Path(target).is_dir():
        return config_lib.load(target, overrides)
    if overrides:
        raise ConfigError([f"overrides: a run directory's config is fixed; drop {' '.join(overrides)}"])
    return run_config(target)


def run(target: str, overrides: list[str], request: Request) -> tuple[dict, pathlib.Path | None]:
    """Benchmark a CONFIG (freshly initialised weights; overrides allowed) or a RUN_DIR (its latest
    checkpoint; the result is written into its summary under `inference`). Returns (result, run dir)."""
    config = target_config(target, overrides)
    check_request(request, config.model)
    if pathlib.Path(target).is_dir():
        _summary_to_update(pathlib.Path(target))  # a run without a readable summary is refused before timing
        loaded = load_run(target)
        model, path = loaded.model, loaded.path
    else:
        from flax import nnx

        from modeling.transformer import Transformer

        model, path = Transformer(config.model, nnx.Rngs(config.run.seed)), None
    result = bench_infer(model, config.model, request, config.hardware)
    if path is not None:
        result["checkpoint_step"] = loaded.step
        record(path, result)
    return result, path


def _summary_to_update(path: pathlib.Path):
    from common.run_contract import SUMMARY_FILE, read_summary

    summary = read_summary(path, missing_ok=True)
    if summary is None:
        raise ConfigError([f"RUN_DIR: {path} has no {SUMMARY_FILE} (the run has not finished); nothing to record "
                           "the benchmark in"])
    return summary


def record(path: pathlib.Path, result: dict) -> None:
    """Rewrite the run's summary with `inference` = result, holding the run's lock (a training of the
    directory would otherwise overwrite it when it ends)."""
    from common.files import ExclusiveLock
    from common.run_contract import LOCK_FILE, to_json_value, write_summary

    with ExclusiveLock(path / LOCK_FILE, f"run directory {path}"):
        summary = _summary_to_update(path)
        write_summary(path, dataclasses.replace(summary, inference=to_json_value(result)))


def _matvec_text(described: dict) -> str:
    if described["value"] != "split_k":
        return described["value"]
    return f"split_k over {described['cores_per_device']} cores"


def format_result(result: dict) -> str:
    """A table: one row per batch size."""
    bandwidth = result["memory_bandwidth_bytes_per_second"]
    lines = [
        f"{result['attention']} {result['n_heads']} heads / {result['n_kv_heads']} KV heads, "
        f"{result['params']['total']:,} params, prompt {result['prompt_len']}, generate {result['gen_len']}, "
        f"{result['repeats']} requests per batch | {result['device_kind']} | one-row matmuls "
        f"{_matvec_text(result['matvec'])} | memory bandwidth "
        + ("n/a" if bandwidth is None else f"{bandwidth / 1e9:.1f} GB/s") + f" ({result['memory_bandwidth_source']})",
        f"{'batch':>5} {'TTFT ms':>9} {'prefill MFU':>11} {'decode ms p50':>13} {'p90':>7} {'decode tok/s':>12} "
        f"{'total tok/s':>11} {'KV MiB meas/anal':>17} {'MB/step':>8} {'bound ms':>8} {'of bound':>8} "
        f"{'J/token':>8} {'load':>5}",
    ]
    for row in result["results"]:
        def pct(value):
            return "n/a" if value is None else f"{100 * value:.0f}%"

        bound = row["bandwidth_bound_seconds_per_step"]
        energy = row["energy_joules_per_generated_token"]
        lines.append(
            f"{row['batch_size']:>5} {1000 * row['time_to_first_token_seconds']:>9.1f} {pct(row['prefill_mfu']):>11} "
            f"{1000 * row['decode_latency_seconds_median']:>13.2f} {1000 * row['decode_latency_seconds_p90']:>7.2f} "
            f"{row['decode_tokens_per_second']:>12,.0f} {row['total_tokens_per_second']:>11,.0f} "
            f"{row['kv_cache_bytes_measured'] / 2**20:>8.2f}/{row['kv_cache_bytes_analytic'] / 2**20:<8.2f} "
            f"{row['decode_bytes_per_step'] / 1e6:>8.1f} {'n/a' if bound is None else f'{1000 * bound:.2f}':>8} "
            f"{pct(row['bandwidth_bound_fraction']):>8} {'n/a' if energy is None else f'{energy:.3g}':>8} "
            f"{row['load_average_1m']:>5.1f}")
    lines.append(f"energy: {result['results'][0]['energy_source']}; peak memory: "
                 f"{result['results'][-1]['peak_memory_source']}")
    return "\n".join(lines)
