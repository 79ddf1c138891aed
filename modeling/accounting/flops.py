"""Analytic FLOPs per token under docs/CONVENTIONS.md, 'FLOP conventions' (2 FLOPs per multiply-add).

The convention names are `common.vocabulary.BUDGET_FLOP_CONVENTIONS`; each attention kind's share comes
from its registry entry (`modeling/attention_kinds.py`), each FFN kind's from `modeling/ffn_kinds.py`.

Every convention charges attention for the *full* context a query may see: causal attention is **not**
halved (Kaplan et al. 2020 and Hoffmann et al. 2022 both count it so, and XLA computes the full T×T map
anyway). `CAUSAL_ATTENTION_HALVED` says so in every report.

- `6N`         6 × N, N = non-embedding parameters used per token (Kaplan et al. 2020, C ≈ 6N).
- `6N_attn`    6N + 3 × Kaplan Table 1's attention term 2·n_layer·n_ctx·d_attn (d_attn = H·head_dim,
               n_ctx = seq_len). Kaplan's term counts the QKᵀ logits only (not the ·V reduction), and we
               keep it exactly so. Adaptations, per layer: a sliding-window (local) layer's n_ctx is
               min(window, seq_len); a linear-attention layer's n_ctx is head_dim, because reading the
               context there is φq·S against a head_dim × head_dim state, the analogue of QKᵀ.
- `chinchilla` Hoffmann et al. 2022, Appendix F, forward × 3 for training. Per token and layer:
               QKV projections 2·d·3·(H·hd), logits 2·T·(H·hd), softmax 3·H·T, softmax@V 2·T·(H·hd),
               output projection 2·(H·hd)·d, dense block 2·2·d·d_ff; plus embeddings 2·V·d and final
               logits 2·d·V once. Our adaptations:
               * GQA/MQA: the K and V projections produce Hkv·hd, so QKV is 2·d·(H + 2·Hkv)·hd.
               * Gated FFNs (swiglu/geglu) have three d×d_ff matrices: 2·3·d·d_ff.
               * Sliding window: a local layer's T is min(window, seq_len) (full window, not halved).
               * Linear attention (chunk C, C_eff = min(C, seq_len)): logits 2·C_eff·(H·hd) and
                 reduction 2·C_eff·(H·hd) inside a chunk; the running state costs 2·hd·(H·hd) to update
                 (φkᵀv) and 2·hd·(H·hd) to read (φq·S); the normaliser replaces softmax with
                 H·(C_eff + 4·hd) (row sums, z += φk, φq·z, the division). The feature map is an
                 activation and, like FFN activations, norms, RoPE and biases, is not counted.
               * Learned positions are an add, not a matmul: not counted (Chinchilla used relative ones).
               * Mixture of experts: a routed layer charges its router 2·d·E and the k routed plus the
                 shared experts a token visits (never capacity padding, which is hardware work:
                 docs/MOE.md); N for the 6N conventions is the active parameters.

Training FLOPs are 3 × forward for every convention (backward = 2 × forward). Forward-only numbers are
the inference cost per token of a full-context forward pass.
"""

from __future__ import annotations

from common.vocabulary import BUDGET_FLOP_CONVENTIONS
from modeling import attention_kinds
from modeling.accounting.params import param_counts
from modeling.config import ModelConfig
from modeling.ffn_kinds import ffn_shape

CONVENTIONS = BUDGET_FLOP_CONVENTIONS
CAUSAL_ATTENTION_HALVED = False  # every convention charges the full context (see module docstring)
TRAINING_MULTIPLIER = 3  # forward + backward (2 × forward: gradients w.r.t. activations and weights)


def flops_params(cfg: ModelConfig) -> int:
    """N for the 6N conventions: non-embedding parameters a token uses (active ones, for MoE)."""
    counts = param_counts(cfg)
    return counts["active"] - counts["embedding"]


def attention_context(cfg: ModelConfig, layer: int, seq_len: int) -> int:
    """Kaplan's n_ctx for one layer: the keys a query is charged for (full context, not halved)."""
    return attention_kinds.get(cfg.attention).kaplan_context(cfg, layer, seq_len)


def layer_forward_flops(cfg: ModelConfig, layer: int, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token of one block, by op (Chinchilla Appendix F counting)."""
    attention = attention_kinds.get(cfg.attention).forward_flops(cfg, layer, seq_len)
    return {**attention, "ffn": ffn_shape(cfg, layer).forward_flops}


def forward_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token by op, summed over layers; the `chinchilla` convention is its sum."""
    totals: dict[str, float] = {"embeddings": 2.0 * cfg.vocab_size * cfg.d_model}
    for layer in range(cfg.n_layers):
        for op, value in layer_forward_flops(cfg, layer, seq_len).items():
            totals[op] = totals.get(op, 0.0) + value
    totals["logits"] = 2.0 * cfg.d_model * cfg.vocab_size
    return totals


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward-only (inference) FLOPs per token under each convention, context = seq_len."""
    two_n = 2.0 * flops_params(cfg)
    d_attn = cfg.n_heads * cfg.head_size
    kaplan_attention = sum(2.0 * attention_context(cfg, layer, seq_len) * d_attn for layer in range(cfg.n_layers))
    return {
        "6N": two_n,
        "6N_attn": two_n + kaplan_attention,
        "chinchilla": sum(forward_breakdown(cfg, seq_len).values()),
    }


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Training (forward + backward) FLOPs per token under each convention: 3 × forward."""
    return {name: TRAINING_MULTIPLIER * value for name, value in forward_flops_per_token(cfg, seq_len).items()}


def mfu_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token that MFU divides by the peak: the `chinchilla` count without its
    embedding term. Appendix F charges the input lookup as a one-hot matmul (2·V·d), but no kernel
    does that work, so MFU (Chowdhery et al. 2022, App. B: model FLOPs the step must do) leaves it out."""
    breakdown = forward_breakdown(cfg, seq_len)
    return TRAINING_MULTIPLIER * (sum(breakdown.values()) - breakdown["embeddings"])
