"""`--ci LEVEL`, bootstrap standard errors and `--save-samples`: the intervals and SEs reported are exactly the
percentiles and standard deviation of the draws written out, at the level asked for."""

import csv
import json

import numpy as np
import pytest

from analysis.laws import HOFFMANN_2022
from analysis.synthetic import isoflop_grid, noisy, write_csv
from cli_run import isoflop


@pytest.fixture
def table(tmp_path):
    params, tokens, flops = isoflop_grid(HOFFMANN_2022, np.logspace(18, 21, 4), 7, 1.2)
    loss = noisy(HOFFMANN_2022.loss(params, tokens), 0.003, 0)
    group = np.array(["x", "y"] * (len(params) // 2) + ["x"] * (len(params) % 2), dtype=object)
    return write_csv(tmp_path / "grid.csv", {"params": params, "tokens": tokens, "loss": loss, "half": group})


def read_samples(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_ci_level_and_standard_errors_are_those_of_the_saved_draws(capsys, table, tmp_path):
    samples = tmp_path / "draws.csv"
    code, out, err = isoflop(capsys, "fit", table, "--approach", "1", "--bootstrap", "120", "--ci", "80",
                             "--save-samples", samples, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["ci_level"] == 80 and "ci80" in result and "ci95" not in result
    rows = read_samples(samples)
    assert 100 < len(rows) <= 120 and set(rows[0]) == {"a", "b", "k_N", "k_D"}
    draws = np.array([float(row["a"]) for row in rows])
    assert result["ci80"]["a"] == pytest.approx(np.percentile(draws, [10, 90]).tolist(), rel=1e-12)
    assert result["se"]["a"] == pytest.approx(np.std(draws, ddof=1), rel=1e-12)
    assert any(note.startswith("80% intervals: percentile bootstrap, 120 resamples") for note in result["notes"])
    code, out, err = isoflop(capsys, "fit", table, "--approach", "1", "--bootstrap", "50", "--ci", "80")
    assert code == 0 and "80% interval" in out and "std err" in out


def test_default_level_is_95_percent(capsys, table):
    code, out, err = isoflop(capsys, "fit", table, "--approach", "1", "--bootstrap", "30", "--json")
    result = json.loads(out)
    assert result["ci_level"] == 95 and set(result["ci95"]) == set(result["se"])


def test_save_samples_per_group(capsys, table, tmp_path):
    samples = tmp_path / "groups.csv"
    code, out, err = isoflop(capsys, "fit", table, "--approach", "1", "--bootstrap", "40", "--group-by", "half",
                             "--save-samples", samples)
    assert code == 0, err
    rows = read_samples(samples)
    assert list(rows[0])[:2] == ["half", "a"]
    assert {row["half"] for row in rows} == {"x", "y"}
    assert sum(row["half"] == "x" for row in rows) <= 40


@pytest.mark.parametrize("argv, message", [
    (("--ci", "100"), "argument --ci: must be a percentage between 0 and 100"),
    (("--ci", "0"), "argument --ci: must be a percentage between 0 and 100"),
    (("--ci", "nan"), "argument --ci: must be a finite number"),
    (("--save-samples", "."), "--save-samples: '.' is a directory, not a file"),
    (("--save-samples", "out.csv", "--bootstrap", "0"), "--save-samples needs bootstrap resamples"),
])
def test_bad_interval_options_are_one_line_exit_2(capsys, table, argv, message):
    code, out, err = isoflop(capsys, "fit", table, "--approach", "1", *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err
