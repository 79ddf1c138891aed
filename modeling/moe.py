"""Mixture-of-experts feed-forward (`model.ffn=moe`): fp32 router, top-k experts, shared experts, two dispatches.

y = Σ_{e ∈ top-k(x)} w_e(x) · expert_e(x) + shared(x). The router is a d×E matrix evaluated in fp32
whatever the precision policy (ST-MoE, Zoph et al. 2022: bf16 router logits destabilise training);
scores are a softmax over all experts (Switch, Mixtral) or a per-expert sigmoid (DeepSeek-V3), and
`moe_renormalize` rescales the k chosen ones to sum to 1. The experts are E copies of a dense FFN kind
(modeling/feedforward.py), built stacked with `nnx.vmap`, so any dense kind can be an expert and its
precision paths (f32-result bf16, fp8) come with it. Shared experts are one dense FFN S·d_ff wide
(the same function as S separate ones, each seeing every token).

Both dispatches sort the k·T (token, expert) assignments of a sequence by expert with a *stable* sort,
so within an expert tokens keep their order:
- `capacity`: each expert has C = ceil(factor·k·T/E) slots per sequence; an assignment ranked ≥ C in its
  expert is dropped (its weight is lost; the residual stream carries the token on). Every expert runs
  over all its C slots, padding included (hardware FLOPs; `isoflop count` reports them apart). Ranking
  by position makes dropping causal: whether token t is dropped depends on tokens ≤ t only.
- `dropless`: every assignment is computed, by `jax.lax.ragged_dot` over the sorted rows.
Which is faster depends on the backend (`python -m modeling.moe_bench`, docs/MOE.md); `auto` picks by
`modeling.ffn_kinds.MOE_AUTO_DISPATCH`.

Router statistics come back with the output (`forward_with_stats`) so the objective can add the
auxiliary losses (`aux_losses`) and the trainer can log router health.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from modeling import feedforward, ffn_kinds, mup
from modeling.config import ModelConfig
from modeling.precision import fp8_straight_through, policy
from modeling.sharding import axes_metadata

F32 = jnp.float32


class Router(nnx.Module):
    """logits = x · W_r in fp32 (highest precision: no TF32 on GPU), W_r d×E in the parameter dtype."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        self.kernel = nnx.Param(init(rngs.params(), (cfg.d_model, cfg.moe_experts), policy(cfg.precision).param_dtype),
                                **axes_metadata("embed", "router"))
        self.multiplier = mup.output_multiplier(cfg)  # μP: d_model -> E is an output layer (modeling/mup.py)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = mup.scale(x.astype(F32), self.multiplier)
        return jnp.dot(x, self.kernel[...].astype(F32), precision=jax.lax.Precision.HIGHEST)


