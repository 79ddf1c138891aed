"""Analytic accounting of a ModelConfig: parameters, FLOPs, KV cache and memory — shapes only, no arrays.

- `params`: parameter counts and what counts as embedding (`param_counts`).
- `flops`:  FLOPs per token under docs/CONVENTIONS.md, 'FLOP conventions' (`6N`, `6N_attn`, `chinchilla`),
            per layer and op (`layer_forward_flops`, `forward_breakdown`); causal attention is not halved.
- `xla`:    the same step as XLA's cost analysis counts it, to compare with the compiled count.
- `memory`: KV-cache / decode-state bytes and a training-memory estimate.

Each attention and FFN kind contributes through its registry entry (`modeling/attention_kinds.py`,
`modeling/ffn_kinds.py`), so nothing here names a kind.

`report` gathers everything `isoflop count` and a run's summary need into one plain dict.
"""

from __future__ import annotations

from modeling.accounting.flops import (
    CAUSAL_ATTENTION_HALVED,
    CONVENTIONS,
    attention_context,
    flops_params,
    forward_breakdown,
    forward_flops_per_token,
    layer_forward_flops,
    mfu_flops_per_token,
    training_flops_per_token,
)
from modeling.accounting.memory import (
    PRECISION_BYTES,
    activation_bytes_per_token,
    constant_state_bytes,
    decode_state_bytes,
    kv_cache_bytes_per_token,
    training_memory_bytes,
)
from modeling.accounting.params import param_breakdown, param_counts
from modeling.accounting.xla import xla_training_breakdown, xla_training_flops_per_token
from modeling.config import ModelConfig
from modeling.ffn_kinds import FfnShape, ffn_report, ffn_shape


def report(cfg: ModelConfig, seq_len: int, batch_size: int, backend: str = "cpu") -> dict:
    """Every analytic number for a model trained on batches of `batch_size` × `seq_len` tokens;
    `backend` picks the attention kernel the XLA-count model follows (as `attention_impl=auto` does)."""
    return {
        "params": param_counts(cfg),
        "flops_per_token": training_flops_per_token(cfg, seq_len),
        "forward_flops_per_token": forward_flops_per_token(cfg, seq_len),
        "mfu_flops_per_token": mfu_flops_per_token(cfg, seq_len),
        "xla_flops_per_token": xla_training_flops_per_token(cfg, seq_len, backend),
        "causal_attention_halved": CAUSAL_ATTENTION_HALVED,
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(cfg),
        "decode_state_bytes_at_seq_len": decode_state_bytes(cfg, seq_len),
        "training_memory_bytes": training_memory_bytes(cfg, batch_size, seq_len),
        **ffn_report(cfg, seq_len, backend),
    }


__all__ = [
    "CAUSAL_ATTENTION_HALVED",
    "CONVENTIONS",
    "FfnShape",
    "PRECISION_BYTES",
    "activation_bytes_per_token",
    "attention_context",
    "constant_state_bytes",
    "decode_state_bytes",
    "flops_params",
    "forward_breakdown",
    "ffn_shape",
    "forward_flops_per_token",
    "kv_cache_bytes_per_token",
    "layer_forward_flops",
    "mfu_flops_per_token",
    "param_breakdown",
    "param_counts",
    "report",
    "training_flops_per_token",
    "training_memory_bytes",
    "xla_training_breakdown",
    "xla_training_flops_per_token",
]
