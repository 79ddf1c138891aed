"""Logical axis names on every parameter, and the one table that maps them to mesh axes.

Each weight names its dimensions where it is created (Flax `out_sharding` metadata, eager sharding off, so
the model builds the same on one CPU as on a pod): a dense kernel is ("embed", "mlp"), the stacked experts
("expert", "embed", "mlp") (the expert axis is added by the `nnx.vmap` that stacks them; the "layers"
axis of a scanned layer stack likewise, in front), the token embedding ("vocab", "embed"). `RULES` then
says which mesh axis each logical axis is split over, as MaxText's `logical_axis_rules` and the Flax
examples do; changing a parallelism strategy is an edit of that table, not of module-name matching.
Norm scales and QK-norm carry no names and stay replicated.

Mesh axes: data (pure data parallelism), fsdp (data parallelism with parameters sharded, ZeRO-3), expert
(experts split across devices; it also splits the batch, so non-expert weights see it as data
parallelism) and tensor (Megatron column/row parallelism). A dimension is split only when the axis has
more than one device and divides it, and a mesh axis is used at most once per array, so odd shapes run.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")

# logical axis -> the mesh axis it is split over (None: replicated)
RULES: dict[str, str | None] = {
    "vocab": "tensor",  # embedding rows / output-head columns
    "embed": "fsdp",  # the model width: the FSDP dimension of every matrix
    "heads": "tensor",  # H·hd (or Hkv·hd) attention features: q/k/v columns, out-projection rows
    "mlp": "tensor",  # FFN hidden features: up/gate columns, down rows
    "expert": "expert",  # the stacked experts of an MoE layer
    "router": None,  # the E router logits: a d×E matrix, kept whole
    "positions": None,  # learned position table rows
    "layers": None,  # the stacked layers of model.layer_stack=scan: each device holds every layer's slice
}


def with_axes(init: Callable, *names: str) -> Callable:
    """`init` whose parameter carries logical axis `names` (one per dimension) and is not sharded eagerly."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


def axes_metadata(*names: str) -> dict:
    """The same metadata for a parameter built directly with `nnx.Param(value, **axes_metadata(...))`."""
    return {"out_sharding": names, "eager_sharding": False}


def mesh_spec(names: tuple[str | None, ...] | None, shape: tuple[int, ...], mesh_shape: Mapping[str, int]) -> PartitionSpec:
    """PartitionSpec of one array from its logical names under `RULES` (unnamed: replicated)."""
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        axis = RULES.get(name) if name is not None else None
        if axis is None or axis in used or mesh_shape.get(axis, 1) <= 1 or size % mesh_shape[axis]:
            spec.append(None)
            continue
        used.add(axis)
        spec.append(axis)
    return PartitionSpec(*spec)


def _logical_names(variable) -> tuple | None:
    return variable.get_metadata().get("out_sharding") if isinstance(variable, nnx.Variable) else None


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def param_specs(state, mesh_shape: Mapping[str, int]):
    """The `state` of `nnx.split` (or its abstract twin) with each parameter's PartitionSpec by `RULES`."""
    return jax.tree.map(lambda var: mesh_spec(_logical_names(var), var.shape, mesh_shape), state, is_leaf=_is_variable)


def param_shardings(state, mesh: Mesh):
    """The NamedSharding of every parameter, shaped like `state` (Variables kept), for jit and device_put."""
    return jax.tree.map(lambda var: var.replace(NamedSharding(mesh, mesh_spec(_logical_names(var), var.shape, mesh.shape))),
                        state, is_leaf=_is_variable)
