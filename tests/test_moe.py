"""Mixture of experts (model.ffn=moe): validation, the module against dense references, both dispatch paths,
the auxiliary losses, and the exact accounting of total vs active parameters and FLOPs."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling import accounting, ffn_kinds
from modeling.config import ModelConfig, validate_model
from modeling.feedforward import GatedFFN, PlainFFN, build_kind
from modeling.moe import MoE, route, router_log_scalars, router_stats
from modeling.transformer import Transformer

# fp32 sums of the same products in a different order (sorted rows, padded slots, fused matmuls)
FP32_TOL = dict(rtol=1e-5, atol=1e-6)
SMALL = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32)


def _moe(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, "ffn": "moe", "moe_experts": 4, "moe_top_k": 2, **overrides})


def _x(cfg: ModelConfig, batch=2, seq=16, seed=0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, seq, cfg.d_model), jnp.float32)


def _eval_shape_total(cfg: ModelConfig) -> int:
    _, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))), nnx.Param)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("overrides, expected", [
    (dict(moe_experts=0), "model.moe_experts: 0 must be an integer >= 1"),
    (dict(moe_top_k=5), "model.moe_top_k: 5 must be at most model.moe_experts=4"),
    (dict(moe_capacity_factor=0.0), "model.moe_capacity_factor: 0.0 must be > 0"),
    (dict(moe_every=0), "model.moe_every: 0 must be an integer >= 1"),
    (dict(moe_every=3), "model.moe_every: 3 exceeds model.n_layers=2; no layer would be routed"),
    (dict(moe_expert_ffn="moe"), "model.moe_expert_ffn: 'moe' is not allowed; choose one of swiglu"),
    (dict(moe_score="relu"), "model.moe_score: 'relu' is not allowed"),
    (dict(moe_dispatch="fast"), "model.moe_dispatch: 'fast' is not allowed"),
    (dict(moe_shared_experts=-1), "model.moe_shared_experts: -1 must be an integer >= 0"),
    (dict(moe_load_balance_weight=float("nan")), "model.moe_load_balance_weight: nan must be a finite number"),
])
def test_bad_moe_fields_are_one_line_each(overrides, expected):
    (problem,) = validate_model(_moe(**overrides))
    assert problem.startswith(expected), problem


def test_dense_configs_ignore_the_moe_fields():
    assert validate_model(ModelConfig(**SMALL, moe_top_k=99)) == []


# ----------------------------------------------------------------------------- the module


def _copy_dense_into_expert(moe: MoE, dense: nnx.Module, expert: int = 0) -> None:
    for name in ("gate", "up", "down"):
        if hasattr(dense, name):
            stacked = getattr(moe.experts, name)
            stacked.kernel[...] = stacked.kernel[...].at[expert].set(getattr(dense, name).kernel[...])
            if stacked.bias is not None:
                stacked.bias[...] = stacked.bias[...].at[expert].set(getattr(dense, name).bias[...])


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
@pytest.mark.parametrize("expert_ffn, bias", [("swiglu", "none"), ("gelu", "all")])
def test_one_expert_top1_equals_the_dense_ffn(dispatch, expert_ffn, bias):
    cfg = _moe(moe_experts=1, moe_top_k=1, moe_dispatch=dispatch, moe_expert_ffn=expert_ffn, bias=bias,
               moe_capacity_factor=1.0, moe_load_balance_weight=0.0, moe_z_loss_weight=0.0)
    moe, dense = MoE(cfg, nnx.Rngs(0)), build_kind(expert_ffn, cfg, nnx.Rngs(1))
    _copy_dense_into_expert(moe, dense)
    x = _x(cfg)
    y, stats = moe.forward_with_stats(x)
    np.testing.assert_allclose(y, dense(x), **FP32_TOL)
    assert float(stats["dropped_fraction"]) == 0.0


@pytest.mark.parametrize("score, renormalize", [("softmax", False), ("softmax", True), ("sigmoid", True)])
def test_capacity_that_drops_nothing_equals_dropless(score, renormalize):
    base = _moe(moe_score=score, moe_renormalize=renormalize, moe_shared_experts=1, bias="all")
    big = dataclasses.replace(base, moe_dispatch="capacity", moe_capacity_factor=float(base.moe_experts))
    dropless = MoE(dataclasses.replace(base, moe_dispatch="dropless"), nnx.Rngs(0))
    capacity = MoE(big, nnx.Rngs(0))  # same seed: same weights
    x = _x(base)
    (y_cap, s_cap), (y_drop, s_drop) = capacity.forward_with_stats(x), dropless.forward_with_stats(x)
    assert float(s_cap["dropped_fraction"]) == 0.0
    np.testing.assert_allclose(y_cap, y_drop, **FP32_TOL)


def test_small_capacity_drops_and_says_how_much():
    cfg = _moe(moe_dispatch="capacity", moe_capacity_factor=0.25)  # C = ceil(0.25·2·16/4) = 2 of 8 needed
    moe = MoE(cfg, nnx.Rngs(0))
    y, stats = moe.forward_with_stats(_x(cfg))
    capacity = ffn_kinds.moe_capacity(cfg, 16)
    assert capacity == 2
    assert float(stats["dropped_fraction"]) >= 1 - cfg.moe_experts * capacity / (16 * cfg.moe_top_k)
    assert np.all(np.isfinite(y))


def test_capacity_dropping_is_causal():
    """Whether a token is dropped depends on earlier tokens only: a prefix gives the prefix's outputs."""
    cfg = _moe(moe_dispatch="capacity", moe_capacity_factor=0.5)
    moe, x = MoE(cfg, nnx.Rngs(0)), _x(cfg, seq=16)
    capacity = ffn_kinds.moe_capacity(cfg, 16)
    prefix = dataclasses.replace(cfg, moe_capacity_factor=cfg.moe_capacity_factor * 16 / 8)
    assert ffn_kinds.moe_capacity(prefix, 8) == capacity  # same slots for the 8-token prefix
    moe_prefix = MoE(prefix, nnx.Rngs(0))
    np.testing.assert_allclose(moe_prefix(x[:, :8]), moe(x)[:, :8], **FP32_TOL)


