"""What XLA's cost analysis counts for one compiled training step (forward + backward + loss).

The conventions in `flops.py` are *model* FLOPs; this is the analytic twin of the `compiled` count
(`train/count.py`), so the two can be compared op by op. It differs from `chinchilla` on purpose:

- Every matmul is charged as the kernel runs it, ×3 for training (gradients w.r.t. both operands):
  with `model.attention_impl=xla`, softmax attention is the full T×T score map for *every* layer
  (`jax.nn.dot_product_attention` masks, it does not skip: sliding-window layers cost as much as global
  ones); the block-causal kernel (`blocked`, the CPU default; modeling/causal_attention.py) scores each
  query block against the keys it can see only; linear attention pads the sequence to whole chunks and
  computes the full C×C block per chunk. A mixture of experts on its capacity path runs every expert
  over all its capacity slots (padding included); on the dropless path XLA counts the grouped matmul
  (`jax.lax.ragged_dot`) densely over every expert, E× the work the kernel does (modeling/ffn_kinds.py).
- Element-wise work is charged at the FLOPs per element XLA counts for it, fwd + bwd together
  (`ELEMENTWISE_FLOPS` here, `SOFTMAX_ELEMENTWISE` / `LINEAR_ELEMENTWISE` in modeling/attention_kinds.py
  and each FFN kind's entry in modeling/ffn_kinds.py; measured on XLA:CPU with JAX 0.10.2 in fp32 by
  differencing compiled counts of whole models; `tests/test_flops_compiled.py` checks the total against
  the compiler). Exp, log, tanh, rsqrt are "transcendentals" in XLA and are not in its `flops`, so these are small numbers.
  XLA also duplicates cheap element-wise ops into several fusions, so the per-element costs are
  larger than a hand count of the formula (e.g. GELU ~40 rather than ~8·3).

How it relates to the conventions (same shapes): its matmul part is `chinchilla` × 3 without the
2·V·d "embedding" matmul (XLA gathers rows) and with the full T×T map for local layers; the rest is the
element-wise share, 1–2% of the total at d_model = 256 and smaller for wider models. `6N_attn` sits
below both because Kaplan's attention term leaves out the ·V reduction.

Measured agreement with `train/count.py` (2 layers, d_model 256–512, seq 64–256, fp32, CPU): within
0.05% for every attention and FFN kind, norm, RoPE and QK-norm. Known, unmodelled differences:
- biases change how XLA fuses the activation after them (GELU drops ~14 FLOPs per hidden feature):
  up to 0.3% here (model.bias=all; qkv biases touch no activation);
- bf16 policies add dtype converts (+1.5% here); other backends fuse differently, and a fused
  attention kernel (cuDNN flash attention) may be a custom call XLA does not count at all;
- remat recomputes part of the forward pass (hardware FLOPs, not model FLOPs): +18% for
  remat=full and +0.3% for dots_saveable at the 2-layer shape above. Not modelled here.
"""

from __future__ import annotations

from modeling import attention_kinds, ffn_kinds
from modeling.accounting.flops import TRAINING_MULTIPLIER, forward_breakdown
from modeling.config import ModelConfig

# FLOPs XLA counts per element, forward + backward (XLA:CPU, JAX 0.10.2, fp32), for the parts every
# kind shares; the attention kernels' and FFN activations' costs sit with their registry entries.
ELEMENTWISE_FLOPS = {
    "rmsnorm": 11.0,  # per feature of each normalised vector
    "layernorm": 16.0,
    "norm_bias": 3.0,
    "bias": 1.0,  # per output feature of a dense layer with a bias
    "residual": 3.0,  # per feature, each residual add (and its gradient fan-out)
    "rope": 10.4,  # per rotated query/key feature
    "qk_norm": 18.0,  # per query/key feature normalised by QK-norm
    "loss": 4.0,  # per logit: log-softmax cross-entropy and its gradient
    "embedding": 8.0,  # per embedded feature: gather, scatter-add of the gradient, final bookkeeping
}


def _bias_outputs(cfg: ModelConfig, layer: int) -> int:
    """Output features of the dense layers that carry a bias under model.bias."""
    q_width, kv_width, d = cfg.n_heads * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.d_model
    ffn = ffn_kinds.ffn_shape(cfg, layer)
    outputs = {"qkv": q_width + 2 * kv_width, "out": d, "ffn": (2 if ffn.gated else 1) * ffn.hidden_width + d}
    return sum(width for part, width in outputs.items() if cfg.has_bias(part))


def _layer(cfg: ModelConfig, layer: int, seq_len: int, backend: str) -> dict[str, float]:
    q_width, kv_width, d = cfg.n_heads * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.d_model
    norm = ELEMENTWISE_FLOPS[cfg.norm] + (ELEMENTWISE_FLOPS["norm_bias"] if cfg.norm_bias else 0.0)
    mixing = attention_kinds.get(cfg.attention).xla_cost(cfg, layer, seq_len, backend)
    ffn = ffn_kinds.xla_cost(cfg, layer, seq_len, backend)
    return {
        "matmul.ffn": TRAINING_MULTIPLIER * ffn.matmul,
        "attention.scores": TRAINING_MULTIPLIER * mixing.matmul,
        "attention.softmax": mixing.elementwise,
        "norms": 2 * norm * d,
        "residual": 2 * ELEMENTWISE_FLOPS["residual"] * d,
        "ffn.activation": ffn.elementwise,
        "rope": ELEMENTWISE_FLOPS["rope"] * (q_width + kv_width) if cfg.position == "rope" else 0.0,
        "qk_norm": ELEMENTWISE_FLOPS["qk_norm"] * (q_width + kv_width) if cfg.qk_norm else 0.0,
        "bias": ELEMENTWISE_FLOPS["bias"] * _bias_outputs(cfg, layer),
    }


def xla_training_breakdown(cfg: ModelConfig, seq_len: int, backend: str = "cpu") -> dict[str, float]:
    """Training FLOPs per token XLA counts, by op (matmuls ×3, element-wise fwd + bwd).

    `backend` resolves `model.attention_impl=auto` as the model does (blocked on "cpu", xla elsewhere)."""
    forward = forward_breakdown(cfg, seq_len)
    totals = {
        "matmul.projections": TRAINING_MULTIPLIER * (forward["attention.qkv"] + forward["attention.out"]),
        "matmul.logits": TRAINING_MULTIPLIER * forward["logits"],
    }
    for layer in range(cfg.n_layers):
        for op, value in _layer(cfg, layer, seq_len, backend).items():
            totals[op] = totals.get(op, 0.0) + value
    d, vocab = cfg.d_model, cfg.vocab_size
    final_norm = ELEMENTWISE_FLOPS[cfg.norm] + (ELEMENTWISE_FLOPS["norm_bias"] if cfg.norm_bias else 0.0)
    totals["norms"] = totals.get("norms", 0.0) + final_norm * d
    totals["loss"] = ELEMENTWISE_FLOPS["loss"] * vocab
    totals["embedding"] = ELEMENTWISE_FLOPS["embedding"] * d  # learned positions: a static slice, ~free
    return totals


def xla_training_flops_per_token(cfg: ModelConfig, seq_len: int, backend: str = "cpu") -> float:
    """Training FLOPs per token as XLA's cost analysis counts them (see module docstring)."""
    return sum(xla_training_breakdown(cfg, seq_len, backend).values())
