"""Device mesh (data, fsdp, tensor) and where every array lives on it.

The same code runs on one CPU, eight fake CPU devices or a TPU/GPU host: the mesh is built with
`AxisType.Auto` so GSPMD propagates shardings through the jitted step (the Explicit default breaks the
embedding gather: docs/ARCHITECTURE.md, 'Auto mesh axes'). Batches split over (data, fsdp); weights
split over fsdp on one dimension and over tensor on the Megatron dimension (column-parallel in, row-parallel out).
Dimensions that do not divide the axis size stay replicated, so odd shapes still run.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from train.config import ConfigError, RunConfig

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Module names whose kernel [in, out] is split on `out` (column-parallel) or on `in` (row-parallel).
COLUMN_PARALLEL = ("query", "key", "value", "gate", "up")
ROW_PARALLEL = ("out", "down")


def make_mesh(run: RunConfig, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    fixed = run.mesh_fsdp * run.mesh_tensor
    data = run.mesh_data if run.mesh_data != -1 else len(devices) // fixed
    if data < 1 or data * fixed != len(devices):
        raise ConfigError([
            f"run.mesh_data: mesh {data}×{run.mesh_fsdp}×{run.mesh_tensor} (data×fsdp×tensor) does not use "
            f"the {len(devices)} available devices; the product must equal {len(devices)}"
        ])
    grid = np.array(devices).reshape(data, run.mesh_fsdp, run.mesh_tensor)
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def _fits(mesh: Mesh, axis: str, size: int) -> str | None:
    return axis if mesh.shape[axis] > 1 and size % mesh.shape[axis] == 0 else None


def param_spec(path: tuple, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """FSDP on one dimension, tensor parallelism on the Megatron dimension, 1-D params replicated."""
    if len(shape) < 2:
        return PartitionSpec()
    names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    names = [n for n in names if n != "value"]  # nnx Variables add a trailing `.value`
    module = names[-2] if len(names) >= 2 else ""
    if module in COLUMN_PARALLEL:
        return PartitionSpec(_fits(mesh, "fsdp", shape[0]), _fits(mesh, "tensor", shape[1]))
    if module in ROW_PARALLEL:
        return PartitionSpec(_fits(mesh, "tensor", shape[0]), _fits(mesh, "fsdp", shape[1]))
    if "embed" in module or "pos_embed" in module:  # [vocab, d]: vocab over tensor, features over fsdp
        return PartitionSpec(_fits(mesh, "tensor", shape[0]), _fits(mesh, "fsdp", shape[1]))
    return PartitionSpec(_fits(mesh, "fsdp", shape[0]), _fits(mesh, "tensor", shape[1]))  # untied head [d, vocab]


def param_shardings(abstract_params, mesh: Mesh):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, param_spec(path, leaf.shape, mesh)), abstract_params
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % shards:
        raise ConfigError([f"data.batch_size: {batch_size} must be a multiple of data×fsdp = {shards} devices"])
