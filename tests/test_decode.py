"""Decoding is the training forward pass with a cache: prefill plus cached steps reproduce the full forward's
logits for every attention kind (ring-buffer wrap-around included), jitted and eager, the cache holds
exactly the arrays the layout and the accounting say, and a decode step writes it in place."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from modeling import accounting
from modeling.attention import KVCache, LinearState, RingKVCache
from modeling.config import ModelConfig
from modeling.transformer import Cache, Transformer
from train.runtime import CPU_XLA_FLAG

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32)
WINDOW = 4
KINDS = {
    "mha": dict(attention="mha"),
    "gqa": dict(attention="gqa", n_kv_heads=2),
    "mqa": dict(attention="mqa", position="learned"),
    "gqa-wide-heads-qkv-bias": dict(attention="gqa", n_kv_heads=2, head_dim=12, bias="qkv"),
    "sliding_window-local-global": dict(attention="sliding_window", window=WINDOW, layer_pattern=("local", "global")),
    "sliding_window-all-local": dict(attention="sliding_window", window=WINDOW, n_kv_heads=2),
    "linear": dict(attention="linear", linear_chunk_size=4, n_kv_heads=2),
    "moe": dict(ffn="moe", moe_experts=4, moe_every=2, moe_dispatch="dropless"),
}
LENGTH = 12  # 3x the window: the ring wraps around twice
# fp32 throughout; the cached and the full pass sum the same terms over differently shaped (masked) key
# sets, so logits of magnitude ~1 agree to a few ulps of the softmax's accumulation: 1e-5 is ~100 ulps.
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def cfg_of(kind: str) -> ModelConfig:
    return dataclasses.replace(BASE, **KINDS[kind])


def decode_in_steps(model: Transformer, tokens, steps, jit: bool):
    """Logits of `tokens` fed through the cache in chunks of `steps` tokens (the first is the prefill)."""
    call = nnx.jit(lambda model, tokens, cache: model(tokens, cache)) if jit else (lambda m, t, c: m(t, c))
    cache, start, out = model.empty_cache(tokens.shape[0], tokens.shape[1]), 0, []
    for size in steps:
        logits, cache = call(model, tokens[:, start:start + size], cache)
        out.append(logits)
        start += size
    assert int(cache.end) == start == tokens.shape[1]
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_one_token_at_a_time_matches_full_forward(kind, jit):
    model = Transformer(cfg_of(kind), nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, LENGTH), 0, BASE.vocab_size)
    prefill = WINDOW + 1  # longer than the ring: the prefill's first token already falls out of it
    cached = decode_in_steps(model, tokens, [prefill] + [1] * (LENGTH - prefill), jit)
    np.testing.assert_allclose(cached, model(tokens), **TOLERANCE)


@pytest.mark.parametrize("steps", [[2, 3, 1, 3, 3], [1] * LENGTH], ids=["chunks", "one-by-one"])
def test_ring_buffer_wraps_in_chunks_of_any_size(steps):
    """Multi-token steps that straddle the ring's end, and decoding from the very first token."""
    model = Transformer(cfg_of("sliding_window-all-local"), nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (2, LENGTH), 0, BASE.vocab_size)
    np.testing.assert_allclose(decode_in_steps(model, tokens, steps, jit=True), model(tokens), **TOLERANCE)


def test_the_window_really_forgets():
    """A token more than `window` back changes nothing on an all-local model, cached or not: the ring's
    equality with the full forward is not an accident of both seeing everything."""
    model = Transformer(cfg_of("sliding_window-all-local"), nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (1, LENGTH), 0, BASE.vocab_size)
    changed = tokens.at[0, 0].set((tokens[0, 0] + 1) % BASE.vocab_size)
    ones = [1] * LENGTH
    a, b = decode_in_steps(model, tokens, ones, jit=True), decode_in_steps(model, changed, ones, jit=True)
    reach = BASE.n_layers * (WINDOW - 1)  # each local layer reaches window - 1 tokens further back
    assert not np.allclose(a[:, :reach + 1], b[:, :reach + 1], atol=1e-4)
    np.testing.assert_array_equal(a[:, reach + 1:], b[:, reach + 1:])


