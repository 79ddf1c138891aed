"""Approach 2 with `--window K` on a wide, asymmetric grid (the windowed fit recovers the planted exponent,
the one parabola per budget does not), and bootstraps whose degenerate resamples are counted, not kept."""

import json
import re

import numpy as np
import pytest

from analysis import chinchilla
from analysis.laws import HOFFMANN_2022
from analysis.sources import Conventions, Dataset
from analysis.synthetic import noisy, write_csv
from cli_run import isoflop

LAW = HOFFMANN_2022
BUDGETS = np.logspace(18, 21, 4)


def wide_grid(path, noise=0.0005, step=0.1):
    """Each budget from half a decade below N_opt to ever further above it: the grid drifts off-centre with C."""
    params, flops = [], []
    for i, budget in enumerate(BUDGETS):
        sizes = LAW.frontier(budget)[0] * 10.0 ** np.arange(-0.5, 0.5 + 1.2 * i + 1e-9, step)
        params += list(sizes)
        flops += [budget] * len(sizes)
    params, flops = np.array(params), np.array(flops)
    loss = noisy(LAW.loss(params, flops / (6 * params)), noise, 3)
    return write_csv(path, {"N": params, "C": flops, "loss": loss})


COLUMNS = ("--params-col", "N", "--flops-col", "C", "--approach", "2")


def test_window_recovers_the_exponent_a_wide_grid_biases(capsys, tmp_path):
    table = wide_grid(tmp_path / "wide.csv")
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--bootstrap", "0", "--json")
    assert code == 0, err
    assert abs(json.loads(out)["a"] - LAW.a) > 0.05  # one parabola through the whole grid
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--bootstrap", "0", "--json", "--window", "7")
    assert code == 0, err
    result = json.loads(out)
    assert result["a"] == pytest.approx(LAW.a, abs=0.01)
    assert result["b"] == pytest.approx(LAW.b, abs=0.01)
    for budget in result["details"]["budgets"]:
        assert budget["n_runs"] == 7 and len(budget["runs_used"]) == 7
        assert budget["params_used"][0] < budget["params_opt"] < budget["params_used"][1]
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--bootstrap", "0", "--window", "7")
    assert "the 7 runs centred (in log N) on each budget's lowest loss (--window)" in out
    assert "  7/" in out


def test_window_rows_shift_inwards_at_the_edges():
    params = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 6.0])
    ids = np.array([f"r{i}" for i in range(6)], dtype=object)
    for lowest_n, expected in ((1.0, [1, 2, 3]), (3.0, [2, 3, 4]), (6.0, [4, 5, 6])):
        loss = np.abs(params - lowest_n) + 1
        data = Dataset("t", Conventions(), params, params, params, loss, np.ones(6), ids)
        rows = chinchilla.window_rows(data, np.arange(6), 3)
        assert data.params[rows].tolist() == expected


def test_bootstrap_counts_degenerate_resamples_and_prints_no_numpy_warnings(capsys, tmp_path):
    # Four sizes per budget and noise comparable to the parabola's depth: many resamples open downward.
    params, flops = [], []
    for budget in BUDGETS:
        sizes = LAW.frontier(budget)[0] * 10.0 ** np.array([-0.3, -0.1, 0.1, 0.3])
        params += list(sizes) * 2
        flops += [budget] * 8
    params, flops = np.array(params), np.array(flops)
    table = write_csv(tmp_path / "shallow.csv", {"N": params, "C": flops,
                                                  "loss": noisy(LAW.loss(params, flops / (6 * params)), 0.01, 5)})
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--bootstrap", "200", "--json")
    assert code == 0, err
    assert "Warning" not in err and "overflow" not in err and "divide" not in err, err
    result = json.loads(out)
    note = next(note for note in result["notes"] if "percentile bootstrap" in note)
    match = re.search(r"; (\d+) degenerate resamples counted and left out \((.*)\)$", note)
    assert match, note
    by_reason = dict(part.split(": ") for part in match.group(2).split(", "))
    assert 0 < int(match.group(1)) == sum(map(int, by_reason.values())) < 200
    assert set(by_reason) <= {"fewer than 3 model sizes", "parabola opens downward", "minimum outside the grid",
                              "non-finite estimate"}
    low, high = result["ci95"]["k_N"]
    assert low is None or (low > 1e-6 * result["k_N"] and high < 1e6 * result["k_N"])


@pytest.mark.parametrize("argv, message", [
    (("--window", "2"), "argument --window: must be an integer >= 3"),
    (("--window", "7", "--approach", "3"), "--window applies to approach 2 only"),
])
def test_bad_window_is_one_line_exit_2(capsys, tmp_path, argv, message):
    table = wide_grid(tmp_path / "wide.csv")
    code, out, err = isoflop(capsys, "fit", table, "--params-col", "N", "--flops-col", "C", "--bootstrap", "0", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