def route(cfg: ModelConfig, logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(weights [N, k] fp32, experts [N, k] int32, probabilities [N, E]) from router logits [N, E].

    The probabilities (softmax, or the sigmoid scores normalised to sum to 1) are what the load-balancing
    loss and the entropy read."""
    if cfg.moe_score == "softmax":
        probs = scores = jax.nn.softmax(logits, axis=-1)
    else:
        scores = jax.nn.sigmoid(logits)
        probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
    weights, experts = jax.lax.top_k(scores, cfg.moe_top_k)
    if cfg.moe_renormalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts, probs


def router_stats(cfg: ModelConfig, logits: jax.Array, experts: jax.Array, probs: jax.Array,
                 dropped_fraction: jax.Array) -> dict[str, jax.Array]:
    """One layer's auxiliary losses and router health, all fp32 scalars except the per-expert load [E].

    load_balance: Switch (Fedus et al. 2021, eq. 4) generalised to top-k: E · Σ_e f_e · P_e, f_e the share
    of the k·N assignments routed to e (no gradient) and P_e the mean router probability of e; 1 for a
    perfectly uniform router, E when it sends everything to one expert.
    z_loss: ST-MoE (Zoph et al. 2022, eq. 5): mean over tokens of logsumexp(logits)².
    """
    load = jnp.bincount(experts.reshape(-1), length=cfg.moe_experts).astype(F32) / experts.size
    importance = jnp.mean(probs, axis=0)
    entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)
    return {
        "load_balance": cfg.moe_experts * jnp.sum(jax.lax.stop_gradient(load) * importance),
        "z_loss": jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1))),
        "router_entropy": jnp.mean(entropy),
        "dropped_fraction": dropped_fraction.astype(F32),
        "expert_load": load,
    }


def aux_losses(cfg: ModelConfig, stats: dict[str, jax.Array]) -> jax.Array:
    """What the MoE adds to the objective: the weighted load-balancing and router z-losses."""
    return cfg.moe_load_balance_weight * stats["load_balance"] + cfg.moe_z_loss_weight * stats["z_loss"]


def sort_by_expert(experts: jax.Array, n_experts: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Assignments [M] (token-major) sorted stably by expert: (order, sorted experts, group sizes [E], the
    rank of each sorted assignment within its expert: earlier tokens rank first)."""
    order = jnp.argsort(experts, stable=True)
    sorted_experts = experts[order]
    sizes = jnp.bincount(experts, length=n_experts)
    starts = jnp.cumsum(sizes) - sizes
    rank = jnp.arange(experts.shape[0]) - starts[sorted_experts]
    return order, sorted_experts, sizes.astype(jnp.int32), rank


def grouped_linear(layer: nnx.Module, x: jax.Array, *, sizes: jax.Array, row_experts: jax.Array,
                   fp8: bool) -> jax.Array:
    """One projection of the stacked experts (kernel [E, in, out]) on rows sorted by expert: a grouped
    matmul with fp32 accumulation and fp32 bias add, cast once to the layer's compute dtype."""
    kernel = layer.kernel[...].astype(layer.dtype)
    x = x.astype(layer.dtype)
    if fp8:
        x, kernel = fp8_straight_through(x), fp8_straight_through(kernel)
    y = jax.lax.ragged_dot(x, kernel, sizes, preferred_element_type=F32)
    if layer.bias is not None:
        y = y + layer.bias[...].astype(F32)[row_experts]
    return y.astype(layer.dtype)


def _combine(rows: jax.Array, weights: jax.Array) -> jax.Array:
    """Σ_k w_k · row_k in fp32: rows [N·k, d] token-major, weights [N, k] -> [N, d]."""
    n, k = weights.shape
    return jnp.sum(rows.astype(F32).reshape(n, k, -1) * weights[..., None], axis=1)


class MoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.router = Router(cfg, rngs)
        self.experts = _stacked_experts(cfg, rngs)
        self.shared = (
            feedforward.build_kind(cfg.moe_expert_ffn, _shared_cfg(cfg), rngs) if cfg.moe_shared_experts else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward_with_stats(x)[0]

    def forward_with_stats(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """x [B, T, d] -> (y [B, T, d] in x's dtype, router statistics of this layer)."""
        batch, seq, d = x.shape
        flat = x.reshape(batch * seq, d)
        logits = self.router(flat)
        weights, experts, probs = route(self.cfg, logits)
        if ffn_kinds.moe_dispatch(self.cfg, jax.default_backend()) == "capacity":
            routed, kept = self._capacity(x, weights.reshape(batch, seq, -1), experts.reshape(batch, seq, -1))
            dropped = 1.0 - jnp.mean(kept.astype(F32))
        else:
            routed, dropped = self._dropless(flat, weights, experts), jnp.zeros((), F32)
        y = routed.reshape(batch, seq, d)
        if self.shared is not None:
            y = y + self.shared(x).astype(F32)
        return y.astype(x.dtype), router_stats(self.cfg, logits, experts, probs, dropped)

    def _dropless(self, x: jax.Array, weights: jax.Array, experts: jax.Array) -> jax.Array:
        """Every assignment computed: rows sorted by expert through a grouped matmul, then unsorted."""
        k = self.cfg.moe_top_k
        order, sorted_experts, sizes, _ = sort_by_expert(experts.reshape(-1), self.cfg.moe_experts)
        rows = x[order // k]  # token-major assignments: assignment i belongs to token i // k
        linear = functools.partial(grouped_linear, sizes=sizes, row_experts=sorted_experts,
                                   fp8=policy(self.cfg.precision).fp8_matmuls)
        out = self.experts(rows, linear=linear)
        unsorted = jnp.zeros_like(out).at[order].set(out)
        return _combine(unsorted, weights)

    def _capacity(self, x: jax.Array, weights: jax.Array, experts: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per sequence: C slots per expert, assignments beyond them dropped. x [B, T, d] -> ([B·T, d], kept)."""
        cfg, (batch, seq, d) = self.cfg, x.shape
        capacity = ffn_kinds.moe_capacity(cfg, seq)
        slot, slot_token = jax.vmap(functools.partial(_capacity_slots, n_experts=cfg.moe_experts,
                                                      capacity=capacity, top_k=cfg.moe_top_k))(experts)
        padded = jnp.concatenate([x, jnp.zeros((batch, 1, d), x.dtype)], axis=1)  # row T: an empty slot
        buffer = jnp.take_along_axis(padded, slot_token[..., None], axis=1)  # [B, E·C, d]
        buffer = buffer.reshape(batch, cfg.moe_experts, capacity, d).transpose(1, 0, 2, 3)
        out = nnx.vmap(lambda expert, rows: expert(rows), in_axes=(0, 0), out_axes=0)(
            self.experts, buffer.reshape(cfg.moe_experts, batch * capacity, d))
        out = out.reshape(cfg.moe_experts, batch, capacity, d).transpose(1, 0, 2, 3).reshape(batch, -1, d)
        out = jnp.concatenate([out, jnp.zeros((batch, 1, d), out.dtype)], axis=1)  # slot E·C: dropped
        rows = jnp.take_along_axis(out, slot[..., None], axis=1)  # [B, T·k, d]
        kept = slot < cfg.moe_experts * capacity
        return _combine(rows.reshape(batch * seq * cfg.moe_top_k, d), weights.reshape(batch * seq, -1)), kept


def _capacity_slots(experts: jax.Array, *, n_experts: int, capacity: int, top_k: int) -> tuple[jax.Array, jax.Array]:
    """One sequence's experts [T, k] -> (slot [T·k] of each assignment in the E·C buffer, E·C when dropped;
    the token [E·C] each slot holds, T when empty)."""
    flat = experts.reshape(-1)
    order, sorted_experts, _, rank = sort_by_expert(flat, n_experts)
    full = n_experts * capacity
    sorted_slot = jnp.where(rank < capacity, sorted_experts * capacity + rank, full)
    slot = jnp.zeros_like(flat).at[order].set(sorted_slot)
    tokens = jnp.arange(flat.shape[0]) // top_k
    slot_token = jnp.full((full,), experts.shape[0], flat.dtype).at[slot].set(tokens, mode="drop")
    return slot, slot_token


def _shared_cfg(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(cfg, d_ff=cfg.moe_shared_experts * cfg.d_ff)


def _stacked_experts(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """E dense FFNs of kind moe_expert_ffn with their parameters stacked on a leading axis named "expert"
    (modeling/sharding.py splits it over the expert mesh axis)."""

    @nnx.split_rngs(splits=cfg.moe_experts)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "expert"})
    def build(rngs: nnx.Rngs) -> nnx.Module:
        return feedforward.build_kind(cfg.moe_expert_ffn, cfg, rngs)

    return build(rngs)


feedforward.register("moe")(MoE)


def router_log_scalars(metrics: dict) -> dict[str, float]:
    """The router statistics of a step's metrics as plain numbers for metrics.jsonl / TensorBoard:
    `moe_*` scalars, `moe_expert_load_<e>` per expert, and `aux_loss`; {} for a model with no routed layer."""
    if "moe_expert_load" not in metrics:
        return {}
    scalars = {key: float(value) for key, value in metrics.items()
               if key.startswith("moe_") and key != "moe_expert_load"}
    scalars |= {f"moe_expert_load_{e}": float(load) for e, load in enumerate(jax.device_get(metrics["moe_expert_load"]))}
    return {"aux_loss": float(metrics["aux_loss"]), **scalars}
