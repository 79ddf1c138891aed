"""Bad input to `isoflop fit | size | report`, through the console script's own entry point: every case is
exit 2, one line on stderr naming the command, no traceback, and nothing created. Plus the rule that
minimum-points checks count distinct (N, D) points, not rows."""

import json
import pathlib

import numpy as np
import pytest

from analysis.bootstrap import bootstrap
from analysis.errors import AnalysisError
from analysis.laws import HOFFMANN_2022
from analysis.synthetic import isoflop_grid, write_csv
from cli_run import isoflop

GOOD_ROWS = "".join(f"{n:g},{2e10:g},{loss}\n" for n, loss in [(1e8, 3.0), (2e8, 2.9), (4e8, 2.95)])


def csv_file(tmp_path, content: str | bytes, name="runs.csv"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def law_file(tmp_path, content: bytes):
    path = tmp_path / "law.json"
    path.write_bytes(content)
    return path


def good_csv(tmp_path):
    return csv_file(tmp_path, "params,tokens,loss\n" + GOOD_ROWS)


def a_file(tmp_path):
    return csv_file(tmp_path, "not a directory\n", name="taken")


HOFFMANN = ["--law", "hoffmann2022"]

# (id, argv builder given tmp_path, a piece of the one line expected)
CASES = [
    # fit: files that are not a CSV the fits can use
    ("non-utf8", lambda t: ["fit", csv_file(t, b"params,tokens,loss\n1e8,2e9,3\xff\n")], "not UTF-8 text (byte 28)"),
    ("binary", lambda t: ["fit", csv_file(t, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")], "not UTF-8 text"),
    ("nul-bytes", lambda t: ["fit", csv_file(t, b"params,tokens,loss\n1e8\x00,2e9,3\n")], "contains NUL bytes"),
    ("empty", lambda t: ["fit", csv_file(t, "")], "runs.csv: empty"),
    ("blank-lines-only", lambda t: ["fit", csv_file(t, "\n\n  \n")], "runs.csv: empty"),
    ("header-only", lambda t: ["fit", csv_file(t, "params,tokens,loss\n")], "a header but no rows"),
    ("duplicate-column", lambda t: ["fit", csv_file(t, "params,tokens,loss,loss\n1e8,2e9,3,4\n")],
     "column 'loss' appears twice in the header (columns 3 and 4)"),
    ("ragged-row", lambda t: ["fit", csv_file(t, "params,tokens,loss\n1e8,2e9,3,7\n")],
     "line 2: 4 fields but the header names 3 columns"),
    ("non-numeric", lambda t: ["fit", csv_file(t, "params,tokens,loss\n1e8,2e9,3\n2e8,lots,3\n")],
     "line 3: column 'tokens' is not a number (got 'lots')"),
    ("nan-cell", lambda t: ["fit", csv_file(t, "params,tokens,loss\n1e8,2e9,nan\n")], "line 2: column 'loss' must be"),
    ("inf-cell", lambda t: ["fit", csv_file(t, "params,tokens,loss\n1e8,inf,3\n")], "line 2: column 'tokens' must be"),
    ("negative-cell", lambda t: ["fit", csv_file(t, "params,tokens,loss\n-1e8,2e9,3\n")],
     "line 2: column 'params' must be positive"),
    ("empty-cell", lambda t: ["fit", csv_file(t, "params,tokens,loss\n1e8,2e9,3\n\n1e8,,3\n")],
     "line 4: column 'tokens' is empty"),
    ("derived-overflow", lambda t: ["fit", csv_file(t, "params,tokens,loss\n1e300,1e300,3\n")],
     "line 2: derived flops inf is out of range"),
    ("identical-rows", lambda t: ["fit", csv_file(t, "params,tokens,loss\n" + "1e8,2e9,3.0\n" * 8)],
     "approach 3 needs at least 6 distinct (N, D) points (got 1 from 8 rows"),
    # fit: numeric options (argparse types: finite, signed, integral)
    ("seed-negative", lambda t: ["fit", good_csv(t), "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    ("bootstrap-negative", lambda t: ["fit", good_csv(t), "--bootstrap", "-5"], "argument --bootstrap: must be"),
    ("bootstrap-fraction", lambda t: ["fit", good_csv(t), "--bootstrap", "2.5"], "argument --bootstrap: must be"),
    ("lbfgs-zero", lambda t: ["fit", good_csv(t), "--lbfgs-starts", "0"], "positive integer or 'all'"),
    ("drop-highest-negative", lambda t: ["fit", good_csv(t), "--drop-highest", "-1"], "argument --drop-highest"),
    ("budget-rtol-inf", lambda t: ["fit", good_csv(t), "--budget-rtol", "inf"], "argument --budget-rtol: must be a finite"),
    ("budget-rtol-zero", lambda t: ["fit", good_csv(t), "--budget-rtol", "0"], "argument --budget-rtol: must be"),
    ("max-loss-nan", lambda t: ["fit", good_csv(t), "--max-loss", "nan"], "argument --max-loss: must be a finite"),
    ("at-flops-overflow", lambda t: ["fit", good_csv(t), "--at-flops", "1e400"], "argument --at-flops: must be a finite"),
    ("flops-typo", lambda t: ["fit", good_csv(t), "--flops", "chinchila"], "did you mean 'chinchilla'"),
    ("source-nul", lambda t: ["fit", "runs\x00.csv"], "cannot contain a NUL byte"),
    # size: targets, budgets and inference tokens outside what the law can size
    ("target-inf", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e12", "--target-loss", "inf"],
     "argument --target-loss: must be a finite number > 0"),
    ("target-nan", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e12", "--target-loss", "nan"],
     "argument --target-loss"),
    ("target-negative", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e12", "--target-loss", "-2"],
     "argument --target-loss"),
    ("target-1e308", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e12", "--target-loss", "1e308"],
     "not below E + min(A, B)"),
    ("target-below-E", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e12", "--target-loss", "1.5"],
     "target loss 1.5 is unreachable: not above the law's irreducible loss E = 1.69"),
    ("target-at-E", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e12", "--target-loss", "1.69"], "unreachable"),
    ("budget-inf", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e12", "--budget", "inf"], "argument --budget"),
    ("budget-1e308", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e12", "--budget", "1e308"],
     "(the Chinchilla-optimal loss at --budget 1e+308) is unreachable"),
    ("inference-nan", lambda t: ["size", *HOFFMANN, "--inference-tokens", "nan", "--target-loss", "2.2"],
     "argument --inference-tokens: must be a finite number >= 0"),
    ("inference-inf", lambda t: ["size", *HOFFMANN, "--inference-tokens", "inf", "--target-loss", "2.2"],
     "argument --inference-tokens"),
    ("inference-negative", lambda t: ["size", *HOFFMANN, "--inference-tokens", "-1", "--target-loss", "2.2"],
     "argument --inference-tokens"),
    ("inference-overflow", lambda t: ["size", *HOFFMANN, "--inference-tokens", "1e306", "--target-loss", "2.2"],
     "overflows the float range"),
    ("law-non-utf8", lambda t: ["size", "--law", law_file(t, b"\xff\xfe{}"), "--inference-tokens", "0",
                                "--target-loss", "2.2"], "not JSON"),
    ("law-infinite", lambda t: ["size", "--law", law_file(t, b'{"E": 1.7, "A": Infinity, "B": 400, "alpha": 0.3, '
                                                            b'"beta": 0.3}'),
                                "--inference-tokens", "0", "--target-loss", "2.2"], "non-finite 'A'"),
    ("law-not-object", lambda t: ["size", "--law", law_file(t, b"[1, 2]"), "--inference-tokens", "0",
                                  "--target-loss", "2.2"], "not a JSON object"),
    # report: output paths that cannot be a directory, checked before the source is read
    ("report-o-file", lambda t: ["report", good_csv(t), "-o", a_file(t)], "exists and is not a directory"),
    ("report-o-under-file", lambda t: ["report", good_csv(t), "-o", a_file(t) / "report"],
     "is a file, not a directory"),
    ("report-o-before-source", lambda t: ["report", t / "missing.csv", "-o", a_file(t)], "-o/--output"),
    ("report-bad-source", lambda t: ["report", csv_file(t, b"\x00"), "-o", t / "report"], "contains NUL bytes"),
    ("report-nothing-fits", lambda t: ["report", good_csv(t), "-o", t / "report", "--bootstrap", "0"],
     "no fit was possible"),
]


def snapshot(root):
    return sorted(path.relative_to(root) for path in root.rglob("*"))


@pytest.mark.filterwarnings("error")  # a warning would be a second line on a user's terminal
@pytest.mark.parametrize("build, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(capsys, tmp_path, build, expected):
    argv = build(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = isoflop(capsys, *argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith(f"isoflop {argv[0]}: "), err
    assert expected in err, err
    assert "Traceback" not in err and out == ""
    assert snapshot(tmp_path) == before


def test_identical_rows_count_once_and_distinct_rows_make_the_fit(capsys, tmp_path):
    """Eight copies of one run are one point; with a grid of distinct runs beside them, approach 3 fits."""
    copies = "params,tokens,loss\n" + "1e8,2e9,3.0\n" * 8
    code, _, err = isoflop(capsys, "fit", csv_file(tmp_path, copies), "--bootstrap", "0")
    assert code == 2 and "distinct (N, D) points (got 1 from 8 rows" in err

    params, tokens, _ = isoflop_grid(HOFFMANN_2022, np.logspace(18, 20, 3), 5, 1.0)
    loss = HOFFMANN_2022.loss(params, tokens)
    grid = write_csv(tmp_path / "grid.csv", {"params": np.r_[np.full(8, 1e8), params],
                                            "tokens": np.r_[np.full(8, 2e9), tokens],
                                            "loss": np.r_[np.full(8, 3.0), loss]})
    code, out, err = isoflop(capsys, "fit", grid, "--bootstrap", "0", "--lbfgs-starts", "8", "--json")
    assert code == 0, err
    assert json.loads(out)["n_points"] == 8 + len(params)


@pytest.mark.skipif(not pathlib.Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_directory_that_cannot_be_created_is_one_line(capsys, tmp_path):
    """The fits succeed, then the directory cannot be made (/proc refuses new entries): one line, exit 2."""
    params, tokens, _ = isoflop_grid(HOFFMANN_2022, np.logspace(18, 20, 3), 5, 1.0)
    grid = write_csv(tmp_path / "grid.csv", {"params": params, "tokens": tokens,
                                            "loss": HOFFMANN_2022.loss(params, tokens)})
    code, out, err = isoflop(capsys, "report", grid, "-o", "/proc/isoflop-report", "--bootstrap", "0",
                                      "--lbfgs-starts", "4")
    assert code == 2 and err.startswith("isoflop report: cannot write /proc/isoflop-report: ") and err.count("\n") == 1


def test_library_refuses_a_negative_seed_in_one_line():
    """Called without the CLI, a negative seed is the same one-line error, not numpy's traceback."""
    with pytest.raises(AnalysisError, match="--seed must be >= 0"):
        bootstrap(lambda sample: {}, None, 10, seed=-1)
