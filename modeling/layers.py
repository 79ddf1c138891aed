"""Dense layers and norms built from the config and the precision policy (one place for init and dtypes).

Init scheme (GPT-2 / Megatron): every weight matrix and embedding ~ N(0, init_std²); the matrices that
write into the residual stream (attention output, FFN down projection) use init_std / sqrt(2·n_layers)
so the residual variance does not grow with depth; biases 0; norm scales 1. Under μP the kernels built
here are hidden weights, whose std also shrinks as 1/sqrt(width multiplier) (modeling/mup.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.config import ModelConfig
from modeling.matvec import split_k_matvec, split_parts
from modeling.mup import hidden_init_std
from modeling.precision import (WEIGHT_GRAD_AUTO, f32_result_matmul, fp8_dot_general, policy, resolve_for_backend,
                                small_transpose_matmul)
from modeling.sharding import with_axes


class Dense(nnx.Linear):
    """nnx.Linear (same parameters) whose bf16 matmuls may take the f32-result path of `model.bf16_matmul`
    (bf16 operands, fp32 accumulation and bias add, one cast to bf16), whose fp32 matmuls may take the
    weight gradient of `model.weight_grad` (modeling/precision.py), and whose one-row products (a batch-1
    decode step) may be split over the CPU's cores by `model.matvec` (modeling/matvec.py)."""

    def __init__(self, *args, bf16_matmul: str = "xla", weight_grad: str = "xla", matvec: str = "xla",
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.bf16_matmul = bf16_matmul
        self.weight_grad = weight_grad
        self.matvec = matvec

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        if math.prod(inputs.shape[:-1]) == 1 and out_sharding is None:
            parts = split_parts(self.matvec, self.in_features)
            if parts > 1:
                dtype = self.dtype or jnp.result_type(inputs, self.kernel[...])
                y = split_k_matvec(inputs.astype(dtype), self.kernel[...].astype(dtype), parts)
                y = y if self.bias is None else y + self.bias[...].astype(jnp.float32)
                return y.astype(dtype)
        if (self.dtype == jnp.bfloat16 and out_sharding is None
                and resolve_for_backend(self.bf16_matmul, cpu="f32_result", other="xla") == "f32_result"):
            bias = None if self.bias is None else self.bias[...]
            kernel = self.kernel[...].astype(jnp.bfloat16)
            return f32_result_matmul(inputs.astype(jnp.bfloat16), kernel, bias, jnp.bfloat16)
        if (self.dtype == jnp.float32 and self.kernel.dtype == jnp.float32 and out_sharding is None
                and resolve_for_backend(self.weight_grad, **WEIGHT_GRAD_AUTO) == "small_transpose"):
            y = small_transpose_matmul(inputs.astype(jnp.float32), self.kernel[...])
            return y if self.bias is None else y + self.bias[...]
        return super().__call__(inputs, out_sharding)


# The logical axis (modeling/sharding.py) of each part's wide side: attention heads or FFN hidden features.
WIDE_AXIS = {"qkv": "heads", "out": "heads", "ffn": "mlp"}


def dense(cfg: ModelConfig, in_features: int, out_features: int, rngs: nnx.Rngs, *, part: str,
          residual_out: bool = False) -> nnx.Linear:
    """A linear layer of `part` ("qkv", "out" or "ffn"), which decides whether model.bias gives it a bias.

    Its kernel's logical axes are (embed, wide) reading from the residual stream and (wide, embed)
    writing into it (`residual_out`): Megatron's column- and row-parallel layers."""
    prec = policy(cfg.precision)
    std = hidden_init_std(cfg) / math.sqrt(2 * cfg.n_layers) if residual_out else hidden_init_std(cfg)
    axes = (WIDE_AXIS[part], "embed") if residual_out else ("embed", WIDE_AXIS[part])
    common = dict(use_bias=cfg.has_bias(part), dtype=prec.compute_dtype, param_dtype=prec.param_dtype,
                  kernel_init=with_axes(nnx.initializers.normal(std), *axes),
                  bias_init=with_axes(nnx.initializers.zeros, axes[1]), rngs=rngs)
    if prec.fp8_matmuls:
        return nnx.Linear(in_features, out_features, dot_general=fp8_dot_general, **common)
    return Dense(in_features, out_features, bf16_matmul=cfg.bf16_matmul, weight_grad=cfg.weight_grad,
                 matvec=cfg.matvec, **common)


def norm(cfg: ModelConfig, features: int, rngs: nnx.Rngs) -> nnx.Module:
    """RMSNorm or LayerNorm over the last axis, computed in fp32 (cheap, and where bf16 loses most)."""
    param_dtype = policy(cfg.precision).param_dtype
    if cfg.norm == "layernorm":
        return nnx.LayerNorm(features, epsilon=cfg.norm_eps, use_bias=cfg.norm_bias, dtype=None,
                             param_dtype=param_dtype, rngs=rngs)
    return nnx.RMSNorm(features, epsilon=cfg.norm_eps, dtype=None, param_dtype=param_dtype, rngs=rngs)
