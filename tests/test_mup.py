"""μP (modeling/mup.py, docs/MUP.md): every parameter's role is the one its shape's scaling gives; μP at its
base width is SP bit for bit; away from it the init, the forward multipliers and the Adam steps are SP's
times exactly the table's factors; and the coordinate check of Yang et al. 2022 (activations flat across
widths under μP, growing under SP)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling import mup
from modeling.config import ModelConfig, validate_model
from modeling.transformer import Transformer
from train.config import OptimizerConfig
from train.optimizer import build_optimizer, path_name
from train.step import make_train_step

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16)
KINDS = {
    "llama": {},
    "gpt2": dict(ffn="gelu", norm="layernorm", norm_bias=True, bias="all", position="learned", tie_embeddings=False),
    "qwen": dict(attention="gqa", n_kv_heads=1, bias="qkv", qk_norm=True, ffn="geglu"),
    "mqa": dict(attention="mqa", ffn="relu2"),
    "moe": dict(ffn="moe", moe_experts=4, moe_top_k=2, moe_shared_experts=1, moe_expert_ffn="gelu", bias="all",
                norm="layernorm", norm_bias=True, position="learned", tie_embeddings=False),
    "linear": dict(attention="linear"),
    "window": dict(attention="sliding_window", window=4, layer_pattern=("local", "global")),
    "scan": dict(layer_stack="scan", tie_embeddings=False),
}


def params_of(cfg: ModelConfig, abstract: bool = False) -> dict[str, jax.Array]:
    build = lambda: nnx.state(Transformer(cfg, nnx.Rngs(0)), nnx.Param)  # noqa: E731
    state = nnx.eval_shape(build) if abstract else build()
    return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def as_mup(cfg: ModelConfig, multiplier: float = 1, **fields) -> ModelConfig:
    return dataclasses.replace(cfg, parameterization="mup", mup_base_width=int(cfg.d_model / multiplier), **fields)


def widened(cfg: ModelConfig) -> ModelConfig:
    """The same family twice as wide: d_model, d_ff and the head width doubled, the head counts kept."""
    return dataclasses.replace(cfg, d_model=2 * cfg.d_model, d_ff=2 * cfg.d_ff, head_dim=2 * cfg.head_size)


@pytest.mark.parametrize("kind", KINDS)
def test_every_role_is_the_one_the_shapes_scaling_gives(kind):
    """microsoft/mup's rule (mup/shape.py infshape): a parameter with two dimensions that grow with width is
    hidden; one growing fan-in (a kernel's second-to-last axis) into a fixed width is output; the rest
    (vectors, tables from a fixed vocabulary into the width) are input."""
    narrow = dataclasses.replace(BASE, **KINDS[kind])
    small, large = params_of(narrow, abstract=True), params_of(widened(narrow), abstract=True)
    assert small.keys() == large.keys()
    for path, leaf in small.items():
        grows = [axis for axis in range(leaf.ndim) if leaf.shape[axis] != large[path].shape[axis]]
        expected = (mup.HIDDEN if len(grows) == 2 else mup.OUTPUT if grows == [leaf.ndim - 2] else mup.INPUT)
        assert mup.role(path) == expected, (path, leaf.shape, large[path].shape)
    assert mup.OUTPUT in {mup.role(path) for path in small} or narrow.tie_embeddings


def test_an_unknown_parameter_has_no_role():
    with pytest.raises(ValueError, match="'layers/0/attn/gain' has no μP role"):
        mup.role("layers/0/attn/gain")


def test_the_config_names_what_mup_needs():
    assert validate_model(as_mup(BASE)) == []
    assert validate_model(dataclasses.replace(BASE, parameterization="mup")) == [
        "model.mup_base_width: required for parameterization=mup (the d_model at which μP equals SP)"]
    assert validate_model(dataclasses.replace(BASE, mup_base_width=32, mup_base_head_dim=8)) == [
        "model.mup_base_width: only used with parameterization=mup (got sp)",
        "model.mup_base_head_dim: only used with parameterization=mup (got sp)"]
    assert validate_model(as_mup(BASE, mup_base_head_dim=0)) == [
        "model.mup_base_head_dim: 0 must be a positive integer"]
    assert validate_model(dataclasses.replace(BASE, parameterization="mu")) == [
        "model.parameterization: 'mu' is not allowed (did you mean 'mup'?); choose one of sp, mup"]


def train(cfg: ModelConfig, steps: int, opt: OptimizerConfig, tokens: np.ndarray):
    """`steps` updates of the real train step on one batch: (params after them, the optimizer)."""
    optimizer = build_optimizer(opt, 100, model=cfg)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    opt_state = optimizer.init(params)
    step = make_train_step(graphdef, optimizer, z_loss=0.0, grad_accum_steps=1)
    batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, batch)
    return params


DECAYING = OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.0, schedule="constant", weight_decay=0.1)


def tokens_for(cfg: ModelConfig, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, cfg.max_seq_len + 1))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "moe"])  # tied; untied + router + every bias, norm and table
def test_mup_at_its_base_width_is_sp_bit_for_bit(kind):
    sp = dataclasses.replace(BASE, **KINDS[kind])
    at_base = as_mup(sp, mup_base_head_dim=sp.head_size)
    tokens = tokens_for(sp)
    for name, leaf in params_of(sp).items():
        np.testing.assert_array_equal(leaf, params_of(at_base)[name], err_msg=name)
    logits = [Transformer(cfg, nnx.Rngs(0))(jnp.asarray(tokens[:, :-1])) for cfg in (sp, at_base)]
    np.testing.assert_array_equal(*logits)
    trained = [jax.tree.leaves(train(cfg, 3, DECAYING, tokens)) for cfg in (sp, at_base)]
    for a, b in zip(*trained):
        np.testing.assert_array_equal(a, b)


# m = 4: every multiplier is a power of two, so μP's numbers are SP's scaled exactly, bit for bit.
UNTIED = dataclasses.replace(BASE, tie_embeddings=False)


def test_hidden_kernels_start_at_half_the_std_at_four_times_the_width():
    sp, wide = params_of(UNTIED), params_of(as_mup(UNTIED, 4))
    for path, leaf in sp.items():
        factor = 0.5 if mup.role(path) == mup.HIDDEN else 1.0  # 1/sqrt(m)
        np.testing.assert_array_equal(wide[path], leaf * factor, err_msg=path)


def at(tree, path: tuple):
    """The node of a captured nnx.State at `path` (module path, then the method's name)."""
    for key in path:
        tree = tree[key]
    return jax.tree.leaves(tree)[0]  # a method's first output of its first call


def merged(cfg: ModelConfig, params) -> Transformer:
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
    return nnx.merge(graphdef, params)


def captured(model: Transformer, tokens: jax.Array):
    return nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(tokens)


@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_output_layers_multiply_by_one_over_m(kind):
    """With SP's weights, μP at m = 4 divides the logits (dense) and the first router's logits (MoE) by 4;
    nothing else changes (the attention keeps its scale: the head width does not grow)."""
    cfg = dataclasses.replace(UNTIED, **KINDS[kind])
    tokens = jnp.asarray(tokens_for(cfg)[:, :-1])
    sp_model = Transformer(cfg, nnx.Rngs(0))
    (sp_logits, sp_seen), (mup_logits, mup_seen) = (
        captured(model, tokens) for model in (sp_model, merged(as_mup(cfg, 4), nnx.state(sp_model))))
    if kind == "llama":
        np.testing.assert_array_equal(mup_logits, sp_logits / 4)
    else:  # the smaller router logits route differently from there on
        router = ("layers", 0, "ffn", "router", "__call__")
        np.testing.assert_array_equal(at(mup_seen, router), at(sp_seen, router) / 4)


@pytest.mark.parametrize("attention", [dict(attention="mha"), dict(attention="sliding_window", window=4)])
def test_attention_logits_scale_as_one_over_the_head_width(attention):
    """mup_base_head_dim = 4 × head width: q·k·√(4 hd)/hd = (2q)·k/√hd, SP with the query kernel doubled."""
    sp = dataclasses.replace(BASE, **attention)
    params = nnx.state(Transformer(sp, nnx.Rngs(0)))
    tokens = jnp.asarray(tokens_for(sp)[:, :-1])
    logits = merged(as_mup(sp, mup_base_head_dim=4 * sp.head_size), params)(tokens)
    for layer in range(sp.n_layers):
        query = params["layers"][layer]["attn"]["proj"]["query"]["kernel"]
        query.set_value(query.get_value() * 2)
    np.testing.assert_array_equal(logits, merged(sp, params)(tokens))


def one_update(cfg: ModelConfig, opt: OptimizerConfig, zero_grads: bool) -> dict[str, np.ndarray]:
    params = nnx.state(Transformer(UNTIED, nnx.Rngs(0)), nnx.Param)
    grads = jax.tree.map(lambda p: jnp.zeros_like(p) if zero_grads else jnp.cos(p * 100), params)
    optimizer = build_optimizer(opt, 10, model=cfg)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return {path_name(path): np.asarray(u) for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]}


def test_adam_steps_scale_by_role_and_weight_decay_does_not():
    adam = dataclasses.replace(DECAYING, weight_decay=0.0)
    sp, wide = one_update(UNTIED, adam, False), one_update(as_mup(UNTIED, 4), adam, False)
    for path, update in sp.items():
        assert np.abs(update).max() > 0, path
        np.testing.assert_array_equal(wide[path], update * (0.25 if mup.role(path) == mup.HIDDEN else 1.0),
                                      err_msg=path)
    decay_sp, decay_wide = one_update(UNTIED, DECAYING, True), one_update(as_mup(UNTIED, 4), DECAYING, True)
    assert any(np.abs(update).max() > 0 for update in decay_sp.values())
    for path, update in decay_sp.items():  # lr × weight_decay × p at every width (microsoft/mup's MuAdamW)
        np.testing.assert_array_equal(decay_wide[path], update, err_msg=path)


# ----------------------------------------------------------------------------- the coordinate check

WIDTHS = (64, 128, 256, 512)  # 8x; base width 64, 4 heads whose width grows 16 -> 128
COORD_STEPS = 5
COORD_OPT = OptimizerConfig(learning_rate=3e-3, warmup_fraction=0.0, schedule="constant", weight_decay=0.0,
                            grad_clip=0.0)
PROBES = {"embedding": ("embed",), "logits": ()}
for _layer in range(2):
    PROBES |= {f"attention {_layer}": ("layers", _layer, "attn"), f"ffn {_layer}": ("layers", _layer, "ffn"),
               f"block {_layer}": ("layers", _layer)}


def coordinates(parameterization: str, width: int) -> dict[str, float]:
    """mean |x| of each probed activation after COORD_STEPS Adam steps on one batch (microsoft/mup's `l1`),
    and `Δ logits`, the mean |change| of the logits since init: what μP keeps Θ(1) in width."""
    cfg = ModelConfig(vocab_size=256, d_model=width, n_layers=2, n_heads=4, d_ff=4 * width, max_seq_len=16,
                      parameterization=parameterization,
                      **(dict(mup_base_width=64, mup_base_head_dim=16) if parameterization == "mup" else {}))
    optimizer = build_optimizer(COORD_OPT, 100, model=cfg)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    opt_state = optimizer.init(params)
    step = make_train_step(graphdef, optimizer, z_loss=0.0, grad_accum_steps=1)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, cfg.max_seq_len + 1))
    batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}

    @jax.jit
    def probe(params):
        logits, seen = captured(nnx.merge(graphdef, params), batch["inputs"])
        first = {name: at(seen, (*path, "__call__")) for name, path in PROBES.items() if path}
        return logits, {name: jnp.mean(jnp.abs(x)) for name, x in {**first, "logits": logits}.items()}

    initial, _ = probe(params)
    for _ in range(COORD_STEPS):
        params, opt_state, _ = step(params, opt_state, batch)
    logits, sizes = probe(params)
    change = float(jnp.mean(jnp.abs(logits - initial)))
    return {**{name: float(size) for name, size in sizes.items()}, "Δ logits": change}


