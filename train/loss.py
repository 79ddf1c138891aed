"""The training objective: next-token cross-entropy in fp32, with optional z-loss (PaLM, Chowdhery et al. 2022),
plus whatever auxiliary losses the model returns (a mixture of experts' load-balancing and router z-loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, targets: jax.Array, z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Mean token cross-entropy and the objective (cross-entropy + z_loss · mean log(Z)²)."""
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    if not z_loss:
        return nll, nll
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return nll, nll + z_loss * jnp.mean(jnp.square(log_z))


def objective_and_metrics(model, batch: dict, z_loss: float = 0.0) -> tuple[jax.Array, dict]:
    """(objective, {"loss": cross-entropy, plus the model's auxiliary terms: aux_loss and router statistics})."""
    logits, aux = model.forward(batch["inputs"])
    nll, objective = cross_entropy(logits, batch["targets"], z_loss)
    return objective + aux["aux_loss"], {"loss": nll, **aux}


def model_loss(model, batch: dict, z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """(objective, cross-entropy) — objective first so `nnx.value_and_grad(has_aux=True)` can use it."""
    objective, metrics = objective_and_metrics(model, batch, z_loss)
    return objective, metrics["loss"]
