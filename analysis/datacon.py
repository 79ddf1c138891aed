"""Data-constrained scaling (Muennighoff et al. 2023): repeated tokens, and parameters in excess of what
the unique data can use, are worth less than fresh ones.

With U unique tokens seen for `epochs` epochs (R_D = epochs - 1 repetitions), the effective data is
D' = U + U·R_D*·(1 - exp(-R_D/R_D*)); with U_N = min(N, N_opt(U)) and R_N = N/U_N - 1, the effective
parameters are N' = U_N + U_N·R_N*·(1 - exp(-R_N/R_N*)) (`laws.DataConstrainedLaw`). As in the paper,
L(N, D) is fitted first on the single-epoch runs (approach 3), then R_D* and R_N* together on the runs
that repeat data, with that L(N, D) held fixed. R_N* is estimated only when some of those runs have
parameters in excess of N_opt(U); otherwise nothing in the data speaks to it, and it is not reported.
"""

from __future__ import annotations

import numpy as np

from analysis.chinchilla import HOFFMANN_STARTS, MIN_POINTS_APPROACH3, fit_law, require_points
from analysis.errors import AnalysisError, DegenerateFit
from analysis.laws import ChinchillaLaw, effective_tokens
from analysis.robust import OBJECTIVES, Objective, fit_log_model, grid
from analysis.sources import Dataset

R_STAR_STARTS = np.log([[1.0], [5.0], [15.0], [50.0], [200.0]])
R_STARS_STARTS = grid(*(np.log([1.0, 5.0, 15.0, 50.0, 200.0]),) * 2)  # (log R_D*, log R_N*)


def _decayed(unique, repeats, log_r_star):
    """U·(1 + R*·(1 - exp(-R/R*))) and its derivative in log R*."""
    r_star = np.exp(log_r_star)
    decay = np.exp(-repeats / r_star)
    return unique * (1 + r_star * (1 - decay)), unique * ((1 - decay) - repeats / r_star * decay) * r_star


def fit_decay(law: ChinchillaLaw, params, tokens, epochs, loss, objective: Objective = OBJECTIVES["huber-log"],
              with_params: bool = True) -> tuple[float, float | None]:
    """(R_D*, R_N*) minimising `objective` (default: summed Huber on log L) of L(N', D') on repeated runs;
    R_N* is None when no run has excess parameters (or `with_params` is off)."""
    unique, log_loss = tokens / epochs, np.log(loss)
    unique_params = np.minimum(params, law.params_for_tokens(unique))
    excess = np.maximum(params / unique_params - 1, 0)
    fit_params = with_params and bool(np.any(excess > 1e-9))

    def residuals(theta):
        d_eff, d_grad = _decayed(unique, epochs - 1, theta[0])
        n_eff, n_grad = _decayed(unique_params, excess, theta[1]) if fit_params else (params, None)
        predicted = law.loss(n_eff, d_eff)
        columns = [-law.beta * law.B * d_eff ** (-law.beta - 1) * d_grad / predicted]
        if fit_params:
            columns.append(-law.alpha * law.A * n_eff ** (-law.alpha - 1) * n_grad / predicted)
        return np.log(predicted) - log_loss, np.column_stack(columns)

    starts = R_STARS_STARTS if fit_params else R_STAR_STARTS
    theta = np.exp(fit_log_model(residuals, log_loss, starts, objective).theta)
    return float(theta[0]), (float(theta[1]) if fit_params else None)


def fit_datacon(data: Dataset, starts: np.ndarray = HOFFMANN_STARTS, n_best: int | None = 64,
                objective: Objective = OBJECTIVES["huber-log"], need_r_n: bool | None = None) -> dict:
    """`need_r_n` (a bootstrap resample): whether R_N* must be estimated, as it was in the point fit;
    a resample that cannot estimate what the point fit did is degenerate."""
    epochs = data.extra("epochs")
    repeated = np.isfinite(epochs) & (epochs > 1 + 1e-9)
    if not repeated.any():
        raise AnalysisError("data-constrained fit needs runs that repeat data (epochs > 1); none do")
    single = ~repeated
    require_points(data.params[single], data.tokens[single], MIN_POINTS_APPROACH3,
                   "data-constrained fit's L(N, D) on single-epoch runs")
    law, _ = fit_law(data.params[single], data.tokens[single], data.loss[single], starts=starts, n_best=n_best,
                     objective=objective)
    r_d_star, r_n_star = fit_decay(law, data.params[repeated], data.tokens[repeated], epochs[repeated],
                                   data.loss[repeated], objective, with_params=need_r_n is not False)
    if need_r_n and r_n_star is None:
        raise DegenerateFit("no run with excess parameters to estimate R_N*")
    four_epochs = float(effective_tokens(4.0, 4.0, r_d_star) / 4.0)
    estimates = {"R_D_star": r_d_star, **law.as_dict(), "worth_of_4_epochs": four_epochs}
    if r_n_star is not None:
        estimates["R_N_star"] = r_n_star
    unique = data.tokens[repeated] / epochs[repeated]
    n_excess = int(np.sum(data.params[repeated] > law.params_for_tokens(unique) * (1 + 1e-9)))
    estimates["details"] = {"n_single_epoch": int(single.sum()), "n_repeated": int(repeated.sum()),
                            "n_excess_params": n_excess}
    return estimates
