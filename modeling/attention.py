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

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from modeling import attention_kinds, mup
from modeling.causal_attention import blocked_causal_attention
from modeling.config import ModelConfig
from modeling.layers import dense
from modeling.positions import apply_rope, rope_frequencies

ATTENTION: dict[str, type[nnx.Module]] = {}
MODULE_METHODS = ("__call__", "empty_cache")


class KVCache(NamedTuple):
    """A global softmax layer: K and V of positions 0 .. max_len - 1 in order (unwritten past the fill).

    Laid out for the two matrix-vector products of a decode step, batched over (B, Hkv), each of which
    XLA:CPU computes with the contracted axis minor: keys [.., S, hd] for the scores K·q, values
    transposed [.., hd, S] for Vᵀ·probabilities, so that both read the buffer where it lies. A decode
    step attends over the buffer as it was and over its own tokens, and the buffer is written after, in
    place; a prefill attends over the written buffer (`SoftmaxAttention.__call__`). (The projections'
    [B, max_len, Hkv, hd] layout made XLA:CPU transpose-copy all of K and V in every layer at every step:
    over half of a batch-1 step of configs/models/ladder-5.yaml; docs/INFERENCE.md.)"""

    k: jax.Array  # [B, Hkv, max_len, hd], the compute dtype
    v: jax.Array  # [B, Hkv, hd, max_len]

    def extend(self, k: jax.Array, v: jax.Array, positions: jax.Array):
        """(the keys and values held before the new tokens, the position each slot holds — < 0 where it
        holds none yet —, the cache with the new k, v [B, T, Hkv, hd] at `positions` written)."""
        start, slots = positions[0], jnp.arange(self.k.shape[2])
        written = KVCache(jax.lax.dynamic_update_slice_in_dim(self.k, keys_layout(k, self.k.dtype), start, axis=2),
                          jax.lax.dynamic_update_slice_in_dim(self.v, values_layout(v, self.v.dtype), start, axis=3))
        return self.k, self.v, jnp.where(slots < start, slots, -1), written


class RingKVCache(NamedTuple):
    """A local (sliding-window) layer: K and V of the last S = min(window, max_len) positions, position p
    in slot p % S, so the cache never grows past the window however long the request. Laid out and read
    as `KVCache` (a prefill longer than the ring attends over its own early tokens, which the ring then
    no longer keeps)."""

    k: jax.Array  # [B, Hkv, S, hd], the compute dtype
    v: jax.Array  # [B, Hkv, hd, S]

    def extend(self, k: jax.Array, v: jax.Array, positions: jax.Array):
        """As `KVCache.extend`; the ring keeps the last S of the new tokens."""
        size, start = self.k.shape[2], positions[0]
        held = start - 1 - jnp.mod(start - 1 - jnp.arange(size), size)  # latest p < start in each slot; < 0: empty
        kept = min(k.shape[1], size)
        slots = jnp.mod(positions[-kept:], size)
        k, v = keys_layout(k[:, -kept:], self.k.dtype), values_layout(v[:, -kept:], self.v.dtype)
        return self.k, self.v, held, RingKVCache(self.k.at[:, :, slots].set(k), self.v.at[..., slots].set(v))


def keys_layout(k: jax.Array, dtype) -> jax.Array:
    """Keys [B, T, Hkv, hd] as the cache holds them, [B, Hkv, T, hd] (only the T new tokens move)."""
    return jnp.swapaxes(k, 1, 2).astype(dtype)


