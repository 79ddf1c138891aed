"""Device mesh (data, fsdp, expert, tensor) and where every array lives on it.

The same code runs on one CPU, eight fake CPU devices or a TPU/GPU host: the mesh is built with
`AxisType.Auto` so GSPMD propagates shardings through the jitted step (the Explicit default breaks the
embedding gather: docs/ARCHITECTURE.md, 'Auto mesh axes'). Batches split over (data, fsdp, expert).
Parameters are placed by the logical axis names each declares where it is created, through one rules
table (`modeling/sharding.py`, `RULES`): FSDP on the model width, tensor parallelism on the Megatron
dimension (column-parallel in, row-parallel out), an MoE's stacked experts over the expert axis.
Dimensions that do not divide the axis size stay replicated, so odd shapes still run.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from modeling import sharding as logical
from train.config import ConfigError, RunConfig

AXES = logical.MESH_AXES
BATCH_AXES = logical.BATCH_AXES


def make_mesh(run: RunConfig, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    fixed = run.mesh_fsdp * run.mesh_expert * run.mesh_tensor
    data = run.mesh_data if run.mesh_data != -1 else len(devices) // fixed
    if data < 1 or data * fixed != len(devices):
        raise ConfigError([
            f"run.mesh_data: mesh {data}×{run.mesh_fsdp}×{run.mesh_expert}×{run.mesh_tensor} (data×fsdp×expert×tensor)"
            f" does not use the {len(devices)} available devices; the product must equal {len(devices)}"
        ])
    grid = np.array(devices).reshape(data, run.mesh_fsdp, run.mesh_expert, run.mesh_tensor)
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def param_shardings(abstract_params, mesh: Mesh):
    """Each parameter's NamedSharding from its logical axes (modeling/sharding.py), shaped like the state."""
    return logical.param_shardings(abstract_params, mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    if batch_size % shards:
        raise ConfigError([f"data.batch_size: {batch_size} must be a multiple of data×fsdp×expert = {shards} devices"])
