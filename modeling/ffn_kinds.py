"""What the accounting knows about each feed-forward kind, in one jax-free registry.

The twin of `modeling/attention_kinds.py` (which says why accounting and modules are two registries):
a kind is an `FfnKind` here (its parameters, matmul FLOPs, hidden width and XLA element-wise cost) and a
factory in `modeling/feedforward.py` under the same name. Config validation, parameter counts, FLOPs,
memory and the XLA-count model all read the entry. The mixture-of-experts kind (`moe`, end of file) is
one more entry: its `active_params` sit below `params`, it runs its expert kind densely on the layers
between routed ones (`layer_kind`), and its matmuls as the kernels run them (capacity padding, XLA's
dense count of a grouped matmul) come from `xla_cost`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

from common.registry import Registry
from common.validation import non_negative, one_of, positive
from common.registry import Registry

if TYPE_CHECKING:
    from modeling.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class FfnShape:
    """One layer's feed-forward block as the accounting sees it."""

    params: int  # stored parameters (weights + biases)
    active_params: int  # parameters a single token's forward pass uses
    forward_flops: float  # matmul FLOPs per token, forward (2 per multiply-add)
    hidden_width: int  # activation elements per token between up and down projections
    gated: bool  # act(gate(x)) * up(x) (one extra d_ff-wide product per token)
    routing_activations: int = 0  # activation elements per token a routed layer keeps beyond hidden_width


@dataclasses.dataclass(frozen=True)
class FfnKind:
    name: str
    shape: Callable[[ModelConfig], FfnShape]
    # (cfg) -> element-wise FLOPs per token XLA counts for the block (activation and gating, fwd + bwd).
    xla_elementwise: Callable[[ModelConfig], float]
    # (cfg, layer) -> the kind that layer runs; None: this kind on every layer (MoE runs dense layers between).
    layer_kind: Callable[[ModelConfig, int], str] | None = None
    # (cfg) -> problems with the fields this kind reads, one line each.
    validate: Callable[[ModelConfig], list[str]] = lambda cfg: []
    # (cfg, seq_len, backend) -> XlaFfnCost; None: the matmuls as `shape` counts them plus `xla_elementwise`.
    xla_cost: Callable[[ModelConfig, int, str], XlaFfnCost] | None = None
    routed: bool = False  # a mixture of other kinds (cannot be an expert itself)
    # (cfg, seq_len, backend) -> what `isoflop count` reports for the kind beyond the shared numbers.
    report: Callable[[ModelConfig, int, str], dict] | None = None


@dataclasses.dataclass(frozen=True)
class XlaFfnCost:
    """One layer's FFN as a compiled step runs it, per token: forward matmul FLOPs (padding included) and
    element-wise FLOPs (fwd + bwd), as XLA's cost analysis counts them."""

    matmul: float
    elementwise: float


REGISTRY: Registry[FfnKind] = Registry("ffn kind", "model.ffn")
register, unregister, names, get = REGISTRY.register, REGISTRY.unregister, REGISTRY.names, REGISTRY.get


def layer_kind(cfg: ModelConfig, layer: int) -> str:
    """The FFN kind layer `layer` runs: model.ffn, or what a routed kind puts between its routed layers."""
    kind = get(cfg.ffn)
    return cfg.ffn if kind.layer_kind is None else kind.layer_kind(cfg, layer)


def ffn_shape(cfg: ModelConfig, layer: int) -> FfnShape:
    return get(layer_kind(cfg, layer)).shape(cfg)


def xla_cost(cfg: ModelConfig, layer: int, seq_len: int, backend: str) -> XlaFfnCost:
    kind = get(layer_kind(cfg, layer))
    if kind.xla_cost is not None:
        return kind.xla_cost(cfg, seq_len, backend)
    return XlaFfnCost(kind.shape(cfg).forward_flops, kind.xla_elementwise(cfg))


def ffn_report(cfg: ModelConfig, seq_len: int, backend: str) -> dict:
    """{model.ffn: the kind's own report} for kinds that have one, else {}."""
    kind = get(cfg.ffn)
    return {} if kind.report is None else {cfg.ffn: kind.report(cfg, seq_len, backend)}


def dense_ffn(cfg: ModelConfig, n_matrices: int) -> FfnShape:
    """`n_matrices` d×d_ff weight matrices (gate/up/down or up/down); a bias on each output if the FFN has
    biases (model.bias=all)."""
    weights = n_matrices * cfg.d_model * cfg.d_ff
    biases = ((n_matrices - 1) * cfg.d_ff + cfg.d_model) if cfg.has_bias("ffn") else 0
    params = weights + biases
    return FfnShape(params, params, 2.0 * weights, cfg.d_ff, gated=n_matrices == 3)


