"""`--resample residuals`: the fixed-design bootstrap of approach 2. An isoFLOP grid's sizes are chosen, so
a draw keeps them and gives each budget's parabola back its own (leverage-adjusted, centred) residuals.
Its intervals must cover the estimator's own target at about their level and widen with the noise, and
its draws must all be fittable on a 6-sizes-per-budget grid where drawing runs loses edge sizes."""

import json

import numpy as np
import pytest

from analysis import chinchilla
from analysis.bootstrap import resample_residuals
from analysis.errors import AnalysisError
from analysis.fits import FitOptions, run_fit
from analysis.laws import HOFFMANN_2022
from analysis.synthetic import isoflop_grid, noisy, write_csv
from cli_run import isoflop
from test_analysis_fits import dataset

BUDGETS = np.logspace(19, 20, 4)  # one decade, as a CPU grid spans
SIZES = 6
NOISE = 0.003  # standard deviation of log L


def grid(noise: float, seed: int):
    params, tokens, _ = isoflop_grid(HOFFMANN_2022, BUDGETS, SIZES, span_decades=1.0)
    return dataset(params, tokens, noisy(HOFFMANN_2022.loss(params, tokens), noise, seed))


def residual_fit(data, n_resamples=199, level=95.0, seed=0):
    return run_fit(data, "2", FitOptions(n_resamples=n_resamples, resample="residuals", ci_level=level, seed=seed))


def test_a_draw_keeps_the_design_and_resamples_each_budget_from_its_own_residuals():
    data = grid(NOISE, 0)
    point = chinchilla.fit_approach2(data)
    fitted, leverage, strata = chinchilla.approach2_residual_model(data, point)
    assert sorted(np.concatenate(strata).tolist()) == list(range(len(data)))
    assert np.all((leverage > 0) & (leverage < 1)) and np.allclose([leverage[rows].sum() for rows in strata], 3)
    resampler = resample_residuals(data, fitted, leverage, strata, "parabola in log N")
    draw = resampler.draw(np.random.default_rng(0))
    assert np.array_equal(draw.params, data.params) and np.array_equal(draw.tokens, data.tokens)
    assert not np.array_equal(draw.loss, data.loss)
    for rows in strata:
        modified = (data.loss[rows] - fitted[rows]) / np.sqrt(1 - leverage[rows])
        pool = modified - modified.mean()
        drawn = draw.loss[rows] - fitted[rows]
        assert all(np.isclose(pool, value).any() for value in drawn)  # each from its own budget's pool


def test_intervals_cover_the_estimators_target_at_about_their_level():
    """30 noisy grids: the 90% interval holds the noise-free grid's approach-2 exponent in most of them
    (26 of 30 when written; drawing runs covers 30 of 30 with wider intervals)."""
    target = chinchilla.fit_approach2(grid(0.0, 0))["a"]
    trials = 30
    covered = 0
    for seed in range(trials):
        low, high = residual_fit(grid(NOISE, seed + 1), level=90.0, seed=seed).ci["a"]
        covered += low <= target <= high
    assert covered >= 0.75 * trials, f"90% intervals covered the target in {covered}/{trials} grids"


def test_width_follows_the_noise():
    quiet, loud = (residual_fit(grid(noise, 3)).ci["a"] for noise in (NOISE / 3, 3 * NOISE))
    assert np.all(np.isfinite(quiet + loud))
    assert (loud[1] - loud[0]) > 4 * (quiet[1] - quiet[0])


def test_every_draw_keeps_the_edge_sizes_that_drawing_runs_loses():
    data = grid(NOISE, 5)
    runs = run_fit(data, "2", FitOptions(n_resamples=199))
    residuals = residual_fit(data)
    assert runs.draws.degenerate.get("minimum outside the grid", 0) > 199 / 10  # edge sizes lost
    assert residuals.draws.n_failed == 0 and np.isfinite(residuals.ci["a"]).all()
    assert "residuals about each budget's parabola in log N (fixed design)" in " ".join(residuals.notes)


def test_a_budget_without_residual_degrees_of_freedom_is_an_error():
    params, tokens, _ = isoflop_grid(HOFFMANN_2022, BUDGETS, 3, span_decades=1.0)
    data = dataset(params, tokens, noisy(HOFFMANN_2022.loss(params, tokens), NOISE, 0))
    with pytest.raises(AnalysisError, match="no residual degrees of freedom"):
        residual_fit(data)


@pytest.fixture
def table(tmp_path):
    data = grid(NOISE, 0)
    return write_csv(tmp_path / "grid.csv", {"params": data.params, "tokens": data.tokens, "loss": data.loss})


def test_cli_resample_residuals(capsys, table):
    code, out, err = isoflop(capsys, "fit", table, "--approach", "2", "--resample", "residuals", "--bootstrap", "50",
                             "--json")
    assert code == 0, err
    result = json.loads(out)
    assert np.isfinite(result["ci95"]["a"]).all()
    assert any("resamples of residuals about each budget's parabola" in note for note in result["notes"])


@pytest.mark.parametrize("argv, message", [
    (["--approach", "3"], "--resample residuals applies to approach 2 only (got --approach 3)"),
    (["--approach", "kaplan"], "--resample residuals applies to approach 2 only (got --approach kaplan)"),
])
def test_cli_refuses_residuals_where_the_approach_has_no_model(capsys, table, argv, message):
    code, out, err = isoflop(capsys, "fit", table, *argv, "--resample", "residuals", "--bootstrap", "10")
    assert code == 2 and out == "" and err == f"isoflop fit: {message}\n"
