"""CPU slots: local runs side by side each hold their own cores (affinity and XLA's thread setting)."""

import json
import os

import pytest

from common import cpuinfo
from launch import cpu_slots
from launch.cli import main
from train.config import CONFIG_ROOT
from tests.test_grid import write_base, write_spec


@pytest.mark.parametrize("cores, slots, sizes", [
    (list(range(8)), 2, [4, 4]), (list(range(8)), 3, [3, 3, 2]), (list(range(2)), 2, [1, 1]),
    ([0, 2, 5], 3, [1, 1, 1]),
])
def test_partition_is_disjoint_and_balanced(cores, slots, sizes):
    groups = cpu_slots.partition(cores, slots)
    assert [len(group) for group in groups] == sizes
    assert sorted(core for group in groups for core in group) == cores


@pytest.mark.parametrize("cores, slots", [([0, 1], 3), ([0, 1], 1), ([0], 2)])
def test_no_slots_when_there_are_fewer_cores_than_runs_or_one_run(cores, slots):
    assert cpu_slots.partition(cores, slots) is None


def test_one_core_slot_turns_eigen_threads_off_and_keeps_given_flags():
    env = cpu_slots.environment((3,), {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "A": "1"})
    assert env == {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=8",
                   "A": "1"}
    assert cpu_slots.environment((0, 1), {"A": "1"}) == {"A": "1"}


@pytest.mark.skipif(len(cpuinfo.usable_cores()) < 2 or not hasattr(os, "sched_setaffinity"),
                    reason="needs two usable cores")
def test_local_runs_side_by_side_train_on_their_own_cores(tmp_path, capsys):
    spec = write_spec(tmp_path, "pinned", kind="sweep", base=str(write_base(tmp_path)), axes={"case": {
        "a": {"optimizer.learning_rate": 0.01}, "b": {"optimizer.learning_rate": 0.02}}})
    assert main(["grid", "run", str(spec), "--max-parallel", "2"]) == 0
    out = capsys.readouterr().out
    first, second = cpu_slots.partition(cpuinfo.usable_cores(), 2)
    assert f"pinned to {cpu_slots.describe([first, second])}" in out
    logs = tmp_path / "runs" / "pinned" / "_grid" / "logs"
    held = {case: next(line for line in (logs / f"case-{case}.log").read_text().splitlines()
                       if line.startswith("===")).rsplit("(cores ", 1)[1].rstrip(")") for case in "ab"}
    assert sorted(held.values()) == sorted(",".join(map(str, group)) for group in (first, second))
    for case, cores in held.items():  # the trainer saw its slot's cores: CPU power is counted for them only
        summary = json.loads((tmp_path / "runs" / "pinned" / f"case-{case}" / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["hardware"]["tdp_source"].endswith(f"x {len(cores.split(','))} cores")
    assert (logs / f"calibrate-{len(first)}-cores.log").exists()


def test_no_pin_leaves_runs_unpinned(tmp_path, capsys):
    spec = write_spec(tmp_path, "shared", kind="sweep", base=str(write_base(tmp_path)), axes={"case": {
        "a": {"optimizer.learning_rate": 0.01}, "b": {"optimizer.learning_rate": 0.02}}})
    assert main(["grid", "run", str(spec), "--max-parallel", "2", "--no-pin"]) == 0
    assert "pinned" not in capsys.readouterr().out
    log = (tmp_path / "runs" / "shared" / "_grid" / "logs" / "case-a.log").read_text()
    assert "(cores " not in log


def test_side_by_side_starts_awaited_runs_then_the_largest(tmp_path):
    from launch import plan as plan_lib
    from launch.runner import _start_order

    grid = plan_lib.load(CONFIG_ROOT / "grids" / "cpu-isoflop.yaml")
    order = _start_order(list(grid.runs))
    sweeps = [run for run in grid.runs if any(run.run_id in other.waits_for for other in grid.runs)]
    assert {run.run_id for run in order[:len(sweeps)]} == {run.run_id for run in sweeps}
    budgets = [max(run.flops.values()) for run in order[len(sweeps):]]
    assert budgets == sorted(budgets, reverse=True) and len(set(budgets)) > 1
