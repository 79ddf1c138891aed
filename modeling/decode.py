"""Autoregressive decoding with a cache: the model's inference path (what serving costs are measured on).

`forward_cached` runs any number of new tokens against a per-layer cache, so one function serves both
prefill (the prompt at once) and decoding (one token at a time). What a layer caches and how it
attends to it is its attention module's business (`init_decode_state` / `decode`, see
modeling/attention.py): softmax layers keep K/V in a fixed-size buffer, linear-attention layers their
constant-size recurrent state. It reuses the trained modules' projections, norms and feed-forward
blocks, so there is one set of weights and one definition of a layer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.precision import policy
from modeling.transformer import Transformer

Cache = list[dict[str, Any]]


def init_cache(model: Transformer, batch_size: int, max_len: int) -> Cache:
    """Empty per-layer state for `max_len` total tokens (prompt + generated)."""
    cfg = model.cfg
    if max_len > cfg.max_seq_len and cfg.position == "learned":
        raise ValueError(f"max_len: {max_len} exceeds model.max_seq_len={cfg.max_seq_len} (learned positions)")
    dtype = policy(cfg.precision).compute_dtype
    return [block.attn.init_decode_state(batch_size, max_len, dtype) for block in model.layers]


def forward_cached(model: Transformer, tokens: jax.Array, cache: Cache, start) -> tuple[jax.Array, Cache]:
    """Logits [B, t, V] of `tokens` [B, t] placed at positions start..start+t-1, and the updated cache."""
    positions = start + jnp.arange(tokens.shape[1])
    x = model.embed(tokens)
    if model.pos_embed is not None:
        x = x + model.pos_embed(positions)[None]
    new_cache: Cache = []
    for block, layer_cache in zip(model.layers, cache):
        mixed, layer_cache = block.attn.decode(block.attn_norm(x), positions, layer_cache, start)
        new_cache.append(layer_cache)
        x = x + mixed.astype(x.dtype)
        x = x + block.ffn(block.ffn_norm(x)).astype(x.dtype)  # an MoE routes each new token as in training
    return model.logits(model.final_norm(x)), new_cache


def generate(model: Transformer, prompt: jax.Array, max_new_tokens: int, *, temperature: float = 0.0,
             seed: int = 0) -> jax.Array:
    """Greedy (temperature 0) or sampled continuation of `prompt` [B, P]; returns [B, P + max_new_tokens]."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: {max_new_tokens} must be a positive integer")
    batch, prompt_len = prompt.shape
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, cache, start, key):
        logits, cache = forward_cached(nnx.merge(graphdef, state), tokens, cache, start)
        last = logits[:, -1]
        if temperature > 0:
            chosen = jax.random.categorical(key, last / temperature)
        else:
            chosen = jnp.argmax(last, axis=-1)
        return chosen.astype(prompt.dtype), cache

    cache = init_cache(model, batch, prompt_len + max_new_tokens)
    keys = jax.random.split(jax.random.key(seed), max_new_tokens)
    token, cache = step(state, prompt, cache, 0, keys[0])
    generated = [token]
    for i in range(1, max_new_tokens):
        token, cache = step(state, token[:, None], cache, prompt_len + i - 1, keys[i])
        generated.append(token)
    return jnp.concatenate([prompt, jnp.stack(generated, axis=1)], axis=1)
