"""Every performance path computes what the plain path computes (issue 5).

The unoptimised path stays selectable by config (`model.attention_impl=xla`, `model.bf16_matmul=xla`,
`model.weight_grad=xla`),
so each fast path is checked against it: kernel by kernel (values and gradients), and end to end as a
fixed-seed training run whose fp32 loss after a few steps must match to a tight tolerance.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling.causal_attention import blocked_causal_attention
from modeling.config import ModelConfig, validate_model
from modeling.precision import f32_result_matmul, small_transpose_matmul
from modeling.transformer import Transformer
from train.config import OptimizerConfig
from train.optimizer import build_optimizer
from train.step import make_train_step

PLAIN = dict(attention_impl="xla", bf16_matmul="xla", weight_grad="xla")
FAST = dict(attention_impl="blocked", bf16_matmul="f32_result", weight_grad="small_transpose")


def _qkv(batch, length, heads, kv_heads, dim, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, dim), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (batch, length, kv_heads, dim), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (batch, length, kv_heads, dim), jnp.float32).astype(dtype)
    d_out = jax.random.normal(keys[3], (batch, length, heads, dim), jnp.float32)
    return q, k, v, d_out


def _value_and_grads(attention, q, k, v, d_out):
    def objective(q, k, v):
        return jnp.sum(attention(q, k, v).astype(jnp.float32) * d_out)

    return jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize(
    "heads, kv_heads, length, block_size, window",
    [(4, 4, 64, 16, None), (4, 2, 64, 16, None), (4, 1, 40, 16, None),  # mha, gqa, mqa (ragged last block)
     (2, 2, 64, 8, 12), (2, 2, 48, 64, None), (2, 2, 48, 7, 5)],  # sliding window; one block; odd sizes
)
def test_blocked_attention_equals_dot_product_attention_fp32(heads, kv_heads, length, block_size, window):
    q, k, v, d_out = _qkv(2, length, heads, kv_heads, 16, jnp.float32)
    local = None if window is None else (window - 1, 0)
    reference = _value_and_grads(
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local), q, k, v, d_out)
    blocked = _value_and_grads(
        lambda q, k, v: blocked_causal_attention(q, k, v, block_size=block_size, window=window), q, k, v, d_out)
    for got, want in zip(jax.tree.leaves(blocked), jax.tree.leaves(reference)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_blocked_attention_bf16_stays_close_to_fp32():
    """bf16 operands with fp32 accumulation: within bf16 rounding of the fp32 reference."""
    q, k, v, d_out = _qkv(2, 64, 4, 2, 16, jnp.float32)
    want = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True), q, k, v, d_out)
    cast = [t.astype(jnp.bfloat16) for t in (q, k, v)]
    got = _value_and_grads(lambda q, k, v: blocked_causal_attention(q, k, v, block_size=16), *cast, d_out)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g = np.asarray(g, np.float32)
        assert g.dtype == np.float32 and np.abs(g - w).max() <= 0.03 * np.abs(w).max()


def test_f32_result_matmul_values_and_gradients():
    keys = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(keys[0], (3, 5, 32)).astype(jnp.bfloat16)
    w = jax.random.normal(keys[1], (32, 24)).astype(jnp.bfloat16)
    cotangent = jax.random.normal(keys[2], (3, 5, 24))

    def objective(matmul):
        return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(matmul(x, w).astype(jnp.float32) * cotangent),
                                          argnums=(0, 1)))(x, w)

    value, (dx, dw) = objective(lambda x, w: f32_result_matmul(x, w, None, jnp.float32))
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    ref_value, (ref_dx, ref_dw) = jax.value_and_grad(lambda x, w: jnp.sum((x @ w) * cotangent), argnums=(0, 1))(x32, w32)
    assert f32_result_matmul(x, w, None, jnp.bfloat16).dtype == jnp.bfloat16
    assert dx.dtype == dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)  # fp32 accumulation of exact bf16 products
    for got, want in ((dx, ref_dx), (dw, ref_dw)):  # the cotangent is rounded to bf16 first
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.02, atol=0.02 * np.abs(want).max())


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("k, n", [(48, 16), (16, 48)])  # x the wider operand (the transposed form), and not
def test_small_transpose_matmul_values_and_gradients(jit, k, n):
    keys = jax.random.split(jax.random.key(4), 3)
    x, w = jax.random.normal(keys[0], (3, 5, k)), jax.random.normal(keys[1], (k, n))
    cotangent = jax.random.normal(keys[2], (3, 5, n))

    def objective(matmul):
        grad = jax.value_and_grad(lambda x, w: jnp.sum(matmul(x, w) * cotangent), argnums=(0, 1))
        return (jax.jit(grad) if jit else grad)(x, w)

    value, (dx, dw) = objective(small_transpose_matmul)
    ref_value, (ref_dx, ref_dw) = objective(lambda x, w: x @ w)
    assert dw.shape == w.shape and dx.shape == x.shape
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for got, want in ((dx, ref_dx), (dw, ref_dw)):  # the same sums, possibly in another order
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_performance_knobs_are_validated():
    bad = ModelConfig(attention_impl="flash", bf16_matmul="fast", attention_block_size=0, weight_grad="fast")
    problems = " ".join(validate_model(bad))
    assert "model.attention_impl" in problems and "model.bf16_matmul" in problems
    assert "model.weight_grad" in problems
    assert "model.attention_block_size" in problems


# ----------------------------------------------------------------------------- end to end

# GPT-2-style block like configs/bench/shape-a.yaml, small enough to train in seconds; seq 64 with
# blocks of 16 exercises the multi-block path.
SMALL = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=64, ffn="gelu",
                    norm="layernorm", norm_bias=True, bias=True, position="learned", attention_block_size=16)


def _losses(model_cfg: ModelConfig, steps: int = 5) -> list[float]:
    optimizer = build_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_fraction=0.0), 100)
    graphdef, params = nnx.split(Transformer(model_cfg, nnx.Rngs(0)))
    opt_state = optimizer.init(params)
    step = make_train_step(graphdef, optimizer, z_loss=0.0, grad_accum_steps=1)
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, (4, 65))
    losses = []
    for _ in range(steps):  # one batch again and again: the loss falls fast, so it is a sharp probe
        batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
        params, opt_state, metrics = step(params, opt_state, batch)
        losses.append(float(metrics["loss"]))
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("attention", [dict(attention="mha"), dict(attention="gqa", n_kv_heads=2)])
def test_fp32_training_loss_unchanged_by_fast_paths(attention):
    plain = _losses(dataclasses.replace(SMALL, **attention, **PLAIN))
    fast = _losses(dataclasses.replace(SMALL, **attention, **FAST))
    assert plain[-1] < plain[0]  # it trains, so the comparison is not between two constants
    np.testing.assert_allclose(fast, plain, rtol=1e-5)


@pytest.mark.slow
def test_bf16_mixed_training_loss_close_to_plain_path():
    plain = _losses(dataclasses.replace(SMALL, precision="bf16_mixed", **PLAIN))
    fast = _losses(dataclasses.replace(SMALL, precision="bf16_mixed", **FAST))
    fp32 = _losses(dataclasses.replace(SMALL, **PLAIN))
    np.testing.assert_allclose(fast, plain, rtol=1e-2)
    np.testing.assert_allclose(fast, fp32, rtol=1e-2)


# ----------------------------------------------------------------------------- the step profiler


@pytest.mark.parametrize("impl", ["xla", "blocked"])
def test_step_profile_attributes_every_part_of_the_step(impl):
    """Each op of a compiled train step is traced back to the part of the model that made it."""
    from train.step_profile import category, entry_ops

    cfg = dataclasses.replace(SMALL, attention_impl=impl)
    optimizer = build_optimizer(OptimizerConfig(), 10)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    opt_state = optimizer.init(params)
    tokens = jnp.zeros((2, 64), jnp.int32)
    step = make_train_step(graphdef, optimizer, z_loss=0.0, grad_accum_steps=1)
    hlo = step.lower(params, opt_state, {"inputs": tokens, "targets": tokens}).compile().as_text()
    ops = entry_ops(hlo)
    parts = {category(op) for op in ops.values()}
    for part in ("matmul: feed-forward", "matmul: attention projections", "matmul: output logits",
                 "matmul: attention scores/values", "attention softmax/mask/layout", "norms",
                 "feed-forward activation", "loss (log-softmax)", "optimizer update"):
        assert part in parts, part
    assert any(op["backward"] for op in ops.values()) and not all(op["backward"] for op in ops.values())


# ----------------------------------------------------------------------------- host allocator

_FAULTS_SCRIPT = """
import resource, sys
sys.path.insert(0, {root!r})
from train import runtime
applied = runtime.configure_host_runtime({mode!r})
import jax, jax.numpy as jnp
step = jax.jit(lambda x, w: jnp.sum(jnp.tanh(jnp.tanh(x @ w) @ w.T)))  # 64 MB intermediates
x, w = jnp.ones((16384, 1024), jnp.float32), jnp.full((1024, 1024), 1e-3, jnp.float32)
step(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step(x, w).block_until_ready()
print(applied is not None, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def _page_faults(mode: str) -> tuple[bool, int]:
    import pathlib
    import subprocess
    import sys

    root = str(pathlib.Path(__file__).resolve().parent.parent)
    env = {**__import__("os").environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT.format(root=root, mode=mode)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.slow
def test_host_allocator_keeps_xla_temporaries_mapped():
    """With glibc's defaults every call of a jitted function faults fresh pages in for its intermediates
    (~2,000 a call here, ~195,000 a train step of shape A); configured, the heap is reused."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the host allocator setting applies to glibc only")
    applied, kept = _page_faults("auto")
    not_applied, system = _page_faults("system")
    assert applied and not not_applied
    assert system > 500
    assert kept < system / 10


def test_cpu_backend_expected_follows_jax_platforms():
    from train.runtime import cpu_backend_expected

    assert cpu_backend_expected({"JAX_PLATFORMS": "cpu"})
    assert not cpu_backend_expected({"JAX_PLATFORMS": "cuda,cpu"})
    assert not cpu_backend_expected({"JAX_PLATFORMS": "tpu"})
