"""`isoflop bench train`: compile time, step time, tokens/s, MFU and the share of time spent on data.

MFU is given against two peaks: the measured one (what XLA reaches on this host's matmuls, as the
trainer's `mfu`) and the hardware's nominal one (cores x FMA lanes x clock on a CPU; docs/HARDWARE.md),
and the result carries the CPU paths the step was built with and why (train/cpu_paths.py).

A benchmark, not a test: it prints figures measured on this machine. Steps after compilation are timed
one by one with `block_until_ready`, and the median is reported (robust to a noisy neighbour). On a
shared CPU host other processes stretch wall time, so the result also carries the process CPU seconds
per step (the work done, nearly load-independent) and the 1-minute load average while it ran.
"""

from __future__ import annotations

import os
import statistics
import time

import jax

from modeling import accounting
from train import data as data_lib
from train.config import Config
from train.cpu_paths import format_paths
from train.hardware import compute_dtype_of, device_nominal_peak, device_peak, mfu
from train.loop import build_training
from train.sharding import make_mesh


def bench_train(config: Config, steps: int = 10, repeats: int = 1) -> dict:
    mesh = make_mesh(config.run)
    dataset = data_lib.prepare(config)
    setup = build_training(config, max(steps * repeats + 1, 2), mesh)  # the trainer's own step and state
    params, opt_state, step_fn, data_sh = setup.params, setup.opt_state, setup.train_step, setup.data_sharding
    iterator = dataset.train_iterator(config.run.seed)

    start = time.perf_counter()
    compiled = step_fn.lower(params, opt_state, jax.device_put(next(iterator), data_sh)).compile()
    compile_seconds = time.perf_counter() - start
    params, opt_state, metrics = compiled(params, opt_state, jax.device_put(next(iterator), data_sh))
    jax.block_until_ready(metrics)

    step_seconds, data_seconds, cpu_seconds = [], [], []
    for _ in range(steps * repeats):
        t0, cpu0 = time.perf_counter(), time.process_time()
        batch = jax.device_put(next(iterator), data_sh)
        t1 = time.perf_counter()
        params, opt_state, metrics = compiled(params, opt_state, batch)
        jax.block_until_ready(metrics)
        t2 = time.perf_counter()
        data_seconds.append(t1 - t0)
        step_seconds.append(t2 - t0)
        cpu_seconds.append(time.process_time() - cpu0)

    tokens_per_step = config.data.batch_size * config.data.seq_len
    median_step = statistics.median(step_seconds)
    tokens_per_second = tokens_per_step / median_step
    mfu_flops_per_token = accounting.mfu_flops_per_token(config.model, config.data.seq_len)
    devices = mesh.devices.flatten().tolist()
    compute_dtype = compute_dtype_of(config.model.precision)
    peak = device_peak(devices[0], compute_dtype, config.hardware)
    nominal = device_nominal_peak(devices[0], compute_dtype)
    model_flops_per_second = mfu_flops_per_token * tokens_per_second
    return {
        "compile_seconds": compile_seconds,
        "step_seconds_median": median_step,
        "step_seconds_min": min(step_seconds),
        "tokens_per_step": tokens_per_step,
        "tokens_per_second": tokens_per_second,
        "model_flops_per_step": mfu_flops_per_token * tokens_per_step,
        "mfu": mfu(model_flops_per_second, len(devices), peak),
        "peak_flops_per_second": peak.flops_per_second,
        "peak_source": peak.source,
        "mfu_nominal": mfu(model_flops_per_second, len(devices), nominal),
        "nominal_peak_flops_per_second": nominal.flops_per_second,
        "nominal_peak_source": nominal.source,
        "data_wait_share": sum(data_seconds) / sum(step_seconds),
        "cpu_seconds_per_step_median": statistics.median(cpu_seconds),
        "load_average_1m": os.getloadavg()[0],
        "final_loss": float(metrics["loss"]),
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "host_paths": setup.host_paths,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_bench(result: dict, steps: int) -> str:
    """The text `isoflop bench train` prints: one line of figures, the two MFUs, then the host paths."""
    return "\n".join([
        f"compile {result['compile_seconds']:.1f} s | step {1000 * result['step_seconds_median']:.0f} ms (median of"
        f" {steps}) | {result['tokens_per_second']:,.0f} tokens/s | data wait {100 * result['data_wait_share']:.1f}%"
        f" | {result['devices']}× {result['device_kind']} | load {result['load_average_1m']:.1f}",
        f"MFU {_percent(result['mfu'])} of {result['peak_flops_per_second'] or 0:.3g} FLOP/s ({result['peak_source']})",
        f"MFU {_percent(result['mfu_nominal'])} of nominal {result['nominal_peak_flops_per_second'] or 0:.3g} FLOP/s"
        f" ({result['nominal_peak_source']})",
        format_paths(result["host_paths"]),
    ])
