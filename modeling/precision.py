"""Precision policies by name: which dtype parameters are stored in and which dtype matmuls run in.

Softmax, logits and the loss are always fp32 (they are where bf16 rounding hurts); the policy only
decides parameters and the compute dtype of the dense layers. `fp8` keeps bf16 activations but feeds
every dense matmul through per-tensor-scaled float8 (e4m3) quantise/dequantise. XLA rewrites that
pattern into native fp8 GEMMs on GPUs that have them (H100 and newer); elsewhere it runs emulated,
which is numerically the same and is announced once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from common import cpuinfo
from common.vocabulary import PRECISION_COMPUTE_DTYPES
from common.warn import warn_once
from modeling.config import ACTIVATION_DTYPES, PARAM_DTYPES


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    param_dtype: jnp.dtype
    compute_dtype: jnp.dtype
    fp8_matmuls: bool = False


JAX_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
# Built from the dtype names in modeling/config.py and common/vocabulary.py, the one place they are set.
POLICIES = {
    name: Policy(name, JAX_DTYPES[PARAM_DTYPES[name]], JAX_DTYPES[ACTIVATION_DTYPES[name]],
                 fp8_matmuls=PRECISION_COMPUTE_DTYPES[name] == "fp8")
    for name in PRECISION_COMPUTE_DTYPES
}

FP8_DTYPE = jnp.float8_e4m3fn
_FP8_MAX = float(jnp.finfo(FP8_DTYPE).max)


def policy(name: str) -> Policy:
    return POLICIES[name]


def _fp8_native() -> bool:
    device = jax.devices()[0]
    if device.platform != "gpu":
        return False
    major = int(getattr(device, "compute_capability", "0").split(".")[0])
    return major >= 9


def _quantize_dequantize(x: jax.Array) -> jax.Array:
    """Per-tensor current scaling into e4m3 and back; the scale is not differentiated through."""
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x)).astype(jnp.float32) / _FP8_MAX + 1e-12)
    quantized = (x.astype(jnp.float32) / scale).astype(FP8_DTYPE)
    return (quantized.astype(jnp.float32) * scale).astype(x.dtype)


def fp8_straight_through(x: jax.Array) -> jax.Array:
    """x rounded through e4m3 in the forward pass, identity in the backward pass."""
    return x + jax.lax.stop_gradient(_quantize_dequantize(x) - x)


def fp8_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """A drop-in `dot_general` whose operands pass through fp8 (straight-through gradients)."""
    if not _fp8_native():
        warn_once("precision=fp8: this backend has no native fp8 matmuls; running them emulated")

    return jax.lax.dot_general(
        fp8_straight_through(lhs), fp8_straight_through(rhs), dimension_numbers,
        precision=precision, preferred_element_type=preferred_element_type, **kwargs,
    )


# ----------------------------------------------------------------------------- per-backend choices


def resolve_for_backend(choice: str, *, cpu: str, other: str) -> str:
    """A config knob's value, with "auto" resolved by the backend being traced for (CPU vs. accelerators)."""
    if choice != "auto":
        return choice
    return cpu if jax.default_backend() == "cpu" else other


# ----------------------------------------------------------------------------- f32-result bf16 matmuls


def native_bf16_dots() -> bool:
    """Whether bf16 dots may run on bf16 instructions: always off the CPU; on a CPU unless its flags say
    it has none (AVX512_BF16, AMX-BF16, Arm BF16). Unknown flags leave XLA's kernel alone."""
    return jax.default_backend() != "cpu" or cpuinfo.native_bf16(cpuinfo.host()) is not False


def _f32_dot(lhs: jax.Array, rhs: jax.Array, contract: tuple[tuple[int, ...], tuple[int, ...]]) -> jax.Array:
    if lhs.dtype == jnp.bfloat16 and not native_bf16_dots():
        # A CPU without bf16 dot instructions multiplies in fp32 anyway; fp32 operands get XLA's fp32 GEMM,
        # so bf16_mixed's matmuls are not slower than fp32's. bf16 products are exact in fp32: the same
        # function up to summation order.
        lhs, rhs = lhs.astype(jnp.float32), rhs.astype(jnp.float32)
    return jax.lax.dot_general(lhs, rhs, (contract, ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def f32_result_matmul(x: jax.Array, w: jax.Array, bias: jax.Array | None, result_dtype) -> jax.Array:
    """x [..., K] @ w [K, N] (+ bias [N]) with operands as given (bf16), accumulated in fp32, the bias
    added in fp32, then cast to `result_dtype` (on a CPU without bf16 dot instructions the dot itself runs
    on fp32 copies of the operands: `_f32_dot`).

    The backward pass feeds its two matmuls bf16 operands the same way (autodiff would pair an fp32
    cotangent with a bf16 operand and fall back to an fp32 matmul) and sums the bias gradient in fp32
    (a bf16 sum over all tokens is rewritten by XLA:CPU into a slow tree of reduce-windows).
    """
    y = _f32_dot(x, w, ((x.ndim - 1,), (0,)))
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(result_dtype)


def _f32_result_matmul_fwd(x, w, bias, result_dtype):
    return f32_result_matmul(x, w, bias, result_dtype), (x, w, bias)


def _f32_result_matmul_bwd(result_dtype, residuals, grad):
    x, w, bias = residuals
    leading = tuple(range(x.ndim - 1))
    d_bias = None if bias is None else jnp.sum(grad.astype(jnp.float32), axis=leading).astype(bias.dtype)
    grad = grad.astype(x.dtype)  # an fp32 cotangent (fp32 logits) is rounded to the operand dtype
    dx = _f32_dot(grad, w, ((grad.ndim - 1,), (1,)))
    dw = _f32_dot(x, grad, (leading, leading))
    return dx.astype(x.dtype), dw.astype(w.dtype), d_bias


f32_result_matmul.defvjp(_f32_result_matmul_fwd, _f32_result_matmul_bwd)


# ----------------------------------------------------------------------------- fp32 weight gradients

# What model.weight_grad="auto" means on each backend (read by modeling/layers.py and train/cpu_paths.py).
WEIGHT_GRAD_AUTO = {"cpu": "small_transpose", "other": "xla"}


@jax.custom_vjp
def small_transpose_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., K] @ w [K, N] whose weight gradient transposes the smaller of its two operands.

    Autodiff's weight gradient is x^T·g, contracting over every token; XLA:CPU lays it out by copying the
    transpose of x, and when x is the wide one (the [tokens, d_ff] input of an FFN's down projection) that
    copy ran at a few GB/s and took a quarter of configs/bench/shape-a.yaml's fp32 step. (g^T·x)^T is the
    same sum with the transpose on g and on the small [N, K] result (docs/PERFORMANCE.md)."""
    return jnp.dot(x, w)


def _small_transpose_matmul_fwd(x, w):
    return jnp.dot(x, w), (x, w)


def _small_transpose_matmul_bwd(residuals, grad):
    x, w = residuals
    leading = tuple(range(x.ndim - 1))
    dx = jax.lax.dot_general(grad, w, (((grad.ndim - 1,), (1,)), ((), ())))
    if x.shape[-1] > grad.shape[-1]:
        dw = jax.lax.dot_general(grad, x, ((leading, leading), ((), ()))).T
    else:
        dw = jax.lax.dot_general(x, grad, ((leading, leading), ((), ())))
    return dx.astype(x.dtype), dw.astype(w.dtype)


small_transpose_matmul.defvjp(_small_transpose_matmul_fwd, _small_transpose_matmul_bwd)
