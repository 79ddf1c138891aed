"""The decoder-only Transformer: embeddings, a stack of pre-norm blocks, final norm, logits.

Reads top to bottom like the papers: x = embed(tokens) [+ positions]; for each block,
x += attention(norm(x)); x += ffn(norm(x)); logits = norm(x) · Eᵀ (tied) or · W_head.
Which attention, feed-forward, norm, precision and remat policy is a config choice (modeling/config.py).
A routed feed-forward (MoE) also returns router statistics; `forward` averages them over the routed
layers and adds the weighted auxiliary losses as `aux["aux_loss"]`, which the objective adds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.attention import build_attention
from modeling.config import ModelConfig
from modeling.feedforward import apply_ffn, build_ffn
from modeling.layers import norm
from modeling.moe import aux_losses
from modeling.sharding import axes_metadata, with_axes
from modeling.precision import f32_result_matmul, policy, resolve_for_backend

# Remat policies: what the backward pass may keep instead of recomputing (memory vs. recompute FLOPs).
REMAT_POLICIES = {
    "full": None,  # keep only block inputs; recompute the whole block in the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute element-wise ops
}


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        self.attn_norm = norm(cfg, cfg.d_model, rngs)
        self.attn = build_attention(cfg, layer, rngs)
        self.ffn_norm = norm(cfg, cfg.d_model, rngs)
        self.ffn = build_ffn(cfg, layer, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, dict]:
        """(new residual stream, the FFN's router statistics: {} for a dense FFN)."""
        x = x + self.attn(self.attn_norm(x), positions).astype(x.dtype)
        mixed, stats = apply_ffn(self.ffn, self.ffn_norm(x))
        return x + mixed.astype(x.dtype), stats


def _run_block(block: Block, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, dict]:
    return block(x, positions)


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
        self.layers = nnx.List([Block(cfg, layer, rngs) for layer in range(cfg.n_layers)])
        self.final_norm = norm(cfg, cfg.d_model, rngs)
        self.head = (
            None if cfg.tie_embeddings
            else nnx.Param(init(rngs.params(), (cfg.d_model, cfg.vocab_size), prec.param_dtype),
                           **axes_metadata("embed", "vocab"))
        )
        self.run_block = (
            _run_block if cfg.remat == "none" else nnx.remat(_run_block, policy=REMAT_POLICIES[cfg.remat])
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens int [B, T] -> logits fp32 [B, T, vocab]."""
        return self.forward(tokens)[0]

    def forward(self, tokens: jax.Array) -> tuple[jax.Array, dict]:
        """(logits fp32 [B, T, vocab], aux): aux["aux_loss"] is the fp32 scalar the objective adds (0 for a
        dense model); the other entries are router statistics averaged over routed layers (moe_*)."""
        positions = jnp.arange(tokens.shape[1])
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)[None]
        per_layer = []
        for block in self.layers:
            x, stats = self.run_block(block, x, positions)
            per_layer.append(stats)
        aux = sum((aux_losses(self.cfg, stats) for stats in per_layer if stats), jnp.zeros((), jnp.float32))
        return self.logits(self.final_norm(x)), {"aux_loss": aux, **mean_stats(per_layer)}

    def logits(self, x: jax.Array) -> jax.Array:
        """Output projection in the compute dtype, accumulated and returned in fp32."""
        compute = policy(self.cfg.precision).compute_dtype
        weight = self.embed.embedding[...].T if self.head is None else self.head[...]
        x, weight = x.astype(compute), weight.astype(compute)
        if compute == jnp.bfloat16 and resolve_for_backend(self.cfg.bf16_matmul, cpu="f32_result",
                                                           other="xla") == "f32_result":
            return f32_result_matmul(x, weight, None, jnp.float32)  # backward matmuls in bf16 too
        return jnp.dot(x, weight, preferred_element_type=jnp.float32)
