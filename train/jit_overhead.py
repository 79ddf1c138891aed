"""`isoflop bench jit`: the per-step Python cost of `nnx.jit` against `jax.jit` over split state.

The trainer uses `jax.jit` with `nnx.merge` inside (train/step.py) because of this measurement:
nnx.jit walks the module graph on every call, which is visible for micro models and CPU grids.
Both steps do the same update (AdamW on the same model and batch); only the calling convention differs.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.transformer import Transformer
from train.config import Config
from train.loop import build_training
from train.loss import model_loss


def _time_calls(call, repeats: int) -> float:
    jax.block_until_ready(call())  # compile
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def compare_jit(config: Config, repeats: int = 50) -> dict:
    """Median seconds per train step under each calling convention, for this config's shapes.

    The split-state side is the trainer's own step (`loop.build_training`); the nnx.jit side does the
    same update with the same optimizer on one micro-batch (the comparison is meant for
    optimizer.grad_accum_steps = 1, the trainer's default)."""
    shape = (config.data.batch_size, config.data.seq_len)
    batch = {"inputs": jnp.zeros(shape, jnp.int32), "targets": jnp.zeros(shape, jnp.int32)}
    setup = build_training(config, total_steps=repeats + 2)
    sharded_batch = jax.device_put(batch, setup.data_sharding)

    model = Transformer(config.model, nnx.Rngs(config.run.seed))
    optimizer = nnx.Optimizer(model, setup.optimizer, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, batch):
        (_, loss), grads = nnx.value_and_grad(model_loss, has_aux=True)(model, batch, config.optimizer.z_loss)
        optimizer.update(model, grads)
        return loss

    state = {"params": setup.params, "opt_state": setup.opt_state}

    def run_split():
        state["params"], state["opt_state"], metrics = setup.train_step(state["params"], state["opt_state"],
                                                                         sharded_batch)
        return metrics["loss"]

    nnx_seconds = _time_calls(lambda: nnx_step(model, optimizer, batch), repeats)
    split_seconds = _time_calls(run_split, repeats)
    return {"nnx_jit_seconds": nnx_seconds, "jax_jit_split_seconds": split_seconds,
            "overhead_saved_seconds": nnx_seconds - split_seconds}
