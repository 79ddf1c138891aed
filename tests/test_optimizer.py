"""Schedules hit their defining values; the decay mask picks the right leaves; clipping and fp32 state work."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from modeling.config import ModelConfig
from modeling.transformer import Transformer
from train.config import ConfigError, OptimizerConfig
from train.optimizer import build_optimizer, learning_rate_schedule, path_name, weight_decay_mask

PEAK = 1e-3
OPT = OptimizerConfig(learning_rate=PEAK, warmup_fraction=0.1, decay_fraction=0.2, min_lr_ratio=0.1)


def lr(opt, total, step):
    return float(learning_rate_schedule(opt, total)(step))


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_warmup_is_linear_to_the_peak_without_a_zero_step(schedule):
    opt = dataclasses.replace(OPT, schedule=schedule)
    # 1000 steps, W = 100: lr(s) = peak·(s+1)/(W+1)
    assert lr(opt, 1000, 0) == pytest.approx(PEAK / 101, rel=1e-5)
    assert lr(opt, 1000, 49) == pytest.approx(PEAK * 50 / 101, rel=1e-5)
    assert lr(opt, 1000, 100) == pytest.approx(PEAK)


def test_cosine_decays_to_the_floor():
    opt = dataclasses.replace(OPT, schedule="cosine")
    floor = 0.1 * PEAK
    assert lr(opt, 1000, 550) == pytest.approx((PEAK + floor) / 2)  # halfway through the cosine
    assert lr(opt, 1000, 1000) == pytest.approx(floor)
    assert lr(opt, 1000, 999) > floor  # the last update still moves


def test_wsd_plateau_then_linear_decay():
    opt = dataclasses.replace(OPT, schedule="wsd")
    floor = 0.1 * PEAK
    for step in (100, 400, 800):  # stable from the end of warmup to the start of the decay (1000 − 200)
        assert lr(opt, 1000, step) == pytest.approx(PEAK)
    assert lr(opt, 1000, 900) == pytest.approx((PEAK + floor) / 2)
    assert lr(opt, 1000, 950) == pytest.approx(PEAK - 0.75 * (PEAK - floor))
    assert lr(opt, 1000, 1000) == pytest.approx(floor)


def test_constant_stays_at_the_peak():
    opt = dataclasses.replace(OPT, schedule="constant")
    assert lr(opt, 1000, 500) == lr(opt, 1000, 1000) == pytest.approx(PEAK)


def test_tiny_runs_and_bad_schedules():
    assert lr(dataclasses.replace(OPT, warmup_fraction=0.0), 1, 0) == pytest.approx(PEAK)  # no warmup, one step
    with pytest.raises(ConfigError, match="optimizer.decay_fraction"):
        learning_rate_schedule(dataclasses.replace(OPT, schedule="wsd", warmup_fraction=0.5, decay_fraction=0.6), 100)
    with pytest.raises(ConfigError, match="total_steps"):
        learning_rate_schedule(OPT, 0)


@functools.cache
def model_params():
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=8, bias=True,
                      qk_norm=True, norm="layernorm", norm_bias=True, position="learned", tie_embeddings=False)
    return nnx.state(Transformer(cfg, nnx.Rngs(0)), nnx.Param)


def decayed_paths(mask) -> set[str]:
    return {path_name(p) for p, leaf in jax.tree_util.tree_flatten_with_path(mask)[0] if leaf}


def test_mask_on_an_nnx_state_decays_only_matrices():
    mask = weight_decay_mask(model_params())
    decayed = {name.removesuffix("/value") for name in decayed_paths(mask)}
    assert decayed == {
        "head",
        *(f"layers/0/attn/proj/{name}/kernel" for name in ("query", "key", "value", "out")),
        *(f"layers/0/ffn/{name}/kernel" for name in ("gate", "up", "down")),
    }


def test_mask_on_a_plain_pytree():
    params = {"embed": {"embedding": jnp.ones((4, 2))}, "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
              "norm": {"scale": jnp.ones(2)}}
    assert decayed_paths(weight_decay_mask(params)) == {"dense/kernel"}


def test_mask_by_role_on_a_scanned_mixture_of_experts():
    """Roles go by name (modeling/mup.py), so a scanned stack's [layers, d] norm gains are not decayed as
    matrices, while the router and the stacked experts are."""
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=8, ffn="moe",
                      moe_experts=2, layer_stack="scan")
    params = nnx.state(Transformer(cfg, nnx.Rngs(0)), nnx.Param)
    decayed = {name.removesuffix("/value") for name in decayed_paths(weight_decay_mask(params))}
    assert decayed == {*(f"layers/0/attn/proj/{name}/kernel" for name in ("query", "key", "value", "out")),
                       "layers/0/ffn/router/kernel",
                       *(f"layers/0/ffn/experts/{name}/kernel" for name in ("gate", "up", "down"))}


def test_the_state_keeps_optax_adamw_structure_so_old_checkpoints_restore():
    params = model_params()
    opt = dataclasses.replace(OPT, weight_decay=0.1, grad_clip=1.0)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        learning_rate_schedule(opt, 10), b1=opt.beta1, b2=opt.beta2, eps=opt.eps, weight_decay=0.1,
        mask=weight_decay_mask))
    assert (jax.tree.structure(build_optimizer(opt, 10).init(params))
            == jax.tree.structure(reference.init(params)))


def decay_step(opt_cfg):
    """One update with zero gradients: only weight decay moves parameters (by −lr·wd·p)."""
    params = model_params()
    tx = build_optimizer(opt_cfg, total_steps=10)
    state = jax.jit(tx.init)(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, state, params)
    return {path_name(p): float(jnp.abs(u).max()) for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}


def test_decay_follows_the_mask_and_the_switch():
    opt = dataclasses.replace(OPT, schedule="constant", warmup_fraction=0.0, weight_decay=0.1)
    moved = {name for name, size in decay_step(opt).items() if size > 0}
    assert moved == decayed_paths(weight_decay_mask(model_params()))
    everything = decay_step(dataclasses.replace(opt, decay_norms_biases_embeddings=True))
    assert all(size > 0 for name, size in everything.items() if "bias" not in name)  # biases start at 0


def first_moment(opt_cfg, grads):
    params = {"kernel": jnp.ones((3, 4))}
    tx = build_optimizer(opt_cfg, total_steps=10)
    _, state = tx.update(grads, tx.init(params), params)
    return optax.tree_utils.tree_get(state, "mu")


def test_gradients_are_clipped_to_the_global_norm_before_adam():
    grads = {"kernel": jnp.full((3, 4), 10.0)}  # global norm 10·sqrt(12) ≫ 1
    clipped = first_moment(dataclasses.replace(OPT, grad_clip=1.0, beta1=0.9), grads)
    assert float(optax.tree.norm(clipped)) == pytest.approx(0.1 * 1.0, rel=1e-5)  # (1 − b1) · clip
    unclipped = first_moment(dataclasses.replace(OPT, grad_clip=0.0, beta1=0.9), grads)
    assert float(optax.tree.norm(unclipped)) == pytest.approx(0.1 * 10 * np.sqrt(12), rel=1e-5)


def test_optimizer_state_is_fp32_for_bf16_params():
    params = {"kernel": jnp.ones((3, 4), jnp.bfloat16)}
    tx = build_optimizer(OPT, total_steps=10)
    state = tx.init(params)
    updates, state = tx.update({"kernel": jnp.ones((3, 4), jnp.bfloat16)}, state, params)
    assert optax.tree_utils.tree_get(state, "mu")["kernel"].dtype == jnp.float32
    assert optax.tree_utils.tree_get(state, "nu")["kernel"].dtype == jnp.float32
    assert updates["kernel"].dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------ warmup rules


def _config(**optimizer):
    from train.config import from_dict

    return from_dict({"model": {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
                                "max_seq_len": 64},
                      "data": {"seq_len": 64, "batch_size": 8}, "budget": {"tokens": 512 * 100},
                      "optimizer": {"learning_rate": PEAK, **optimizer}})


def test_warmup_rules_give_their_steps_and_say_why():
    from modeling.accounting import param_counts
    from train.lengths import warmup_steps

    assert warmup_steps(_config(warmup_fraction=0.1), 100) == (10, "0.1 of 100 steps")
    assert warmup_steps(_config(warmup_rule="steps", warmup_steps=7), 100) == (7, "optimizer.warmup_steps")
    assert warmup_steps(_config(warmup_rule="tokens", warmup_tokens=5000), 100)[0] == 10  # ceil(5000 / 512)
    config = _config(warmup_rule="params", warmup_params_ratio=2.0)
    n = param_counts(config.model)["non_embedding"]
    steps, why = warmup_steps(config, 1000)
    assert steps == math.ceil(2 * n / 512) and f"N = {n:,} non_embedding params; Porian et al. 2024" in why
    # Only the fraction rule depends on the run's length; every rule is capped below the run's length.
    assert warmup_steps(config, 2000)[0] == steps
    assert warmup_steps(_config(warmup_rule="steps", warmup_steps=50), 20) == (19, "optimizer.warmup_steps, capped "
                                                                              "at total_steps - 1")


def test_the_schedule_follows_the_rule_and_refuses_a_rule_it_was_not_given():
    from train.optimizer import schedule_for

    config = _config(warmup_rule="steps", warmup_steps=9, schedule="constant")
    schedule = schedule_for(config, 100)
    assert float(schedule(8)) < PEAK and float(schedule(9)) == pytest.approx(PEAK)
    assert float(schedule(0)) == pytest.approx(PEAK / 10)
    with pytest.raises(ValueError, match="warmup_rule='steps' needs the config"):
        learning_rate_schedule(config.optimizer, 100)


def test_wsd_warmup_and_decay_longer_than_the_run_are_refused_with_the_rule():
    from train.optimizer import schedule_for

    with pytest.raises(ConfigError, match=r"20 decay steps plus 90 warmup steps \(optimizer.warmup_rule=steps\)"):
        schedule_for(_config(schedule="wsd", warmup_rule="steps", warmup_steps=90), 100)
