"""Reading CSVs (column mapping, derived columns, clear errors) and run directories (status, conventions),
and logged outlier exclusion."""

import json

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.sources import (
    Conventions, cluster_budgets, exclude_outliers, learning_curve, load_csv, load_runs, load_source,
)
from analysis.synthetic import write_run_dirs


def write(path, text):
    path.write_text(text)
    return path


def test_csv_column_mapping_and_tokens_from_flops(tmp_path):
    path = write(tmp_path / "pub.csv", "Model Size,Training FLOP,loss,note\n1e8,6e17,3.1,a\n2e8,6e17,3.0,b\n4e8,6e17,3.05,c\n")
    data = load_csv(path, Conventions(), {"params": "Model Size", "flops": "Training FLOP"})
    np.testing.assert_allclose(data.tokens, [1e9, 5e8, 2.5e8])
    np.testing.assert_allclose(data.loss, [3.1, 3.0, 3.05])
    assert any("tokens derived as D = C / (6·N)" in note for note in data.notes)
    assert "params='Model Size'" in data.conventions.describe()
    assert len(data.budget_groups()) == 1


def test_csv_default_names_and_flops_from_params_tokens(tmp_path):
    path = write(tmp_path / "d.csv", "params,tokens,loss\n1e8,2e9,3.0\n1e9,2e10,2.5\n")
    data = load_csv(path, Conventions())
    np.testing.assert_allclose(data.flops, [1.2e18, 1.2e20])
    assert any("C = 6·N·D" in note for note in data.notes)
    assert len(data.budget_groups()) == 2


