"""`--approach frontier` on tables of optima with a planted N* = k·C^a: exact recovery, weights that change
the answer, least-squares standard errors, and one-line errors."""

import json
import pathlib

import numpy as np
import pytest

import analysis

from analysis.frontier import weighted_line
from analysis.synthetic import write_csv
from cli_run import isoflop

FLOPS = np.logspace(18, 22, 5)
A, K_N = 0.5, 0.09


def optima(path, n_scale=np.ones(5), sigma=None, tokens=True):
    params = K_N * FLOPS**A * n_scale
    columns = {"C": FLOPS, "N_opt": params}
    if tokens:
        columns["D_opt"] = FLOPS / (6 * params)
    if sigma is not None:
        columns["sd_log_N"] = np.asarray(sigma, dtype=float)
    return write_csv(path, columns)


COLUMNS = ("--approach", "frontier", "--flops-col", "C", "--params-col", "N_opt", "--bootstrap", "0")


def test_frontier_recovers_planted_exponents_without_a_loss_column(capsys, tmp_path):
    table = optima(tmp_path / "optima.csv")
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--tokens-col", "D_opt", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["a"] == pytest.approx(A, abs=1e-5) and result["k_N"] == pytest.approx(K_N, rel=1e-4)
    assert result["b"] == pytest.approx(1 - A, abs=1e-5) and result["k_D"] == pytest.approx(1 / (6 * K_N), rel=1e-4)
    assert result["conventions"]["csv_columns"]["params"] == "N_opt"
    assert any("regressed on log C by least squares over 5 optima, unweighted" in note for note in result["notes"])


def test_weights_change_the_answer(capsys, tmp_path):
    off = np.array([1, 1, 1, 1, 3.0])  # the largest budget's optimum far off the line, but marked uncertain
    weighted = optima(tmp_path / "w.csv", off, sigma=[0.01, 0.01, 0.01, 0.01, 10.0], tokens=False)
    code, out, err = isoflop(capsys, "fit", weighted, *COLUMNS, "--json")
    assert code == 0, err
    unweighted = json.loads(out)
    assert abs(unweighted["a"] - A) > 0.02
    assert "b" not in unweighted and any("D* not fitted" in note for note in unweighted["notes"])
    code, out, err = isoflop(capsys, "fit", weighted, *COLUMNS, "--sigma-col", "sd_log_N", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["a"] == pytest.approx(A, abs=1e-4)
    assert any("weighted 1/σ² by column 'sd_log_N'" in note for note in result["notes"])
    code, out, err = isoflop(capsys, "fit", weighted, *COLUMNS, "--sigma-col", "sd_log_N")
    assert code == 0 and "a_se" in out and "b_se" not in out


def test_standard_errors_are_the_least_squares_ones():
    x = np.log(FLOPS)
    y = A * x + np.log(K_N) + np.array([0.1, -0.1, 0.05, 0.0, -0.05])
    slope, _, slope_se, _ = weighted_line(x, y, np.full(5, 0.2))
    assert slope_se == pytest.approx(0.2 / np.sqrt(np.sum((x - x.mean()) ** 2)))
    residual = y - np.polyval(np.polyfit(x, y, 1), x)
    _, _, unweighted_se, _ = weighted_line(x, y)
    assert unweighted_se == pytest.approx(np.sqrt(residual @ residual / 3 / np.sum((x - x.mean()) ** 2)))


@pytest.mark.parametrize("argv, message", [
    (("--sigma-col", "nope"), "--sigma-col: no column 'nope'"),
    (("--sigma-col", "C2"), "--sigma-col C2: row row3 has '-1', not a finite number > 0"),
])
def test_bad_sigma_column_is_one_line_exit_2(capsys, tmp_path, argv, message):
    table = tmp_path / "bad.csv"
    table.write_text("C,N_opt,C2\n1e18,1e8,1\n1e20,1e9,-1\n")
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_sigma_col_needs_the_frontier_approach(capsys, tmp_path):
    code, out, err = isoflop(capsys, "fit", optima(tmp_path / "o.csv"), "--sigma-col", "C", "--bootstrap", "0")
    assert code == 2 and "--sigma-col applies to --approach frontier only" in err


def test_hoffmann_table3_reproduces_approach1_exponents(capsys):
    """The shipped analysis/examples/hoffmann2022_table3.csv (Hoffmann et al. 2022, Table 3: approach 1's
    projected optima) gives back approach 1's published a = 0.50, b = 0.50."""
    table = pathlib.Path(analysis.__file__).parent / "examples" / "hoffmann2022_table3.csv"
    code, out, err = isoflop(capsys, "fit", table, "--approach", "frontier",
                             "--params-col", "Parameters", "--flops-col", "FLOPs", "--tokens-col", "Tokens",
                             "--bootstrap", "0", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["a"] == pytest.approx(0.50, abs=0.005) and result["b"] == pytest.approx(0.50, abs=0.005)
