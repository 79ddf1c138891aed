"""`model.layer_stack=scan`: the same function as the unrolled stack (logits and gradients, with every remat
policy, with differing layers scanned as their period), cached decoding through the stacked caches, exact
parameter counts, a "layers" logical axis on every stacked parameter, and one line for a depth the period
does not divide."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling import accounting
from modeling.config import ModelConfig, validate_model
from modeling.sharding import mesh_spec
from modeling.transformer import Transformer
from test_decode import TOLERANCE, decode_in_steps
from train.count import compiled_training_flops_per_token

COMPILED_TOLERANCE = 0.02  # the contract of tests/test_flops_compiled.py

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=4, n_heads=4, d_ff=64, max_seq_len=32)
SHAPES = {
    "dense": dict(),
    "local-global": dict(attention="sliding_window", window=4, layer_pattern=("local", "global"), n_kv_heads=2),
    "moe-every-2": dict(ffn="moe", moe_experts=4, moe_every=2, moe_dispatch="dropless"),
    "linear": dict(attention="linear", linear_chunk_size=4),
}


def pair(shape: str, **overrides) -> tuple[Transformer, Transformer]:
    """(unrolled, scanned) models of one shape holding the same weights: layer r·P + i of the unrolled
    stack is row r of the scanned stack's block i (P = the layer period)."""
    cfg = dataclasses.replace(BASE, **SHAPES[shape], **overrides)
    unrolled = Transformer(cfg, nnx.Rngs(0))
    scanned = Transformer(dataclasses.replace(cfg, layer_stack="scan"), nnx.Rngs(1))
    state = nnx.state(scanned, nnx.Param)
    nnx.replace_by_pure_dict(state, to_scan_layout(nnx.to_pure_dict(nnx.state(unrolled, nnx.Param)), len(scanned.layers)))
    nnx.update(scanned, state)
    return unrolled, scanned


def to_scan_layout(tree: dict, period: int) -> dict:
    """A pure dict of the unrolled model's parameters (or gradients) rearranged as the scanned model's."""
    layers = tree["layers"]
    repeats = len(layers) // period
    stacked = {i: jax.tree.map(lambda *rows: jnp.stack(rows), *[layers[r * period + i] for r in range(repeats)])
               for i in range(period)}
    return {**tree, "layers": stacked}


def loss_and_grads(model: Transformer, tokens):
    def loss(model):
        logits, aux = model.forward(tokens[:, :-1])
        nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))
        return nll + aux["aux_loss"]

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    return value, nnx.to_pure_dict(grads)


@pytest.mark.parametrize("shape, remat", [(shape, "none") for shape in SHAPES]
                         + [("local-global", "full"), ("local-global", "dots_saveable")])
def test_scan_equals_unrolled_logits_and_gradients(shape, remat):
    """Same weights, same function: the loop body is the same layer computation on the same operands, so
    only XLA's choice of fusions across layer boundaries could differ; fp32 rounding of that is far below
    the 1e-6 relative bound asserted (differences measured on XLA:CPU: 0, bitwise)."""
    unrolled, scanned = pair(shape, remat=remat)
    tokens = jax.random.randint(jax.random.key(0), (2, 17), 0, BASE.vocab_size)
    np.testing.assert_allclose(nnx.jit(lambda m: m(tokens))(scanned), nnx.jit(lambda m: m(tokens))(unrolled),
                               rtol=1e-6, atol=1e-6)
    loss_u, grads_u = loss_and_grads(unrolled, tokens)
    loss_s, grads_s = loss_and_grads(scanned, tokens)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    expected = to_scan_layout(grads_u, len(scanned.layers))
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7), grads_s, expected)
    assert scanned.repeats == 4 // len(scanned.layers) and unrolled.repeats is None


@pytest.mark.parametrize("shape", SHAPES)
def test_scanned_model_decodes_through_stacked_caches(shape):
    unrolled, scanned = pair(shape)
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, BASE.vocab_size)
    steps = [5] + [1] * 5
    np.testing.assert_allclose(decode_in_steps(scanned, tokens, steps, jit=True), unrolled(tokens), **TOLERANCE)
    cache = scanned.empty_cache(2, 10)
    assert all(leaf.shape[0] == scanned.repeats for leaf in jax.tree.leaves(cache.layers))
    assert (sum(leaf.nbytes for leaf in jax.tree.leaves(cache.layers))
            == sum(leaf.nbytes for leaf in jax.tree.leaves(unrolled.empty_cache(2, 10).layers)))


@pytest.mark.parametrize("shape", SHAPES)
def test_parameter_counts_and_logical_axes(shape):
    cfg = dataclasses.replace(BASE, **SHAPES[shape], layer_stack="scan")
    state = nnx.state(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))), nnx.Param)
    leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert sum(int(np.prod(var.shape)) for _, var in leaves) == accounting.param_counts(cfg)["total"]
    for path, var in leaves:
        names = var.get_metadata().get("out_sharding")
        if jax.tree_util.keystr(path).startswith("['layers']") and names:  # norm scales carry no names
            assert names[0] == "layers" and len(names) == var.ndim
            assert mesh_spec(names, var.shape, {"fsdp": 2, "tensor": 2})[0] is None  # not split over layers


def test_a_period_that_does_not_divide_the_depth_is_one_line():
    cfg = dataclasses.replace(BASE, n_layers=5, layer_stack="scan", **SHAPES["local-global"])
    assert cfg.layer_period() == 2
    assert validate_model(cfg) == ["model.layer_stack: scan repeats a period of 2 layers (layer_pattern, moe_every)"
                                   " that does not divide model.n_layers=5; use unrolled"]
    assert validate_model(dataclasses.replace(cfg, layer_stack="unrolled")) == []
    moe = dataclasses.replace(BASE, n_layers=8, layer_stack="scan", **{**SHAPES["moe-every-2"], "moe_every": 4})
    assert moe.layer_period() == 4 and moe.scan_repeats() == 2
    assert dataclasses.replace(BASE, layer_stack="scan").scan_repeats() == BASE.n_layers  # identical layers


def test_compiled_count_of_a_scanned_stack_counts_every_layer():
    """XLA's cost analysis counts a loop body once; `isoflop count` must still see all the layers."""
    cfg = dataclasses.replace(BASE, layer_stack="scan")
    compiled = compiled_training_flops_per_token(cfg, 32)
    assert abs(accounting.xla_training_flops_per_token(cfg, 32) - compiled) / compiled < COMPILED_TOLERANCE
