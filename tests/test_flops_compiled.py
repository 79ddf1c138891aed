"""The analytic count of what XLA computes agrees with XLA's own count of the compiled training step.

We compare `modeling.accounting.xla_training_flops_per_token` (matmuls as the kernels run them — the
full T×T attention map, whole linear-attention chunks — plus measured per-element costs) with
`train.count.compiled_training_flops_per_token` (cost_analysis of jit(value_and_grad(loss))). The model
conventions differ from both on purpose (see modeling/accounting/xla.py): `chinchilla` adds a 2·V·d
embedding matmul XLA never runs and charges sliding-window layers only their window, and none of the
conventions count element-wise work. Shapes are chosen so matmuls dominate (d_model 256, vocab 256) and
compiles stay small (2 layers, one sequence of 128–256 tokens, fp32). Measured agreement is within
0.06% for every case (the 2% bound is the contract, not the precision).
"""

import pytest

from modeling.accounting import xla_training_flops_per_token
from modeling.config import ModelConfig
from train.count import compiled_training_flops_per_token

BASE = dict(vocab_size=256, d_model=256, n_layers=2, n_heads=4, d_ff=768, max_seq_len=256)
CASES = {
    "mha-gelu-gpt2-like": (dict(ffn="gelu", norm="layernorm", norm_bias=True, position="learned"), 128),
    "gqa-swiglu-rope": (dict(attention="gqa", n_kv_heads=2, ffn="swiglu"), 256),
    "mqa-geglu-qknorm": (dict(attention="mqa", ffn="geglu", qk_norm=True), 128),
    "sliding-relu2-mixed": (
        dict(attention="sliding_window", window=32, layer_pattern=("local", "global"), ffn="relu2"), 256),
    "linear-elu1-swiglu": (dict(attention="linear", linear_chunk_size=64, ffn="swiglu"), 256),
    "linear-relu-gelu-gqa": (
        dict(attention="linear", linear_feature_map="relu", linear_chunk_size=32, n_kv_heads=2, ffn="gelu"), 128),
    "mha-swiglu-untied-bias": (dict(ffn="swiglu", tie_embeddings=False, bias="all"), 128),
    "gqa-swiglu-qkv-bias": (dict(attention="gqa", n_kv_heads=2, bias="qkv"), 128),
    "mha-geglu-wide-heads": (dict(head_dim=96, ffn="geglu"), 128),  # H·hd = 384 in a 256-wide model
    "sliding-gelu-narrow-heads-blocked": (
        dict(attention="sliding_window", window=48, head_dim=32, ffn="gelu", attention_impl="blocked"), 256),
    # MoE: the capacity path runs (and XLA counts) every expert over its C slots, padding included
    "moe-capacity-swiglu-e8k2": (dict(ffn="moe", moe_experts=8, moe_top_k=2, moe_dispatch="capacity"), 128),
    "moe-capacity-gelu-shared-every2": (
        dict(ffn="moe", moe_experts=4, moe_top_k=1, moe_shared_experts=1, moe_expert_ffn="gelu", moe_every=2,
             moe_dispatch="capacity"), 256),
    # dropless: XLA counts the grouped matmul densely over all E groups (modeling/ffn_kinds.py, _moe_xla_cost)
    "moe-dropless-swiglu-e4k2": (dict(ffn="moe", moe_experts=4, moe_top_k=2, moe_dispatch="dropless"), 128),
}
TOLERANCE = 0.02


@pytest.mark.parametrize("case", CASES)
def test_analytic_matches_compiled(case):
    overrides, seq_len = CASES[case]
    cfg = ModelConfig(**{**BASE, **overrides})
    compiled = compiled_training_flops_per_token(cfg, seq_len)
    analytic = xla_training_flops_per_token(cfg, seq_len)
    relative = abs(analytic - compiled) / compiled
    assert relative < TOLERANCE, f"{case}: analytic {analytic:.6g} vs compiled {compiled:.6g} ({relative:.2%})"
