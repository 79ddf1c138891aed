"""A new attention or FFN kind is its own code and nothing else: registered here, in the test only, a toy
variant validates, trains, counts (analytically and against the compiler) and decodes through the public
entry points, and is gone again afterwards."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from modeling import accounting, attention, attention_kinds, feedforward, ffn_kinds
from modeling.attention import SoftmaxAttention
from modeling.attention_kinds import AttentionKind
from modeling.config import ModelConfig, validate_model
from modeling.feedforward import PlainFFN
from modeling.ffn_kinds import FfnKind
from modeling.transformer import Transformer
from train.config import Config, DataConfig
from train.count import count_report
from train.loop import build_training

MUP = "mup_softmax"
SILU = "silu_mlp"
COMPILED_TOLERANCE = 0.02  # the contract of tests/test_flops_compiled.py


class MupAttention(SoftmaxAttention):
    """Softmax attention with μP's 1/head_dim logit scale (Yang et al. 2022) instead of 1/sqrt(head_dim)."""

    def attend(self, q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=1.0 / q.shape[-1])

    def attend_visible(self, q, keys, values, visible):
        return super().attend_visible(q, keys, values, visible, scale=1.0 / q.shape[-1])


def _mup_xla_cost(cfg, layer, seq_len, backend):
    return attention_kinds.dense_softmax_xla_cost(cfg, layer, seq_len)  # always the XLA kernel, any backend


@pytest.fixture
def mup():
    """The toy attention kind: its accounting entry and its module, removed after the test."""
    attention_kinds.register(AttentionKind(
        MUP, forward_flops=attention_kinds.softmax_forward_flops, kaplan_context=attention_kinds.softmax_context,
        xla_cost=_mup_xla_cost, decode_state_bytes=attention_kinds.softmax_decode_state_bytes,
        activation_bytes=attention_kinds.softmax_activation_bytes))
    attention.register(MUP)(MupAttention)
    yield ModelConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256,
                      max_seq_len=128, attention=MUP)
    attention.unregister(MUP)
    attention_kinds.unregister(MUP)


@pytest.fixture
def silu():
    """The toy FFN kind: an ungated SiLU MLP."""
    ffn_kinds.register(FfnKind(SILU, shape=lambda cfg: ffn_kinds.dense_ffn(cfg, 2),
                               xla_elementwise=lambda cfg: 12.0 * cfg.d_ff))
    feedforward.register(SILU)(lambda cfg, rngs: PlainFFN(cfg, jax.nn.silu, rngs))
    yield ModelConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, d_ff=256, max_seq_len=128, ffn=SILU)
    feedforward.unregister(SILU)
    ffn_kinds.unregister(SILU)


def _eval_shape_total(cfg: ModelConfig) -> int:
    _, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))), nnx.Param)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state))


def _train_losses(cfg: ModelConfig, steps: int) -> list[float]:
    """Loss of `steps` AdamW steps on one fixed batch, through the trainer's own setup."""
    config = dataclasses.replace(Config(), model=cfg, data=dataclasses.replace(DataConfig(), seq_len=32, batch_size=2))
    setup = build_training(config, total_steps=100)
    tokens = jax.random.randint(jax.random.key(0), (2, 33), 0, cfg.vocab_size)
    batch = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, setup.data_sharding)
    params, opt_state, losses = setup.params, setup.opt_state, []
    for _ in range(steps):
        params, opt_state, metrics = setup.train_step(params, opt_state, batch)
        losses.append(float(metrics["loss"]))
    return losses


def test_registered_kinds_are_the_configs_choices(mup):
    assert validate_model(mup) == []
    assert MUP in attention_kinds.names()
    attention.unregister(MUP)
    attention_kinds.unregister(MUP)
    (problem,) = validate_model(mup)
    assert problem.startswith("model.attention: 'mup_softmax' is not allowed") and "mha" in problem


def test_a_module_needs_its_accounting_and_its_cache():
    with pytest.raises(ValueError, match="model.attention: 'unaccounted'"):
        attention.register("unaccounted")
    with pytest.raises(TypeError, match="lacks empty_cache"):
        attention.register("mha")(type("ForwardOnly", (nnx.Module,), {"__call__": lambda self, x, p: x}))
    with pytest.raises(ValueError, match="model.ffn: 'unaccounted'"):
        feedforward.register("unaccounted")


@pytest.mark.slow
def test_toy_attention_trains(mup):
    losses = _train_losses(mup, steps=5)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_toy_attention_counts(mup):
    assert accounting.param_counts(mup)["total"] == _eval_shape_total(mup)
    seq = 128
    report = count_report(Config(model=mup, data=dataclasses.replace(DataConfig(), seq_len=seq, batch_size=1)))
    flops = report["flops_per_token"]
    assert flops["chinchilla"] == accounting.training_flops_per_token(dataclasses.replace(mup, attention="gqa"),
                                                                      seq)["chinchilla"]
    xla = accounting.xla_training_flops_per_token(mup, seq)
    assert abs(xla - flops["compiled"]) / flops["compiled"] < COMPILED_TOLERANCE
    assert report["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 32 * 4  # layers × (K, V) × Hkv × hd × fp32


def test_toy_attention_decodes_as_its_forward_pass(mup):
    cfg = dataclasses.replace(mup, max_seq_len=16)
    model = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
    full = model(tokens)
    reference = Transformer(dataclasses.replace(cfg, attention="gqa", attention_impl="xla"), nnx.Rngs(0))
    assert not np.allclose(full, reference(tokens), atol=1e-4)  # the toy's scale really is its own
    step = nnx.jit(lambda model, tokens, cache: model(tokens, cache))
    cache = model.empty_cache(2, 10)
    assert sum(leaf.nbytes for leaf in jax.tree.leaves(cache.layers)) == 2 * accounting.decode_state_bytes(cfg, 10)
    logits, cache = step(model, tokens[:, :4], cache)
    np.testing.assert_allclose(logits, full[:, :4], rtol=1e-5, atol=1e-5)
    for t in range(4, 10):
        logits, cache = step(model, tokens[:, t: t + 1], cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_toy_ffn_trains(silu):
    losses = _train_losses(silu, steps=3)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_toy_ffn_validates_and_counts(silu):
    assert validate_model(silu) == []
    assert accounting.param_counts(silu)["total"] == _eval_shape_total(silu)
    report = count_report(Config(model=silu, data=dataclasses.replace(DataConfig(), seq_len=128, batch_size=1)))
    xla = accounting.xla_training_flops_per_token(silu, 128)
    assert abs(xla - report["flops_per_token"]["compiled"]) / report["flops_per_token"]["compiled"] < COMPILED_TOLERANCE

