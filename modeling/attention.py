"""Attention variants behind one registry, keyed to the jax-free accounting registry.

A variant is a module class registered under names that `modeling/attention_kinds.py` already holds
(that entry carries its FLOPs, XLA-count model and decode-state bytes; `register` refuses a name without
one). The class provides, with these signatures:

- `__init__(cfg, layer, rngs)`;
- `__call__(x, positions) -> y`: the causal mixing over a whole sequence, projections included;
- `init_decode_state(batch_size, max_len, dtype) -> dict of arrays`: what one layer carries between
  decode steps (`modeling/decode.py` calls this; accounting's `decode_state_bytes` describes it);
- `decode(x, positions, state, start) -> (y, state)`: the same mixing for tokens at positions
  start.., continuing from `state` (prefill and one-token steps alike).

mha/gqa/mqa/sliding_window differ only in the number of key/value heads and the mask, so they share
`SoftmaxAttention`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from modeling import attention_kinds
from modeling.causal_attention import blocked_causal_attention
from modeling.config import ModelConfig
from modeling.layers import dense
from modeling.positions import apply_rope, rope_frequencies

ATTENTION: dict[str, type[nnx.Module]] = {}
MODULE_METHODS = ("__call__", "init_decode_state", "decode")


def register(*names: str) -> Callable[[type], type]:
    """Class decorator: the module of each attention kind in `names` (each needs its accounting entry)."""
    for name in names:
        attention_kinds.get(name)  # no module without its accounting

    def add(cls: type) -> type:
        missing = [method for method in MODULE_METHODS if not callable(getattr(cls, method, None))]
        if missing:
            raise TypeError(f"attention module {cls.__name__} lacks {', '.join(missing)} (see modeling/attention.py)")
        for name in names:
            ATTENTION[name] = cls
        return cls

    return add


def unregister(name: str) -> None:
    ATTENTION.pop(name, None)


def build_attention(cfg: ModelConfig, layer: int, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.attention not in ATTENTION:
        raise ValueError(f"model.attention: {cfg.attention!r} has accounting but no module;"
                         " register one in modeling/attention.py")
    return ATTENTION[cfg.attention](cfg, layer, rngs)


class QKVProjections(nnx.Module):
    """Q, K, V and output projections with optional QK-norm and RoPE, shared by every variant."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_size
        self.query = dense(cfg, cfg.d_model, self.n_heads * self.head_dim, rngs, part="qkv")
        self.key = dense(cfg, cfg.d_model, self.kv_heads * self.head_dim, rngs, part="qkv")
        self.value = dense(cfg, cfg.d_model, self.kv_heads * self.head_dim, rngs, part="qkv")
        self.out = dense(cfg, self.n_heads * self.head_dim, cfg.d_model, rngs, part="out", residual_out=True)
        if cfg.qk_norm:
            self.q_norm = nnx.RMSNorm(self.head_dim, epsilon=cfg.norm_eps, rngs=rngs)
            self.k_norm = nnx.RMSNorm(self.head_dim, epsilon=cfg.norm_eps, rngs=rngs)
        else:
            self.q_norm = self.k_norm = None
        self.use_rope = cfg.position == "rope"
        self.rope_theta, self.rope_scaling = cfg.rope_theta, cfg.rope_scaling

    def qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q [B,T,H,hd]; k, v [B,T,Hkv,hd]."""
        batch, length, _ = x.shape
        q = self.query(x).reshape(batch, length, self.n_heads, self.head_dim)
        k = self.key(x).reshape(batch, length, self.kv_heads, self.head_dim)
        v = self.value(x).reshape(batch, length, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q).astype(v.dtype), self.k_norm(k).astype(v.dtype)
        if self.use_rope:  # frequencies are numpy constants, folded in at trace time
            inv_freq = rope_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)
            q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        return q, k, v

    def project_out(self, heads: jax.Array) -> jax.Array:
        batch, length = heads.shape[:2]
        return self.out(heads.reshape(batch, length, self.n_heads * self.head_dim))


@register("mha", "gqa", "mqa", "sliding_window")
class SoftmaxAttention(nnx.Module):
    """Causal softmax attention; GQA/MQA by fewer K/V heads, sliding window by a banded mask.

    `jax.nn.dot_product_attention` picks a fused kernel (cuDNN flash attention) on GPU and the XLA
    composition elsewhere; it broadcasts grouped K/V heads itself and keeps the softmax in fp32.
    `model.attention_impl` swaps in the block-causal kernel of modeling/causal_attention.py (the CPU
    default), which computes the same function with about half the work. Decoding keeps K/V in a
    fixed-size buffer (a jit-stable shape) and masks what is not yet written or outside the window.
    A variant that changes only the scores overrides `attend` and `attend_visible`.
    """

    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        self.proj = QKVProjections(cfg, rngs)
        local = cfg.layer_kind(layer) == "local"
        self.window = cfg.window if local else None
        self.impl, self.block_size = cfg.attention_impl, cfg.attention_block_size

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        q, k, v = self.proj.qkv(x, positions)
        return self.proj.project_out(self.attend(q, k, v))

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """Causal (and windowed) attention over one whole sequence: heads [B,T,H,hd]."""
        if attention_kinds.softmax_impl(self.impl, jax.default_backend()) == "blocked":
            return blocked_causal_attention(q, k, v, block_size=self.block_size, window=self.window)
        window = None if self.window is None else (self.window - 1, 0)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)

    def attend_visible(self, q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
        """Attention of new queries over the cache buffer; `visible` [t, max_len] says which keys count."""
        return jax.nn.dot_product_attention(q, k, v, mask=visible[None, None])

    def init_decode_state(self, batch_size: int, max_len: int, dtype) -> dict[str, jax.Array]:
        shape = (batch_size, max_len, self.proj.kv_heads, self.proj.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def decode(self, x: jax.Array, positions: jax.Array, state: dict, start) -> tuple[jax.Array, dict]:
        q, k, v = self.proj.qkv(x, positions)
        keys = jax.lax.dynamic_update_slice_in_dim(state["k"], k.astype(state["k"].dtype), start, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(state["v"], v.astype(state["v"].dtype), start, axis=1)
        query_pos = positions[:, None]
        key_pos = jnp.arange(keys.shape[1])[None, :]
        visible = key_pos <= query_pos  # also hides the unwritten tail of the buffer
        if self.window is not None:
            visible &= key_pos > query_pos - self.window
        heads = self.attend_visible(q, keys.astype(q.dtype), values.astype(q.dtype), visible)
        return self.proj.project_out(heads), {"k": keys, "v": values}


FEATURE_MAPS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu1": lambda x: jax.nn.elu(x) + 1.0,  # Katharopoulos et al. 2020
    "relu": jax.nn.relu,
}


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
    """Sum of the chunks before each chunk (axis 1); shifting, not subtracting, keeps causality exact."""
    shifted = jnp.pad(x, ((0, 0), (1, 0)) + ((0, 0),) * (x.ndim - 2))[:, :-1]
    return jnp.cumsum(shifted, axis=1)


def linear_attention_chunked(q, k, v, chunk_size: int, eps: float = 1e-6):
    """Causal linear attention, O(T): masked quadratic form inside chunks, running state across them.

    q, k: feature-mapped [B,T,H,d] (non-negative); v [B,T,H,e]. Returns [B,T,H,e] in fp32.
    Equals `linear_attention_recurrent` for any chunk size (tested).
    """
    batch, length, heads, dim = q.shape
    pad = (-length) % chunk_size
    if pad:
        widths = ((0, 0), (0, pad), (0, 0), (0, 0))
        q, k, v = (jnp.pad(t, widths) for t in (q, k, v))
    n_chunks = (length + pad) // chunk_size

    def chunks(t):
        return t.astype(jnp.float32).reshape(batch, n_chunks, chunk_size, heads, t.shape[-1])

    q, k, v = chunks(q), chunks(k), chunks(v)
    causal = jnp.tril(jnp.ones((chunk_size, chunk_size), jnp.float32))
    scores = jnp.einsum("bnchd,bnshd->bnhcs", q, k) * causal
    numerator = jnp.einsum("bnhcs,bnshe->bnche", scores, v)
    denominator = jnp.einsum("bnhcs->bnch", scores)
    chunk_state = jnp.einsum("bnchd,bnche->bnhde", k, v)
    chunk_key_sum = jnp.einsum("bnchd->bnhd", k)
    state_before = _exclusive_cumsum(chunk_state)  # sum over all earlier chunks
    key_sum_before = _exclusive_cumsum(chunk_key_sum)
    numerator = numerator + jnp.einsum("bnchd,bnhde->bnche", q, state_before)
    denominator = denominator + jnp.einsum("bnchd,bnhd->bnch", q, key_sum_before)
    out = numerator / (denominator[..., None] + eps)
    return out.reshape(batch, n_chunks * chunk_size, heads, -1)[:, :length]


def linear_attention_recurrent(q, k, v, carry=None, eps: float = 1e-6):
    """The same attention as an RNN over time (the decoding form): state S += kᵀv, z += k.

    `carry` = (S [B,H,d,e], z [B,H,d]) continues from earlier tokens (zeros if None).
    Returns (outputs [B,T,H,e] fp32, the carry after the last token).
    """
    batch, _, heads, dim = q.shape
    if carry is None:
        carry = (jnp.zeros((batch, heads, dim, v.shape[-1]), jnp.float32), jnp.zeros((batch, heads, dim), jnp.float32))

    def step(carry, inputs):
        state, key_sum = carry
        q_t, k_t, v_t = (t.astype(jnp.float32) for t in inputs)
        state = state + jnp.einsum("bhd,bhe->bhde", k_t, v_t)
        key_sum = key_sum + k_t
        out = jnp.einsum("bhd,bhde->bhe", q_t, state) / (jnp.einsum("bhd,bhd->bh", q_t, key_sum)[..., None] + eps)
        return (state, key_sum), out

    time_major = (jnp.moveaxis(t, 1, 0) for t in (q, k, v))
    carry, outs = jax.lax.scan(step, carry, tuple(time_major))
    return jnp.moveaxis(outs, 0, 1), carry


@register("linear")
class LinearAttention(nnx.Module):
    """Causal linear attention with a positive feature map (O(T) time and constant decode state)."""

    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        self.proj = QKVProjections(cfg, rngs)
        self.feature_map = FEATURE_MAPS[cfg.linear_feature_map]
        self.chunk_size = cfg.linear_chunk_size
        self.groups = cfg.n_heads // cfg.kv_heads

    def _features(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """φq, φk and v with grouped K/V heads repeated to every query head of their group."""
        q, k, v = self.proj.qkv(x, positions)
        if self.groups > 1:
            k, v = jnp.repeat(k, self.groups, axis=2), jnp.repeat(v, self.groups, axis=2)
        return self.feature_map(q), self.feature_map(k), v

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        q, k, v = self._features(x, positions)
        heads = linear_attention_chunked(q, k, v, self.chunk_size)
        return self.proj.project_out(heads.astype(x.dtype))

    def init_decode_state(self, batch_size: int, max_len: int, dtype) -> dict[str, jax.Array]:
        heads, hd = self.proj.n_heads, self.proj.head_dim
        return {"state": jnp.zeros((batch_size, heads, hd, hd), jnp.float32),
                "key_sum": jnp.zeros((batch_size, heads, hd), jnp.float32)}

    def decode(self, x: jax.Array, positions: jax.Array, state: dict, start) -> tuple[jax.Array, dict]:
        q, k, v = self._features(x, positions)
        heads, (s, z) = linear_attention_recurrent(q, k, v, (state["state"], state["key_sum"]))
        return self.proj.project_out(heads.astype(x.dtype)), {"state": s, "key_sum": z}
