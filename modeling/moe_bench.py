"""Which MoE dispatch is faster here: `python -m modeling.moe_bench [--tokens N] [--repeats R]`.

Times forward + backward (value_and_grad of sum(y²)) of one MoE layer on the default backend for each
dispatch path, plus a dense FFN doing the same model FLOPs (k experts' worth of d_ff) as the floor.
Repeats are interleaved (capacity, dropless, dense, capacity, ...) so a change in machine load hits every
path alike; the medians and the 1-minute load average before and after are printed. The result decides
`modeling.ffn_kinds.MOE_AUTO_DISPATCH` (docs/MOE.md has the figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.config import ModelConfig
from modeling.feedforward import build_kind
from modeling.moe import MoE

SHAPES = {  # (d_model, d_ff, experts, top_k): configs/moe-tiny.yaml's layer, and a wider, more expert one
    "moe-tiny": (128, 352, 4, 1),
    "e8k2": (256, 704, 8, 2),
}


def _timed_step(module: nnx.Module, x: jax.Array):
    graphdef, state = nnx.split(module)

    @jax.jit
    def step(state, x):
        return jax.value_and_grad(lambda s: jnp.sum(jnp.square(nnx.merge(graphdef, s)(x).astype(jnp.float32))))(state)

    jax.block_until_ready(step(state, x))  # compile

    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(step(state, x))
        return time.perf_counter() - start

    return run


def bench(shape: str, tokens: int, repeats: int, seq_len: int = 256) -> dict:
    d, d_ff, experts, k = SHAPES[shape]
    cfg = ModelConfig(d_model=d, d_ff=d_ff, ffn="moe", moe_experts=experts, moe_top_k=k, max_seq_len=seq_len)
    x = jax.random.normal(jax.random.key(0), (tokens // seq_len, seq_len, d), jnp.float32)
    runs = {
        "capacity": _timed_step(MoE(dataclasses.replace(cfg, moe_dispatch="capacity"), nnx.Rngs(0)), x),
        "dropless": _timed_step(MoE(dataclasses.replace(cfg, moe_dispatch="dropless"), nnx.Rngs(0)), x),
        "dense_k_experts": _timed_step(build_kind("swiglu", dataclasses.replace(cfg, d_ff=k * d_ff), nnx.Rngs(0)), x),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), {args.tokens} tokens, "
          f"{args.repeats} interleaved repeats, fwd+bwd of one MoE layer; load average before {os.getloadavg()[0]:.2f}")
    for shape in SHAPES:
        medians = bench(shape, args.tokens, args.repeats)
        figures = "  ".join(f"{name} {1000 * value:.1f} ms" for name, value in medians.items())
        print(f"{shape:9s} {SHAPES[shape]}  {figures}  (load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
