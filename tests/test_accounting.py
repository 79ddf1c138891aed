"""Analytic accounting: published sizes, hand-derived FLOPs per convention, KV cache and memory bytes."""

import dataclasses
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from modeling import accounting
from modeling.config import ModelConfig
from modeling.precision import POLICIES
from modeling.transformer import Transformer
from train.config import load

MODELS = pathlib.Path(__file__).resolve().parent.parent / "configs" / "models"
# Totals from the published configs' fields (each YAML cites its config.json), computed by hand in
# test_published_totals_by_hand for the two that use model.bias=qkv and a decoupled model.head_dim.
PUBLISHED = {"gpt2-124m": 124_439_808, "llama-3.2-1b": 1_235_814_400, "llama-2-7b": 6_738_415_616,
             "qwen2-0.5b": 494_032_768, "gemma-7b": 8_537_680_896}
SMALL = ModelConfig(vocab_size=96, d_model=32, n_layers=3, n_heads=4, d_ff=80, max_seq_len=24)
VARIANTS = {
    "mha": {},
    "gqa": dict(attention="gqa", n_kv_heads=2),
    "mqa": dict(attention="mqa", qk_norm=True),
    "sliding_window": dict(attention="sliding_window", window=5, layer_pattern=("local", "global")),
    "linear": dict(attention="linear", linear_chunk_size=8),
    "gpt_like": dict(ffn="gelu", norm="layernorm", norm_bias=True, bias="all", position="learned"),
    "untied_relu2": dict(ffn="relu2", tie_embeddings=False, position="none"),
    "geglu_bias_qk": dict(ffn="geglu", bias="all", qk_norm=True, norm="layernorm"),
    "gqa_qkv_bias_wide_heads": dict(attention="gqa", n_kv_heads=2, bias="qkv", head_dim=12, qk_norm=True),
}


