"""Cached decoding reproduces the full forward pass token by token, for every attention kind."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling import accounting
from modeling.config import ModelConfig
from modeling.decode import forward_cached, generate, init_cache
from modeling.transformer import Transformer

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32)
KINDS = {
    "mha": dict(attention="mha"),
    "gqa": dict(attention="gqa", n_kv_heads=2),
    "mqa": dict(attention="mqa", position="learned"),
    "gqa-wide-heads-qkv-bias": dict(attention="gqa", n_kv_heads=2, head_dim=12, bias="qkv"),
    "sliding_window": dict(attention="sliding_window", window=4, layer_pattern=("local", "global")),
    "linear": dict(attention="linear", linear_chunk_size=4, n_kv_heads=2),
}


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_one_token_at_a_time_matches_full_forward(kind):
    model = Transformer(dataclasses.replace(BASE, **KINDS[kind]), nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, BASE.vocab_size)
    full = model(tokens)
    step = nnx.jit(forward_cached)  # compiles twice: prefill shape, then one-token shape
    cache = init_cache(model, 2, 12)
    prefill, cache = step(model, tokens[:, :5], cache, 0)
    np.testing.assert_allclose(prefill, full[:, :5], rtol=1e-5, atol=1e-5)
    for t in range(5, 12):
        logits, cache = step(model, tokens[:, t : t + 1], cache, t)
        np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_holds_what_the_accounting_says(kind):
    """The arrays `init_cache` allocates are the accounting's decode state, per sequence; a sliding-window
    layer keeps the whole buffer (a jit-stable shape) where the accounting charges only its window."""
    cfg = dataclasses.replace(BASE, **KINDS[kind])
    cache = init_cache(Transformer(cfg, nnx.Rngs(0)), 3, 12)
    held = sum(leaf.nbytes for leaf in jax.tree.leaves(cache)) / 3
    if cfg.attention == "sliding_window":
        assert held > accounting.decode_state_bytes(cfg, 12)
        assert held == accounting.decode_state_bytes(dataclasses.replace(cfg, window=12), 12)
    else:
        assert held == accounting.decode_state_bytes(cfg, 12)


def test_greedy_generation_extends_with_the_argmax_of_the_full_model():
    model = Transformer(BASE, nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(2), (1, 4), 0, BASE.vocab_size)
    out = generate(model, prompt, 6)
    assert out.shape == (1, 10) and np.array_equal(out[:, :4], prompt)
    # Causal: the full model's logits at t-1 are its logits on the prefix out[:, :t].
    np.testing.assert_array_equal(out[0, 4:], jnp.argmax(model(out)[0, 3:9], axis=-1))


def test_sampling_is_seeded():
    model = Transformer(BASE, nnx.Rngs(0))
    prompt = jnp.zeros((2, 3), jnp.int32)
    a = generate(model, prompt, 5, temperature=1.0, seed=3)
    assert np.array_equal(a, generate(model, prompt, 5, temperature=1.0, seed=3))
    assert not np.array_equal(a, generate(model, prompt, 5, temperature=1.0, seed=4))