def test_cache_layout():
    """GQA caches only its n_kv_heads; a local layer a ring of `window` positions, a global one max_len;
    linear attention a state whose size does not depend on max_len. Keys [B, Hkv, S, hd], values
    [B, Hkv, hd, S] (the layout decoding reads without copying)."""
    batch, max_len = 3, 20
    gqa = Transformer(cfg_of("gqa"), nnx.Rngs(0)).empty_cache(batch, max_len)
    assert isinstance(gqa, Cache) and int(gqa.end) == 0 and gqa.end.dtype == np.int32
    assert all(isinstance(layer, KVCache) for layer in gqa.layers)
    head_dim = BASE.d_model // BASE.n_heads
    assert gqa.layers[0].k.shape == (batch, 2, max_len, head_dim)
    assert gqa.layers[0].v.shape == (batch, 2, head_dim, max_len)

    local, global_ = Transformer(cfg_of("sliding_window-local-global"), nnx.Rngs(0)).empty_cache(batch, max_len).layers
    assert isinstance(local, RingKVCache) and local.k.shape == (batch, BASE.n_heads, WINDOW, 8)
    assert isinstance(global_, KVCache) and global_.v.shape == (batch, BASE.n_heads, 8, max_len)
    short = Transformer(cfg_of("sliding_window-all-local"), nnx.Rngs(0)).empty_cache(batch, WINDOW - 1)
    assert short.layers[0].k.shape[2] == WINDOW - 1  # a request shorter than the window needs no more

    linear = Transformer(cfg_of("linear"), nnx.Rngs(0))
    state = linear.empty_cache(batch, max_len).layers[0]
    assert isinstance(state, LinearState) and state.state.shape == (batch, BASE.n_heads, 8, 8)
    assert jax.tree.map(np.shape, linear.empty_cache(batch, 2 * max_len)) .layers == jax.tree.map(
        np.shape, linear.empty_cache(batch, max_len)).layers


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_len", [3, LENGTH])
def test_cache_bytes_are_the_accountings(kind, max_len):
    """The arrays `empty_cache` allocates are the accounting's decode state per sequence, exactly: a local
    layer's ring holds min(window, max_len) positions, as `decode_state_bytes` charges."""
    cfg = cfg_of(kind)
    cache = Transformer(cfg, nnx.Rngs(0)).empty_cache(3, max_len)
    held = sum(leaf.nbytes for leaf in jax.tree.leaves(cache.layers))
    assert held == 3 * accounting.decode_state_bytes(cfg, max_len)


def test_learned_positions_bound_the_cache():
    model = Transformer(cfg_of("mqa"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_len: 33 exceeds model.max_seq_len=32"):
        model.empty_cache(1, BASE.max_seq_len + 1)


IN_PLACE_PROBE = """
import re, jax, jax.numpy as jnp
from flax import nnx
from modeling.config import ModelConfig
from modeling.transformer import Transformer
from train.bench_infer import _steps
cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32, attention="gqa",
                  n_kv_heads=2)
model = Transformer(cfg, nnx.Rngs(0))
state, step = _steps(model)
cache = model.empty_cache(1, 32)
text = step.lower(state, jax.ShapeDtypeStruct((1, 1), jnp.int32), cache).compile().as_text()
shapes = {f"f32[{','.join(map(str, leaf.shape))}]" for leaf in jax.tree.leaves(cache.layers)}
copies = [line for line in text.splitlines() if re.search(r"= f32\\[[0-9,]*\\]\\S* copy\\(", line)
          and any(shape in line for shape in shapes)]
print(len(copies))
"""


def test_a_decode_step_writes_its_cache_in_place():
    """With the flag the CLI sets on CPU (train/runtime.py), the compiled one-token step copies no cache
    buffer: it reads the cache as it was and writes the new token where it lies (docs/INFERENCE.md)."""
    env = {**os.environ, "XLA_FLAGS": CPU_XLA_FLAG, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", IN_PLACE_PROBE], env=env, capture_output=True, text=True,
                            timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "0"
