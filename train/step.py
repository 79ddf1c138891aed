"""The jitted train and eval steps over split NNX state.

`jax.jit` over (params, opt_state) with `nnx.merge` inside costs ~0.3 ms of Python per call against
~1.6 ms for `nnx.jit` (docs/ARCHITECTURE.md, 'The step is jax.jit over split state'), and lets us
donate the old params/optimizer buffers so a step does not hold two copies. Gradient accumulation is a
`lax.scan` over micro-batches inside the step, so the optimizer sees one update per global batch and
the schedule counts optimizer steps.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from train.loss import objective_and_metrics


def make_loss_and_grads(graphdef, z_loss: float, grad_accum_steps: int) -> Callable:
    """(params, batch) -> ((objective, metrics), grads), averaged over micro-batches; metrics holds the
    cross-entropy ("loss") and the model's auxiliary terms (an MoE's aux_loss and router statistics)."""

    def loss_of_params(params, batch):
        return objective_and_metrics(nnx.merge(graphdef, params), batch, z_loss)

    grad_fn = jax.value_and_grad(loss_of_params, has_aux=True)
    if grad_accum_steps == 1:
        return grad_fn

    def accumulated(params, batch):
        micro = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)

        def add(total, micro_batch):
            return jax.tree.map(jnp.add, total, grad_fn(params, micro_batch)), None

        shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        total, _ = jax.lax.scan(add, zeros, micro)
        return jax.tree.map(lambda x: x / grad_accum_steps, total)

    return accumulated


def make_train_step(graphdef, optimizer: optax.GradientTransformation, *, z_loss: float, grad_accum_steps: int,
                    shardings=None) -> Callable:
    """Returns step(params, opt_state, batch) -> (params, opt_state, {"loss", "objective", "grad_norm", and
    the model's auxiliary terms}).

    `shardings` = (params, opt_state, batch) NamedShardings pins the layout of inputs and outputs so
    the step compiles once; None lets jit follow its inputs (single device).
    """
    loss_and_grads = make_loss_and_grads(graphdef, z_loss, grad_accum_steps)

    def step(params, opt_state, batch):
        (objective, metrics), grads = loss_and_grads(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**metrics, "objective": objective, "grad_norm": optax.tree.norm(grads)}

    if shardings is None:
        return jax.jit(step, donate_argnums=(0, 1))
    param_sh, opt_sh, batch_sh = shardings
    return jax.jit(step, in_shardings=(param_sh, opt_sh, batch_sh), out_shardings=(param_sh, opt_sh, None),
                   donate_argnums=(0, 1))


def make_eval_step(graphdef) -> Callable:
    """eval(params, batch) -> mean token cross-entropy."""

    def evaluate(params, batch):
        return objective_and_metrics(nnx.merge(graphdef, params), batch)[1]["loss"]

    return jax.jit(evaluate)
