"""Kaplan et al. 2020: single-variable power laws on the compute frontier and the combined L(N, D).

L(N) = (N_c/N)^α_N, L(D) = (D_c/D)^α_D and L(C_min) = (C_c/C)^α_C are fitted through the compute
frontier (the lowest-loss run of each iso-FLOP budget with at least two runs), so they describe the frontier runs rather than
converged models. L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D is fitted on every run. All fits use the
same Huber objective on log L as approach 3.
"""

from __future__ import annotations

import numpy as np

from analysis.chinchilla import frontier_rows, require_points
from analysis.errors import AnalysisError
from analysis.robust import fit_huber, grid, log_sum_exp_terms
from analysis.sources import Dataset


def fit_power_law(x: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """L = (x_c / x)^α, i.e. log L = α (log x_c - log x): returns (α, x_c)."""
    log_x, log_loss = np.log(x), np.log(loss)
    slope, intercept = np.polyfit(log_x, log_loss, 1)  # ordinary least squares as the start
    alpha0 = -slope if slope < 0 else 0.05
    start = np.array([alpha0, intercept / alpha0])

    def residuals(theta):
        alpha, log_xc = theta
        return alpha * (log_xc - log_x) - log_loss, np.column_stack([log_xc - log_x, np.full_like(log_x, alpha)])

    alpha, log_xc = fit_huber(residuals, start).theta
    return float(alpha), float(np.exp(log_xc))


def _joint_terms(theta, log_n, log_d):
    alpha_n, alpha_d, log_nc, log_dc = (theta[..., i, None] for i in range(4))
    return np.stack(np.broadcast_arrays(alpha_n / alpha_d * (log_nc - log_n), log_dc - log_d), axis=-1)


JOINT_STARTS = grid(
    np.array([0.03, 0.08, 0.2, 0.5]), np.array([0.03, 0.1, 0.3, 0.6]),
    np.log([1e8, 1e11, 1e14, 1e17]), np.log([1e8, 1e11, 1e14, 1e17]),
)


def fit_joint(params: np.ndarray, tokens: np.ndarray, loss: np.ndarray, starts=JOINT_STARTS, n_best=8) -> dict:
    """Kaplan's L(N, D), parameters (α_N, α_D, log N_c, log D_c), log L = α_D · LSE(...)."""
    log_n, log_d, log_loss = np.log(params), np.log(tokens), np.log(loss)

    def residuals(theta):
        alpha_n, alpha_d, log_nc, _ = theta
        terms = _joint_terms(theta, log_n, log_d)
        total, weights = log_sum_exp_terms(terms)
        jac = np.column_stack([
            weights[:, 0] * (log_nc - log_n),
            total - weights[:, 0] * terms[:, 0],
            weights[:, 0] * alpha_n,
            weights[:, 1] * alpha_d,
        ])
        return alpha_d * total - log_loss, jac

    def residuals_many(thetas):
        total, _ = log_sum_exp_terms(_joint_terms(thetas, log_n, log_d))
        return thetas[:, 1, None] * total - log_loss

    fit = fit_huber(residuals, starts, residuals_many=residuals_many, n_best=n_best)
    alpha_n, alpha_d, log_nc, log_dc = fit.theta
    return {"alpha_N_joint": alpha_n, "alpha_D_joint": alpha_d, "N_c_joint": np.exp(log_nc),
            "D_c_joint": np.exp(log_dc), "objective_joint": fit.objective}


def fit_kaplan(data: Dataset, joint_starts=JOINT_STARTS, budgets: tuple[float, ...] | None = None) -> dict:
    """`budgets`: the frontier's budgets, as `chinchilla.frontier_rows` takes them (a bootstrap fixes them)."""
    best = frontier_rows(data, budgets)
    if len(best) < 3:
        raise AnalysisError("Kaplan fits need at least 3 iso-FLOP budgets with >= 2 distinct (N, D) points for the "
                            f"frontier (got {len(best)})")
    require_points(data.params, data.tokens, 6, "Kaplan's L(N, D)")
    frontier_loss = data.loss[best]
    alpha_n, n_c = fit_power_law(data.params[best], frontier_loss)
    alpha_d, d_c = fit_power_law(data.tokens[best], frontier_loss)
    alpha_c, c_c = fit_power_law(data.flops[best], frontier_loss)
    estimates = {"alpha_N": alpha_n, "N_c": n_c, "alpha_D": alpha_d, "D_c": d_c, "alpha_C": alpha_c, "C_c": c_c}
    estimates.update(fit_joint(data.params, data.tokens, data.loss, starts=joint_starts))
    estimates["details"] = {"frontier_rows": best.tolist(), "frontier_budgets": [float(data.budget[i]) for i in best]}
    return estimates
