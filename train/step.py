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

from train.loss import model_loss


def make_loss_and_grads(graphdef, z_loss: float, grad_accum_steps: int) -> Callable:
    """(params, batch) -> ((objective, cross_entropy), grads), averaged over micro-batches."""

    def loss_of_params(params, batch):
        return model_loss(nnx.merge(graphdef, params), batch, z_loss)

    grad_fn = jax.value_and_grad(loss_of_params, has_aux=True)
    if grad_accum_steps == 1:
        return grad_fn

    def accumulated(params, batch):
        micro = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)

        def add(total, micro_batch):
            (objective, nll), grads = grad_fn(params, micro_batch)
            return jax.tree.map(jnp.add, total, ((objective, nll), grads)), None

        zeros = ((jnp.zeros(()), jnp.zeros(())), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(add, zeros, micro)
        return jax.tree.map(lambda x: x / grad_accum_steps, total)

    return accumulated


def make_train_step(graphdef, optimizer: optax.GradientTransformation, *, z_loss: float, grad_accum_steps: int,
                    shardings=None) -> Callable:
    """Returns step(params, opt_state, batch) -> (params, opt_state, {"loss", "objective", "grad_norm"}).

    `shardings` = (params, opt_state, batch) NamedShardings pins the layout of inputs and outputs so
    the step compiles once; None lets jit follow its inputs (single device).
    """
    loss_and_grads = make_loss_and_grads(graphdef, z_loss, grad_accum_steps)

    def step(params, opt_state, batch):
        (objective, nll), grads = loss_and_grads(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": nll, "objective": objective, "grad_norm": optax.tree.norm(grads)}

    if shardings is None:
        return jax.jit(step, donate_argnums=(0, 1))
    param_sh, opt_sh, batch_sh = shardings
    return jax.jit(step, in_shardings=(param_sh, opt_sh, batch_sh), out_shardings=(param_sh, opt_sh, None),
                   donate_argnums=(0, 1))


def make_eval_step(graphdef) -> Callable:
    """eval(params, batch) -> mean token cross-entropy."""

    def evaluate(params, batch):
        return model_loss(nnx.merge(graphdef, params), batch)[1]

    return jax.jit(evaluate)
