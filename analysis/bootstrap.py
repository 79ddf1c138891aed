"""Percentile bootstrap: refit on resampled data, made one of two ways (a `Resampler`).

- runs: rows (runs) drawn with replacement, optionally within each iso-FLOP budget (the case bootstrap);
- residuals: the design kept fixed and each budget's fitted losses given back residuals drawn with
  replacement from that budget (Davison & Hinkley 1997, "Bootstrap Methods and their Application",
  section 6.2.3, algorithm 6.3; Efron & Tibshirani 1993, section 9.5). An isoFLOP grid is a designed
  experiment: its model sizes are chosen, not sampled, and drawing runs leaves a resample without the
  edge sizes that pin a parabola's minimum, which the case bootstrap then has to discard.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

from analysis.errors import AnalysisError, DegenerateFit
from analysis.robust import single_threaded_blas
from analysis.sources import Dataset


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    samples: dict[str, np.ndarray]  # one value per successful resample
    n_resamples: int
    n_failed: int
    seed: int
    resampled: str  # what was drawn with replacement, for the notes
    degenerate: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> resamples (in n_failed)

    @property
    def reliable(self) -> bool:
        """At least half the resamples were fitted; otherwise percentiles of the few that were mislead."""
        return self.n_failed <= self.n_resamples / 2

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """The percentile interval holding `level` (a fraction) of the draws; NaN when withheld."""
        values = self.samples.get(name)
        if not self.reliable or values is None or not np.isfinite(values).any():
            return (float("nan"), float("nan"))
        tail = 50 * (1 - level)
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        return (float(low), float(high))

    def standard_error(self, name: str) -> float:
        """The standard deviation of the draws (Epoch-style bootstrap standard error); NaN when withheld."""
        values = self.samples.get(name)
        if not self.reliable or values is None or np.sum(np.isfinite(values)) < 2:
            return float("nan")
        with np.errstate(over="ignore"):  # a free scale (k_D) can run to 1e70 in a few draws: its SE is inf
            return float(np.nanstd(values, ddof=1))

    def note(self, level: float = 0.95) -> str:
        text = f"{100 * level:g}% intervals: percentile bootstrap, {self.n_resamples} resamples of {self.resampled}, seed {self.seed}"
        if not self.reliable:
            text += (f"; intervals withheld: only {self.n_resamples - self.n_failed} resamples could be fitted "
                     "(too few runs to resample; add runs per budget, or for approach 2 see --resample residuals)")
        elif self.n_failed > sum(self.degenerate.values()):
            text += f" ({self.n_failed - sum(self.degenerate.values())} resamples could not be fitted and were left out)"
        if self.degenerate:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.degenerate.items()))
            text += f"; {sum(self.degenerate.values())} degenerate resamples counted and left out ({reasons})"
        return text


RESAMPLING = ("runs", "residuals")


@dataclasses.dataclass(frozen=True)
class Resampler:
    """How one bootstrap draw is made: `draw(rng)` gives a resampled Dataset; `description` names it."""

    draw: Callable[[np.random.Generator], Dataset]
    description: str


def resample_indices(rng: np.random.Generator, n_rows: int, strata: list[np.ndarray] | None) -> np.ndarray:
    if strata is None:
        return rng.integers(0, n_rows, n_rows)
    return np.concatenate([group[rng.integers(0, len(group), len(group))] for group in strata])


def resample_runs(data: Dataset, within_budgets: bool = False) -> Resampler:
    """The case bootstrap: rows drawn with replacement (within each budget when `within_budgets`)."""
    strata = data.budget_groups() if within_budgets else None
    return Resampler(lambda rng: data.take(resample_indices(rng, len(data), strata)),
                     "runs within each iso-FLOP budget" if within_budgets else "runs (rows)")


def resample_residuals(data: Dataset, fitted: np.ndarray, leverage: np.ndarray, strata: list[np.ndarray],
                       model: str) -> Resampler:
    """The residual bootstrap of a fixed design: loss* = fitted + r*, r* drawn from the same stratum.

    Residuals are leverage-adjusted and centred, r = (L - fitted)/sqrt(1 - h) minus their mean (Davison &
    Hinkley eq. 6.9), so that their spread estimates the noise rather than the smaller spread a
    least-squares fit leaves. Rows in no stratum keep their loss.
    """
    pools = []
    for rows in strata:
        if np.any(leverage[rows] >= 1 - 1e-9):
            raise AnalysisError(f"residual bootstrap: a {model} needs more runs than parameters in each budget "
                                f"(a budget has {len(rows)} runs and no residual degrees of freedom)")
        modified = (data.loss[rows] - fitted[rows]) / np.sqrt(1 - leverage[rows])
        pools.append(modified - modified.mean())

    def draw(rng: np.random.Generator) -> Dataset:
        loss = data.loss.copy()
        for rows, pool in zip(strata, pools):
            loss[rows] = fitted[rows] + pool[rng.integers(0, len(pool), len(rows))]
        return dataclasses.replace(data, loss=loss)

    return Resampler(draw, f"residuals about each budget's {model} (fixed design)")


def bootstrap(
    estimator: Callable[[Dataset], dict],
    resampler: Resampler,
    n_resamples: int,
    seed: int = 0,
    progress: bool = False,
    label: str = "bootstrap",
) -> BootstrapResult:
    """Run `estimator` on `n_resamples` draws of `resampler`; keep the numeric entries of what it returns."""
    if n_resamples < 0:
        raise AnalysisError(f"--bootstrap must be >= 0 (got {n_resamples})")
    if seed < 0:  # numpy refuses negative seeds with a traceback
        raise AnalysisError(f"--seed must be >= 0 (got {seed})")
    rng = np.random.default_rng(seed)
    collected: dict[str, list[float]] = {}
    failed = 0
    iterations = range(n_resamples)
    if progress:
        from tqdm import tqdm

        # disable=None: a bar on a terminal, silence when stderr is a file or a pipe.
        iterations = tqdm(iterations, desc=label, unit="fit", leave=False, disable=None)
    degenerate: dict[str, int] = {}
    # A resample's overflow or poorly conditioned polyfit is that resample's problem: counted, never printed.
    with single_threaded_blas(), np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in iterations:
            sample = resampler.draw(rng)
            try:
                estimates = _numbers(estimator(sample))
            except DegenerateFit as err:
                degenerate[str(err)] = degenerate.get(str(err), 0) + 1
                failed += 1
                continue
            except (FloatingPointError, np.linalg.LinAlgError, ValueError):  # AnalysisError is a ValueError
                failed += 1
                continue
            for name, value in estimates.items():
                collected.setdefault(name, []).append(value)
    return BootstrapResult(
        samples={name: np.array(values) for name, values in collected.items()},
        n_resamples=n_resamples, n_failed=failed, seed=seed,
        resampled=resampler.description, degenerate=degenerate,
    )


def _numbers(estimates: dict) -> dict[str, float]:
    """The numeric estimates of one resample; a non-finite one makes the whole resample degenerate."""
    numbers = {name: float(value) for name, value in estimates.items()
               if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)}
    if not all(np.isfinite(value) for value in numbers.values()):
        raise DegenerateFit("non-finite estimate")
    return numbers
