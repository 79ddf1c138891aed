"""The report's reproduce command re-creates the same report; the iso-FLOP plot keeps its key readable on
many budgets; a CSV's conventions are described as its columns hold them unless named."""

import json
import re
import shlex

import numpy as np
import pytest

from analysis import plots
from analysis.laws import HOFFMANN_2022
from analysis.sources import Conventions, cluster_budgets, load_csv
from analysis.synthetic import isoflop_grid, noisy, write_csv
from cli_run import isoflop


def test_report_reproduce_command_recreates_the_same_report(capsys, tmp_path):
    params, tokens, flops = isoflop_grid(HOFFMANN_2022, np.logspace(18, 21, 4), 7, 1.2)
    loss = noisy(HOFFMANN_2022.loss(params, tokens), 0.003, 0)
    names = np.array([f"m{i}" for i in range(len(params))], dtype=object)
    kind = np.array(["keep"] * (len(params) - 3) + ["other"] * 3, dtype=object)
    table = write_csv(tmp_path / "t.csv", {"run_id": names, "Model Size": params, "Training FLOP": flops,
                                           "Loss": loss, "kind": kind})
    out_dir = tmp_path / "report dir"
    code, out, err = isoflop(capsys, "report", table, "-o", out_dir, "--params-col", "Model Size", "--flops-col",
                             "Training FLOP", "--loss-col", "Loss", "--where", "kind=keep", "--drop-run", "m3",
                             "--budget-rtol", "0.1", "--lbfgs-starts", "8", "--bootstrap", "5", "--seed", "3",
                             "--window", "5", "--ci", "90", "--params", "total")
    assert code == 0, err
    first = (out_dir / "report.md").read_text()
    fits = (out_dir / "fits.json").read_text()
    command = re.search(r"^- reproduce: `(.*)`$", first, re.M).group(1)
    parts = shlex.split(command)
    assert parts[:2] == ["isoflop", "report"]
    for option in ("--params-col", "--flops-col", "--loss-col", "--where", "--drop-run", "--budget-rtol",
                   "--lbfgs-starts", "--seed", "--window", "--ci", "--params"):
        assert option in parts, option
    (out_dir / "report.md").unlink()
    code, out, err = isoflop(capsys, *parts[1:])
    assert code == 0, err
    assert (out_dir / "report.md").read_text() == first
    assert (out_dir / "fits.json").read_text() == fits
    assert json.loads(fits)["fits"]["2"]["ci_level"] == 90


def digitised(n_points=116, seed=0):
    """Points read off a figure: every one's C a little off its budget, 58 budgets of two points each."""
    rng = np.random.default_rng(seed)
    budgets = np.repeat(np.logspace(17, 22, n_points // 2), 2)
    flops = budgets * np.exp(rng.normal(0, 0.005, n_points))
    params = np.sqrt(flops / 120) * np.tile([0.7, 1.4], n_points // 2)
    return params, flops / (6 * params), flops


def test_many_budgets_get_a_colour_bar_not_58_legend_entries(tmp_path):
    params, tokens, flops = digitised()
    table = write_csv(tmp_path / "d.csv", {"params": params, "tokens": tokens, "flops": flops,
                                           "loss": HOFFMANN_2022.loss(params, tokens)})
    data = load_csv(table, Conventions())
    assert len(np.unique(data.budget)) == 58
    fig = plots.isoflop_figure(data, None, None)
    assert len(fig.axes) == 2  # the plot and its colour bar
    assert fig.axes[0].get_legend() is None
    few = data.take(np.flatnonzero(data.budget < 10**17.5))
    fig = plots.isoflop_figure(few, None, None)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_legend().get_texts()) == len(np.unique(few.budget))


def test_budget_rtol_is_what_groups_the_plotted_budgets(tmp_path):
    params, tokens, flops = digitised()
    assert len(np.unique(cluster_budgets(flops, 0.05))) == 58
    assert len(np.unique(cluster_budgets(flops, 0.5))) < 58


@pytest.mark.parametrize("argv, expected", [
    ((), "conventions: params as given in column 'N', flops as given in column 'C', loss as given in column 'L'"),
    (("--flops", "chinchilla", "--loss", "train"),
     "conventions: params as given in column 'N', flops=chinchilla, loss=train"),
])
def test_csv_conventions_are_as_given_in_their_columns_unless_named(capsys, tmp_path, argv, expected):
    params, tokens, flops = isoflop_grid(HOFFMANN_2022, np.logspace(18, 21, 4), 7, 1.2)
    table = write_csv(tmp_path / "c.csv", {"N": params, "C": flops, "L": HOFFMANN_2022.loss(params, tokens)})
    code, out, err = isoflop(capsys, "fit", table, "--params-col", "N", "--flops-col", "C", "--loss-col", "L",
                             "--approach", "1", "--bootstrap", "0", *argv)
    assert code == 0, err
    assert expected in out and "non_embedding" not in out


def test_derived_flops_say_how_they_were_derived():
    conventions = Conventions(columns={"params": "N", "tokens": "D", "loss": "L"}, named=frozenset())
    assert conventions.label("flops") == "C = 6·N·D of the CSV's columns"
    assert Conventions().describe() == "params=non_embedding, flops=6N, loss=eval"  # run directories: as before
