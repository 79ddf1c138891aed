"""Attention variants behind one registry, keyed to the jax-free accounting registry.

A variant is a module class registered under names that `modeling/attention_kinds.py` already holds
(that entry carries its FLOPs, XLA-count model and decode-state bytes; `register` refuses a name without
one). The class provides, with these signatures:

- `__init__(cfg, layer, rngs)`;
- `__call__(x, positions, cache=None) -> (y, new_cache)`: the causal mixing of x [B, T, d] at
  `positions` [T], projections included. Without a cache (training) it mixes the T tokens among
  themselves and returns new_cache None; with one it continues the sequence the cache holds (prefill
  and one-token steps alike), `positions` being cache-fill .. cache-fill + T - 1;
- `empty_cache(batch_size, max_len, dtype) -> cache`: the layer's typed cache (a NamedTuple of arrays,
  below) before any token, for requests of up to `max_len` tokens; accounting's `decode_state_bytes`
  counts exactly its bytes per sequence.

The caches (docs/INFERENCE.md has the layout): `KVCache` (a global softmax layer: K/V of every
position), `RingKVCache` (a local sliding-window layer: K/V of the last `window` positions only) and
`LinearState` (linear attention's constant-size recurrent state).

mha/gqa/mqa/sliding_window differ only in the number of key/value heads and the mask, so they share
`SoftmaxAttention`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from modeling import attention_kinds, mup
from modeling.causal_attention import blocked_causal_attention
from modeling.config import ModelConfig
from modeling.layers import dense
from modeling.positions import apply_rope, rope_frequencies

ATTENTION: dict[str, type[nnx.Module]] = {}
MODULE_METHODS = ("__call__", "empty_cache")


class KVCache(NamedTuple):
    """A global softmax layer: K and V of positions 0 .. max_len - 1 in order (unwritten past the fill)."""

    k: jax.Array  # [B, max_len, Hkv, hd], the compute dtype
    v: jax.Array

    def extend(self, k: jax.Array, v: jax.Array, positions: jax.Array):
        """(keys and values the new queries at `positions` attend over, the position of each, the cache
        with the new k, v written): the whole buffer, whose unwritten tail lies after every query."""
        keys = jax.lax.dynamic_update_slice_in_dim(self.k, k.astype(self.k.dtype), positions[0], axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(self.v, v.astype(self.v.dtype), positions[0], axis=1)
        return keys, values, jnp.arange(keys.shape[1]), KVCache(keys, values)


class RingKVCache(NamedTuple):
    """A local (sliding-window) layer: K and V of the last S = min(window, max_len) positions, position p
    in slot p % S, so the cache never grows past the window however long the request."""

    k: jax.Array  # [B, S, Hkv, hd], the compute dtype
    v: jax.Array

    def extend(self, k: jax.Array, v: jax.Array, positions: jax.Array):
        """As `KVCache.extend`. The new queries attend over the ring as it was plus the new tokens (a
        prefill longer than the ring needs its own early tokens); the ring then keeps the last S."""
        size, start = self.k.shape[1], positions[0]
        held = start - 1 - jnp.mod(start - 1 - jnp.arange(size), size)  # latest p < start in each slot; < 0: empty
        keys = jnp.concatenate([self.k, k.astype(self.k.dtype)], axis=1)
        values = jnp.concatenate([self.v, v.astype(self.v.dtype)], axis=1)
        kept = min(k.shape[1], size)
        slots = jnp.mod(positions[-kept:], size)
        ring = RingKVCache(self.k.at[:, slots].set(k[:, -kept:].astype(self.k.dtype)),
                           self.v.at[:, slots].set(v[:, -kept:].astype(self.v.dtype)))
        return keys, values, jnp.concatenate([held, positions]), ring


class LinearState(NamedTuple):
    """A linear-attention layer: the recurrent state after every token so far (constant size)."""

    state: jax.Array  # [B, H, hd, hd] fp32: the sum of φ(k)ᵀ v
    key_sum: jax.Array  # [B, H, hd] fp32: the sum of φ(k)


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
    default), which computes the same function with about half the work. With a cache, a global layer
    keeps K/V in a buffer of max_len positions (a jit-stable shape), a local one in a ring of `window`,
    and the new queries attend over it through a mask (unwritten, future and out-of-window keys hidden).
    A variant that changes only the scores overrides `attend` and `attend_visible`.
    """

    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        self.proj = QKVProjections(cfg, rngs)
        local = cfg.layer_kind(layer) == "local"
        self.window = cfg.window if local else None
        self.impl, self.block_size = cfg.attention_impl, cfg.attention_block_size
        self.query_multiplier = mup.query_multiplier(cfg)  # μP: logits ∝ 1/head_dim (modeling/mup.py)

    def __call__(self, x: jax.Array, positions: jax.Array, cache: KVCache | RingKVCache | None = None):
        q, k, v = self.proj.qkv(x, positions)
        q = mup.scale(q, self.query_multiplier)
        if cache is None:
            return self.proj.project_out(self.attend(q, k, v)), None
        keys, values, key_pos, cache = cache.extend(k, v, positions)
        query_pos, key_pos = positions[:, None], key_pos[None, :]
        visible = (key_pos <= query_pos) & (key_pos >= 0)
        if self.window is not None:
            visible &= key_pos > query_pos - self.window
        heads = self.attend_visible(q, keys.astype(q.dtype), values.astype(q.dtype), visible)
        return self.proj.project_out(heads), cache

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """Causal (and windowed) attention over one whole sequence: heads [B,T,H,hd]."""
        if attention_kinds.softmax_impl(self.impl, jax.default_backend()) == "blocked":
            return blocked_causal_attention(q, k, v, block_size=self.block_size, window=self.window)
        window = None if self.window is None else (self.window - 1, 0)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)

    def attend_visible(self, q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
        """Attention of new queries over cached keys; `visible` [t, keys] says which keys count."""
        return jax.nn.dot_product_attention(q, k, v, mask=visible[None, None])

    def empty_cache(self, batch_size: int, max_len: int, dtype) -> KVCache | RingKVCache:
        """Only the n_kv_heads K/V heads are cached (GQA/MQA's saving); a local layer only its window."""
        if self.window is None:
            shape = (batch_size, max_len, self.proj.kv_heads, self.proj.head_dim)
            return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
        shape = (batch_size, min(self.window, max_len), self.proj.kv_heads, self.proj.head_dim)
        return RingKVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


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

    def __call__(self, x: jax.Array, positions: jax.Array, cache: LinearState | None = None):
        """The chunked form over a whole sequence; with a cache, the recurrent form continuing its state."""
        q, k, v = self._features(x, positions)
        if cache is None:
            heads = linear_attention_chunked(q, k, v, self.chunk_size)
            return self.proj.project_out(heads.astype(x.dtype)), None
        heads, (state, key_sum) = linear_attention_recurrent(q, k, v, (cache.state, cache.key_sum))
        return self.proj.project_out(heads.astype(x.dtype)), LinearState(state, key_sum)

    def empty_cache(self, batch_size: int, max_len: int, dtype) -> LinearState:
        heads, hd = self.proj.n_heads, self.proj.head_dim
        return LinearState(jnp.zeros((batch_size, heads, hd, hd), jnp.float32),
                           jnp.zeros((batch_size, heads, hd), jnp.float32))