def _dense(name: str, n_matrices: int, xla_per_hidden: float) -> FfnKind:
    """A dense FFN kind; `xla_per_hidden`: FLOPs per hidden (d_ff) feature XLA:CPU counts for the
    activation, the gating product and their gradients (JAX 0.10.2, fp32; XLA duplicates cheap
    element-wise ops into several fusions, so GELU is ~40 rather than a hand count's ~8·3)."""
    return FfnKind(name, shape=lambda cfg: dense_ffn(cfg, n_matrices),
                   xla_elementwise=lambda cfg: xla_per_hidden * cfg.d_ff)


# swiglu/geglu: W_gate, W_up (d×d_ff) and W_down (d_ff×d); gelu/relu2: W_up, W_down.
register(_dense("swiglu", 3, 22.5))
register(_dense("geglu", 3, 46.5))
register(_dense("gelu", 2, 41.0))
register(_dense("relu2", 2, 8.0))


# ----------------------------------------------------------------------------- mixture of experts
# ffn=moe (modeling/moe.py; docs/MOE.md): a router picks moe_top_k of moe_experts experts per token, each
# expert a dense FFN of kind moe_expert_ffn and width d_ff; moe_shared_experts more of the same kind see
# every token; every moe_every-th layer is routed and the layers between run one dense expert-kind FFN.

MOE_SCORES = ("softmax", "sigmoid")
MOE_DISPATCHES = ("auto", "capacity", "dropless")
# moe_dispatch=auto, by backend: measured by `python -m modeling.moe_bench` (docs/MOE.md); others: dropless.
MOE_AUTO_DISPATCH = {"cpu": "capacity"}


def is_moe_layer(cfg: ModelConfig, layer: int) -> bool:
    return (layer + 1) % cfg.moe_every == 0


def moe_dispatch(cfg: ModelConfig, backend: str) -> str:
    """model.moe_dispatch with auto resolved for `backend` ("cpu", "gpu", "tpu")."""
    if cfg.moe_dispatch != "auto":
        return cfg.moe_dispatch
    return MOE_AUTO_DISPATCH.get(backend, "dropless")


def moe_capacity(cfg: ModelConfig, group_tokens: int) -> int:
    """Slots per expert in a group of `group_tokens` tokens (one sequence): ceil(factor·k·T/E), at most T
    (an expert never receives a token twice)."""
    return min(group_tokens, math.ceil(cfg.moe_capacity_factor * cfg.moe_top_k * group_tokens / cfg.moe_experts))


def _expert(cfg: ModelConfig) -> FfnKind:
    return get(cfg.moe_expert_ffn)


def _shared(cfg: ModelConfig) -> FfnShape:
    """The shared experts as one dense FFN moe_shared_experts·d_ff wide (the same function as separate ones)."""
    if not cfg.moe_shared_experts:
        return FfnShape(0, 0, 0.0, 0, gated=False)
    return _expert(cfg).shape(dataclasses.replace(cfg, d_ff=cfg.moe_shared_experts * cfg.d_ff))


def _moe_shape(cfg: ModelConfig) -> FfnShape:
    """Router d×E (fp32, no bias) + E experts + the shared ones; a token uses the router, k experts and
    the shared experts."""
    expert, shared = _expert(cfg).shape(cfg), _shared(cfg)
    router = cfg.d_model * cfg.moe_experts
    return FfnShape(
        params=router + cfg.moe_experts * expert.params + shared.params,
        active_params=router + cfg.moe_top_k * expert.active_params + shared.active_params,
        forward_flops=2.0 * router + cfg.moe_top_k * expert.forward_flops + shared.forward_flops,
        hidden_width=cfg.moe_top_k * expert.hidden_width + shared.hidden_width,
        gated=expert.gated,
        routing_activations=2 * cfg.moe_top_k * cfg.d_model + 2 * cfg.moe_experts,
    )


def moe_rows_per_token(cfg: ModelConfig, seq_len: int, backend: str) -> float:
    """Expert rows the dispatch runs per token: E·C/T slots on the capacity path (padding included), k on
    the dropless one."""
    if moe_dispatch(cfg, backend) == "capacity":
        return cfg.moe_experts * moe_capacity(cfg, seq_len) / seq_len
    return float(cfg.moe_top_k)


# Element-wise FLOPs XLA:CPU counts for an MoE layer, fwd + bwd (JAX 0.10.2, fp32; least squares over
# compiled counts of 6 capacity-path shapes, E 4–16, k 1–2, swiglu/gelu/relu2; worst residual 1.7k
# FLOPs per token and layer, 0.02% of the step): the stacked experts' activation costs this share of the
# dense kind's per-hidden figure (XLA fuses it once instead of duplicating it into several fusions),
# plus a cost per feature of each of the k assignments (gather to the slots, weighted combine, scatter
# of the gradients).
MOE_XLA_EXPERT_ACTIVATION_SHARE = 0.53
MOE_XLA_PER_ASSIGNMENT_FEATURE = 22.0