def test_shared_expert_is_a_dense_ffn_of_the_summed_width():
    """E=1, k=1 plus one shared expert = one swiglu FFN 2·d_ff wide holding both weight sets."""
    cfg = _moe(moe_experts=1, moe_top_k=1, moe_shared_experts=1, moe_dispatch="dropless")
    moe = MoE(cfg, nnx.Rngs(0))
    wide = GatedFFN(dataclasses.replace(cfg, d_ff=2 * cfg.d_ff), jax.nn.silu, nnx.Rngs(1))
    for name, axis in (("gate", 1), ("up", 1), ("down", 0)):
        routed, shared = getattr(moe.experts, name).kernel[...][0], getattr(moe.shared, name).kernel[...]
        getattr(wide, name).kernel[...] = jnp.concatenate([routed, shared], axis=axis)
    x = _x(cfg)
    np.testing.assert_allclose(moe(x), wide(x), **FP32_TOL)


def test_moe_every_nth_layer_and_the_expert_kind_between():
    cfg = _moe(n_layers=4, moe_every=2, moe_expert_ffn="gelu")
    model = Transformer(cfg, nnx.Rngs(0))
    assert [type(block.ffn).__name__ for block in model.layers] == ["PlainFFN", "MoE", "PlainFFN", "MoE"]
    assert isinstance(model.layers[0].ffn, PlainFFN)
    assert accounting.param_counts(cfg)["total"] == _eval_shape_total(cfg)


@pytest.mark.parametrize("precision", ["fp32", "bf16_mixed", "bf16", "fp8"])
def test_router_runs_in_fp32_under_every_precision(precision):
    cfg = _moe(precision=precision)
    moe = MoE(cfg, nnx.Rngs(0))
    x = _x(cfg).astype(jnp.bfloat16 if precision != "fp32" else jnp.float32)
    logits = moe.router(x.reshape(-1, cfg.d_model))
    assert logits.dtype == jnp.float32
    reference = np.asarray(x.reshape(-1, cfg.d_model), np.float64) @ np.asarray(moe.router.kernel[...], np.float64)
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)  # fp32, not bf16 (~4e-3)
    y = moe(x)
    assert y.dtype == x.dtype and np.all(np.isfinite(np.asarray(y, np.float32)))


