"""Bytes: the KV cache (or linear attention's constant state) for decoding, and a training-memory estimate.

Byte widths come from the precision policy's dtype names in `modeling/config.py` (plain names, so
accounting needs no jax; `modeling/precision.py` maps the same names to jax dtypes). What each layer
keeps for decoding and for the backward pass comes from its attention kind's registry entry
(`modeling/attention_kinds.py`).

Training memory = weights + gradients + AdamW state + activations kept for the backward pass:
- weights and gradients in the parameter dtype (fp32, or bf16 under precision=bf16);
- AdamW: two moments in fp32 whatever the parameter dtype (`train/optimizer.py` keeps its state fp32);
- activations, per layer and token, in elements of the compute dtype (a generalisation of Korthikanti
  et al. 2022, §4.1, without dropout masks, tensor or sequence parallelism). remat=none keeps:
    attention sub-block: norm input d, norm output d, q/k/v (H + 2·Hkv)·hd, attention output H·hd,
                         and the softmax probabilities H·T in fp32 (XLA's attention materialises them;
                         a fused flash kernel would keep only H log-sum-exps);
    FFN sub-block:       norm input d, norm output d, and the hidden activations: gate, up and
                         act(gate)·up (3·d_ff) for gated FFNs, up and act(up) (2·d_ff) otherwise;
                         a routed (MoE) layer keeps that for its k + shared experts' rows, plus its
                         dispatched inputs and expert outputs (k·d each) and the router's logits
                         and probabilities (E each); capacity padding slots are not counted.
  For GPT-style shapes (H·hd = d, d_ff = 4d, 16-bit) this is 32·d + 4·H·T bytes per token, where
  Korthikanti et al. have 34·d + 5·H·T: their extra 2·d and H·T are dropout masks and the dropout
  output, and our probabilities are fp32 (4 bytes) where theirs are fp16 (2 bytes).
  Linear attention keeps its C×C chunk scores, fp32 q/k/v copies and two hd×hd states per chunk
  instead of the T×T probabilities.
  remat=full keeps only each block's input (d per layer) plus one layer's remat=none activations,
  live while that layer is recomputed. remat=dots_saveable keeps matmul outputs (q/k/v, the H·T
  scores, attention output, attention and FFN projections' outputs) and the block input, and
  recomputes the element-wise rest.
  Plus, once: the final norm's input and output (2·d) and the fp32 logits and their gradient (2·V).
Ignored: XLA's temporaries and buffer reuse, fragmentation, the input batch, and the optimizer
update's transient copies. It is an estimate to size a run, not a promise.

Measured against XLA:CPU (JAX 0.10.2, `compiled.memory_analysis().temp_size_in_bytes` of the
value-and-grad step; d_model 256, 4 layers, batch 8, seq 256–512, fp32): the compiler's temporaries
are 1.5–2.1× this activation estimate — it keeps the raw scores, the masked scores and the
probabilities as separate T×T buffers where the estimate keeps one, plus fusion temporaries — and
they do not shrink under remat, whose recomputation the CPU scheduler does not turn into savings.
Not measured on GPU/TPU.
"""

from __future__ import annotations

from modeling import attention_kinds
from modeling.accounting.params import param_counts
from modeling.config import ACTIVATION_DTYPES, PARAM_DTYPES, ModelConfig
from modeling.ffn_kinds import ffn_shape

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}
# precision policy -> (bytes per parameter, bytes per activation of the compute dtype)
PRECISION_BYTES = {name: (DTYPE_BYTES[PARAM_DTYPES[name]], DTYPE_BYTES[ACTIVATION_DTYPES[name]])
                   for name in PARAM_DTYPES}
FP32_BYTES = DTYPE_BYTES["fp32"]
ADAM_MOMENTS = 2


def _bytes(cfg: ModelConfig) -> tuple[int, int]:
    if cfg.precision not in PRECISION_BYTES:
        raise ValueError(f"model.precision: {cfg.precision!r} unknown; choose one of {', '.join(PRECISION_BYTES)}")
    return PRECISION_BYTES[cfg.precision]


def decode_state_bytes(cfg: ModelConfig, context_len: int) -> int:
    """Everything one sequence carries between decode steps at `context_len` tokens of context: each
    layer's share, as its attention kind's registry entry states it."""
    _, compute_bytes = _bytes(cfg)
    kind = attention_kinds.get(cfg.attention)
    return sum(kind.decode_state_bytes(cfg, layer, context_len, compute_bytes) for layer in range(cfg.n_layers))


def constant_state_bytes(cfg: ModelConfig) -> int:
    """The part of the decode state that does not grow with the context (linear attention's S and z)."""
    return decode_state_bytes(cfg, 0)


def kv_cache_bytes_per_token(cfg: ModelConfig) -> int:
    """Bytes one more cached token costs while decoding a short context (K and V, Hkv·hd each, per layer
    that caches tokens): the growth of the decode state from 0 to 1 token of context.

    Local (sliding-window) layers stop growing past `window` tokens (see `decode_state_bytes`);
    linear attention caches no tokens (0): its state is constant-size.
    """
    return decode_state_bytes(cfg, 1) - decode_state_bytes(cfg, 0)


def activation_bytes_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Activation bytes kept for the backward pass per token of a batch (see module docstring)."""
    _, act = _bytes(cfg)
    d, hd = cfg.d_model, cfg.head_size
    qkv, attn_out = (cfg.n_heads + 2 * cfg.kv_heads) * hd, cfg.n_heads * hd
    attention = attention_kinds.get(cfg.attention).activation_bytes(cfg, seq_len)
    ffns = [ffn_shape(cfg, layer) for layer in range(cfg.n_layers)]
    full = [act * (4 * d + qkv + attn_out + (3 if ffn.gated else 2) * ffn.hidden_width + ffn.routing_activations)
            + attention for ffn in ffns]
    if cfg.remat == "none":
        layers = sum(full)
    elif cfg.remat == "full":
        layers = cfg.n_layers * act * d + max(full)
    elif cfg.remat == "dots_saveable":
        dots = [qkv + attn_out + d + (2 if ffn.gated else 1) * ffn.hidden_width + ffn.routing_activations + d
                for ffn in ffns]
        layers = sum(act * (d + layer_dots) + attention for layer_dots in dots)
    else:
        raise ValueError(f"model.remat: {cfg.remat!r} unknown; choose one of none, full, dots_saveable")
    head = act * 2 * d + FP32_BYTES * 2 * cfg.vocab_size
    return layers + head


def training_memory_bytes(cfg: ModelConfig, batch_size: int, seq_len: int) -> dict[str, float]:
    """Estimated training memory on one device holding the whole model and batch, by part."""
    param_bytes, _ = _bytes(cfg)
    total_params = param_counts(cfg)["total"]
    parts = {
        "weights": total_params * param_bytes,
        "gradients": total_params * param_bytes,
        "optimizer": total_params * ADAM_MOMENTS * FP32_BYTES,
        "activations": batch_size * seq_len * activation_bytes_per_token(cfg, seq_len),
    }
    parts["total"] = sum(parts.values())
    return parts
