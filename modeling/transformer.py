"""The decoder-only Transformer: embeddings, a stack of pre-norm blocks, final norm, logits.

Reads top to bottom like the papers: x = embed(tokens) [+ positions]; for each block,
x += attention(norm(x)); x += ffn(norm(x)); logits = norm(x) · Eᵀ (tied) or · W_head.
Which attention, feed-forward, norm, precision and remat policy is a config choice (modeling/config.py).
A routed feed-forward (MoE) also returns router statistics; `forward` averages them over the routed
layers and adds the weighted auxiliary losses as `aux["aux_loss"]`, which the objective adds.

One forward pass serves training and decoding: the Transformer, each Block and each attention module
take an optional cache. Without one the tokens are a whole sequence from position 0 (training); with
one they continue the sequence the cache holds (a prompt's prefill, then one token per step) and the
advanced cache comes back. `Transformer.empty_cache` builds it; its layout is `Cache` (docs/INFERENCE.md).

The stack is unrolled or, with `model.layer_stack` scan, one `nnx.scan` over the layers' parameters
stacked on a leading "layers" axis (built by `nnx.vmap`), one period of differing layers per step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.attention import build_attention
from modeling.config import ModelConfig
from modeling.feedforward import apply_ffn, build_ffn
from modeling import mup
from modeling.layers import norm
from modeling.moe import aux_losses
from modeling.sharding import axes_metadata, with_axes
from modeling.precision import f32_result_matmul, policy, resolve_for_backend

# Remat policies: what the backward pass may keep instead of recomputing (memory vs. recompute FLOPs).
REMAT_POLICIES = {
    "full": None,  # keep only block inputs; recompute the whole block in the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute element-wise ops
}


class Cache(NamedTuple):
    """What decoding carries between steps: each layer's cache (modeling/attention.py's KVCache,
    RingKVCache or LinearState) and how many tokens they hold."""

    layers: tuple  # unrolled: one per layer; scan: one per layer of the period, stacked [repeats, ...]
    end: jax.Array  # int32 []: tokens cached so far, i.e. the position the next token takes


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        self.attn_norm = norm(cfg, cfg.d_model, rngs)
        self.attn = build_attention(cfg, layer, rngs)
        self.ffn_norm = norm(cfg, cfg.d_model, rngs)
        self.ffn = build_ffn(cfg, layer, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, cache=None) -> tuple[jax.Array, dict, object]:
        """(new residual stream, the FFN's router statistics ({} for a dense FFN), the layer's advanced
        cache (None without one))."""
        mixed, cache = self.attn(self.attn_norm(x), positions, cache)
        x = x + mixed.astype(x.dtype)
        mixed, stats = apply_ffn(self.ffn, self.ffn_norm(x))
        return x + mixed.astype(x.dtype), stats, cache


def _run_block(block: Block, x: jax.Array, positions: jax.Array, cache) -> tuple[jax.Array, dict, object]:
    return block(x, positions, cache)


def _run_blocks(run_block, blocks, x: jax.Array, positions: jax.Array, caches):
    """The blocks in order: (x, each block's router statistics, their advanced caches or None)."""
    per_layer, advanced = [], []
    for i, block in enumerate(blocks):
        x, stats, cache = run_block(block, x, positions, None if caches is None else caches[i])
        per_layer.append(stats)
        advanced.append(cache)
    return x, per_layer, None if caches is None else tuple(advanced)


def _stacked_blocks(cfg: ModelConfig, repeats: int, rngs: nnx.Rngs) -> nnx.List:
    """One Block per layer of the period, each parameter stacked over the `repeats` on a leading axis
    named "layers": element r of block i is layer r·period + i."""

    @nnx.split_rngs(splits=repeats)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(rngs: nnx.Rngs) -> nnx.List:
        return nnx.List([Block(cfg, layer, rngs) for layer in range(cfg.n_layers // repeats)])

    return build(rngs)


def mean_stats(per_layer: list[dict]) -> dict:
    """Router statistics averaged over the layers that have them, keyed `moe_<name>`; {} if none do."""
    routed = [stats for stats in per_layer if stats]
    if not routed:
        return {}
    return {f"moe_{name}": sum(stats[name] for stats in routed) / len(routed) for name in routed[0]}


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        prec = policy(cfg.precision)
        init = nnx.initializers.normal(cfg.init_std)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=prec.compute_dtype, param_dtype=prec.param_dtype,
                               embedding_init=with_axes(init, "vocab", "embed"), rngs=rngs)
        self.pos_embed = (
            nnx.Embed(cfg.max_seq_len, cfg.d_model, dtype=prec.compute_dtype, param_dtype=prec.param_dtype,
                      embedding_init=with_axes(init, "positions", "embed"), rngs=rngs)
            if cfg.position == "learned" else None
        )
        self.repeats = cfg.scan_repeats()  # None: unrolled
        self.layers = (nnx.List([Block(cfg, layer, rngs) for layer in range(cfg.n_layers)]) if self.repeats is None
                       else _stacked_blocks(cfg, self.repeats, rngs))
        self.final_norm = norm(cfg, cfg.d_model, rngs)
        self.head = (
            None if cfg.tie_embeddings
            else nnx.Param(init(rngs.params(), (cfg.d_model, cfg.vocab_size), prec.param_dtype),
                           **axes_metadata("embed", "vocab"))
        )
        self.run_block = (
            _run_block if cfg.remat == "none" else nnx.remat(_run_block, policy=REMAT_POLICIES[cfg.remat])
        )

    def __call__(self, tokens: jax.Array, cache: Cache | None = None):
        """tokens int [B, T] -> logits fp32 [B, T, vocab]; given a cache, (logits, the cache advanced by
        the T tokens, which continue the sequence it holds)."""
        logits, _, advanced = self._forward(tokens, cache)
        return logits if cache is None else (logits, advanced)

    def forward(self, tokens: jax.Array) -> tuple[jax.Array, dict]:
        """(logits fp32 [B, T, vocab], aux): aux["aux_loss"] is the fp32 scalar the objective adds (0 for a
        dense model); the other entries are router statistics averaged over routed layers (moe_*)."""
        logits, aux, _ = self._forward(tokens, None)
        return logits, aux

    def empty_cache(self, batch_size: int, max_len: int) -> Cache:
        """A cache holding no token yet, for requests of up to `max_len` tokens (prompt + generated)."""
        cfg = self.cfg
        if max_len > cfg.max_seq_len and cfg.position == "learned":
            raise ValueError(f"max_len: {max_len} exceeds model.max_seq_len={cfg.max_seq_len} (learned positions)")
        dtype = policy(cfg.precision).compute_dtype
        layers = tuple(block.attn.empty_cache(batch_size, max_len, dtype) for block in self.layers)
        if self.repeats is not None:
            layers = jax.tree.map(lambda a: jnp.zeros((self.repeats, *a.shape), a.dtype), layers)
        return Cache(layers, jnp.zeros((), jnp.int32))

    def _forward(self, tokens: jax.Array, cache: Cache | None) -> tuple[jax.Array, dict, Cache | None]:
        """The one forward pass: (logits, aux as `forward` says, the advanced cache or None)."""
        start = 0 if cache is None else cache.end
        positions = start + jnp.arange(tokens.shape[1], dtype=jnp.int32)
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)[None]
        x, per_layer, layers = self._stack(x, positions, None if cache is None else cache.layers)
        aux = sum((aux_losses(self.cfg, stats) for stats in per_layer if stats), jnp.zeros((), jnp.float32))
        advanced = None if cache is None else Cache(layers, cache.end + tokens.shape[1])
        return self.logits(self.final_norm(x)), {"aux_loss": aux, **mean_stats(per_layer)}, advanced

    def _stack(self, x: jax.Array, positions: jax.Array, caches):
        """Every layer, unrolled or scanned: (x, router statistics per layer in depth order, caches)."""
        if self.repeats is None:
            return _run_blocks(self.run_block, self.layers, x, positions, caches)
        run_block = self.run_block

        def period(x, blocks, caches):
            x, per_layer, caches = _run_blocks(run_block, blocks, x, positions, caches)
            return x, (per_layer, caches)

        x, (stacked, caches) = nnx.scan(period, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))(
            x, self.layers, caches)
        per_layer = [jax.tree.map(lambda a: a[r], stats) for r in range(self.repeats) for stats in stacked]
        return x, per_layer, caches

    def logits(self, x: jax.Array) -> jax.Array:
        """Output projection in the compute dtype, accumulated and returned in fp32."""
        compute = policy(self.cfg.precision).compute_dtype
        weight = self.embed.embedding[...].T if self.head is None else self.head[...]
        x, weight = x.astype(compute), weight.astype(compute)
        x = mup.scale(x, mup.output_multiplier(self.cfg))  # μP's 1/m readout multiplier (MuReadout's place)
        if compute == jnp.bfloat16 and resolve_for_backend(self.cfg.bf16_matmul, cpu="f32_result",
                                                           other="xla") == "f32_result":
            return f32_result_matmul(x, weight, None, jnp.float32)  # backward matmuls in bf16 too
        return jnp.dot(x, weight, preferred_element_type=jnp.float32)
