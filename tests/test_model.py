"""Every attention kind behaves as its definition says; precision policies give the declared dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling.attention import linear_attention_chunked, linear_attention_recurrent
from modeling.config import ModelConfig, RopeScaling, validate_model
from modeling.transformer import Transformer

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32)
KINDS = {
    "mha": dict(attention="mha"),
    "gqa": dict(attention="gqa", n_kv_heads=2),
    "mqa": dict(attention="mqa"),
    "sliding_window": dict(attention="sliding_window", window=4, layer_pattern=("local", "global")),
    "linear": dict(attention="linear", linear_chunk_size=4),
}


def build(**overrides) -> Transformer:
    return Transformer(dataclasses.replace(BASE, **overrides), nnx.Rngs(0))


def tokens(length=16, seed=0):
    return jax.random.randint(jax.random.key(seed), (2, length), 0, BASE.vocab_size)


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind):
    model = build(**KINDS[kind])
    x = tokens()
    for t in (0, 5, 14):
        perturbed = x.at[:, t + 1].set((x[:, t + 1] + 7) % BASE.vocab_size)
        before, after = model(x), model(perturbed)
        np.testing.assert_array_equal(before[:, : t + 1], after[:, : t + 1])
        assert not np.allclose(before[:, t + 1 :], after[:, t + 1 :])


@pytest.mark.parametrize("kind", KINDS)
def test_jit_matches_eager(kind):
    model = build(**KINDS[kind])
    x = tokens()
    eager = model(x)
    jitted = nnx.jit(lambda m, t: m(t))(model, x)
    np.testing.assert_allclose(eager, jitted, rtol=2e-5, atol=2e-5)


def _copy_params(source: Transformer, target: Transformer) -> Transformer:
    nnx.update(target, nnx.state(source))
    return target


def test_gqa_with_all_heads_equals_mha():
    mha = build(attention="mha")
    gqa = _copy_params(mha, build(attention="gqa", n_kv_heads=BASE.n_heads))
    np.testing.assert_array_equal(mha(tokens()), gqa(tokens()))


def test_mqa_equals_gqa_with_one_kv_head():
    mqa = build(attention="mqa")
    gqa = _copy_params(mqa, build(attention="gqa", n_kv_heads=1))
    np.testing.assert_array_equal(mqa(tokens()), gqa(tokens()))


def test_window_covering_sequence_equals_full_attention():
    full = build(attention="mha")
    windowed = _copy_params(full, build(attention="sliding_window", window=16))
    np.testing.assert_allclose(full(tokens(16)), windowed(tokens(16)), rtol=1e-6, atol=1e-6)


def test_short_window_differs_from_full_attention():
    full = build(attention="mha")
    windowed = _copy_params(full, build(attention="sliding_window", window=3))
    assert not np.allclose(full(tokens(16)), windowed(tokens(16)), atol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16, 32])
def test_linear_attention_chunked_equals_recurrent(chunk_size):
    keys = jax.random.split(jax.random.key(1), 3)
    q, k = (jax.nn.elu(jax.random.normal(key, (2, 13, 3, 8))) + 1 for key in keys[:2])
    v = jax.random.normal(keys[2], (2, 13, 3, 5))
    np.testing.assert_allclose(
        linear_attention_chunked(q, k, v, chunk_size), linear_attention_recurrent(q, k, v)[0], rtol=1e-5, atol=1e-5
    )


def test_linear_attention_matches_its_quadratic_definition():
    """out_t = Σ_{s≤t} (φq_t·φk_s) v_s / Σ_{s≤t} φq_t·φk_s, written out densely."""
    keys = jax.random.split(jax.random.key(2), 3)
    q, k = (jax.nn.relu(jax.random.normal(key, (1, 9, 2, 4))) + 0.1 for key in keys[:2])
    v = jax.random.normal(keys[2], (1, 9, 2, 4))
    weights = jnp.einsum("bthd,bshd->bhts", q, k) * jnp.tril(jnp.ones((9, 9)))
    expected = jnp.einsum("bhts,bshe->bthe", weights, v) / weights.sum(-1).transpose(0, 2, 1)[..., None]
    np.testing.assert_allclose(linear_attention_chunked(q, k, v, 4), expected, rtol=1e-5, atol=1e-6)


def test_rope_llama3_scaling_keeps_short_and_scales_long_wavelengths():
    from modeling.config import RopeScaling
    from modeling.positions import rope_frequencies

    plain = rope_frequencies(64, 500000.0, None)
    scaled = rope_frequencies(64, 500000.0, RopeScaling(factor=32, low_freq_factor=1, high_freq_factor=4,
                                                        original_max_seq_len=8192))
    wavelength = 2 * np.pi / plain
    np.testing.assert_allclose(scaled[wavelength < 8192 / 4], plain[wavelength < 8192 / 4])
    np.testing.assert_allclose(scaled[wavelength > 8192], plain[wavelength > 8192] / 32)
    middle = (wavelength >= 2048) & (wavelength <= 8192)
    assert np.all((scaled[middle] <= plain[middle]) & (scaled[middle] >= plain[middle] / 32))


@pytest.mark.parametrize(
    "precision, param_dtype, compute_dtype",
    [("fp32", jnp.float32, jnp.float32), ("bf16_mixed", jnp.float32, jnp.bfloat16),
     ("bf16", jnp.bfloat16, jnp.bfloat16), ("fp8", jnp.float32, jnp.bfloat16)],
)
def test_precision_policy_dtypes(precision, param_dtype, compute_dtype):
    model = build(precision=precision)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(param_dtype)}
    captured = {}
    ffn = model.layers[0].ffn
    original = type(ffn.down).__call__

    def spy(self, x):
        captured.setdefault("ffn_in", x.dtype)
        out = original(self, x)
        captured.setdefault("ffn_out", out.dtype)
        return out

    type(ffn.down).__call__ = spy
    try:
        logits = model(tokens())
    finally:
        type(ffn.down).__call__ = original
    assert captured["ffn_out"] == jnp.dtype(compute_dtype)
    assert logits.dtype == jnp.float32


def test_fp8_rounds_matmul_operands_to_e4m3():
    """fp8 must change numerics (operands really pass through float8), but only by fp8 rounding."""
    reference, fp8 = build(precision="bf16_mixed"), build(precision="fp8")
    a, b = reference(tokens()), fp8(tokens())
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, atol=0.15 * float(jnp.abs(a).max()))


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_keeps_gradients(remat):
    def grads(model):
        return nnx.grad(lambda m: m(tokens()).mean())(model)

    plain, rematted = build(), build(remat=remat)
    for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(rematted))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_learned_positions_and_untied_head_and_layernorm_build():
    model = build(position="learned", tie_embeddings=False, norm="layernorm", norm_bias=True, bias="all", qk_norm=True)
    state = nnx.state(model, nnx.Param)
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}
    assert any("pos_embed" in p for p in paths) and any("head" in p for p in paths)
    assert any("q_norm" in p for p in paths) and any("bias" in p for p in paths)
    assert model(tokens()).shape == (2, 16, BASE.vocab_size)


def _param_paths(model: Transformer) -> set[str]:
    state = nnx.state(model, nnx.Param)
    return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}


@pytest.mark.parametrize("bias, biased", [
    ("none", set()), ("qkv", {"query", "key", "value"}), ("all", {"query", "key", "value", "out", "gate", "up", "down"}),
])
def test_bias_kinds_put_biases_where_they_say(bias, biased):
    layers = {p.split("['bias']")[0].rsplit("['", 1)[1].rstrip("']") for p in _param_paths(build(bias=bias))
              if "['bias']" in p}
    assert layers == biased


def test_boolean_bias_means_all_or_none():
    assert ModelConfig(bias=True) == ModelConfig(bias="all") and ModelConfig(bias=False) == ModelConfig()


def test_head_dim_is_independent_of_d_model():
    model = build(head_dim=12, attention="gqa", n_kv_heads=2)  # H·hd = 48 in a 32-wide model
    proj = model.layers[0].attn.proj
    assert proj.query.kernel.shape == (32, 48) and proj.key.kernel.shape == (32, 24)
    assert proj.out.kernel.shape == (48, 32)
    assert model(tokens()).shape == (2, 16, BASE.vocab_size)


BAD_MODELS = [
    (dict(init_std=float("nan")), "model.init_std: nan must be a finite number"),
    (dict(norm_eps=float("inf")), "model.norm_eps: inf must be a finite number"),
    (dict(rope_theta=-1.0), "model.rope_theta: -1.0 must be > 0"),
    (dict(rope_scaling=RopeScaling(factor=float("nan"))), "model.rope_scaling.factor: nan must be a finite number"),
    (dict(rope_scaling=RopeScaling(low_freq_factor=4.0, high_freq_factor=1.0)), "model.rope_scaling.high_freq_factor"),
    (dict(n_layers=100_000_000), "model.n_layers: 100000000 exceeds 256 (2x the deepest published decoder"),
    (dict(d_model=1 << 20, n_heads=1), "model.d_model: 1048576 exceeds 131,072"),
    (dict(vocab_size=1 << 30), "model.vocab_size: 1073741824 exceeds 4,194,304"),
    (dict(n_heads=0), "model.n_heads: 0 must be a positive integer"),
    (dict(head_dim=0), "model.head_dim: 0 must be a positive integer"),
    (dict(head_dim=7), "model.head_dim: 7 must be even for position=rope"),
    (dict(d_model=36, n_heads=4), "model.d_model: head width d_model / n_heads = 9 must be even for position=rope"),
    (dict(n_heads=3), "model.n_heads: 3 does not divide model.d_model=32 (or set model.head_dim)"),
    (dict(bias="qvk"), "model.bias: 'qvk' is not allowed (did you mean 'qkv'?); choose one of none, qkv, all"),
    (dict(attention="mhq"), "model.attention: 'mhq' is not allowed (did you mean 'mqa'?)"),
    (dict(ffn="swiglo"), "model.ffn: 'swiglo' is not allowed (did you mean 'swiglu'?)"),
    (dict(attention="gqa"), "model.n_kv_heads: required for attention=gqa"),
    (dict(attention="mqa", n_kv_heads=2), "model.n_kv_heads: 2 must be 1 (or unset) for attention=mqa"),
    (dict(attention="sliding_window"), "model.window: required for attention=sliding_window"),
    (dict(window=4), "model.window: only used by attention=sliding_window (got attention=mha)"),
    (dict(layer_pattern=("local", "glob")), "model.layer_pattern[1]: 'glob' is not allowed (did you mean 'global'?)"),
]


@pytest.mark.parametrize("overrides, expected", BAD_MODELS, ids=[e.split(":")[0] + str(i) for i, (_, e) in
                                                                  enumerate(BAD_MODELS)])
def test_bad_model_fields_are_one_line_each_and_name_the_field(overrides, expected):
    problems = validate_model(dataclasses.replace(BASE, **overrides))
    assert any(p.startswith(expected) for p in problems), problems
    assert all(p.startswith("model.") and "\n" not in p for p in problems)


def test_decoupled_head_dim_need_not_divide_d_model():
    assert validate_model(dataclasses.replace(BASE, n_heads=3, head_dim=10)) == []