def eval_shape_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of the real module tree, without allocating them; embedding = paths containing 'embed'."""
    _, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))), nnx.Param)
    counts = {"total": 0, "embedding": 0}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        size = int(np.prod(leaf.shape))
        counts["total"] += size
        if "embed" in jax.tree_util.keystr(path):
            counts["embedding"] += size
    return counts


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_presets_load_with_exact_counts(name):
    cfg = load(MODELS / f"{name}.yaml").model
    counts = accounting.param_counts(cfg)
    assert counts["total"] == PUBLISHED[name]
    assert counts["active"] == counts["total"]
    assert counts["embedding"] + counts["non_embedding"] == counts["total"]
    shaped = eval_shape_counts(cfg)
    assert shaped["total"] == PUBLISHED[name]
    assert shaped["embedding"] == counts["embedding"]


def test_published_totals_by_hand():
    """From the config.json fields each YAML cites: embeddings + layers × (attention + MLP + 2 norms) + final norm."""
    vocab, d, layers, heads, kv, hd, ff = 151936, 896, 24, 14, 2, 64, 4864  # Qwen2-0.5B
    attention = d * heads * hd + 2 * d * kv * hd + heads * hd * d + (heads * hd + 2 * kv * hd)  # q/k/v biases only
    assert vocab * d + layers * (attention + 3 * d * ff + 2 * d) + d == PUBLISHED["qwen2-0.5b"]
    vocab, d, layers, heads, hd, ff = 256000, 3072, 28, 16, 256, 24576  # Gemma-7B: 16 × 256 = 4096 ≠ 3072
    attention = 4 * d * heads * hd
    assert vocab * d + layers * (attention + 3 * d * ff + 2 * d) + d == PUBLISHED["gemma-7b"]


def test_decoupled_head_dim_sets_attention_width_everywhere():
    gemma = load(MODELS / "gemma-7b.yaml").model
    assert gemma.head_size == 256 and gemma.d_model // gemma.n_heads == 192
    forward = accounting.forward_flops_per_token(gemma, 8192)
    n = accounting.flops_params(gemma)
    assert forward["6N_attn"] - 2 * n == 2 * 28 * 8192 * (16 * 256)  # Kaplan's d_attn = H·hd, not d_model
    assert accounting.kv_cache_bytes_per_token(dataclasses.replace(gemma, precision="bf16")) == 2 * 28 * 16 * 256 * 2
    ops = accounting.layer_forward_flops(gemma, 0, 8192)
    assert ops["attention.qkv"] == 2 * 3072 * 3 * 4096 and ops["attention.out"] == 2 * 4096 * 3072


def test_qkv_bias_counts_only_qkv_biases():
    plain = dataclasses.replace(SMALL, attention="gqa", n_kv_heads=2)
    qkv, every = dataclasses.replace(plain, bias="qkv"), dataclasses.replace(plain, bias="all")
    per_layer_qkv = 4 * 8 + 2 * 2 * 8
    total = accounting.param_counts
    assert total(qkv)["total"] - total(plain)["total"] == 3 * per_layer_qkv
    assert total(every)["total"] - total(qkv)["total"] == 3 * (32 + 2 * 80 + 32)  # out, gate/up, down


def test_names_come_from_the_shared_vocabulary():
    from common.vocabulary import BUDGET_FLOP_CONVENTIONS, PARAM_KINDS, PRECISIONS

    assert accounting.CONVENTIONS == BUDGET_FLOP_CONVENTIONS
    assert set(PARAM_KINDS) <= set(accounting.param_counts(SMALL))
    assert set(accounting.PRECISION_BYTES) == set(POLICIES) == set(PRECISIONS)


def test_gpt2_split_matches_kaplan_convention():
    counts = accounting.param_counts(load(MODELS / "gpt2-124m.yaml").model)
    assert counts["embedding"] == 50257 * 768 + 1024 * 768  # token table + learned positions
    assert counts["non_embedding"] == 85_056_000


def test_untied_head_counts_as_non_embedding():
    counts = accounting.param_counts(load(MODELS / "llama-2-7b.yaml").model)
    assert counts["embedding"] == 32000 * 4096
    assert counts["non_embedding"] == PUBLISHED["llama-2-7b"] - 32000 * 4096


@pytest.mark.parametrize("variant", VARIANTS)
def test_analytic_params_match_the_module_tree(variant):
    cfg = dataclasses.replace(SMALL, **VARIANTS[variant])
    counts = accounting.param_counts(cfg)
    shaped = eval_shape_counts(cfg)
    assert counts["total"] == shaped["total"]
    assert counts["embedding"] == shaped["embedding"]


def test_params_by_hand_for_a_config_with_every_option():
    cfg = dataclasses.replace(SMALL, attention="gqa", n_kv_heads=2, bias="all", qk_norm=True, norm="layernorm",
                              norm_bias=True, position="learned", tie_embeddings=False, ffn="swiglu")
    d, hd, ff, vocab = 32, 8, 80, 96
    attention = d * (4 * hd) + 2 * d * (2 * hd) + (4 * hd) * d + (4 * hd + 2 * 2 * hd + d) + 2 * hd
    ffn = 3 * d * ff + 2 * ff + d
    layer = attention + ffn + 2 * (2 * d)
    expected_non_embedding = 3 * layer + 2 * d + d * vocab
    counts = accounting.param_counts(cfg)
    assert counts["embedding"] == vocab * d + 24 * d
    assert counts["non_embedding"] == expected_non_embedding


def appendix_f_training_flops(seq_len, vocab, d_model, ffw, heads, key_size, layers):
    """Hoffmann et al. 2022 Appendix F, transcribed per sequence, ×3 for training, per token."""
    embeddings = 2 * seq_len * vocab * d_model
    attention = (
        2 * 3 * seq_len * d_model * (key_size * heads)
        + 2 * seq_len * seq_len * (key_size * heads)
        + 3 * heads * seq_len * seq_len
        + 2 * seq_len * seq_len * (key_size * heads)
        + 2 * seq_len * (key_size * heads) * d_model
    )
    dense = 2 * seq_len * (d_model * ffw + d_model * ffw)
    logits = 2 * seq_len * d_model * vocab
    return 3 * (embeddings + layers * (attention + dense) + logits) / seq_len


def test_conventions_on_gpt2():
    cfg = load(MODELS / "gpt2-124m.yaml").model
    flops = accounting.training_flops_per_token(cfg, 1024)
    n = 85_056_000
    assert flops["6N"] == 6 * n
    assert flops["6N_attn"] == 6 * n + 6 * 12 * 1024 * 768  # Kaplan Table 1: 2·n_layer·n_ctx·d_attn, ×3
    appendix_f = appendix_f_training_flops(1024, 50257, 768, 3072, 12, 64, 12)
    assert flops["chinchilla"] == pytest.approx(appendix_f, rel=1e-12)
    forward = accounting.forward_flops_per_token(cfg, 1024)
    assert all(flops[name] == 3 * forward[name] for name in accounting.CONVENTIONS)
    assert forward["6N_attn"] == 2 * n + 2 * 12 * 1024 * 768


def test_chinchilla_adaptations_gqa_and_gated_ffn():
    mha = dataclasses.replace(SMALL, ffn="swiglu")
    gqa = dataclasses.replace(mha, attention="gqa", n_kv_heads=1)
    seq, layers, d, hd, heads = 16, 3, 32, 8, 4
    # K and V projections shrink from H·hd to Hkv·hd outputs: 2 matrices × 2·d·(H−Hkv)·hd, ×3 for training
    saved = 3 * layers * 2 * 2 * d * (heads - 1) * hd
    assert accounting.training_flops_per_token(mha, seq)["chinchilla"] - accounting.training_flops_per_token(
        gqa, seq)["chinchilla"] == saved
    gelu = dataclasses.replace(mha, ffn="gelu")
    extra_matrix = 3 * layers * 2 * d * 80
    assert accounting.training_flops_per_token(mha, seq)["chinchilla"] - accounting.training_flops_per_token(
        gelu, seq)["chinchilla"] == extra_matrix


def test_sliding_window_charges_the_window_and_equals_mha_when_it_covers_the_sequence():
    seq = 16
    local = dataclasses.replace(SMALL, attention="sliding_window", window=5)  # all layers local
    wide = dataclasses.replace(SMALL, attention="sliding_window", window=seq)
    mha_flops = accounting.training_flops_per_token(SMALL, seq)
    assert accounting.training_flops_per_token(wide, seq) == mha_flops
    local_flops = accounting.training_flops_per_token(local, seq)
    layers, d_attn, heads = 3, 32, 4
    assert mha_flops["6N_attn"] - local_flops["6N_attn"] == 6 * layers * (seq - 5) * d_attn
    per_key = 3 * (2 * d_attn + 3 * heads + 2 * d_attn)  # logits, softmax, values per key, ×3
    assert mha_flops["chinchilla"] - local_flops["chinchilla"] == layers * (seq - 5) * per_key
    mixed = dataclasses.replace(local, layer_pattern=("local", "global"))  # layers 0, 2 local; 1 global
    assert [accounting.attention_context(mixed, layer, seq) for layer in range(3)] == [5, 16, 5]


def test_linear_attention_flops_by_hand():
    cfg = dataclasses.replace(SMALL, attention="linear", linear_chunk_size=8)
    seq, heads, hd = 32, 4, 8
    ops = accounting.layer_forward_flops(cfg, 0, seq)
    assert ops["attention.logits"] == ops["attention.values"] == 2 * 8 * heads * hd
    assert ops["attention.state"] == 4 * hd * heads * hd
    assert ops["attention.normaliser"] == heads * (8 + 4 * hd)
    assert "attention.softmax" not in ops
    flops = accounting.training_flops_per_token(cfg, seq)
    assert flops["6N_attn"] - flops["6N"] == 6 * 3 * hd * (heads * hd)  # n_ctx → head_dim
    # linear attention's cost per token does not grow with the sequence (beyond one chunk)
    assert accounting.training_flops_per_token(cfg, 64) == flops


def test_causal_attention_is_not_halved_and_says_so():
    report = accounting.report(SMALL, seq_len=16, batch_size=2)
    assert report["causal_attention_halved"] is False
    assert set(report["flops_per_token"]) == set(accounting.CONVENTIONS)
    # full context: doubling the sequence adds exactly the full extra keys, not half of them
    short, long = (accounting.training_flops_per_token(SMALL, t)["6N_attn"] for t in (8, 16))
    assert long - short == 6 * 3 * 8 * 32


def test_xla_matmuls_are_chinchilla_without_embedding_and_softmax():
    for cfg in (SMALL, dataclasses.replace(SMALL, attention="gqa", n_kv_heads=2, ffn="gelu", tie_embeddings=False)):
        forward = accounting.forward_breakdown(cfg, 16)
        xla = accounting.xla_training_breakdown(cfg, 16)
        matmuls = sum(v for k, v in xla.items() if k.startswith("matmul.")) + xla["attention.scores"]
        assert matmuls == 3 * (sum(forward.values()) - forward["embeddings"] - forward["attention.softmax"])


def test_precision_bytes_match_the_policies():
    for name, policy in POLICIES.items():
        param_bytes, compute_bytes = accounting.PRECISION_BYTES[name]
        assert param_bytes == np.dtype(policy.param_dtype).itemsize
        assert compute_bytes == np.dtype(policy.compute_dtype).itemsize


def test_kv_cache_published_sizes():
    llama3 = dataclasses.replace(load(MODELS / "llama-3.2-1b.yaml").model, precision="bf16")
    assert accounting.kv_cache_bytes_per_token(llama3) == 2 * 16 * 8 * 64 * 2  # 32 KiB per token
    llama2 = dataclasses.replace(load(MODELS / "llama-2-7b.yaml").model, precision="bf16_mixed")
    assert accounting.kv_cache_bytes_per_token(llama2) == 2 * 32 * 32 * 128 * 2  # 0.5 MiB per token
    assert accounting.decode_state_bytes(llama2, 4096) == 4096 * 2 * 32 * 32 * 128 * 2


def test_kv_cache_of_windows_and_linear_attention():
    per_layer_token = 2 * 4 * 8 * 4  # K and V, Hkv·hd each, fp32
    window = dataclasses.replace(SMALL, attention="sliding_window", window=5, layer_pattern=("local", "global"))
    assert accounting.decode_state_bytes(window, 4) == 3 * 4 * per_layer_token
    assert accounting.decode_state_bytes(window, 100) == (2 * 5 + 1 * 100) * per_layer_token
    linear = dataclasses.replace(SMALL, attention="linear")
    assert accounting.kv_cache_bytes_per_token(linear) == 0
    state = 3 * 4 * (8 * 8 + 8) * 4  # S (hd×hd) and z (hd) per head and layer, fp32
    assert accounting.constant_state_bytes(linear) == state
    assert accounting.decode_state_bytes(linear, 10) == accounting.decode_state_bytes(linear, 10_000) == state


def test_training_memory_parts():
    cfg = dataclasses.replace(SMALL, precision="bf16")
    n = accounting.param_counts(cfg)["total"]
    memory = accounting.training_memory_bytes(cfg, batch_size=2, seq_len=16)
    assert memory["weights"] == memory["gradients"] == 2 * n  # bf16 parameters
    assert memory["optimizer"] == 8 * n  # two fp32 moments
    assert memory["activations"] == 2 * 16 * accounting.activation_bytes_per_token(cfg, 16)
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")


def test_activations_reduce_to_korthikanti_without_dropout():
    """GPT shape (d_ff = 4d, gelu, 16-bit): 32·d + 4·H·T bytes per token and layer (Korthikanti: 34·d + 5·H·T
    with the two dropout masks and the dropout output, and fp16 probabilities)."""
    d, heads, seq, layers, vocab = 64, 4, 32, 3, 96
    cfg = ModelConfig(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, d_ff=4 * d, ffn="gelu",
                      max_seq_len=seq, precision="bf16_mixed")
    per_token = accounting.activation_bytes_per_token(cfg, seq)
    assert per_token == layers * (32 * d + 4 * heads * seq) + 2 * 2 * d + 4 * 2 * vocab
    by_policy = {remat: accounting.activation_bytes_per_token(dataclasses.replace(cfg, remat=remat), seq)
                 for remat in ("none", "dots_saveable", "full")}
    assert by_policy["none"] > by_policy["dots_saveable"] > by_policy["full"]
    assert by_policy["full"] == layers * 2 * d + (32 * d + 4 * heads * seq) + 2 * 2 * d + 4 * 2 * vocab
