"""Learning-rate sweeps in grids and warmup rules: the plan, the fit-point selection, status and analysis."""

import dataclasses
import math

import pytest
import yaml

from analysis.sources import Conventions, load_runs
from analysis.synthetic import run_summary
from common import fit_points
from common.run_contract import write_summary
from launch import plan as plan_lib
from launch import status as status_lib
from launch.cli import main
from train.config import ConfigError

ISOFLOP = {
    "kind": "isoflop", "base": "tiny.yaml", "budgets": [1e12, 3e12], "convention": "6N",
    "overrides": {"data.seq_len": 128, "data.batch_size": 16, "optimizer.warmup_rule": "params"},
    "ladder": {"d_model": [32, 64, 96], "aspect_ratio": 32, "head_dim": 32},
}


def write_spec(tmp_path, name="sweep", **fields):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "out_dir": str(tmp_path / "runs"), **ISOFLOP, **fields}))
    return path


def test_a_listed_sweep_trains_every_cell_at_every_rate_in_one_group_per_cell(tmp_path):
    grid = plan_lib.load(write_spec(tmp_path, lr_sweep={"rates": [1e-3, 3e-3]}))
    cells = plan_lib.load(write_spec(tmp_path, "plain"))
    assert len(grid.runs) == 2 * len(cells.runs)
    for run in grid.runs:
        group = run.config.run.lr_sweep
        assert run.run_id == f"{group}-lr{plan_lib.format_number(run.config.optimizer.learning_rate)}"
        assert run.coords["learning_rate"] == run.config.optimizer.learning_rate
        assert group in {cell.run_id for cell in cells.runs}
        assert run.to_dict()["learning_rate_source"].startswith(f"lr sweep {group}")
    assert any("lr sweep: every cell at 2 peak rates (0.001, 0.003)" in note for note in grid.notes)


def test_a_range_is_log_spaced_with_both_ends():
    problems = []
    assert plan_lib._learning_rates(plan_lib.LrSweep(min=1e-3, max=1e-1, count=5), problems) == \
        (1e-3, 0.00316, 0.01, 0.0316, 0.1)
    assert problems == []


@pytest.mark.parametrize("sweep, message", [
    ({"rates": [1e-3], "min": 1e-3}, "lr_sweep: give either rates (a list) or min, max and count"),
    ({"min": 1e-3, "max": 1e-2}, "lr_sweep: a range needs all of min, max and count"),
    ({"min": 1e-2, "max": 1e-3, "count": 3}, "lr_sweep: min 0.01 must be below max 0.001"),
    ({"min": 1e-3, "max": 1e-2, "count": 1000}, "lr_sweep.count: 1000 must be between 2 and 64"),
    ({"rates": [1e-3, -1]}, "lr_sweep.rates[1]: -1"),
    ({"rates": [1e-3, 1e-3]}, "lr_sweep.rates: [0.001, 0.001] repeats a value"),
    ({"rate": [1e-3]}, "lr_sweep.rate: unknown"),
])
def test_bad_sweeps_are_one_line_each(tmp_path, sweep, message):
    with pytest.raises(ConfigError) as err:
        plan_lib.load(write_spec(tmp_path, lr_sweep=sweep))
    assert any(line.startswith(message) for line in err.value.problems), err.value.problems


def test_the_grid_may_not_set_the_sweep_group_itself(tmp_path):
    spec = write_spec(tmp_path, overrides={**ISOFLOP["overrides"], "run.lr_sweep": "x"})
    with pytest.raises(ConfigError, match="overrides.run.lr_sweep: set by the grid"):
        plan_lib.load(spec)


def _summary(run_id, loss, group=None, lr=1e-3, role="run"):
    return dataclasses.replace(run_summary(run_id, 1e5, 2e6, loss, 1e12), lr_sweep=group, learning_rate=lr, role=role)


def test_fit_points_keep_each_sweeps_lowest_eval_loss_and_no_stable_run():
    summaries = [_summary("a-lr1", 3.2, "a", 1e-3), _summary("a-lr3", 3.1, "a", 3e-3), _summary("a-lr9", math.nan, "a"),
                 _summary("b-lr1", 2.9, "b"), _summary("plain", 3.0), _summary("stable-d", 2.5, role="stable")]
    verdicts = fit_points.verdicts(summaries)
    assert [v.selected for v in verdicts] == [False, True, False, True, True, False]
    assert verdicts[0].reason == "lr sweep a: eval loss 3.2 > 3.1 at lr 0.003"
    assert verdicts[1].reason == "best of 3 rates in lr sweep a"
    assert verdicts[5].reason.startswith("WSD stable run (not decayed)")


def test_analysis_and_status_read_the_selection_from_the_run_directories(tmp_path, capsys):
    grid = plan_lib.load(write_spec(tmp_path, lr_sweep={"rates": [1e-3, 3e-3]}))
    losses = {}
    for i, run in enumerate(grid.runs):
        losses[run.run_id] = 3.0 + 0.1 * (i % 2) if run.coords["learning_rate"] == 1e-3 else 3.05
        summary = run_summary(run.run_id, run.n_params, run.tokens, losses[run.run_id], run.budget.budget_flops)
        grid.run_dir(run).mkdir(parents=True)
        write_summary(grid.run_dir(run), dataclasses.replace(summary, lr_sweep=run.config.run.lr_sweep,
                                                             learning_rate=run.config.optimizer.learning_rate))
    data = load_runs(grid.spec.grid_dir, Conventions())
    assert len(data.run_ids) == len(grid.runs) // 2
    for run_id in data.run_ids:
        group = grid.run(run_id).config.run.lr_sweep
        rivals = [run.run_id for run in grid.runs if run.config.run.lr_sweep == group]
        assert losses[run_id] == min(losses[rival] for rival in rivals)
    assert any(note.startswith(f"left out {len(grid.runs) // 2} completed runs that are not fit points")
               for note in data.notes)
    statuses = {item.run_id: item for item in status_lib.grid_status(grid)}
    assert sum(item.fit.startswith("point: best of 2 rates") for item in statuses.values()) == len(grid.runs) // 2
    assert main(["grid", "status", str(grid.spec.path)]) == 0
    table = capsys.readouterr().out
    assert "not a point: lr sweep" in table and " 0.003 " in table
