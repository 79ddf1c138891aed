"""Hoffmann et al. 2022 ("Chinchilla"): the three approaches to the compute-optimal N_opt ∝ C^a, D_opt ∝ C^b.

1. Minimum loss over the runs at each FLOP level, then log-log fits of N and D against C.
2. A parabola of loss in log N (and in log D) through each iso-FLOP budget, its minimum, then log-log fits.
   Biased when the grid is not centred on the minimum; `grid_asymmetry` reports how off-centre it is.
3. L(N, D) = E + A/N^α + B/D^β fitted on every run (log-sum-exp form of log L, Huber δ=1e-3, summed,
   L-BFGS from Hoffmann's grid of starts), then a = β/(α+β), b = α/(α+β).

Each `fit_approach*` takes a Dataset and returns a flat dict of numbers (what the bootstrap resamples)
plus, under "details", what the tables and plots show.
"""

from __future__ import annotations

import numpy as np

from analysis.errors import AnalysisError, DegenerateFit
from analysis.laws import ChinchillaLaw
from analysis.robust import OBJECTIVES, Objective, fit_log_model, grid, log_sum_exp_terms
from analysis.sources import Dataset

# Hoffmann et al. Appendix D.2: α, β ∈ {0, 0.5, ..., 2}, e ∈ {-1, -0.5, ..., 1}, a, b ∈ {0, 5, ..., 25}.
# Parameter order everywhere: (a = log A, b = log B, e = log E, α, β).
HOFFMANN_STARTS = grid(
    np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5),
    np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5),
)
MIN_POINTS_APPROACH3 = 6


# ------------------------------------------------------------------------------------ distinct points


def distinct_points(params: np.ndarray, tokens: np.ndarray) -> int:
    """How many different (N, D) pairs there are. Repeats of one (N, D) (seeds, copied rows) say nothing
    about the law's shape, so every minimum-points rule counts pairs, not rows: eight copies of one run
    would otherwise "fit" with zero-width intervals."""
    return len(np.unique(np.column_stack([params, tokens]), axis=0)) if len(params) else 0


def require_points(params: np.ndarray, tokens: np.ndarray, minimum: int, what: str) -> None:
    count = distinct_points(params, tokens)
    if count < minimum:
        raise AnalysisError(f"{what} needs at least {minimum} distinct (N, D) points (got {count} from {len(params)} "
                            "rows; rows with the same N and D count once)")


# ------------------------------------------------------------------------------------------ approach 3


def _approach3_terms(theta, log_n, log_d):
    log_a, log_b, log_e, alpha, beta = (theta[..., i, None] for i in range(5))
    return np.stack(np.broadcast_arrays(log_a - alpha * log_n, log_b - beta * log_d, log_e), axis=-1)


def approach3_model(log_n, log_d, log_loss):
    """(residuals, residuals_many) of log L̂ - log L for the Huber fitter."""

    def residuals(theta):
        predicted, weights = log_sum_exp_terms(_approach3_terms(theta, log_n, log_d))
        jac = np.column_stack(
            [weights[:, 0], weights[:, 1], weights[:, 2], -weights[:, 0] * log_n, -weights[:, 1] * log_d]
        )
        return predicted - log_loss, jac

    def residuals_many(thetas):
        predicted, _ = log_sum_exp_terms(_approach3_terms(thetas, log_n, log_d))
        return predicted - log_loss

    return residuals, residuals_many


def fit_law(
    params: np.ndarray,
    tokens: np.ndarray,
    loss: np.ndarray,
    starts: np.ndarray = HOFFMANN_STARTS,
    n_best: int | None = None,
    scale: float = 1.0,
    objective: Objective = OBJECTIVES["huber-log"],
) -> tuple[ChinchillaLaw, float]:
    """The approach-3 fit of L(N, D) on raw arrays: the law and the value of `objective` there."""
    log_loss = np.log(loss)
    residuals, residuals_many = approach3_model(np.log(params), np.log(tokens), log_loss)
    fit = fit_log_model(residuals, log_loss, starts, objective, residuals_many, n_best, scale)
    log_a, log_b, log_e, alpha, beta = fit.theta
    return ChinchillaLaw(E=np.exp(log_e), A=np.exp(log_a), B=np.exp(log_b), alpha=alpha, beta=beta), fit.objective


def law_theta(law: ChinchillaLaw) -> np.ndarray:
    """The optimiser's parameters of a law, to warm-start a refit (the bootstrap does)."""
    tiny = np.finfo(float).tiny  # a fitted E can underflow to 0
    return np.array([np.log(max(law.A, tiny)), np.log(max(law.B, tiny)), np.log(max(law.E, tiny)), law.alpha, law.beta])


def fit_approach3(data: Dataset, starts: np.ndarray = HOFFMANN_STARTS, n_best: int | None = None, **kwargs) -> dict:
    require_points(data.params, data.tokens, MIN_POINTS_APPROACH3, "approach 3")
    law, objective = fit_law(data.params, data.tokens, data.loss, starts=starts, n_best=n_best, **kwargs)
    if not law.alpha + law.beta > 0:
        raise AnalysisError("approach 3 fit is degenerate (alpha + beta <= 0): the data do not constrain L(N, D)")
    return {**law.as_dict(), "a": law.a, "b": law.b, "G": law.G, "objective": objective}


