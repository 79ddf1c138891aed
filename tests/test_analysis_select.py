"""`--where` and `--group-by` on a table that pools two data sets with different planted laws: each selection
recovers its own law's exponent, the pooled fit warns about repeated sizes, and bad selections are one line,
exit 2. Also `--skip-blank`."""

import json

import numpy as np
import pytest

from analysis.laws import ChinchillaLaw, HOFFMANN_2022
from analysis.select import Condition, parse_where
from analysis.synthetic import isoflop_grid, write_csv
from cli_run import isoflop

OTHER = ChinchillaLaw(E=1.9, A=410.7, B=406.4, alpha=0.28, beta=0.34)  # a = 0.548 where Hoffmann's is 0.452
BUDGETS = np.logspace(18, 21, 4)


def pooled(path, same_grid=False):
    """Rows of two data sets; `same_grid`: both at Hoffmann's sizes (so each budget repeats every N)."""
    columns = {"dataset": [], "N": [], "C": [], "loss": []}
    for name, law in (("c4", HOFFMANN_2022), ("other", OTHER)):
        params, tokens, flops = isoflop_grid(HOFFMANN_2022 if same_grid else law, BUDGETS, 9, 1.2)
        columns["dataset"] += [name] * len(params)
        columns["N"] += list(params)
        columns["C"] += list(flops)
        columns["loss"] += list(law.loss(params, tokens))
    return write_csv(path, {key: np.array(value, dtype=object if key == "dataset" else float)
                            for key, value in columns.items()})


COLUMNS = ("--params-col", "N", "--flops-col", "C", "--approach", "2", "--bootstrap", "0")


@pytest.fixture
def table(tmp_path):
    return pooled(tmp_path / "pooled.csv")


@pytest.mark.parametrize("dataset, law", [("c4", HOFFMANN_2022), ("other", OTHER)])
def test_where_selects_one_data_set_and_recovers_its_exponent(capsys, table, dataset, law):
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--where", f"dataset={dataset}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["a"] == pytest.approx(law.a, abs=0.01)
    assert f"selected 36 of 72 rows where dataset={dataset}" in result["notes"]
    assert "warning" not in err


def test_group_by_fits_each_group_in_json_and_text(capsys, table):
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--group-by", "dataset", "--json")
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert [group["key"] for group in groups] == [{"dataset": "c4"}, {"dataset": "other"}]
    assert groups[0]["result"]["a"] == pytest.approx(HOFFMANN_2022.a, abs=0.01)
    assert groups[1]["result"]["a"] == pytest.approx(OTHER.a, abs=0.01)
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--group-by", "dataset")
    assert code == 0, err
    assert out.count("== group dataset=") == 2 and out.count("Chinchilla approach 2") == 2


def test_where_compares_numbers_as_numbers_and_combines(capsys, table):
    assert Condition("N", "<", "1e9").holds("5e8")  # as text '5e8' > '1e9'
    assert not Condition("dataset", "=", "c4").holds("c40")
    assert Condition("dataset", "!=", "c4").holds("other")
    assert parse_where("C>=1e20") == Condition("C", ">=", "1e20")
    assert parse_where("a<=b") == Condition("a", "<=", "b")
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--where", "dataset=c4", "--where", "C>=1e19",
                             "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["n_points"] == 27 and len(result["details"]["budgets"]) == 3


def test_pooled_fit_warns_once_naming_the_budgets(capsys, tmp_path):
    table = pooled(tmp_path / "same.csv", same_grid=True)
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "same N" in line]
    assert len(warnings) == 1 and "C=1e+18" in warnings[0] and "C=1e+21" in warnings[0]
    assert "warning: rows with the same N" in out  # and in the notes
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--group-by", "dataset")
    assert code == 0 and "same N" not in err


@pytest.mark.parametrize("argv, message", [
    (("--where", "colour=red"), "--where: no column 'colour' (columns: dataset, N, C, loss"),
    (("--where", "dataset=c5"), "--where dataset=c5: no rows match (of 72)"),
    (("--where", "dataset"), "--where 'dataset': expected COLUMN OP VALUE"),
    (("--group-by", "colour"), "--group-by: no column 'colour'"),
    (("--group-by", "dataset,"), "--group-by 'dataset,': expected COLUMN"),
])
def test_bad_selections_are_one_line_exit_2(capsys, table, argv, message):
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_skip_blank_leaves_rows_out_and_lists_them(capsys, tmp_path):
    params, tokens, flops = isoflop_grid(HOFFMANN_2022, BUDGETS, 7, 1.2)
    loss = [f"{value:.6g}" for value in HOFFMANN_2022.loss(params, tokens)]
    loss[3] = loss[10] = ""
    table = write_csv(tmp_path / "blank.csv", {"N": params, "C": flops, "loss": np.array(loss, dtype=object)})
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS)
    assert code == 2 and err.strip() == f"isoflop fit: {table} line 5: column 'loss' is empty (leave such rows out with --skip-blank)"
    code, out, err = isoflop(capsys, "fit", table, *COLUMNS, "--skip-blank", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["n_points"] == 26
    assert "--skip-blank: left out 2 rows with an empty cell (lines 5, 12)" in result["notes"]
    assert result["a"] == pytest.approx(HOFFMANN_2022.a, abs=0.01)