@pytest.mark.parametrize(
    "text, columns, message",
    [
        ("params,tokens,loss\n1e8,2e9,3.0\n", {"flops": "Training FLOP"}, "no column 'Training FLOP' for flops"),
        ("params,tokens\n1e8,2e9\n", {}, "no column 'loss' for loss"),
        ("params,loss\n1e8,3.0\n", {}, "need two of params/tokens/flops"),
        ("params,tokens,loss\n1e8,2e9,3.0\n0,2e9,3.0\n", {}, "line 3: column 'params' must be positive"),
        ("params,tokens,loss\n1e8,-2e9,3.0\n", {}, "line 2: column 'tokens' must be positive"),
        ("params,tokens,loss\n1e8,2e9,\n", {}, "line 2: column 'loss' is empty"),
        ("params,tokens,loss\n1e8,2e9,abc\n", {}, "not a number"),
        ("params,tokens,loss\n", {}, "no rows"),
    ],
)
def test_csv_errors_are_one_clear_line(tmp_path, text, columns, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(AnalysisError, match=message) as err:
        load_csv(path, Conventions(), columns)
    assert "\n" not in str(err.value)


def test_outlier_exclusion_is_explicit_and_logged(tmp_path):
    rows = "".join(f"{n},{2e10},{loss}\n" for n, loss in [(1e8, 3.0), (2e8, 9.0), (4e8, 2.9), (8e8, 4.0), (1.6e9, 2.8)])
    data = load_csv(write(tmp_path / "o.csv", "params,tokens,loss\n" + rows), Conventions())
    top = exclude_outliers(data, drop_highest=2)
    np.testing.assert_allclose(np.sort(top.loss), [2.8, 2.9, 3.0])
    assert "excluded 2 rows" in top.notes[-1] and "row3 (loss 9" in top.notes[-1]
    cut = exclude_outliers(data, max_loss=3.5)
    assert len(cut) == 3 and "loss > 3.5" in cut.notes[-1]
    named = exclude_outliers(data, drop_runs=["row2"])
    assert 3.0 not in named.loss
    assert exclude_outliers(data) is data
    with pytest.raises(AnalysisError, match="no run named nope"):
        exclude_outliers(data, drop_runs=["nope"])
    with pytest.raises(AnalysisError, match="dropped every row"):
        exclude_outliers(data, max_loss=1.0)
    with pytest.raises(AnalysisError, match="must be positive"):
        exclude_outliers(data, max_loss=0.0)


def test_cluster_budgets_groups_nearby_flops():
    labels = cluster_budgets(np.array([1e18, 1.02e18, 0.99e18, 1e19, 1.03e19, 1e20]))
    assert len(np.unique(labels)) == 3
    assert labels[0] == labels[1] == labels[2]


def test_run_dirs_skip_unfinished_and_follow_conventions(tmp_path):
    params, tokens = np.array([1e7, 2e7, 4e7, 8e7]), np.array([4e8, 2e8, 1e8, 5e7])
    write_run_dirs(tmp_path / "runs" / "grid", params, tokens, [3.2, 3.1, 3.15, 3.3],
                   status=["completed", "completed", "failed", "failed"])
    data = load_source(tmp_path / "runs", Conventions(params="total", flops="chinchilla"), with_curves=True)
    assert len(data) == 2
    np.testing.assert_allclose(data.params, params[:2] * 1.2)
    np.testing.assert_allclose(data.flops, 6 * params[:2] * 1.07 * tokens[:2])
    np.testing.assert_allclose(data.loss, [3.2, 3.1])
    assert any("skipped 2 runs that are not completed (2 failed)" in note for note in data.notes)
    assert set(data.curves) == {"run000", "run001"} and "train_loss" in data.curves["run000"]
    train = load_runs(tmp_path / "runs", Conventions(loss="train"))
    np.testing.assert_allclose(train.loss, [3.2 * 0.98, 3.1 * 0.98])


def test_run_dirs_derive_missing_spent_flops_and_report_bad_summaries(tmp_path):
    write_run_dirs(tmp_path, [1e7, 2e7], [2e8, 1e8], [3.0, 3.1], curves=False)
    summary_path = tmp_path / "run000" / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["flops"]["compiled"]
    summary_path.write_text(json.dumps(summary))
    data = load_runs(tmp_path, Conventions(flops="compiled"))
    assert data.flops[0] == pytest.approx(6e7 * 1.09 * 2e8)
    assert any("used flops_per_token['compiled'] x tokens" in note for note in data.notes)

    summary["final_eval_loss"] = None
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(AnalysisError, match="missing 'final_eval_loss' \\(use --loss train"):
        load_runs(tmp_path, Conventions())
    summary["final_eval_loss"] = -1.0
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(AnalysisError, match="final_eval_loss must be positive"):
        load_runs(tmp_path, Conventions())


def test_empty_or_unknown_sources(tmp_path):
    with pytest.raises(AnalysisError, match="no summary.json found"):
        load_source(tmp_path, Conventions())
    write_run_dirs(tmp_path, [1e7], [2e8], [3.0], status=["failed"], curves=False)
    with pytest.raises(AnalysisError, match="no completed runs .*1 failed"):
        load_source(tmp_path, Conventions())
    with pytest.raises(AnalysisError, match="no such file"):
        load_source(tmp_path / "missing.csv", Conventions())
    with pytest.raises(AnalysisError, match="--flops '7N' is not one of"):
        load_source(tmp_path, Conventions(flops="7N"))


def test_run_ids_repeated_across_experiments_become_directory_names(tmp_path):
    write_run_dirs(tmp_path / "exp_a", [1e7, 2e7], [2e8, 1e8], [3.0, 3.1])
    write_run_dirs(tmp_path / "exp_b", [1e7, 2e7], [4e8, 2e8], [2.9, 3.0])
    data = load_runs(tmp_path, Conventions(), with_curves=True)
    assert sorted(data.run_ids) == ["exp_a/run000", "exp_a/run001", "exp_b/run000", "exp_b/run001"]
    assert set(data.curves) == set(data.run_ids)
    assert any("run_ids repeat" in note for note in data.notes)


def test_learning_curves_come_through_the_contract(tmp_path):
    write_run_dirs(tmp_path, [1e7], [2e8], [3.0], curves=False)
    run = tmp_path / "run000"
    (run / "metrics.jsonl").write_text('{"step": 5, "train_loss": 3.5, "tokens": 10}\n'
                                       '{"step": 6, "eval_loss": 3.4, "tokens": 12, "energy_source": "x"}\n'
                                       '{"step": 10, "train_lo')  # an eval-only row, then a torn last line
    curve = learning_curve(run)
    assert sorted(curve) == ["eval_loss", "step", "tokens", "train_loss"]
    np.testing.assert_array_equal(curve["step"], [5, 6])
    np.testing.assert_array_equal(curve["train_loss"], [3.5, np.nan])
    (run / "metrics.jsonl").write_text('{"step": 5}\nnot json\n{"step": 10}\n')
    with pytest.raises(AnalysisError, match="metrics.jsonl line 2: not a metrics row") as err:
        load_runs(tmp_path, Conventions(), with_curves=True)
    assert "\n" not in str(err.value)


def test_several_run_roots_read_as_one_source(tmp_path):
    write_run_dirs(tmp_path / "grid", [1e7, 2e7], [2e8, 1e8], [3.0, 3.1], curves=False)
    write_run_dirs(tmp_path / "sweep", [4e7], [5e7], [3.2], curves=False)
    data = load_source([tmp_path / "grid", tmp_path / "sweep"], Conventions())
    assert len(data) == 3 and data.source == f"{tmp_path / 'grid'} + {tmp_path / 'sweep'}"
    assert set(data.run_ids) == {"grid/run000", "grid/run001", "sweep/run000"}  # repeated ids: named by root
    with pytest.raises(AnalysisError, match="roots overlap"):
        load_source([tmp_path, tmp_path / "grid"], Conventions())
    csv_file = write(tmp_path / "t.csv", "params,tokens,loss\n1e8,2e9,3.0\n")
    with pytest.raises(AnalysisError, match="several sources must all be run-directory roots"):
        load_source([tmp_path / "grid", csv_file], Conventions())
