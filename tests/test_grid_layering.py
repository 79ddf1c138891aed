"""Grid specs that build on one another (`extends`) and ladders given as (d_model, n_layers) pairs."""

import pytest
import yaml

from launch import plan as plan_lib
from launch.cli import main
from tests.test_grid import ISOFLOP, write_spec


def test_a_spec_extends_another_and_changes_only_what_it_names(tmp_path):
    parent = write_spec(tmp_path, "parent", **ISOFLOP, lr_sweep={"rates": [1e-3, 3e-3]})
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": parent.name, "name": "child", "convention": "chinchilla",
                                     "lr_sweep": None, "overrides": {"optimizer.beta2": 0.99}}))
    first, second = plan_lib.load(parent), plan_lib.load(child)
    assert second.spec.name == "child" and first.spec.name == "parent"
    assert {run.config.budget.convention for run in second.runs} == {"chinchilla"}
    assert {run.config.optimizer.beta2 for run in second.runs} == {0.99}
    assert {run.config.data.seq_len for run in second.runs} == {128}  # the parent's overrides, merged key by key
    assert len({run.config.optimizer.learning_rate for run in first.runs}) == 2
    assert len({run.config.optimizer.learning_rate for run in second.runs}) == 1  # the sweep was unset


def test_an_extends_cycle_is_one_line(tmp_path, capsys):
    (tmp_path / "x.yaml").write_text("extends: y.yaml\n")
    (tmp_path / "y.yaml").write_text("extends: x.yaml\n")
    assert main(["grid", "plan", str(tmp_path / "x.yaml")]) == 2
    assert "extends: cycle through" in capsys.readouterr().err


def test_ladder_pairs_widths_with_depths(tmp_path):
    problems = []
    ladder = plan_lib.parse_ladder({"d_model": [16, 16, 32], "n_layers": [1, 2, 3], "head_dim": 8}, problems)
    shapes = plan_lib.ladder_models(ladder, problems)
    assert not problems
    assert [shape.label for shape in shapes] == ["d16-l1", "d16-l2", "d32-l3"]
    assert shapes[2].overrides == {"model.d_model": 32, "model.n_layers": 3, "model.n_heads": 4, "model.d_ff": 96}


@pytest.mark.parametrize("ladder, message", [
    ({"d_model": [16, 32], "n_layers": [1], "head_dim": 8}, "ladder: d_model and n_layers pair up one to one"),
    ({"head_dim": 8}, "ladder: set d_model (a list of widths), n_layers (a list of depths), or both"),
])
def test_bad_ladders_are_one_line(tmp_path, capsys, ladder, message):
    spec = write_spec(tmp_path, "bad", **{**ISOFLOP, "ladder": ladder})
    assert main(["grid", "plan", str(spec)]) == 2
    assert any(line.startswith(f"isoflop grid: {message}") for line in capsys.readouterr().err.splitlines())


def test_the_shipped_isoflop_grid_spends_its_budgets():
    """The issue's bar for the newcomer's grid: >= 15 runs, >= 3 budgets over >= 10x, >= 5 sizes each."""
    grid = plan_lib.load(plan_lib.CONFIG_ROOT / "grids" / "cpu-isoflop.yaml")
    cells = {}
    for run in grid.runs:
        budget = run.coords["budget_flops"]
        assert budget * 0.99 <= run.flops["chinchilla"] <= budget
        cells.setdefault(budget, set()).add(run.n_params)
    assert len(grid.runs) >= 15 and max(cells) / min(cells) >= 10
    assert all(len(sizes) >= 5 for sizes in cells.values())


@pytest.mark.parametrize("spec", sorted((plan_lib.CONFIG_ROOT / "grids").rglob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_spec_plans(spec):
    """A spec the README or the docs tell users to run must plan as shipped (one-line errors otherwise)."""
    grid = plan_lib.load(spec)
    assert grid.runs and all(run.run_id for run in grid.runs)
