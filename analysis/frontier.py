"""A compute-optimal frontier from a published table of optima: one row per budget with N* (and D*), as
many papers publish it. log N* (and log D*) is regressed on log C by least squares, each row weighted
1/σ² when σ, the standard deviation of its (natural) log N*, is given (Besiroglu et al.'s and
Hoffmann et al.'s tables give one); otherwise unweighted, with the scatter estimating the noise."""

from __future__ import annotations

import numpy as np

from analysis.errors import AnalysisError
from analysis.select import numeric_column
from analysis.sources import Dataset


def weighted_line(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """(slope, intercept, their standard errors) of y = slope·x + intercept.

    With σ the standard errors are the σ-weighted ones, (XᵀWX)⁻¹; without, the residual variance scales
    (XᵀX)⁻¹ (NaN with only two points, which any line fits exactly)."""
    design = np.column_stack([x, np.ones_like(x)])
    weights = np.ones_like(x) if sigma is None else 1 / sigma**2
    normal = design.T @ (weights[:, None] * design)
    if np.linalg.cond(normal) > 1e12:
        raise AnalysisError("frontier fit needs optima at 2 or more distinct compute budgets")
    coef = np.linalg.solve(normal, design.T @ (weights * y))
    covariance = np.linalg.inv(normal)
    if sigma is None:
        dof = len(x) - 2
        covariance = covariance * (np.sum((y - design @ coef) ** 2) / dof if dof > 0 else np.nan)
    slope_se, intercept_se = np.sqrt(np.diag(covariance))
    return float(coef[0]), float(coef[1]), float(slope_se), float(intercept_se)


def fit_frontier(data: Dataset, sigma_col: str | None = None) -> dict:
    """N* = k_N·C^a (and D* = k_D·C^b when the table gives D*) through the rows' optima."""
    if len(np.unique(data.flops)) < 2:
        raise AnalysisError(f"frontier fit needs optima at 2 or more distinct compute budgets (got {len(np.unique(data.flops))})")
    sigma = None if sigma_col is None else numeric_column(data, sigma_col, "--sigma-col")
    log_c = np.log(data.flops)
    a, log_k_n, a_se, log_k_n_se = weighted_line(log_c, np.log(data.params), sigma)
    estimates = {"a": a, "k_N": float(np.exp(log_k_n)), "a_se": a_se, "log_k_N_se": log_k_n_se}
    columns = data.conventions.columns or {}
    if "tokens" in columns or not columns:  # a tokens column, or run directories (which record D)
        b, log_k_d, b_se, log_k_d_se = weighted_line(log_c, np.log(data.tokens), sigma)
        estimates.update({"b": b, "k_D": float(np.exp(log_k_d)), "b_se": b_se, "log_k_D_se": log_k_d_se})
    estimates["details"] = {"weighted_by": sigma_col, "n_optima": len(data), "fits_D": "b" in estimates}
    return estimates
