"""Parameter counts of a ModelConfig, from shapes alone (no arrays).

Conventions (the ones the scaling-law literature uses, Kaplan et al. 2020; Porian et al. 2024):
- `embedding`     token embedding table (vocab × d) plus the learned position table (max_seq_len × d)
                  when position=learned. These are lookups, not matmuls, so they are not "N".
- `non_embedding` everything else: per-layer norms, attention and FFN weights and biases, the final
                  norm, and an *untied* output head (d × vocab): it is a matmul on every token, so it
                  costs 2·d·V FLOPs per token like any other layer (Porian et al. 2024 count it so).
                  A tied head reuses the embedding table and adds no parameters.
- `total`         embedding + non_embedding (what `nnx.eval_shape` of the model holds).
- `active`        parameters used per token: equals `total` for every dense FFN; a routed FFN (MoE)
                  registers an `FfnShape` whose `active_params` counts only the experts a token visits.

FFN kinds come from their registry (`modeling/ffn_kinds.py`): stored/active parameters, matmul FLOPs
and hidden width; everything else (FLOPs, memory) reads them from there.
"""

from __future__ import annotations

from modeling.config import ModelConfig
from modeling.ffn_kinds import ffn_shape


def norm_params(cfg: ModelConfig, features: int) -> int:
    """RMSNorm: a scale; LayerNorm: a scale plus a bias when norm_bias."""
    return features * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)


def attention_params(cfg: ModelConfig) -> int:
    """Wq d×(H·hd), Wk and Wv d×(Hkv·hd), Wo (H·hd)×d, the biases model.bias asks for, QK-norm scales (hd each).

    The same for every attention kind: linear attention has the same four projections, and RoPE has no
    parameters. QK-norm is an RMSNorm over head_dim shared across heads, whatever `norm` says.
    """
    q_width, kv_width = cfg.n_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
    weights = cfg.d_model * (q_width + 2 * kv_width) + q_width * cfg.d_model
    biases = (q_width + 2 * kv_width if cfg.has_bias("qkv") else 0) + (cfg.d_model if cfg.has_bias("out") else 0)
    qk_norm = 2 * cfg.head_size if cfg.qk_norm else 0
    return weights + biases + qk_norm


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per component, summed over layers (keys say which side of the embedding line they sit)."""
    layer_norms = 2 * norm_params(cfg, cfg.d_model)
    return {
        "embed": cfg.vocab_size * cfg.d_model,
        "pos_embed": cfg.max_seq_len * cfg.d_model if cfg.position == "learned" else 0,
        "attention": cfg.n_layers * attention_params(cfg),
        "ffn": sum(ffn_shape(cfg, layer).params for layer in range(cfg.n_layers)),
        "norms": cfg.n_layers * layer_norms + norm_params(cfg, cfg.d_model),
        "head": 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size,
    }


EMBEDDING_COMPONENTS = ("embed", "pos_embed")


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """{'total', 'embedding', 'non_embedding', 'active'} under the conventions of the module docstring."""
    parts = param_breakdown(cfg)
    embedding = sum(parts[name] for name in EMBEDDING_COMPONENTS)
    non_embedding = sum(value for name, value in parts.items() if name not in EMBEDDING_COMPONENTS)
    unused_per_token = sum(ffn_shape(cfg, layer).params - ffn_shape(cfg, layer).active_params
                           for layer in range(cfg.n_layers))
    total = embedding + non_embedding
    return {"total": total, "embedding": embedding, "non_embedding": non_embedding, "active": total - unused_per_token}