def _moe_xla_cost(cfg: ModelConfig, seq_len: int, backend: str) -> XlaFfnCost:
    """The MoE layer as compiled. The capacity path runs every expert over all its C slots (padding is
    real work, and counted). The dropless path's `jax.lax.ragged_dot` is *counted* by XLA as a dense
    matmul over every group: E× the k rows per token it computes. The kernel does not do that work (the
    count cannot see the group sizes), so on that path the compiled count overstates the hardware
    FLOPs E-fold for the experts; the model FLOPs are the same on both paths. Measured on the dropless
    path, XLA also counts about E/T·k expert matmuls more per token (the grouped weight gradient),
    which is not modelled: -0.25% at E 4–16, T 128."""
    expert, shared = _expert(cfg), _shared(cfg)
    rows = moe_rows_per_token(cfg, seq_len, backend)
    counted_rows = rows if moe_dispatch(cfg, backend) == "capacity" else cfg.moe_experts * rows
    shared_cfg = dataclasses.replace(cfg, d_ff=max(1, cfg.moe_shared_experts) * cfg.d_ff)
    shared_elementwise = expert.xla_elementwise(shared_cfg) if cfg.moe_shared_experts else 0.0
    matmul = 2.0 * cfg.d_model * cfg.moe_experts + counted_rows * expert.shape(cfg).forward_flops
    elementwise = (MOE_XLA_EXPERT_ACTIVATION_SHARE * rows * expert.xla_elementwise(cfg) + shared_elementwise
                   + MOE_XLA_PER_ASSIGNMENT_FEATURE * cfg.moe_top_k * cfg.d_model)
    return XlaFfnCost(matmul + shared.forward_flops, elementwise)


def moe_report(cfg: ModelConfig, seq_len: int, backend: str) -> dict:
    """What routing costs beyond the model FLOPs: capacity padding is hardware work, not model FLOPs, so it
    is reported here and never enters the budget or MFU."""
    expert = _expert(cfg).shape(cfg)
    layers = sum(is_moe_layer(cfg, layer) for layer in range(cfg.n_layers))
    dispatch = moe_dispatch(cfg, backend)
    padding_rows = moe_rows_per_token(cfg, seq_len, backend) - cfg.moe_top_k
    return {
        "dispatch": dispatch,
        "moe_layers": layers,
        "capacity_per_expert": moe_capacity(cfg, seq_len) if dispatch == "capacity" else None,
        # training (fwd + bwd) FLOPs per token the kernels spend on empty capacity slots
        "padding_flops_per_token": 3 * layers * padding_rows * expert.forward_flops,
    }


def _moe_layer_kind(cfg: ModelConfig, layer: int) -> str:
    return "moe" if is_moe_layer(cfg, layer) else cfg.moe_expert_ffn


def _validate_moe(cfg: ModelConfig) -> list[str]:
    """One line per bad MoE field; relations (k ≤ E) only once both sides are valid integers."""
    problems: list[str] = []
    for field, low in (("moe_experts", 1), ("moe_top_k", 1), ("moe_every", 1), ("moe_shared_experts", 0)):
        value = getattr(cfg, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"model.{field}: {value!r} must be an integer >= {low}")
    if not problems and cfg.moe_top_k > cfg.moe_experts:
        problems.append(f"model.moe_top_k: {cfg.moe_top_k} must be at most model.moe_experts={cfg.moe_experts}")
    if not problems and isinstance(cfg.n_layers, int) and cfg.moe_every > cfg.n_layers:
        problems.append(f"model.moe_every: {cfg.moe_every} exceeds model.n_layers={cfg.n_layers}; no layer would be routed")
    if cfg.moe_expert_ffn not in REGISTRY or REGISTRY.get(cfg.moe_expert_ffn).routed:
        dense = tuple(name for name, kind in REGISTRY.items() if not kind.routed)
        problems += one_of("model.moe_expert_ffn", cfg.moe_expert_ffn, dense)
    problems += one_of("model.moe_score", cfg.moe_score, MOE_SCORES)
    problems += one_of("model.moe_dispatch", cfg.moe_dispatch, MOE_DISPATCHES)
    problems += positive("model.moe_capacity_factor", cfg.moe_capacity_factor)
    for field in ("moe_load_balance_weight", "moe_z_loss_weight"):
        problems += non_negative(f"model.{field}", getattr(cfg, field))
    if not isinstance(cfg.moe_renormalize, bool):
        problems.append(f"model.moe_renormalize: {cfg.moe_renormalize!r} must be true or false")
    return problems


register(FfnKind("moe", shape=_moe_shape, xla_elementwise=lambda cfg: 0.0, layer_kind=_moe_layer_kind,
                 validate=_validate_moe, xla_cost=_moe_xla_cost, routed=True, report=moe_report))
