"""Names that several packages agree on, defined once.

A summary.json written by `train/` and read by `analysis/` and `launch/` keys its parameter counts and
FLOP counts by these names, configs validate against them, and the CLIs offer them as choices.
"""

from __future__ import annotations

# FLOP conventions a budget can be spent under (docs/CONVENTIONS.md has each formula and its source).
BUDGET_FLOP_CONVENTIONS = ("6N", "6N_attn", "chinchilla")
# Every per-token FLOP count a summary records: the budget conventions plus XLA's count of the step.
FLOP_COUNTS = BUDGET_FLOP_CONVENTIONS + ("compiled",)

# Which parameter count is "N": non_embedding (Kaplan; an untied head counts), total, active (MoE).
PARAM_KINDS = ("non_embedding", "total", "active")

# Precision policy -> the dtype its matmuls run in (what MFU is measured against).
PRECISION_COMPUTE_DTYPES = {"fp32": "fp32", "bf16_mixed": "bf16", "bf16": "bf16", "fp8": "fp8"}
PRECISIONS = tuple(PRECISION_COMPUTE_DTYPES)
