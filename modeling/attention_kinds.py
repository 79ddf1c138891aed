"""What the accounting knows about each attention kind, in one jax-free registry.

An attention kind is two registry entries with the same name: an `AttentionKind` here (its FLOPs under
the conventions, its XLA-count model, its decode-state bytes, its activation bytes and its own config
checks) and an nnx module in `modeling/attention.py` (its forward pass, with or without a cache),
whose `register` refuses a name this registry does not hold. Everything else is derived: config
validation takes its list of kinds from `names()`, `modeling/accounting/` calls the entry's functions,
and decoding runs the module's `__call__` with the cache its `empty_cache` builds.

Why two registries rather than one entry holding the module class: `modeling/accounting/` (and through
it `analysis/` and `launch/`) must import without jax, and a module class cannot exist without it. The
split follows that boundary exactly, and the facts that both sides need (kind names, the resolved
number of K/V heads, which layers are windowed) live here, on the jax-free side.

The built-in kinds' accounting is written out below; `modeling/accounting/flops.py` has the
conventions it follows, `modeling/accounting/xla.py` the XLA-count conventions and
`modeling/accounting/memory.py` the byte conventions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

from common.registry import Registry

if TYPE_CHECKING:
    from modeling.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class XlaCost:
    """One layer's attention per token as XLA's cost analysis counts it (beside the projections)."""

    matmul: float  # forward matmul FLOPs as the kernel runs them (the training step runs 3×)
    elementwise: float  # element-wise FLOPs, forward + backward together


@dataclasses.dataclass(frozen=True)
class AttentionKind:
    """The accounting of one attention kind; every function takes (cfg, layer, ...) for one layer."""

    name: str
    # Chinchilla-convention forward FLOPs per token by op, projections included ("attention.*" keys).
    forward_flops: Callable[[ModelConfig, int, int], dict[str, float]]
    # Kaplan's n_ctx for the 6N_attn convention: the keys a query is charged for at seq_len.
    kaplan_context: Callable[[ModelConfig, int, int], int]
    # (cfg, layer, seq_len, backend) -> the XLA count of the mixing (scores and their element-wise work).
    xla_cost: Callable[[ModelConfig, int, int, str], XlaCost]
    # (cfg, layer, context_len, compute_bytes) -> bytes this layer carries between decode steps.
    decode_state_bytes: Callable[[ModelConfig, int, int, int], int]
    # (cfg, seq_len) -> bytes per token and layer the backward keeps beyond the q/k/v and output tensors.
    activation_bytes: Callable[[ModelConfig, int], float]
    # Kind-specific config checks, one line per problem (the generic ones are in modeling/config.py).
    validate: Callable[[ModelConfig], list[str]] = lambda cfg: []
    fixed_kv_heads: int | None = None  # K/V heads whatever model.n_kv_heads says (mqa: 1)
    windowed: bool = False  # uses model.window / model.layer_pattern (local and global layers)


REGISTRY: Registry[AttentionKind] = Registry("attention kind", "model.attention")
register, unregister, names, get = REGISTRY.register, REGISTRY.unregister, REGISTRY.names, REGISTRY.get


# ----------------------------------------------------------------------------- shared by the built-ins

FP32_BYTES = 4
# What model.attention_impl=auto resolves to per backend (modeling/attention.py follows the same rule).
AUTO_IMPL, AUTO_IMPL_ELSEWHERE = {"cpu": "blocked"}, "xla"


def softmax_impl(attention_impl: str, backend: str) -> str:
    """The softmax kernel a layer runs: `model.attention_impl`, with auto resolved for `backend`."""
    if attention_impl != "auto":
        return attention_impl
    return AUTO_IMPL.get(backend, AUTO_IMPL_ELSEWHERE)


def projection_flops(cfg: ModelConfig) -> dict[str, float]:
    """Q, K, V and output projections (Appendix F; GQA/MQA: K and V produce Hkv·hd)."""
    q_width, kv_width = cfg.n_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
    return {
        "attention.qkv": 2.0 * cfg.d_model * (q_width + 2 * kv_width),
        "attention.out": 2.0 * q_width * cfg.d_model,
    }


def kv_bytes_per_token(cfg: ModelConfig, compute_bytes: int) -> int:
    """K and V of one cached token in one layer (Hkv·hd each)."""
    return 2 * cfg.kv_heads * cfg.head_size * compute_bytes


# ----------------------------------------------------------------------------- softmax (mha/gqa/mqa/window)

# XLA:CPU FLOPs per element, forward + backward (JAX 0.10.2, fp32; tests/test_flops_compiled.py checks).
SOFTMAX_ELEMENTWISE = {
    "softmax": 20.75,  # per score element: scale, causal mask, max, exp-normalise, and the backward
    "softmax_window": 2.25,  # extra per score element when a sliding window adds a second mask bound
    "query_scale": 2.0,  # per query feature: the 1/sqrt(head_dim) scale
    # attention_impl=blocked (fitted to compiled counts of 2-layer models, T 128-256, blocks 32-128):
    "blocked_softmax": 15.0,  # per score element actually scored: scale, mask, softmax, flash backward
    "blocked_softmax_window": 1.1,  # extra per score element for the sliding-window bound
    "blocked_key_sums": 1.0,  # per key/value feature, per query block that sees it: dK and dV partial sums
    "blocked_delta": 2.0,  # per query feature: rowsum(dO ⊙ O)
}


def softmax_context(cfg: ModelConfig, layer: int, seq_len: int) -> int:
    """Keys a query is charged for: the full context, or the window on a local layer (not halved)."""
    if cfg.layer_kind(layer) == "local":
        return min(cfg.window, seq_len)
    return seq_len


def softmax_forward_flops(cfg: ModelConfig, layer: int, seq_len: int) -> dict[str, float]:
    """Appendix F's attention with T = the keys this layer's queries see (window for local layers)."""
    keys = softmax_context(cfg, layer, seq_len)
    d_attn = cfg.n_heads * cfg.head_size
    return {
        **projection_flops(cfg),
        "attention.logits": 2.0 * keys * d_attn,
        "attention.softmax": 3.0 * cfg.n_heads * keys,
        "attention.values": 2.0 * keys * d_attn,
    }


def _blocked_xla_cost(cfg: ModelConfig, layer: int, seq_len: int) -> XlaCost:
    """The block-causal kernel: query block [start, end) scores keys [first, end) only."""
    heads, hd, block = cfg.n_heads, cfg.head_size, cfg.attention_block_size
    window = cfg.window if cfg.layer_kind(layer) == "local" else None
    scored_keys = visited_keys = 0  # summed over queries, and over blocks
    for start in range(0, seq_len, block):
        end = min(start + block, seq_len)
        first = 0 if window is None else max(0, start - window + 1)
        scored_keys += (end - start) * (end - first)
        visited_keys += end - first
    score_elements = heads * scored_keys / seq_len  # per query token
    per_score = SOFTMAX_ELEMENTWISE["blocked_softmax"]
    if window is not None:
        per_score += SOFTMAX_ELEMENTWISE["blocked_softmax_window"]
    key_sums = SOFTMAX_ELEMENTWISE["blocked_key_sums"] * 2 * cfg.kv_heads * hd * visited_keys / seq_len
    return XlaCost(
        matmul=2.0 * 2.0 * score_elements * hd,  # QKᵀ and ·V
        elementwise=per_score * score_elements + key_sums + SOFTMAX_ELEMENTWISE["blocked_delta"] * heads * hd,
    )


def dense_softmax_xla_cost(cfg: ModelConfig, layer: int, seq_len: int) -> XlaCost:
    """`jax.nn.dot_product_attention`: the full T×T map for every layer, whatever the mask."""
    heads, hd = cfg.n_heads, cfg.head_size
    per_score = SOFTMAX_ELEMENTWISE["softmax"]
    if cfg.layer_kind(layer) == "local":
        per_score += SOFTMAX_ELEMENTWISE["softmax_window"]
    return XlaCost(
        matmul=2.0 * 2.0 * seq_len * heads * hd,  # QKᵀ and ·V
        elementwise=per_score * heads * seq_len + SOFTMAX_ELEMENTWISE["query_scale"] * heads * hd,
    )


def softmax_xla_cost(cfg: ModelConfig, layer: int, seq_len: int, backend: str) -> XlaCost:
    if softmax_impl(cfg.attention_impl, backend) == "blocked":
        return _blocked_xla_cost(cfg, layer, seq_len)
    return dense_softmax_xla_cost(cfg, layer, seq_len)


def softmax_decode_state_bytes(cfg: ModelConfig, layer: int, context_len: int, compute_bytes: int) -> int:
    """K/V of every token in context; a local layer needs only its window (a ring buffer's worth)."""
    return kv_bytes_per_token(cfg, compute_bytes) * softmax_context(cfg, layer, context_len)


def softmax_activation_bytes(cfg: ModelConfig, seq_len: int) -> float:
    return FP32_BYTES * cfg.n_heads * seq_len  # probabilities (none/full) or scores (dots_saveable)


def _needs_kv_heads(cfg: ModelConfig) -> list[str]:
    if cfg.n_kv_heads is None:
        return [f"model.n_kv_heads: required for attention={cfg.attention} (a divisor of model.n_heads)"]
    return []


SOFTMAX = dict(forward_flops=softmax_forward_flops, kaplan_context=softmax_context, xla_cost=softmax_xla_cost,
               decode_state_bytes=softmax_decode_state_bytes, activation_bytes=softmax_activation_bytes)
register(AttentionKind("mha", **SOFTMAX))
register(AttentionKind("gqa", **SOFTMAX, validate=_needs_kv_heads))
register(AttentionKind("mqa", **SOFTMAX, fixed_kv_heads=1))
register(AttentionKind("sliding_window", **SOFTMAX, windowed=True))


# ----------------------------------------------------------------------------- linear attention

LINEAR_ELEMENTWISE = {
    "feature_map.elu1": 32.0,  # per query/key feature
    "feature_map.relu": 15.0,
    "chunk": 9.25,  # per C×C score element: causal mask, row sums, and their gradients
    "state": 2.0,  # per state element, chunk and earlier chunk: the exclusive cumsum, fwd + bwd
    "output": 8.0,  # per output feature: the division by the normaliser and its gradient
}


def linear_context(cfg: ModelConfig, layer: int, seq_len: int) -> int:
    """Reading the context is φq·S against a head_dim × head_dim state, the analogue of QKᵀ."""
    return cfg.head_size


def linear_forward_flops(cfg: ModelConfig, layer: int, seq_len: int) -> dict[str, float]:
    """Chunked causal linear attention: C×C quadratic form within a chunk, hd×hd state across chunks."""
    chunk = min(cfg.linear_chunk_size, seq_len)
    heads, hd = cfg.n_heads, cfg.head_size  # K/V heads are repeated to H before the feature map
    return {
        **projection_flops(cfg),
        "attention.logits": 2.0 * chunk * heads * hd,
        "attention.normaliser": heads * (chunk + 4.0 * hd),
        "attention.values": 2.0 * chunk * heads * hd,
        "attention.state": 4.0 * hd * heads * hd,
    }


def linear_xla_cost(cfg: ModelConfig, layer: int, seq_len: int, backend: str) -> XlaCost:
    """Whole C×C chunks (the sequence is padded to a multiple of C) plus the running state."""
    chunk, heads, hd = cfg.linear_chunk_size, cfg.n_heads, cfg.head_size
    n_chunks = math.ceil(seq_len / chunk)
    padded = n_chunks * chunk / seq_len  # padded tokens are computed too
    # per padded token and head: scores 2·C·hd, ·v 2·C·hd, chunk state φkᵀv 2·hd², read-out φq·S 2·hd², φq·z 2·hd
    matmuls = heads * (4.0 * chunk * hd + 4.0 * hd * hd + 2.0 * hd)
    # One chunk: the cross-chunk state is a constant zero and XLA folds two of the state matmuls away
    # (4·H·hd² of the training count, i.e. a third of that per forward).
    folded = 4.0 * heads * hd * hd / 3 if n_chunks == 1 else 0.0
    feature_map = LINEAR_ELEMENTWISE[f"feature_map.{cfg.linear_feature_map}"] * 2 * heads * hd
    elementwise = (
        LINEAR_ELEMENTWISE["chunk"] * heads * chunk
        + LINEAR_ELEMENTWISE["output"] * heads * hd
        + LINEAR_ELEMENTWISE["state"] * heads * (hd * hd + hd) * (n_chunks - 1) / chunk
    )
    return XlaCost(matmul=(matmuls - folded) * padded, elementwise=feature_map + elementwise * padded)


def linear_decode_state_bytes(cfg: ModelConfig, layer: int, context_len: int, compute_bytes: int) -> int:
    """S (hd×hd) and z (hd) per query head, fp32, whatever the context: nothing grows per token.

    Counted per query head, as the implementation holds it (K/V heads are repeated before the feature
    map, so grouped heads share equal states and Hkv copies would suffice)."""
    return cfg.n_heads * (cfg.head_size**2 + cfg.head_size) * FP32_BYTES


def linear_activation_bytes(cfg: ModelConfig, seq_len: int) -> float:
    """C×C scores, fp32 q/k/v copies, per-chunk and prefix states (2·hd² + 2·hd per head per chunk)."""
    chunk, hd = min(cfg.linear_chunk_size, seq_len), cfg.head_size
    return FP32_BYTES * cfg.n_heads * (chunk + 3 * hd + 2 * (hd * hd + hd) / chunk)


register(AttentionKind("linear", forward_flops=linear_forward_flops, kaplan_context=linear_context,
                       xla_cost=linear_xla_cost, decode_state_bytes=linear_decode_state_bytes,
                       activation_bytes=linear_activation_bytes))