def values_layout(v: jax.Array, dtype) -> jax.Array:
    """Values [B, T, Hkv, hd] as the cache holds them, [B, Hkv, hd, T]."""
    return jnp.transpose(v, (0, 2, 3, 1)).astype(dtype)


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
    and the new queries attend over it and their own tokens through a mask (unwritten, future and
    out-of-window keys hidden).
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
        past_k, past_v, past_pos, cache = cache.extend(k, v, positions)
        if isinstance(cache, KVCache) and x.shape[1] > 1:
            # A prefill over a global buffer: the written buffer holds every key it needs (max_len keys
            # rather than max_len + T), and it is copied once per request anyway (attend_visible).
            keys, values, key_pos = (cache.k,), (cache.v,), jnp.arange(cache.k.shape[2])
        else:
            # A decode step (or a ring): the cache as it was, read before it is written in place, and
            # the new tokens themselves.
            keys = (past_k, keys_layout(k, q.dtype))
            values = (past_v, values_layout(v, q.dtype))
            key_pos = jnp.concatenate([past_pos, positions])
        keys, values = tuple(b.astype(q.dtype) for b in keys), tuple(b.astype(q.dtype) for b in values)
        query_pos, key_pos = positions[:, None], key_pos[None, :]
        visible = (key_pos <= query_pos) & (key_pos >= 0)
        if self.window is not None:
            visible &= key_pos > query_pos - self.window
        return self.proj.project_out(self.attend_visible(q, keys, values, visible)), cache

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """Causal (and windowed) attention over one whole sequence: heads [B,T,H,hd]."""
        if attention_kinds.softmax_impl(self.impl, jax.default_backend()) == "blocked":
            return blocked_causal_attention(q, k, v, block_size=self.block_size, window=self.window)
        window = None if self.window is None else (self.window - 1, 0)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)

    def attend_visible(self, q: jax.Array, keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...],
                       visible: jax.Array, scale: float | None = None) -> jax.Array:
        """Attention of new queries q [B,T,H,hd] over blocks of keys [B,Hkv,S_i,hd] and values
        [B,Hkv,hd,S_i] (`KVCache`'s layout: the cache as it was, then the new tokens); `visible`
        [T, ΣS_i] says which keys count. Heads [B,T,H,hd]: what `jax.nn.dot_product_attention`
        computes (fp32 logits and softmax, `scale` default 1/sqrt(hd), each K/V head shared by its group
        of query heads).

        A one-token step multiplies each block by a vector, one product per block in the cache's layout,
        so that nothing the size of the cache is copied; a prefill's many queries make matrix products,
        for which XLA's own attention (keys and values gathered into [B, ΣS_i, Hkv, hd] once per
        request) is faster on CPU (docs/INFERENCE.md)."""
        if q.shape[1] > 1:
            k = jnp.concatenate([jnp.swapaxes(block, 1, 2) for block in keys], axis=1)
            v = jnp.concatenate([jnp.transpose(block, (0, 3, 1, 2)) for block in values], axis=1)
            return jax.nn.dot_product_attention(q, k, v, mask=visible[None, None], scale=scale)
        batch, length, heads, dim = q.shape
        kv_heads = keys[0].shape[1]
        grouped = q.reshape(batch, length, kv_heads, heads // kv_heads, dim)
        precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None
        product = functools.partial(jnp.einsum, precision=precision, preferred_element_type=jnp.float32)
        logits = jnp.concatenate([product("btkgd,bksd->bkgts", grouped, block) for block in keys], axis=-1)
        logits = logits * jnp.float32(dim ** -0.5 if scale is None else scale)
        probs = jax.nn.softmax(jnp.where(visible, logits, jnp.finfo(jnp.float32).min), axis=-1)
        probs = jnp.split(probs.astype(q.dtype), np.cumsum([block.shape[2] for block in keys[:-1]]), axis=-1)
        heads_out = sum(product("bkgts,bkds->btkgd", p, block) for p, block in zip(probs, values))
        return heads_out.reshape(batch, length, heads, dim).astype(q.dtype)

    def empty_cache(self, batch_size: int, max_len: int, dtype) -> KVCache | RingKVCache:
        """Only the n_kv_heads K/V heads are cached (GQA/MQA's saving); a local layer only its window."""
        if self.window is None:
            return KVCache(*self._zeros(batch_size, max_len, dtype))
        return RingKVCache(*self._zeros(batch_size, min(self.window, max_len), dtype))

    def _zeros(self, batch_size: int, positions: int, dtype) -> tuple[jax.Array, jax.Array]:
        """Unwritten keys and values for `positions` positions, in `KVCache`'s layout."""
        heads, dim = self.proj.kv_heads, self.proj.head_dim
        return (jnp.zeros((batch_size, heads, positions, dim), dtype),
                jnp.zeros((batch_size, heads, dim, positions), dtype))


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