@pytest.mark.slow
def test_coordinate_check_activations_stay_flat_under_mup_and_grow_under_sp():
    """Ratio of each coordinate size at 8x the width to the base width's. Measured (docs/MUP.md): μP
    0.85-1.01 (logits and Δ logits 0.93), SP 3.8 (logits) to 65 (FFN), and μP without the hidden 1/m Adam
    LR 18-49 for the hidden activations. Bounds: μP within 2x either way of flat at every width; SP above
    2.5 for the logits and above 8 (the width ratio) for every hidden activation."""
    mup_sizes = {width: coordinates("mup", width) for width in WIDTHS}
    sp_sizes = {width: coordinates("sp", width) for width in (WIDTHS[0], WIDTHS[-1])}
    for name in mup_sizes[WIDTHS[0]]:
        ratios = [mup_sizes[width][name] / mup_sizes[WIDTHS[0]][name] for width in WIDTHS[1:]]
        assert all(0.5 < ratio < 2 for ratio in ratios), (name, ratios)
        sp_ratio = sp_sizes[WIDTHS[-1]][name] / sp_sizes[WIDTHS[0]][name]
        if name == "embedding":  # an input layer: width-independent in both
            assert 0.5 < sp_ratio < 2, sp_ratio
        elif "logits" in name:
            assert sp_ratio > 2.5, (name, sp_ratio)
        else:
            assert sp_ratio > 8, (name, sp_ratio)
