"""μP, the maximal update parameterization (`model.parameterization: mup`), for Adam(W): the one owner of
every parameter's role and of the width multipliers (docs/MUP.md).

Yang et al. 2022, "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer"
(arXiv 2203.03466), Table 8: the formulation with a 1/width multiplier on the output layer, chosen because
input and output weights then share their init and learning-rate scaling, so a tied embedding is one
consistent parameter (it is what microsoft/mup's MuReadout and MuSharedReadout implement, mup/layer.py).
With m = d_model / mup_base_width, relative to SP (this codebase's init and one learning rate):

| role   | parameters                                            | init std  | Adam LR | forward    |
|--------|-------------------------------------------------------|-----------|---------|------------|
| input  | token and position embeddings, every bias, norm gains | × 1       | × 1     | × 1        |
| hidden | every kernel: q, k, v, out, all FFN kinds, experts    | × 1/√m    | × 1/m   | × 1        |
| output | the untied head, the MoE router (d_model → few)       | × 1       | × 1     | × 1/m      |

plus softmax attention logits q·k·√(base head width)/head width instead of q·k/√(head width) (the mup
README: 1/d, not 1/√d; a head width that does not grow with the model keeps the SP scale). At m = 1 every
multiplier is 1, so μP at its base width is SP exactly. Weight decay is left to the schedule's rate (the
μP LR multiplier scales only the Adam step): microsoft/mup's MuAdamW multiplies the weight decay of the
matrix-like groups by the width multiplier it divides their LR by (mup/optim.py), the "independent"
decay Kosson et al. 2025 (arXiv 2510.19093) find μP needs for the learning rate to transfer.

Roles come from the parameter's path, by the name of the leaf, so they hold for unrolled and scanned
layer stacks alike; an unnamed kind of parameter is an error, not a silent default. Jax-free (config
validation and accounting import this module's neighbours without jax).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modeling.config import ModelConfig

INPUT, HIDDEN, OUTPUT = "input", "hidden", "output"
_INPUT_LEAVES = ("embedding", "bias", "scale")  # tables, biases, norm gains (LayerNorm's bias too)
_OUTPUT_MODULES = ("router",)  # a kernel from d_model to a width that does not grow (the experts)


def role(path: str) -> str:
    """input | hidden | output of a parameter named by its '/'-joined path (a trailing nnx 'value' ignored)."""
    parts = path.split("/")
    if len(parts) > 1 and parts[-1] == "value":
        parts = parts[:-1]
    leaf = parts[-1]
    if leaf in _INPUT_LEAVES:
        return INPUT
    if leaf == "head":
        return OUTPUT
    if leaf == "kernel":
        return OUTPUT if any(part in _OUTPUT_MODULES for part in parts) else HIDDEN
    raise ValueError(f"parameter {path!r} has no μP role (input, hidden or output): name it in modeling/mup.py")


def width_multiplier(cfg: ModelConfig) -> float:
    """m = d_model / mup_base_width under μP; 1 under SP."""
    return cfg.d_model / cfg.mup_base_width if cfg.parameterization == "mup" else 1.0


def hidden_init_std(cfg: ModelConfig) -> float:
    """The init std of hidden kernels (before the residual-output depth factor): fan-in scaling, var ∝ 1/m."""
    return cfg.init_std / math.sqrt(width_multiplier(cfg))


def adam_multiplier(cfg: ModelConfig, path: str) -> float:
    """What the Adam step of the parameter at `path` is multiplied by: 1/m for hidden kernels, else 1."""
    return 1.0 / width_multiplier(cfg) if role(path) == HIDDEN else 1.0


def output_multiplier(cfg: ModelConfig) -> float:
    """What output-role layers multiply their result by (logits, router logits): 1/m."""
    return 1.0 / width_multiplier(cfg)


def query_multiplier(cfg: ModelConfig) -> float:
    """What the queries are multiplied by so that the softmax's q·k/√hd becomes q·k·√(base hd)/hd."""
    if cfg.parameterization != "mup" or cfg.mup_base_head_dim is None:
        return 1.0
    return math.sqrt(cfg.mup_base_head_dim / cfg.head_size)


def scale(x, multiplier: float):
    """x · multiplier, or x itself for a multiplier of 1 (SP, or μP at its base), so that SP's traced
    graph, its compiled FLOP count and its bits stay what they were."""
    return x if multiplier == 1.0 else x * multiplier
