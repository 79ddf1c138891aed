"""`model.matvec`: one-row products split over the CPU's cores compute what one product computes
(modeling/matvec.py), only one-row products are split, and the split is what XLA compiles."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import cpuinfo
from modeling import matvec
from modeling.config import ModelConfig, validate_model
from modeling.layers import Dense
from modeling.transformer import Transformer


@pytest.fixture
def four_cores(monkeypatch):
    """A host whose process may use four cores (split_parts reads the cores per CPU device)."""
    monkeypatch.setattr(cpuinfo, "usable_cores", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(matvec, "_cpu_device_count", lambda: 1)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_split_k_matvec_equals_the_product(jit, parts):
    keys = jax.random.split(jax.random.key(0), 2)
    x, w = jax.random.normal(keys[0], (1, 1, 96)), jax.random.normal(keys[1], (96, 40))
    split = jax.jit(matvec.split_k_matvec, static_argnums=2) if jit else matvec.split_k_matvec
    got = split(x, w, parts)
    assert got.shape == (1, 1, 40) and got.dtype == jnp.float32
    # the same sum in another order: fp32 rounding apart
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5 * float(jnp.abs(x @ w).max()))


def test_split_parts_is_the_largest_divisor_up_to_the_cores(four_cores):
    assert matvec.cores_per_device() == 4
    assert matvec.split_parts("split_k", 384) == 4
    assert matvec.split_parts("split_k", 6) == 3  # 4 does not divide 6
    assert matvec.split_parts("split_k", 7) == 1  # prime: nothing to split into
    assert matvec.split_parts("split_k", 2) == 2
    assert matvec.split_parts("xla", 384) == 1
    assert matvec.split_parts("auto", 384) == (4 if jax.default_backend() == "cpu" else 1)


def test_cores_are_shared_by_the_cpu_devices(monkeypatch):
    monkeypatch.setattr(cpuinfo, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(matvec, "_cpu_device_count", lambda: 8)  # device_count=8 on 2 cores
    assert matvec.cores_per_device() == 1
    assert matvec.split_parts("split_k", 384) == 1


def _dense(matvec_choice: str, dtype=jnp.float32, bias=True) -> Dense:
    return Dense(48, 24, use_bias=bias, dtype=dtype, param_dtype=jnp.float32, matvec=matvec_choice,
                 bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bias", [True, False])
def test_dense_one_row_split_equals_one_product(four_cores, bias):
    x = jax.random.normal(jax.random.key(1), (1, 1, 48))
    split, plain = _dense("split_k", bias=bias), _dense("xla", bias=bias)
    got, want = split(x), plain(x)
    assert got.dtype == want.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_dense_bf16_one_row_split_stays_close(four_cores):
    x = jax.random.normal(jax.random.key(2), (1, 48))
    got, want = _dense("split_k", jnp.bfloat16)(x), _dense("xla", jnp.bfloat16)(x)
    assert got.dtype == want.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=2e-2, atol=2e-2)


def test_dense_several_rows_are_never_split(four_cores):
    """Two rows already take XLA's multi-threaded kernels: the split path must leave them bitwise alone."""
    x = jax.random.normal(jax.random.key(3), (2, 1, 48))
    np.testing.assert_array_equal(_dense("split_k")(x), _dense("xla")(x))
    hlo = jax.jit(lambda x: _dense("split_k")(x)).lower(x).as_text()
    assert "dot_general" in hlo and not _dot_batch_sizes(hlo)


def _dot_batch_sizes(hlo_text: str) -> list[tuple[str, str]]:
    """The batch dimensions of every dot_general in StableHLO text."""
    return re.findall(r"batching_dims = \[(\d+)\] x \[(\d+)\]", hlo_text)


def test_one_row_split_compiles_to_one_batched_product(four_cores):
    x = jnp.ones((1, 1, 48))
    split_hlo = jax.jit(lambda x: _dense("split_k")(x)).lower(x).as_text()
    plain_hlo = jax.jit(lambda x: _dense("xla")(x)).lower(x).as_text()
    assert _dot_batch_sizes(split_hlo) and not _dot_batch_sizes(plain_hlo)
    assert "tensor<4x12x24xf32>" in split_hlo  # the kernel's 48 rows as 4 blocks of 12: a reshape, no copy


def test_decode_with_split_matvec_equals_one_product(four_cores):
    """A batch-1 cached decode through the model under split_k gives the logits of matvec=xla."""
    base = dict(vocab_size=64, d_model=48, n_layers=2, n_heads=4, d_ff=96, max_seq_len=32)
    tokens = jax.random.randint(jax.random.key(4), (1, 12), 0, 64)
    logits = {}
    for choice in ("xla", "split_k"):
        model = Transformer(ModelConfig(**base, matvec=choice), nnx.Rngs(0))
        cache = model.empty_cache(1, 16)
        _, cache = model(tokens[:, :8], cache)
        step = str(jax.make_jaxpr(lambda t, c: model(t, c))(tokens[:, 8:9], cache))
        # the seven dense layers of each of the two layers (q, k, v, out, gate, up, down) as split products
        assert step.count("([0], [0]))") == (14 if choice == "split_k" else 0)
        steps = []
        for t in range(8, 12):
            step_logits, cache = model(tokens[:, t:t + 1], cache)
            steps.append(step_logits)
        logits[choice] = jnp.concatenate(steps, axis=1)
    np.testing.assert_allclose(logits["split_k"], logits["xla"], rtol=1e-5, atol=1e-5)


def test_matvec_knob_is_validated():
    problems = " ".join(validate_model(ModelConfig(matvec="threads")))
    assert "model.matvec" in problems
