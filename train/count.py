"""The compiler's own FLOP count of a training step, from abstract shapes (no weights are materialised).

This is the ground truth the analytic conventions (modeling/accounting/) are tested against. It counts
forward + backward + loss of one sequence and no optimizer update (AdamW is ~10 FLOPs per parameter
per step, not per token). XLA counts what the kernels compute, e.g. the full T×T causal attention map.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.config import ModelConfig
from modeling.transformer import Transformer
from train.loss import model_loss


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStructs for weights: free even for a 7B config."""
    return nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returned one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def compiled_training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """XLA counts a while loop's body once, not once per iteration, so a scanned layer stack
    (model.layer_stack) is counted as its unrolled twin: the same function, every layer in the graph."""
    graphdef, state = nnx.split(abstract_model(dataclasses.replace(cfg, layer_stack="unrolled")))

    def loss_and_grads(state, batch):
        model = nnx.merge(graphdef, state)
        return nnx.value_and_grad(model_loss, has_aux=True)(model, batch)

    tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    compiled = jax.jit(loss_and_grads).lower(state, {"inputs": tokens, "targets": tokens}).compile()
    return _xla_flops(compiled) / seq_len


def count_report(config, compiled: bool = True) -> dict:
    """`isoflop count`: the analytic accounting of a config plus, optionally, XLA's compiled count."""
    from modeling import accounting

    seq_len, batch_size = config.data.seq_len, config.data.batch_size
    report = accounting.report(config.model, seq_len, batch_size, backend=jax.default_backend())
    report["flops_per_token"] = dict(report["flops_per_token"])
    if compiled:
        report["flops_per_token"]["compiled"] = compiled_training_flops_per_token(config.model, seq_len)
    return {"config": {"seq_len": seq_len, "batch_size": batch_size, "precision": config.model.precision,
                       "attention": config.model.attention, "ffn": config.model.ffn}, **report}


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def format_report(report: dict) -> str:
    """A two-column table; FLOPs and bytes in engineering notation, counts with separators."""
    lines = []
    flat = flatten(report)
    width = max(len(k) for k in flat)
    for key, value in flat.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            text = str(value)
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = f"{value:.4g}"
        lines.append(f"{key:<{width}}  {text}")
    lines.append("(flops_per_token.*: training FLOPs per token = forward + backward; causal attention counted "
                 "over the full context, not halved)")
    return "\n".join(lines)