# ----------------------------------------------------------------------------- auxiliary losses


def _stats_for(cfg: ModelConfig, logits: np.ndarray) -> dict:
    logits = jnp.asarray(logits, jnp.float32)
    _, experts, probs = route(cfg, logits)
    return router_stats(cfg, logits, experts, probs, jnp.zeros(()))


def test_load_balance_loss_is_one_for_uniform_routing_and_e_for_collapsed():
    cfg = _moe(moe_experts=4, moe_top_k=1)
    uniform = np.log(np.eye(4)[np.arange(64) % 4] * 0.97 + 0.01)  # each token prefers its own expert, evenly
    collapsed = np.tile([8.0, 0.0, 0.0, 0.0], (64, 1))
    balanced, skewed = _stats_for(cfg, uniform), _stats_for(cfg, collapsed)
    assert float(balanced["load_balance"]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(balanced["expert_load"], 0.25)
    assert float(skewed["load_balance"]) > 3.9 and float(skewed["load_balance"]) <= 4.0
    np.testing.assert_allclose(skewed["expert_load"], [1, 0, 0, 0])
    assert float(skewed["router_entropy"]) < float(balanced["router_entropy"])


def test_z_loss_matches_its_formula():
    cfg = _moe()
    logits = np.random.default_rng(0).normal(size=(32, 4)) * 3
    expected = np.mean(np.log(np.sum(np.exp(logits), axis=-1)) ** 2)
    assert float(_stats_for(cfg, logits)["z_loss"]) == pytest.approx(expected, rel=1e-5)


def test_aux_loss_enters_forward_with_its_weights():
    cfg = _moe(moe_load_balance_weight=0.5, moe_z_loss_weight=0.25)
    model = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    logits, aux = model.forward(tokens)
    per_layer = [block.ffn.forward_with_stats(x) for block, x in _ffn_inputs(model, tokens)]
    expected = sum(0.5 * s["load_balance"] + 0.25 * s["z_loss"] for _, s in per_layer)
    assert float(aux["aux_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert aux["moe_expert_load"].shape == (cfg.moe_experts,)
    assert float(Transformer(ModelConfig(**SMALL), nnx.Rngs(0)).forward(tokens)[1]["aux_loss"]) == 0.0


def _ffn_inputs(model: Transformer, tokens):
    """(block, the normalised input its FFN sees) for every layer, by running the blocks one at a time."""
    positions = jnp.arange(tokens.shape[1])
    x, pairs = model.embed(tokens), []
    for block in model.layers:
        h = x + block.attn(block.attn_norm(x), positions)[0]
        pairs.append((block, block.ffn_norm(h)))
        x, _, _ = block(x, positions)
    return pairs


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
def test_router_receives_gradients_from_the_loss_and_the_aux_losses(dispatch):
    cfg = _moe(moe_dispatch=dispatch)
    model = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)

    def loss(model, aux_only):
        logits, aux = model.forward(tokens)
        nll = -jnp.mean(jax.nn.log_softmax(logits)[..., 0])
        return aux["aux_loss"] if aux_only else nll

    for aux_only in (False, True):
        grads = nnx.grad(loss)(model, aux_only)
        router_grad = np.asarray(grads.layers[0].ffn.router.kernel[...])
        assert np.all(np.isfinite(router_grad)) and np.abs(router_grad).max() > 0
    expert_grad = nnx.grad(loss)(model, False).layers[0].ffn.experts.gate.kernel[...]
    assert np.abs(np.asarray(expert_grad)).max() > 0


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
def test_jit_equals_no_jit(dispatch):
    cfg = _moe(moe_dispatch=dispatch, moe_shared_experts=1)
    model = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    eager_logits, eager_aux = model.forward(tokens)
    jit_logits, jit_aux = nnx.jit(lambda m, t: m.forward(t))(model, tokens)
    np.testing.assert_allclose(jit_logits, eager_logits, rtol=1e-5, atol=1e-5)
    for key in eager_aux:
        np.testing.assert_allclose(jit_aux[key], eager_aux[key], rtol=1e-5, atol=1e-6)


def test_decoding_an_moe_model_matches_its_forward_pass():
    cfg = _moe(moe_dispatch="dropless", n_layers=2, moe_every=2, max_seq_len=16)
    model = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
    full = model(tokens)
    step = nnx.jit(lambda model, tokens, cache: model(tokens, cache))
    cache = model.empty_cache(2, 10)
    logits, cache = step(model, tokens[:, :4], cache)
    np.testing.assert_allclose(logits, full[:, :4], rtol=1e-5, atol=1e-5)
    for t in range(4, 10):
        logits, cache = step(model, tokens[:, t: t + 1], cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- accounting


def test_total_and_active_parameters_by_hand():
    """d 32, 2 layers, E 4, k 2, one shared expert, swiglu d_ff 64, vocab 256, tied, RMSNorm."""
    cfg = _moe(moe_shared_experts=1)
    expert, router, attention, norms = 3 * 32 * 64, 32 * 4, 4 * 32 * 32, 2 * 32
    layer_total = attention + norms + router + (4 + 1) * expert
    layer_active = attention + norms + router + (2 + 1) * expert
    counts = accounting.param_counts(cfg)
    assert counts["total"] == 256 * 32 + 2 * layer_total + 32 == _eval_shape_total(cfg)
    assert counts["active"] == 256 * 32 + 2 * layer_active + 32
    assert counts["active"] < counts["total"]


def test_moe_every_other_layer_counts_the_dense_layers_as_dense():
    cfg = _moe(n_layers=4, moe_every=2)
    dense = dataclasses.replace(cfg, ffn="swiglu")
    expert, router = 3 * 32 * 64, 32 * 4
    assert accounting.param_counts(cfg)["total"] - accounting.param_counts(dense)["total"] == 2 * (router + 3 * expert)
    assert accounting.param_counts(cfg)["active"] - accounting.param_counts(dense)["active"] == 2 * (router + expert)


def test_flops_per_token_are_counted_on_active_parameters_with_the_router():
    """Every convention: the MoE model costs the dense one plus, per layer, the router's 2·d·E and
    (k + S - 1) more experts' 2·3·d·d_ff, times 3 for training; capacity padding is not in them."""
    seq = 16
    cfg = _moe(moe_shared_experts=1, moe_dispatch="capacity", moe_capacity_factor=2.0)
    dense = dataclasses.replace(cfg, ffn="swiglu")
    extra_forward = 2 * (2 * 32 * 4 + (2 + 1 - 1) * 2 * 3 * 32 * 64)
    moe_flops, dense_flops = (accounting.training_flops_per_token(c, seq) for c in (cfg, dense))
    for convention in accounting.CONVENTIONS:
        assert moe_flops[convention] - dense_flops[convention] == pytest.approx(3 * extra_forward)
    n = accounting.param_counts(cfg)["active"] - accounting.param_counts(cfg)["embedding"]
    assert moe_flops["6N"] == 6 * n
    mfu_gap = accounting.mfu_flops_per_token(cfg, seq) - accounting.mfu_flops_per_token(dense, seq)
    assert mfu_gap == pytest.approx(3 * extra_forward)


def test_capacity_padding_is_reported_apart_as_hardware_flops():
    seq = 16
    cfg = _moe(moe_dispatch="capacity", moe_capacity_factor=2.0)  # C = ceil(2·2·16/4) = 16 slots
    report = accounting.report(cfg, seq, 1, backend="cpu")["moe"]
    assert report["capacity_per_expert"] == 16
    # E·C/T - k = 4·16/16 - 2 = 2 padding rows per token and layer, each a 2·3·d·d_ff expert, ×3 training
    assert report["padding_flops_per_token"] == 3 * 2 * 2 * (2 * 3 * 32 * 64)
    dropless = accounting.report(dataclasses.replace(cfg, moe_dispatch="dropless"), seq, 1)["moe"]
    assert dropless["padding_flops_per_token"] == 0 and dropless["capacity_per_expert"] is None
    assert ffn_kinds.moe_dispatch(dataclasses.replace(cfg, moe_dispatch="auto"), "gpu") == "dropless"


def test_memory_estimate_covers_the_experts_and_the_routing():
    cfg = _moe(moe_shared_experts=1)
    dense = dataclasses.replace(cfg, ffn="swiglu")
    moe_memory, dense_memory = (accounting.training_memory_bytes(c, 2, 16) for c in (cfg, dense))
    extra_params = accounting.param_counts(cfg)["total"] - accounting.param_counts(dense)["total"]
    assert moe_memory["weights"] - dense_memory["weights"] == 4 * extra_params  # fp32 weights of every expert
    # per token and layer: (k + S - 1) more experts' 3·d_ff hidden values, k·d dispatched in and out, E logits
    extra_activations = 2 * 16 * 2 * 4 * ((2 + 1 - 1) * 3 * 64 + 2 * 2 * 32 + 2 * 4)
    assert moe_memory["activations"] - dense_memory["activations"] == extra_activations
    assert accounting.kv_cache_bytes_per_token(cfg) == accounting.kv_cache_bytes_per_token(dense)


@pytest.mark.slow
def test_isoflop_count_of_the_moe_config_reports_active_below_total_and_the_hand_flops():
    out = subprocess.run([sys.executable, "-m", "launch.cli", "count", "configs/moe-tiny.yaml", "--json"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    report = json.loads(out)
    params = report["params"]
    d, layers, d_ff, experts, vocab, seq = 128, 4, 352, 4, 256, 256
    expert, router = 3 * d * d_ff, d * experts
    layer_active = 4 * d * d + 2 * d + router + expert  # top-1
    assert params["active"] == vocab * d + layers * layer_active + d
    assert params["total"] == params["active"] + layers * (experts - 1) * expert
    n = params["active"] - params["embedding"]
    assert report["flops_per_token"]["6N_attn"] == pytest.approx(6 * n + 3 * 2 * layers * seq * d)
    assert report["moe"]["padding_flops_per_token"] > 0
    assert abs(report["flops_per_token"]["compiled"] - report["xla_flops_per_token"]) < 0.02 * report["xla_flops_per_token"]


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_keeps_the_moe_gradients_and_aux(remat):
    cfg = _moe(moe_dispatch="capacity")
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)

    def loss(model):
        logits, aux = model.forward(tokens)
        return jnp.mean(jnp.square(logits)) + aux["aux_loss"]

    reference = nnx.grad(loss)(Transformer(cfg, nnx.Rngs(0)))
    rematted = nnx.grad(loss)(Transformer(dataclasses.replace(cfg, remat=remat), nnx.Rngs(0)))
    for a, b in zip(jax.tree.leaves(nnx.state(reference)), jax.tree.leaves(nnx.state(rematted))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
@pytest.mark.parametrize("precision", ["bf16_mixed", "bf16", "fp8"])
def test_low_precision_moe_trains_through_both_paths(dispatch, precision):
    """Finite loss and gradients, and the same routing as fp32 up to the compute dtype's rounding."""
    cfg = _moe(moe_dispatch=dispatch, precision=precision, moe_shared_experts=1)
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)

    def loss(model):
        logits, aux = model.forward(tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + aux["aux_loss"]

    value, grads = nnx.value_and_grad(loss)(Transformer(cfg, nnx.Rngs(0)))
    reference = loss(Transformer(dataclasses.replace(cfg, precision="fp32"), nnx.Rngs(0)))
    # bf16 rounds each op to 2^-8 ≈ 0.4%; a few layers deep the loss stays within 2% of fp32
    assert np.isfinite(float(value)) and float(value) == pytest.approx(float(reference), rel=2e-2)
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(nnx.state(grads)))


def test_router_log_scalars_flatten_the_expert_load():
    cfg = _moe()
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    _, aux = Transformer(cfg, nnx.Rngs(0)).forward(tokens)
    scalars = router_log_scalars(aux)
    assert sorted(scalars) == sorted(["aux_loss", "moe_load_balance", "moe_z_loss", "moe_router_entropy",
                                      "moe_dropped_fraction", *(f"moe_expert_load_{e}" for e in range(4))])
    assert sum(scalars[f"moe_expert_load_{e}"] for e in range(4)) == pytest.approx(1.0)
    assert router_log_scalars(Transformer(ModelConfig(**SMALL), nnx.Rngs(0)).forward(tokens)[1]) == {}


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
def test_moe_model_is_causal(dispatch):
    """Changing future tokens changes no earlier logit, dropping included (tight capacity: many drops)."""
    cfg = _moe(moe_dispatch=dispatch, moe_capacity_factor=0.5, moe_shared_experts=1)
    model = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    changed = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % cfg.vocab_size)
    np.testing.assert_allclose(model(changed)[:, :9], model(tokens)[:, :9], rtol=1e-6, atol=1e-6)
    assert not np.allclose(model(changed)[:, 9:], model(tokens)[:, 9:], atol=1e-4)


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_a_short_moe_training_stays_within_budget_and_logs_the_router(tmp_path):
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from launch.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"f{i}.py").write_text(f"def add{i}(a, b):\n    return a + b\n\nclass Point{i}:\n    x = {i}\n" * 12)
    budget = 2e9
    tree = {
        "model": {**SMALL, "ffn": "moe", "moe_experts": 4, "moe_top_k": 2, "moe_capacity_factor": 1.0},
        "data": {"source": "text", "path": str(corpus), "seq_len": 32, "batch_size": 8, "eval_tokens": 512,
                 "eval_fraction": 0.1, "cache_dir": str(tmp_path / "cache")},
        "optimizer": {"learning_rate": 1e-2},
        "budget": {"flops": budget, "convention": "6N_attn"},
        "run": {"log_every": 5, "eval_every": 20, "checkpoint_every": 20},
        "hardware": {"peak_flops_per_second": 1e11},
    }
    config = tmp_path / "moe.yaml"
    config.write_text(yaml.safe_dump(tree))
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["flops"]["6N_attn"] <= budget
    assert summary["params"]["active"] < summary["params"]["total"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "train_loss" in row]
    for key in ("aux_loss", "moe_load_balance", "moe_z_loss", "moe_router_entropy", "moe_dropped_fraction",
                "moe_expert_load_0", "moe_expert_load_3"):
        assert all(key in row for row in logged), key
    assert all(sum(row[f"moe_expert_load_{e}"] for e in range(4)) == pytest.approx(1.0) for row in logged)
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/aux_loss", "moe/load_balance", "moe/z_loss", "moe/dropped_fraction", "moe/expert_load_0"} <= tags


def test_gradient_accumulation_carries_the_router_metrics():
    """Two micro-batches average to the full batch for a dense model (the loss is a mean), and an MoE's
    metrics come back averaged over micro-batches with the same keys."""
    from train.step import make_loss_and_grads

    tokens = jax.random.randint(jax.random.key(0), (4, 17), 0, 256)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    dense_graph, dense_params = nnx.split(Transformer(ModelConfig(**SMALL), nnx.Rngs(0)))
    (whole, _), whole_grads = make_loss_and_grads(dense_graph, 0.0, 1)(dense_params, batch)
    (halves, _), halves_grads = make_loss_and_grads(dense_graph, 0.0, 2)(dense_params, batch)
    assert float(halves) == pytest.approx(float(whole), rel=1e-6)
    for a, b in zip(jax.tree.leaves(whole_grads), jax.tree.leaves(halves_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    graphdef, params = nnx.split(Transformer(_moe(), nnx.Rngs(0)))
    (_, one), _ = make_loss_and_grads(graphdef, 0.0, 1)(params, batch)
    (_, two), _ = make_loss_and_grads(graphdef, 0.0, 2)(params, batch)
    assert set(one) == set(two) and two["moe_expert_load"].shape == (4,)
    assert float(jnp.sum(two["moe_expert_load"])) == pytest.approx(1.0)
