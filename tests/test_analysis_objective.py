"""`--objective`: each law fitted as its paper fitted it by default (and saying so), another on request; the
over-training law identified by 5 runs over 2 multipliers, as Gadre et al. fitted theirs."""

import json

import numpy as np
import pytest

from analysis.laws import HOFFMANN_2022, gadre_loss
from analysis.synthetic import isoflop_grid, write_csv
from cli_run import isoflop

GADRE = {"E": 1.7, "a": 200.0, "b": 491.0, "eta": 0.15}


def gadre_runs(path, runs):
    """Runs at (C, M) with losses exactly on the planted over-training law."""
    flops, multiplier = np.array(runs, dtype=float).T
    params = np.sqrt(flops / (6 * multiplier))
    loss = gadre_loss(flops, multiplier, GADRE["E"], GADRE["a"], GADRE["b"], GADRE["eta"])
    return write_csv(path, {"params": params, "tokens": multiplier * params, "loss": loss})


FIVE_RUNS = [(1e18, 20), (1e19, 20), (1e20, 20), (1e18, 80), (1e19, 80)]


def test_gadre_law_from_five_runs_over_two_multipliers_by_least_squares(capsys, tmp_path):
    table = gadre_runs(tmp_path / "five.csv", FIVE_RUNS)
    code, out, err = isoflop(capsys, "fit", table, "--approach", "overtrain", "--bootstrap", "0", "--json")
    assert code == 0, err
    result = json.loads(out)
    for key, planted in (("E", GADRE["E"]), ("a_M", GADRE["a"]), ("b_M", GADRE["b"]), ("eta", GADRE["eta"])):
        assert result[key] == pytest.approx(planted, rel=1e-3), key
    assert result["details"]["objective"] == "lsq"
    assert "objective: least squares on L (--objective lsq; as Gadre et al. 2024 fitted it)" in result["notes"]


@pytest.mark.parametrize("runs, message", [
    (FIVE_RUNS[:4], "over-training fit needs at least 5 distinct (N, D) points (got 4"),
    ([(1e18, 20), (1e19, 20), (1e20, 20), (1e21, 20), (3e18, 20)],
     "over-training fit needs runs spanning at least 2 token multipliers D/N"),
])
def test_too_few_runs_for_the_gadre_law_is_one_line_exit_2(capsys, tmp_path, runs, message):
    table = gadre_runs(tmp_path / "few.csv", runs)
    code, out, err = isoflop(capsys, "fit", table, "--approach", "overtrain", "--bootstrap", "0")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_approach3_defaults_to_huber_on_log_loss_and_the_objective_matters(capsys, tmp_path):
    params, tokens, flops = isoflop_grid(HOFFMANN_2022, np.logspace(18, 21, 4), 7, 1.2)
    loss = HOFFMANN_2022.loss(params, tokens)
    loss[5] *= 1.3  # one outlier: Huber shrugs it off, least squares is pulled by it
    table = write_csv(tmp_path / "outlier.csv", {"params": params, "tokens": tokens, "loss": loss})
    results = {}
    for objective in (None, "lsq", "huber"):
        extra = () if objective is None else ("--objective", objective)
        code, out, err = isoflop(capsys, "fit", table, "--bootstrap", "0", "--json", *extra)
        assert code == 0, err
        results[objective] = json.loads(out)
    default = results[None]
    assert default["details"]["objective"] == "huber-log"
    assert "objective: summed Huber (delta=1e-3) on log L (--objective huber-log; as Hoffmann et al. 2022 fitted it)" \
        in default["notes"]
    assert default["alpha"] == pytest.approx(HOFFMANN_2022.alpha, abs=0.01)
    assert abs(results["lsq"]["alpha"] - HOFFMANN_2022.alpha) > 3 * abs(default["alpha"] - HOFFMANN_2022.alpha)
    assert "(--objective lsq; Hoffmann et al. 2022 used huber-log)" in " ".join(results["lsq"]["notes"])
    assert results["huber"]["details"]["objective"] == "huber"
    assert results["huber"]["alpha"] == pytest.approx(HOFFMANN_2022.alpha, abs=0.01)


@pytest.mark.parametrize("argv, message", [
    (("--objective", "l1"), "--objective 'l1': choose one of huber-log, lsq, huber"),
    (("--objective", "lsq", "--approach", "2"), "--objective applies to approaches 3, datacon, overtrain"),
])
def test_bad_objective_is_one_line_exit_2(capsys, tmp_path, argv, message):
    table = gadre_runs(tmp_path / "five.csv", FIVE_RUNS)
    code, out, err = isoflop(capsys, "fit", table, "--bootstrap", "0", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
