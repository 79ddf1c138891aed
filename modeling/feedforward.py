"""Feed-forward blocks behind a registry; the mixture of experts (`moe`, modeling/moe.py) is one more entry.

A kind's accounting (parameters, FLOPs, XLA cost) is its entry in the jax-free `modeling/ffn_kinds.py`;
`register` here refuses a name that has none, so a module cannot exist without its accounting.
Dense FFNs take the linear map as an argument (`linear`, default: call the layer) so the MoE's grouped
path can run the same block over stacked expert weights with a grouped matmul.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from modeling import ffn_kinds
from modeling.config import ModelConfig
from modeling.layers import dense
from modeling.precision import policy, resolve_for_backend

FFN: dict[str, Callable[[ModelConfig, nnx.Rngs], nnx.Module]] = {}


def register(name: str):
    """Register a factory `(cfg, rngs) -> module` under a name `modeling/ffn_kinds.py` already knows."""
    ffn_kinds.get(name)  # no module without its accounting

    def add(factory):
        FFN[name] = factory
        return factory

    return add


def unregister(name: str) -> None:
    FFN.pop(name, None)


def build_kind(name: str, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    if name not in FFN:
        raise ValueError(f"model.ffn: {name!r} has accounting but no module; register one in modeling/feedforward.py")
    return FFN[name](cfg, rngs)


def build_ffn(cfg: ModelConfig, layer: int, rngs: nnx.Rngs) -> nnx.Module:
    """The FFN of layer `layer` (a routed kind may run a dense kind on some layers)."""
    return build_kind(ffn_kinds.layer_kind(cfg, layer), cfg, rngs)


def apply_ffn(ffn: nnx.Module, x: jax.Array) -> tuple[jax.Array, dict]:
    """(output, router statistics): routed kinds define `forward_with_stats`; dense ones have no statistics."""
    forward = getattr(ffn, "forward_with_stats", None)
    return forward(x) if forward is not None else (ffn(x), {})


def _call(layer: nnx.Module, x: jax.Array) -> jax.Array:
    return layer(x)


def _fp32_activation(cfg: ModelConfig) -> bool:
    """bf16_matmul=f32_result also evaluates the element-wise part between the two matmuls in fp32 and
    rounds once: XLA:CPU has no bf16 arithmetic, and a bf16 GELU becomes a chain of round-to-bf16 passes
    over the hidden tensor (8% of a bf16_mixed step of configs/bench/shape-a.yaml)."""
    if policy(cfg.precision).compute_dtype != jnp.bfloat16:
        return False
    return resolve_for_backend(cfg.bf16_matmul, cpu="f32_result", other="xla") == "f32_result"


class GatedFFN(nnx.Module):
    """down(act(gate(x)) * up(x)): SwiGLU / GEGLU (Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig, activation: Callable[[jax.Array], jax.Array], rngs: nnx.Rngs):
        self.gate = dense(cfg, cfg.d_model, cfg.d_ff, rngs, part="ffn")
        self.up = dense(cfg, cfg.d_model, cfg.d_ff, rngs, part="ffn")
        self.down = dense(cfg, cfg.d_ff, cfg.d_model, rngs, part="ffn", residual_out=True)
        self.activation = activation
        self.cfg = cfg

    def __call__(self, x: jax.Array, linear=_call) -> jax.Array:
        gate, up = linear(self.gate, x), linear(self.up, x)
        if _fp32_activation(self.cfg):
            hidden = (self.activation(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(up.dtype)
            return linear(self.down, hidden)
        return linear(self.down, self.activation(gate) * up)


class PlainFFN(nnx.Module):
    """down(act(up(x))): GELU (GPT-2) or squared ReLU (So et al. 2021, Primer)."""

    def __init__(self, cfg: ModelConfig, activation: Callable[[jax.Array], jax.Array], rngs: nnx.Rngs):
        self.up = dense(cfg, cfg.d_model, cfg.d_ff, rngs, part="ffn")
        self.down = dense(cfg, cfg.d_ff, cfg.d_model, rngs, part="ffn", residual_out=True)
        self.activation = activation
        self.cfg = cfg

    def __call__(self, x: jax.Array, linear=_call) -> jax.Array:
        hidden = linear(self.up, x)
        if _fp32_activation(self.cfg):
            return linear(self.down, self.activation(hidden.astype(jnp.float32)).astype(hidden.dtype))
        return linear(self.down, self.activation(hidden))


def _relu_squared(x: jax.Array) -> jax.Array:
    return jnp.square(jax.nn.relu(x))


register("swiglu")(lambda cfg, rngs: GatedFFN(cfg, jax.nn.silu, rngs))
register("geglu")(lambda cfg, rngs: GatedFFN(cfg, jax.nn.gelu, rngs))
register("gelu")(lambda cfg, rngs: PlainFFN(cfg, jax.nn.gelu, rngs))
register("relu2")(lambda cfg, rngs: PlainFFN(cfg, _relu_squared, rngs))

from modeling import moe  # noqa: E402,F401  registers ffn=moe (it builds its experts from the kinds above)
