"""Learning-rate sweeps in grids and warmup rules: the plan, the fit-point selection, status and analysis."""

import dataclasses
import json
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
    """ISOFLOP with `fields` over it; a field given as None is left out."""
    spec = {key: value for key, value in {"name": name, "out_dir": str(tmp_path / "runs"), **ISOFLOP, **fields}.items()
            if value is not None}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
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


# ------------------------------------------------------------------------- transfer from the smallest size (μP)

MUP = {**ISOFLOP["overrides"], "model.parameterization": "mup", "model.mup_base_width": 32}
TRANSFER = {"rates": [1e-3, 3e-3], "transfer": "smallest"}


def test_transfer_sweeps_the_smallest_width_of_each_budget_and_the_rest_wait_for_it(tmp_path, capsys):
    grid = plan_lib.load(write_spec(tmp_path, lr_sweep=TRANSFER, overrides=MUP))
    cells = plan_lib.load(write_spec(tmp_path, "plain", overrides=MUP)).runs
    swept = [run for run in grid.runs if run.config.run.lr_sweep is not None]
    transferred = [run for run in grid.runs if run.config.run.lr_transfer is not None]
    assert grid.runs == tuple(swept + transferred)  # the sweeps first
    for budget in ISOFLOP["budgets"]:
        column = [cell for cell in cells if cell.coords["budget_flops"] == budget]
        smallest = min(column, key=lambda cell: cell.config.model.d_model).run_id
        sweep = [run.run_id for run in swept if run.coords["budget_flops"] == budget]
        assert sweep == [f"{smallest}-lr0.001", f"{smallest}-lr0.003"]
        larger = [run for run in transferred if run.coords["budget_flops"] == budget]
        assert [run.run_id for run in larger] == [cell.run_id for cell in column if cell.run_id != smallest]
        for run in larger:
            assert run.waits_for == tuple(sweep) and run.lr_pending and run.config.run.lr_sweep is None
            assert run.learning_rate is None and run.learning_rate_label == f"transferred from {smallest}"
            assert run.to_dict()["learning_rate_source"].startswith(f"transferred from lr sweep {smallest}")
    assert any(note.startswith("lr sweep, transferred (μP): the smallest width of each column at 2 peak rates")
               for note in grid.notes)
    assert main(["grid", "plan", str(grid.spec.path)]) == 0
    assert f"transferred from {transferred[0].config.run.lr_transfer}" in capsys.readouterr().out


@pytest.mark.parametrize("fields, message", [
    ({"overrides": ISOFLOP["overrides"]}, "lr_sweep.transfer: needs model.parameterization: mup in every run"),
    ({"overrides": MUP, "lr_sweep": {**TRANSFER, "transfer": "smalest"}},
     "lr_sweep.transfer: 'smalest' is not allowed (did you mean 'smallest'?)"),
    ({"overrides": MUP, "kind": "overtrain", "budgets": None, "token_multipliers": [10, 20]},
     "lr_sweep.transfer: not with WSD branches"),
])
def test_transfer_is_refused_in_one_line_where_it_does_not_hold(tmp_path, fields, message):
    spec = write_spec(tmp_path, **{"lr_sweep": TRANSFER, **fields})
    with pytest.raises(ConfigError) as err:
        plan_lib.load(spec)
    assert [line for line in err.value.problems if line.startswith(message)], err.value.problems


def _write_sweep(grid, losses: dict[float, float]):
    """Completed summaries for every swept run, the loss by rate."""
    for run in grid.runs:
        if run.config.run.lr_sweep is None:
            continue
        rate = run.config.optimizer.learning_rate
        summary = run_summary(run.run_id, run.n_params, run.tokens, losses[rate], run.budget.budget_flops)
        grid.run_dir(run).mkdir(parents=True, exist_ok=True)
        write_summary(grid.run_dir(run), dataclasses.replace(summary, lr_sweep=run.config.run.lr_sweep,
                                                             learning_rate=rate))


def test_a_transferred_rate_is_its_sweeps_best_once_the_sweep_has_completed(tmp_path, capsys):
    grid = plan_lib.load(write_spec(tmp_path, lr_sweep=TRANSFER, overrides=MUP))
    transferred = {run.run_id for run in grid.runs if run.lr_pending}
    assert all(item.learning_rate is None for item in status_lib.grid_status(grid) if item.run_id in transferred)
    assert main(["grid", "status", str(grid.spec.path)]) == 0
    assert "transferred from" in capsys.readouterr().out
    _write_sweep(grid, {1e-3: 3.2, 3e-3: 3.1})
    resolved = status_lib.with_transfers_resolved(grid)
    for run in resolved.runs:
        if run.run_id in transferred:
            assert not run.lr_pending and run.config.optimizer.learning_rate == 3e-3
    statuses = {item.run_id: item for item in status_lib.grid_status(grid)}
    assert {statuses[run_id].learning_rate for run_id in transferred} == {3e-3}
    assert all(statuses[run_id].detail.startswith("lr transferred from") for run_id in transferred)
    failed_sweep = next(run for run in grid.runs if run.lr_pending)
    with pytest.raises(ConfigError, match="has no run with a finite final eval loss to transfer a rate from"):
        plan_lib.resolve_transfer(failed_sweep, [_summary("x", math.nan, failed_sweep.config.run.lr_transfer)])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the budget.s .* epochs")
def test_a_micro_grid_trains_the_sweep_first_then_the_larger_size_at_its_best_rate(tmp_path, capsys):
    from test_grid import write_base

    spec = write_spec(tmp_path, "transfer", kind="isoflop", base=str(write_base(tmp_path)), budgets=["3e9"],
                      convention="6N", ladder=None, tokens_per_param={"min": 0.25},
                      overrides={"model.parameterization": "mup", "model.mup_base_width": 32},
                      models=[{"name": "a", "overrides": {"model.d_model": 32}},
                              {"name": "b", "overrides": {"model.d_model": 64, "model.d_ff": 128}}],
                      lr_sweep={"rates": [1e-3, 1e-2], "transfer": "smallest"})
    grid = plan_lib.load(spec)
    assert [run.run_id for run in grid.runs] == ["C3e9-a-lr0.001", "C3e9-a-lr0.01", "C3e9-b"]
    assert main(["grid", "run", str(spec), "--executor", "debug"]) == 0
    out = capsys.readouterr().out
    assert out.index("start C3e9-b") > max(out.index(f"C3e9-a-lr{rate}: completed") for rate in ("0.001", "0.01"))
    sweep = {rate: json.loads((grid.spec.grid_dir / f"C3e9-a-lr{rate}" / "summary.json").read_text())
             for rate in ("0.001", "0.01")}
    best = min(sweep.values(), key=lambda summary: summary["final_eval_loss"])
    transferred = json.loads((grid.spec.grid_dir / "C3e9-b" / "summary.json").read_text())
    assert transferred["status"] == "completed" and transferred["lr_sweep"] is None
    assert transferred["learning_rate"] == best["learning_rate"]
    assert transferred["learning_rate_source"].startswith("transferred from lr sweep C3e9-a")
    statuses = {item.run_id: item for item in status_lib.grid_status(grid)}
    assert statuses["C3e9-b"].learning_rate == best["learning_rate"] and statuses["C3e9-b"].fit == "point"
    assert main(["grid", "run", str(spec), "--executor", "debug"]) == 0  # resolved again, nothing to redo
    assert "nothing to run (3 of 3 skipped)" in capsys.readouterr().out
