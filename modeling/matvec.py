"""One-token matrix products on every core of a CPU: the dense layers of a batch-1 decode step.

Why: XLA:CPU computes a product with one row, x [1, K] @ w [K, N], on one thread, whatever the cores;
one core reads a matrix at about half the host's memory bandwidth, so a batch-1 decode step (a chain of
such products over every weight) cannot pass ~half of its bandwidth bound. XLA:CPU does spread a
*batched* product's batch over its threads. Splitting the contraction into `parts` contiguous blocks
of rows of w — a free reshape of the row-major kernel — makes one batched product
[parts, 1, K/parts] x [parts, K/parts, N] whose partial sums are added in fp32: the same sum, in another
order. Measured on a 2-core Xeon (docs/INFERENCE.md): a chain of 1,024-wide fp32 matrix-vector products
read 23 GB/s (85 MB, cache-resident) and 15 GB/s (255 MB) on one thread, 38 and 24 GB/s split in two;
configs/models/ladder-5.yaml's batch-1 decode step 6.5 -> 4.6 ms (medians of `bench infer` runs). Two
rows or more already take XLA's multi-threaded kernels, and there the split was slower (0.85x at 2 rows,
0.3x at 64), so only one-row products are split.

`model.matvec` chooses: "xla" (one product), "split_k" (split over the cores each CPU device has: the
process's usable cores / its CPU devices, rounded down to a divisor of K), "auto" (split_k on the CPU
backend, xla on accelerators, whose kernels use the whole chip for a matrix-vector product already).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from common import cpuinfo

MATVEC_AUTO = {"cpu": "split_k", "other": "xla"}


def cores_per_device() -> int:
    """The cores each CPU device of this process may use: XLA sizes its CPU thread pool by the process's
    usable cores, which its CPU devices share."""
    return max(1, len(cpuinfo.usable_cores()) // max(1, _cpu_device_count()))


def _cpu_device_count() -> int:
    return len(jax.local_devices(backend="cpu"))


def resolve(choice: str) -> str:
    """`model.matvec` with "auto" settled by the backend being traced for."""
    return MATVEC_AUTO["cpu" if jax.default_backend() == "cpu" else "other"] if choice == "auto" else choice


def split_parts(choice: str, contracted: int) -> int:
    """How many blocks a one-row product over `contracted` features is split into under `choice`
    (1: not split): the largest divisor of `contracted` not above the cores per CPU device."""
    if resolve(choice) != "split_k":
        return 1
    cores = cores_per_device()
    return max(parts for parts in range(1, min(cores, contracted) + 1) if contracted % parts == 0)


def split_k_matvec(x: jax.Array, w: jax.Array, parts: int) -> jax.Array:
    """x [..., K] holding one row @ w [K, N] as `parts` partial products over contiguous blocks of K,
    accumulated and summed in fp32 (the caller casts): [..., N] float32."""
    contracted, features = w.shape
    block = contracted // parts
    partial = jax.lax.dot_general(x.reshape(parts, 1, block), w.reshape(parts, block, features),
                                  (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    return partial.sum(axis=0).reshape(*x.shape[:-1], features)


__all__ = ["MATVEC_AUTO", "cores_per_device", "resolve", "split_k_matvec", "split_parts"]
