"""Over-training (Gadre et al. 2024): loss against the token multiplier M = D/N at fixed compute,
L(C, M) = E + (a·M^η + b·M^-η)·C^-η, and the loss an M-times over-trained model gives up against the
compute-optimal multiplier M* = (b/a)^(1/2η) at the same compute."""

from __future__ import annotations

import numpy as np

from analysis.chinchilla import require_points
from analysis.errors import AnalysisError
from analysis.laws import gadre_optimal_multiplier, gadre_overtrain_penalty
from analysis.robust import OBJECTIVES, Objective, fit_log_model, grid, log_sum_exp_terms
from analysis.sources import Dataset

# Parameter order: (log E, log a, log b, η).
GADRE_STARTS = grid(
    np.arange(-1, 1.01, 0.5), np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.array([0.05, 0.1, 0.2, 0.3, 0.5])
)
REPORTED_MULTIPLIERS = (5, 10, 20, 40, 80, 160, 320, 640)
MIN_RUNS, MIN_MULTIPLIERS = 5, 2


def _terms(theta, log_c, log_m):
    log_e, log_a, log_b, eta = (theta[..., i, None] for i in range(4))
    return np.stack(np.broadcast_arrays(log_e, log_a + eta * (log_m - log_c), log_b - eta * (log_m + log_c)), axis=-1)


def fit_gadre(flops: np.ndarray, multiplier: np.ndarray, loss: np.ndarray, starts=GADRE_STARTS, n_best=32,
              objective: Objective = OBJECTIVES["lsq"]) -> dict:
    """Gadre et al. fit by least squares on L (scipy curve_fit in their code) unless told otherwise."""
    log_c, log_m, log_loss = np.log(flops), np.log(multiplier), np.log(loss)

    def residuals(theta):
        total, weights = log_sum_exp_terms(_terms(theta, log_c, log_m))
        jac = np.column_stack(
            [weights[:, 0], weights[:, 1], weights[:, 2], weights[:, 1] * (log_m - log_c) - weights[:, 2] * (log_m + log_c)]
        )
        return total - log_loss, jac

    def residuals_many(thetas):
        return log_sum_exp_terms(_terms(thetas, log_c, log_m))[0] - log_loss

    fit = fit_log_model(residuals, log_loss, starts, objective, residuals_many, n_best)
    log_e, log_a, log_b, eta = fit.theta
    return {"E": np.exp(log_e), "a_M": np.exp(log_a), "b_M": np.exp(log_b), "eta": eta, "objective": fit.objective}


def fit_overtrain(data: Dataset, reference_flops: float | None = None, starts=GADRE_STARTS,
                  objective: Objective = OBJECTIVES["lsq"]) -> dict:
    """The Gadre fit plus, at `reference_flops` (default: the largest budget), the loss given up at each M.

    Four parameters need five runs over two multipliers (Gadre et al. fit theirs to exactly that)."""
    require_points(data.params, data.tokens, MIN_RUNS, "over-training fit")
    if len(np.unique(np.round(np.log(data.multiplier), 3))) < MIN_MULTIPLIERS:
        raise AnalysisError(f"over-training fit needs runs spanning at least {MIN_MULTIPLIERS} token multipliers D/N")
    estimates = fit_gadre(data.flops, data.multiplier, data.loss, starts=starts, objective=objective)
    if not estimates["eta"] > 0:
        raise AnalysisError("over-training fit is degenerate (eta <= 0): loss does not fall with compute")
    reference = float(reference_flops or data.budget.max())
    optimum = gadre_optimal_multiplier(estimates["a_M"], estimates["b_M"], estimates["eta"])
    estimates["M_opt"] = optimum
    for multiplier in REPORTED_MULTIPLIERS:
        estimates[f"penalty_M{multiplier}"] = float(
            gadre_overtrain_penalty(reference, multiplier, estimates["a_M"], estimates["b_M"], estimates["eta"])
        )
    estimates["details"] = {"reference_flops": reference}
    return estimates