# --------------------------------------------------------------------------------------- approaches 1, 2


def _loglog_slope(log_c: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    """Least-squares y = k·C^slope in log space: (slope, k)."""
    slope, intercept = np.polyfit(log_c, log_y, 1)
    return float(slope), float(np.exp(intercept))


def _require_budgets(count: int, approach: str) -> None:
    if count < 2:
        raise AnalysisError(f"approach {approach} needs at least 2 iso-FLOP budgets (got {count})")


def frontier_budgets(data: Dataset) -> tuple[float, ...]:
    """The budgets with at least two distinct (N, D) points: one point is no minimum."""
    return tuple(float(data.budget[group[0]]) for group in data.budget_groups()
                 if distinct_points(data.params[group], data.tokens[group]) >= 2)


def frontier_rows(data: Dataset, budgets: tuple[float, ...] | None = None) -> np.ndarray:
    """The lowest-loss run of each budget in `budgets` (default: `frontier_budgets(data)`).

    A bootstrap passes the point fit's budgets: a resample that drew one run of a budget twice keeps the
    budget (its minimum is that run) rather than dropping it and fitting through fewer budgets.
    """
    budgets = frontier_budgets(data) if budgets is None else budgets
    return np.array(
        [group[np.argmin(data.loss[group])] for group in data.budget_groups() if data.budget[group[0]] in budgets],
        dtype=int,
    )


def fit_approach1(data: Dataset, budgets: tuple[float, ...] | None = None) -> dict:
    """Lowest-loss run of each budget; N_opt ∝ C^a and D_opt ∝ C^b through those runs."""
    best = frontier_rows(data, budgets)
    _require_budgets(len(best), "1 (with >= 2 distinct (N, D) points each)")
    log_c = np.log(data.flops[best])
    a, k_n = _loglog_slope(log_c, np.log(data.params[best]))
    b, k_d = _loglog_slope(log_c, np.log(data.tokens[best]))
    details = {
        "frontier": [
            {"flops": data.flops[i], "params": data.params[i], "tokens": data.tokens[i], "loss": data.loss[i],
             "run_id": str(data.run_ids[i])}
            for i in best
        ],
        "n_budgets_skipped": len(data.budget_groups()) - len(best),
        "frontier_budgets": [float(data.budget[i]) for i in best],
    }
    return {"a": a, "b": b, "k_N": k_n, "k_D": k_d, "details": details}


def _parabola_minimum(x: np.ndarray, loss: np.ndarray) -> tuple[float, float] | None:
    """(x at the minimum, loss there) of a least-squares parabola in x, or None if it opens downward."""
    curvature, slope, offset = np.polyfit(x, loss, 2)
    if curvature <= 0:
        return None
    x_min = -slope / (2 * curvature)
    return x_min, offset - slope**2 / (4 * curvature)


def grid_asymmetry(x: np.ndarray, x_min: float) -> float:
    """Where the minimum sits in the sampled span of x: 0 centred, ±1 at the edges, beyond ±1 extrapolated."""
    low, high = x.min(), x.max()
    return float(2 * (x_min - low) / (high - low) - 1)


def window_rows(data: Dataset, group: np.ndarray, window: int | None) -> np.ndarray:
    """The rows of a budget its parabola is fitted to: all, or those of the `window` model sizes centred
    (in log N order) on the lowest loss, shifted inwards at the grid's edges so that there are still
    `window` sizes. Counting sizes, not rows, keeps a resample's repeated draws of one run from
    narrowing the window."""
    ordered = group[np.argsort(data.params[group], kind="stable")]
    sizes = np.unique(data.params[ordered])
    if window is None or window >= len(sizes):
        return ordered
    lowest = int(np.searchsorted(sizes, data.params[ordered][np.argmin(data.loss[ordered])]))
    start = min(max(lowest - (window - 1) // 2, 0), len(sizes) - window)
    return ordered[np.isin(data.params[ordered], sizes[start:start + window])]


def _budget_parabola(data: Dataset, group: np.ndarray, window: int | None) -> tuple[dict | None, str | None]:
    """One budget's parabola fit, or (None, why it could not be made)."""
    rows = window_rows(data, group, window)
    if len(np.unique(data.params[rows])) < 3:
        return None, "fewer than 3 model sizes"
    log_n, log_d, loss = np.log(data.params[rows]), np.log(data.tokens[rows]), data.loss[rows]
    in_n, in_d = _parabola_minimum(log_n, loss), _parabola_minimum(log_d, loss)
    if in_n is None or in_d is None:
        return None, "parabola opens downward"
    return {
        "budget": float(data.budget[group[0]]),
        "flops": float(np.exp(np.log(data.flops[rows]).mean())),
        "n_runs": int(len(rows)),
        "n_runs_budget": int(len(group)),
        "runs_used": [str(run_id) for run_id in data.run_ids[rows]],
        "params_used": [float(data.params[rows].min()), float(data.params[rows].max())],
        "params_opt": float(np.exp(in_n[0])),
        "tokens_opt": float(np.exp(in_d[0])),
        "loss_min": float(in_n[1]),
        "parabola_N": np.polyfit(log_n, loss, 2).tolist(),
        "asymmetry_N": grid_asymmetry(log_n, in_n[0]),
        "asymmetry_D": grid_asymmetry(log_d, in_d[0]),
        "log10_span_N": float((log_n.max() - log_n.min()) / np.log(10)),
    }, None


def approach2_budgets(data: Dataset, window: int | None = None, budgets: tuple[float, ...] | None = None,
                      inside: bool = True) -> list[dict]:
    """The per-budget parabola fits: minimum in log N and in log D, and where each sits in the points used.

    Without `budgets` (the point fit) a budget whose parabola cannot be made is skipped. With them (a
    bootstrap resample) every one of those budgets must give an upward parabola, and (`inside`) one whose
    minimum lies within the points it used, else the resample is degenerate (DegenerateFit). A case
    resample that lost a budget's edge sizes extrapolates noise, so it needs `inside`; a residual resample
    keeps the design, and a minimum it moves past the edge is the uncertainty the interval must show."""
    fits = []
    for group in data.budget_groups():
        label = float(data.budget[group[0]])
        if budgets is not None and label not in budgets:
            continue
        fit, why = _budget_parabola(data, group, window)
        if (budgets is not None and inside and fit is not None
                and max(abs(fit["asymmetry_N"]), abs(fit["asymmetry_D"])) > 1):
            fit, why = None, "minimum outside the grid"
        if fit is None and budgets is not None:
            raise DegenerateFit(why)
        if fit is not None:
            fits.append(fit)
    return fits


def fit_approach2(data: Dataset, window: int | None = None, budgets: tuple[float, ...] | None = None,
                  inside: bool = True) -> dict:
    """Approach 2 over every usable budget, or (a resample) over exactly the point fit's `budgets`."""
    fits = approach2_budgets(data, window, budgets, inside)
    _require_budgets(len(fits), "2 (with >= 3 model sizes and an upward parabola each)")
    log_c = np.log([budget["flops"] for budget in fits])
    a, k_n = _loglog_slope(log_c, np.log([budget["params_opt"] for budget in fits]))
    b, k_d = _loglog_slope(log_c, np.log([budget["tokens_opt"] for budget in fits]))
    asymmetry = np.array([budget["asymmetry_N"] for budget in fits])
    return {
        "a": a, "b": b, "k_N": k_n, "k_D": k_d,
        "mean_asymmetry_N": float(asymmetry.mean()),
        "max_abs_asymmetry_N": float(np.abs(asymmetry).max()),
        "details": {"budgets": fits, "n_budgets_skipped": len(data.budget_groups()) - len(fits), "window": window,
                    "fit_budgets": [budget["budget"] for budget in fits]},
    }


def approach2_residual_model(data: Dataset, point: dict, window: int | None = None):
    """(fitted, leverage, strata) of the point fit's parabolas in log N, for the residual bootstrap.

    Each fitted budget's rows are those its parabola used, its fitted losses that parabola (the point fit's
    `parabola_N`); a resample refits both parabolas (in log N and in log D) to the same design with new
    losses. Rows of other budgets get NaN and keep their loss.
    """
    fitted, leverage = np.full(len(data), np.nan), np.full(len(data), np.nan)
    parabolas = {budget["budget"]: budget["parabola_N"] for budget in point["details"]["budgets"]}
    strata = []
    for group in data.budget_groups():
        label = float(data.budget[group[0]])
        if label not in parabolas:
            continue
        rows = window_rows(data, group, window)
        log_n = np.log(data.params[rows])
        fitted[rows] = np.polyval(parabolas[label], log_n)
        design = np.vander(log_n, 3)
        leverage[rows] = np.einsum("ij,ji->i", design, np.linalg.pinv(design))  # diagonal of the hat matrix
        strata.append(rows)
    return fitted, leverage, strata


def frontier_band(samples: dict[str, np.ndarray], flops, level: float = 0.95):
    """Percentile band of N_opt(C) and D_opt(C) over bootstrap draws of an approach-3 law.

    Returns (n_low, n_high, d_low, d_high), each shaped like `flops`; None without draws.
    """
    if not all(key in samples and len(samples[key]) for key in ("A", "B", "alpha", "beta")):
        return None
    laws = ChinchillaLaw(E=samples["E"], A=samples["A"], B=samples["B"], alpha=samples["alpha"], beta=samples["beta"])
    c6 = np.asarray(flops, dtype=float)[..., None] / 6
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        n_opt = laws.G * c6**laws.a
        d_opt = c6**laws.b / laws.G
    tail = 50 * (1 - level)
    n_low, n_high = np.nanpercentile(n_opt, [tail, 100 - tail], axis=-1)
    d_low, d_high = np.nanpercentile(d_opt, [tail, 100 - tail], axis=-1)
    return n_low, n_high, d_low, d_high
