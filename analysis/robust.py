"""Robust least squares as Hoffmann et al. fitted approach 3: the Huber loss of log-loss residuals,
summed over points (not averaged), minimised by L-BFGS from many starts, the best objective kept.

A model supplies `residuals(theta) -> (r, J)` (residuals and their Jacobian, shapes (n,) and (n, p)) and,
optionally, `residuals_many(thetas) -> r` for a batch of starts (shape (k, n)), which lets a large grid of
initialisations be screened in one vectorised pass before L-BFGS runs from the most promising ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np
from scipy import optimize

from analysis.errors import AnalysisError

HUBER_DELTA = 1e-3
# Tight enough that the optimum does not depend on how the objective is scaled (sum vs mean): with
# L-BFGS-B's default ftol/gtol a mean-scaled Huber objective stops early, a known pitfall of the original fit.
_LBFGS_OPTIONS = {"ftol": 1e-15, "gtol": 1e-14, "maxiter": 5000, "maxcor": 20}


@functools.cache
def _threadpools():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it the fits are correct, just slower on small machines
        return None
    return ThreadpoolController()


def single_threaded_blas():
    """A context in which BLAS runs on one thread.

    L-BFGS-B calls BLAS on 5x5 problems; OpenBLAS's thread pool then costs 10-40x the work itself on a
    2-core machine (measured: 0.5 s vs 7-21 s for one approach-3 fit with 50 resamples).
    """
    controller = _threadpools()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Summed by the fitter; delta = inf is least squares (½ r²)."""
    if math.isinf(delta):
        return 0.5 * r**2
    small = np.abs(r) <= delta
    return np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))


def huber_derivative(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    return np.clip(r, -delta, delta)


@dataclasses.dataclass(frozen=True)
class HuberFit:
    theta: np.ndarray
    objective: float  # the summed Huber loss at theta (whatever scale the optimiser saw)
    n_starts: int


def fit_huber(
    residuals: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    starts: np.ndarray,
    delta: float = HUBER_DELTA,
    scale: float = 1.0,
    residuals_many: Callable[[np.ndarray], np.ndarray] | None = None,
    n_best: int | None = None,
) -> HuberFit:
    """Minimise scale · Σ huber(r(θ)) by L-BFGS-B from each start; keep the lowest objective.

    `n_best` (with `residuals_many`) keeps only the starts whose initial objective is lowest; None runs
    L-BFGS from every start. `scale` exists to show the optimum does not depend on it.
    """
    starts = np.atleast_2d(np.asarray(starts, dtype=float))
    if n_best is not None and residuals_many is not None and n_best < len(starts):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a wild start is just screened out
            initial = huber(residuals_many(starts), delta).sum(axis=1)
        initial = np.where(np.isfinite(initial), initial, np.inf)
        starts = starts[np.argsort(initial, kind="stable")[:n_best]]

    def objective(theta):
        r, jac = residuals(theta)
        value = scale * huber(r, delta).sum()
        grad = scale * (jac.T @ huber_derivative(r, delta))
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            return np.inf, np.zeros_like(theta)
        return value, grad

    best_theta, best_value = None, np.inf
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), single_threaded_blas():
        for start in starts:
            result = optimize.minimize(objective, start, jac=True, method="L-BFGS-B", options=_LBFGS_OPTIONS)
            if np.isfinite(result.fun) and result.fun < best_value:
                best_theta, best_value = result.x, float(result.fun)
    if best_theta is None:
        raise FloatingPointError("no start gave a finite objective")
    return HuberFit(theta=best_theta, objective=best_value / scale, n_starts=len(starts))


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a law is fitted by: the residuals of L or of log L, summed through Huber(delta) (inf: squares)."""

    name: str
    on_loss: bool
    delta: float
    description: str


OBJECTIVES = {
    "huber-log": Objective("huber-log", False, HUBER_DELTA, "summed Huber (delta=1e-3) on log L"),
    "lsq": Objective("lsq", True, math.inf, "least squares on L"),
    "huber": Objective("huber", True, HUBER_DELTA, "summed Huber (delta=1e-3) on L"),
}


def objective_named(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise AnalysisError(f"--objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def fit_log_model(
    residuals: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    log_target: np.ndarray,
    starts: np.ndarray,
    objective: Objective = OBJECTIVES["huber-log"],
    residuals_many: Callable[[np.ndarray], np.ndarray] | None = None,
    n_best: int | None = None,
    scale: float = 1.0,
) -> HuberFit:
    """Fit a model written in log space (residuals log L̂ - log L) under `objective`; for one on L the
    residuals become L̂ - L and the Jacobian L̂·J."""
    if not objective.on_loss:
        return fit_huber(residuals, starts, objective.delta, scale, residuals_many, n_best)
    target = np.exp(log_target)

    def on_loss(theta):
        r, jac = residuals(theta)
        predicted = np.exp(r + log_target)
        return predicted - target, predicted[:, None] * jac

    many = None if residuals_many is None else (lambda thetas: np.exp(residuals_many(thetas) + log_target) - target)
    return fit_huber(on_loss, starts, objective.delta, scale, many, n_best)


def grid(*axes) -> np.ndarray:
    """Every combination of the given 1-D axes, one row per start."""
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([axis.ravel() for axis in mesh], axis=1)


def log_sum_exp_terms(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Σ exp(terms) over the last axis and the softmax weights (its gradient)."""
    top = terms.max(axis=-1, keepdims=True)
    weights = np.exp(terms - top)
    total = weights.sum(axis=-1, keepdims=True)
    return (top + np.log(total))[..., 0], weights / total
