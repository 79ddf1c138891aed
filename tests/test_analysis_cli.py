"""`isoflop fit | size | report` end to end on synthetic CSVs and run directories: outputs state the
conventions, JSON has the promised keys, bad input is one line on stderr with exit code 2, and the
report writes every figure and lists each one."""

import argparse
import json
import re

import numpy as np
import pytest

from analysis import cli
from analysis.laws import HOFFMANN_2022, effective_tokens
from analysis.synthetic import isoflop_grid, noisy, write_csv, write_run_dirs


def isoflop(capsys, *argv):
    """Run an analysis sub-command as the console script would: (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="isoflop")
    cli.register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args([str(arg) for arg in argv])
        code = args.func(args)
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def grid_csv(tmp_path_factory):
    params, tokens, flops = isoflop_grid(HOFFMANN_2022, np.logspace(18, 21, 4), 7, 1.2)
    loss = noisy(HOFFMANN_2022.loss(params, tokens), 0.003, 0)
    return write_csv(tmp_path_factory.mktemp("csv") / "grid.csv", {"Model Size": params, "Training FLOP": flops, "loss": loss})


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    """An iso-FLOP grid, a few over-trained runs, runs that repeat data, and two unfinished runs."""
    law = HOFFMANN_2022
    params, tokens, flops = isoflop_grid(law, np.logspace(17, 20, 4), 7, 1.2)
    extra_params = np.array([5e7, 5e7, 1e8, 1e8, 3e7, 3e7, 3e7, 6e7, 6e7, 6e7])
    extra_tokens = np.array([2e10, 5e10, 4e10, 1e11, 3e9, 6e9, 1.2e10, 3e9, 6e9, 1.2e10])
    epochs = np.concatenate([np.ones(len(params) + 4), [2, 4, 8, 2, 4, 8]])
    params, tokens = np.concatenate([params, extra_params]), np.concatenate([tokens, extra_tokens])
    loss = noisy(law.loss(params, effective_tokens(tokens, epochs, 15.4)), 0.003, 1)
    status = ["completed"] * len(params) + ["failed", "failed"]
    params, tokens = np.append(params, [1e7, 1e7]), np.append(tokens, [1e9, 1e9])
    root = tmp_path_factory.mktemp("runs")
    write_run_dirs(root / "grid", params, tokens, np.append(loss, [9.0, 9.0]), epochs=np.append(epochs, [1, 1]), status=status)
    return root


def test_fit_csv_prints_table_with_conventions_and_derivations(capsys, grid_csv):
    code, out, err = isoflop(capsys, "fit", grid_csv, "--params-col", "Model Size", "--flops-col", "Training FLOP",
                             "--bootstrap", "50", "--params", "total")
    assert code == 0, err
    # Named conventions are stated; the others are whatever the CSV's columns hold, and say so.
    assert "conventions: params=total, flops as given in column 'Training FLOP', loss as given in column 'loss'" in out
    assert "params='Model Size'" in out and "flops='Training FLOP'" in out
    assert "tokens derived as D = C / (6·N)" in out
    assert re.search(r"^  alpha\s+0\.3\d+\s+\[", out, re.M)
    assert "50 resamples" in out


def test_fit_json_approach3_keys_and_size_from_it(capsys, grid_csv, tmp_path):
    code, out, err = isoflop(capsys, "fit", grid_csv, "--params-col", "Model Size", "--flops-col", "Training FLOP",
                             "--approach", "3", "--json", "--bootstrap", "40", "--seed", "7")
    assert code == 0, err
    fitted = json.loads(out)
    for key in ("E", "A", "B", "alpha", "beta", "a", "b", "objective", "n_points", "ci95"):
        assert key in fitted
    assert fitted["n_points"] == 28
    assert set(fitted["ci95"]) >= {"E", "A", "B", "alpha", "beta", "a", "b"}
    assert fitted["conventions"]["params"] == "as given in column 'Model Size'"
    assert fitted["conventions"]["flops"] == "as given in column 'Training FLOP'"
    law_path = tmp_path / "fit.json"
    law_path.write_text(out)

    code, out, err = isoflop(capsys, "size", "--law", law_path, "--inference-tokens", "2e12", "--target-loss", "2.2")
    assert code == 0, err
    assert "Chinchilla-optimal" in out and "inference-optimal" in out and "FLOPs saved" in out
    assert "conventions: params=as given in column 'Model Size', flops=as given in column 'Training FLOP'" in out
    code, out, err = isoflop(capsys, "size", "--law", "hoffmann2022", "--inference-tokens", "1e12", "--budget", "1e23", "--json")
    sized = json.loads(out)
    assert sized["overtrain_ratio"] > 1 and sized["flops_saved"] > 0
    assert sized["chinchilla_optimal"]["train_flops"] == pytest.approx(1e23, rel=1e-6)


def test_fit_json_approach2_has_exponents_and_intervals(capsys, grid_csv):
    code, out, err = isoflop(capsys, "fit", grid_csv, "--params-col", "Model Size", "--flops-col", "Training FLOP",
                             "--approach", "2", "--json", "--bootstrap", "30")
    fitted = json.loads(out)
    assert {"a", "b"} <= set(fitted) and {"a", "b"} <= set(fitted["ci95"])
    assert len(fitted["details"]["budgets"]) == 4 and "asymmetry_N" in fitted["details"]["budgets"][0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--approach", "4"], "unknown approach '4'"),
        (["--loss-col", "final loss"], "no column 'final loss' for loss"),
        (["--flops", "7N"], "--flops '7N' is not one of"),
        (["--drop-highest", "-1"], "argument --drop-highest: must be an integer >= 0 (got '-1')"),
        (["--bootstrap", "many"], "argument --bootstrap: must be an integer >= 0 (got 'many')"),
        (["--lbfgs-starts", "0"], "argument --lbfgs-starts: must be a positive integer or 'all' (got '0')"),
    ],
)
def test_fit_bad_input_is_one_line_and_exit_2(capsys, grid_csv, argv, message):
    code, out, err = isoflop(capsys, "fit", grid_csv, "--params-col", "Model Size", "--flops-col", "Training FLOP", *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("isoflop fit: ")


def test_bad_sources_and_laws_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("params,tokens,loss\n1e8,0,3\n")
    for argv, message in [
        (["fit", bad], "column 'tokens' must be positive"),
        (["fit", tmp_path / "empty_dir"], "no such file"),
        (["report", tmp_path, "-o", tmp_path / "out"], "no summary.json found"),
        (["size", "--law", bad, "--inference-tokens", "1e12", "--target-loss", "2"], "not JSON"),
        (["size", "--law", "hoffmann2022", "--inference-tokens", "1e12", "--target-loss", "1.0"], "irreducible loss"),
        (["size", "--law", "hoffmann2022", "--inference-tokens", "1e12"], "one of the arguments"),
    ]:
        code, out, err = isoflop(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_fit_run_dirs_skips_unfinished_and_excludes_outliers(capsys, run_root):
    code, out, err = isoflop(capsys, "fit", run_root, "--approach", "1", "--bootstrap", "20", "--flops", "chinchilla",
                             "--drop-highest", "1")
    assert code == 0, err
    assert "skipped 2 runs that are not completed (2 failed)" in out
    assert "excluded 1 rows" in out and "flops=chinchilla" in out
    assert "runs repeat data" in out


def test_report_writes_every_figure_and_lists_each(capsys, run_root, tmp_path):
    out_dir = tmp_path / "report"
    code, out, err = isoflop(capsys, "report", run_root, "-o", out_dir, "--bootstrap", "20")
    assert code == 0, err
    report = (out_dir / "report.md").read_text()
    figures = sorted(path.name for path in out_dir.glob("*.png"))
    assert set(figures) >= {"isoflop_curves.png", "loss_vs_compute.png", "optimal_allocation.png", "loss_contours.png",
                            "overtraining.png", "efficiency.png", "learning_curves.png", "data_constrained.png"}
    for name in figures:
        assert (out_dir / name).stat().st_size > 10_000
        assert f"![{name}]({name})" in report
    assert "conventions: params=non_embedding, flops=6N, loss=eval" in report
    assert "## Data-constrained" in report and "R_D_star" in report
    law = json.loads((out_dir / "law.json").read_text())
    assert law["approach"] == "3" and law["alpha"] > 0
    fits = json.loads((out_dir / "fits.json").read_text())
    assert set(fits["fits"]) == {"1", "2", "3", "kaplan", "overtrain", "datacon"} and fits["skipped"] == {}


def test_report_on_a_csv_skips_what_it_cannot_fit(capsys, grid_csv, tmp_path):
    out_dir = tmp_path / "csv_report"
    code, out, err = isoflop(capsys, "report", grid_csv, "-o", out_dir, "--bootstrap", "10",
                             "--params-col", "Model Size", "--flops-col", "Training FLOP")
    assert code == 0, err
    report = (out_dir / "report.md").read_text()
    assert "Fits not possible on these data" in report and "epochs > 1" in report
    figures = sorted(path.name for path in out_dir.glob("*.png"))
    assert "efficiency.png" not in figures and "learning_curves.png" not in figures
    for name in figures:
        assert f"![{name}]({name})" in report


def test_shipped_example_csv_is_what_its_script_generates(tmp_path):
    from analysis.examples.make_example import EXAMPLE_CSV, example_columns

    regenerated = write_csv(tmp_path / "example.csv", example_columns())
    assert regenerated.read_text() == EXAMPLE_CSV.read_text()


@pytest.mark.slow  # starts a subprocess
def test_analysis_never_imports_jax_or_train():
    import subprocess
    import sys

    code = ("import sys, analysis.cli, analysis.report, analysis.plots, analysis.fits; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'train', 'flax')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
