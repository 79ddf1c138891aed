"""WSD cooldown branches: a branch from a stable run's checkpoint is the standalone WSD run of its length."""

import dataclasses
import json
import pathlib

import pytest
import yaml

from common.run_contract import read_summary
from train import branches
from train import config as config_lib
from train import loop
from train.budget import plan_for
from train.config import ConfigError
from micro_corpus import micro_corpus

DETERMINISTIC = ("step", "tokens", "train_loss", "eval_loss", "learning_rate", "grad_norm", "flops_6N",
                 "flops_6N_attn", "flops_chinchilla")


def micro_config(tmp_path: pathlib.Path, steps: int, **run) -> config_lib.Config:
    corpus = micro_corpus(tmp_path)
    tree = {
        "model": {"vocab_size": 256, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 32},
        "data": {"source": "text", "path": str(corpus), "seq_len": 32, "batch_size": 8, "eval_tokens": 512,
                 "eval_fraction": 0.1, "cache_dir": str(tmp_path / "cache")},
        "optimizer": {"learning_rate": 1e-2, "schedule": "wsd", "warmup_rule": "steps", "warmup_steps": 4,
                      "decay_fraction": 0.25},
        "budget": {"tokens": 256 * steps},
        "run": {"log_every": 2, "eval_every": 6, "checkpoint_every": 5, "keep_checkpoints": 1, **run},
        "hardware": {"peak_flops_per_second": 1e11},
    }
    return config_lib.from_dict(tree)


def rows(run_dir: pathlib.Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{key: json.loads(line).get(key) for key in DETERMINISTIC} for line in lines]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the budget.s .* epochs")
def test_branches_equal_standalone_wsd_runs_bitwise(tmp_path):
    lengths = (24, 36)  # decay starts 18 and 27; the stable run keeps both though keep_checkpoints = 1
    standalone = {}
    for steps in lengths:
        config = micro_config(tmp_path, steps)
        standalone[steps] = tmp_path / f"standalone-{steps}"
        assert loop.train(config, standalone[steps]).status == "completed"
    first = micro_config(tmp_path, lengths[0])
    points = tuple(branches.branch_step(micro_config(tmp_path, steps), steps) for steps in lengths)
    assert points == (18, 27)
    stable = branches.stable_config(first, "stable", max(points), 256, points)
    stable_dir = tmp_path / "stable"
    assert loop.train(stable, stable_dir).role == "stable"
    for steps in lengths:
        config = micro_config(tmp_path, steps, branch_from=str(stable_dir))
        summary = loop.train(config, tmp_path / f"branch-{steps}")
        reference = read_summary(standalone[steps])
        assert rows(tmp_path / f"branch-{steps}") == rows(standalone[steps])  # every logged loss, bitwise
        assert summary.final_eval_loss == reference.final_eval_loss
        assert summary.final_train_loss == reference.final_train_loss
        assert (summary.steps, summary.tokens, summary.flops) == (reference.steps, reference.tokens, reference.flops)
        assert (summary.role, summary.branch_of, summary.branch_step) == ("branch", "stable", steps - steps // 4)
        assert reference.role == "run" and reference.warmup_steps == summary.warmup_steps == 4


def test_a_branch_needs_wsd_and_a_warmup_that_does_not_depend_on_the_length(tmp_path):
    config = micro_config(tmp_path, 24)
    tree = config_lib.to_dict(config)
    tree["run"]["branch_from"] = str(tmp_path / "stable")
    tree["optimizer"].update(schedule="cosine", warmup_rule="fraction")
    with pytest.raises(ConfigError) as err:
        config_lib.from_dict(tree)
    assert any(line.startswith("optimizer.schedule: 'cosine', but a branch") for line in err.value.problems)
    assert any(line.startswith("optimizer.warmup_rule: 'fraction' makes the warmup depend")
               for line in err.value.problems)


def test_a_branch_refuses_a_stable_run_of_another_model_or_without_its_branch_point(tmp_path):
    branch = micro_config(tmp_path, 24, branch_from=str(tmp_path / "stable"))
    steps = plan_for(branch).steps
    with pytest.raises(ConfigError, match="holds no config.yaml"):
        branches.check_parent(branch, steps)
    (tmp_path / "stable").mkdir()
    other = branches.stable_config(micro_config(tmp_path, 24), "stable", 18, 256, (17,))
    other = dataclasses.replace(other, model=dataclasses.replace(other.model, d_model=64))
    (tmp_path / "stable" / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(other)))
    with pytest.raises(ConfigError) as err:
        branches.check_parent(branch, steps)
    assert any("trained with other model.d_model" in line for line in err.value.problems)
    assert any("does not keep step 18" in line for line in err.value.problems)


# ------------------------------------------------------------------------------------------ in a grid


OVERTRAIN = {"kind": "overtrain", "base": "tiny.yaml", "token_multipliers": [10, 40, 160],
             "overrides": {"data.seq_len": 128, "data.batch_size": 16, "model.max_seq_len": 128,
                           "optimizer.schedule": "wsd", "optimizer.warmup_rule": "params"},
             "ladder": {"d_model": [24, 32], "aspect_ratio": 16, "head_dim": 8}}


def write_spec(tmp_path, file="ot", **fields):
    path = tmp_path / f"{file}.yaml"
    path.write_text(yaml.safe_dump({"name": "ot", "out_dir": str(tmp_path / "runs"), **OVERTRAIN, **fields}))
    return path


def test_an_overtrain_ladder_is_branches_off_one_stable_run_per_size(tmp_path):
    from launch import plan as plan_lib

    grid = plan_lib.load(write_spec(tmp_path))
    standalone = plan_lib.load(write_spec(tmp_path, "standalone", branches=False))
    stables = [run for run in grid.runs if run.role == "stable"]
    assert [run.run_id for run in stables] == ["stable-d24-l2", "stable-d32-l2"]
    by_id = {run.run_id: run for run in standalone.runs}
    for run in grid.runs:
        if run.role == "stable":
            continue
        alone = by_id[run.run_id]
        parent = grid.run(run.parent)
        # The branch is the standalone run (same steps, tokens, FLOPs, config but run.branch_from) ...
        assert (run.steps, run.tokens, run.flops) == (alone.steps, alone.tokens, alone.flops)
        unbranched = dataclasses.replace(run.config, run=dataclasses.replace(run.config.run, branch_from=None))
        assert unbranched == alone.config
        assert run.config.run.branch_from == str(grid.spec.grid_dir / run.parent)
        # ... leaving its stable run at its decay start, which the stable run keeps.
        assert run.prefix_steps == run.steps - round(0.2 * run.steps) in parent.config.run.branch_points
        assert parent.steps == max(parent.config.run.branch_points)
        assert parent.config.optimizer.schedule == "constant"
        assert parent.warmup == run.warmup  # N tokens: the same for every length
    totals, alone_totals = grid.totals(), standalone.totals()
    # The grid trains each shared prefix once; every branch still counts its whole D.
    assert totals["flops_standalone"] == alone_totals["flops"]
    for name, flops in totals["flops"].items():
        expected = sum(run.flops[name] for run in stables) + sum(
            run.flops[name] - run.budget.flops_after(run.prefix_steps * run.budget.tokens_per_step)[name]
            for run in grid.runs if run.role == "branch")
        assert flops == pytest.approx(expected, rel=1e-12)
        assert flops < alone_totals["flops"][name]
    assert totals["steps"] == sum(run.added_steps for run in grid.runs) < alone_totals["steps"]
    assert any("6 WSD branches off 2 stable runs" in note for note in grid.notes)


def test_branches_refuse_a_length_dependent_warmup_once_per_problem(tmp_path, capsys):
    from launch.cli import main

    overrides = {**OVERTRAIN["overrides"], "optimizer.warmup_rule": "fraction"}
    assert main(["grid", "plan", str(write_spec(tmp_path, overrides=overrides))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["isoflop grid: branches (M10-d24-l2, M40-d24-l2, M160-d24-l2, ...): optimizer.warmup_rule: "
                     "'fraction' makes the warmup depend on the run length, so a branch could not share its stable "
                     "run's warmup; choose steps, tokens or params (or set branches: false)"]


def test_only_a_branch_brings_its_stable_run_and_branches_wait_for_it(tmp_path):
    from launch import plan as plan_lib
    from launch import runner

    grid = plan_lib.load(write_spec(tmp_path))
    assert [run.run_id for run in runner.select(grid, ["M40-d32-l2"])] == ["stable-d32-l2", "M40-d32-l2"]
    pending = list(runner.select(grid, ["M40-d32-l2", "M10-d32-l2"]))
    outcome = {}
    stable = runner._next_ready(pending, outcome)
    assert stable.run_id == "stable-d32-l2"
    assert runner._next_ready(pending, outcome) is None  # both branches wait for it
    running = [runner._Active(stable, 0.0, None)]
    assert runner._blocked(pending, outcome, running) == []  # ... unless it will not complete
    outcome["stable-d32-l2"] = "failed"
    assert [run.run_id for run in runner._blocked(pending, outcome, [])] == ["M10-d32-l2", "M40-d32-l2"]
    pending = [grid.run("M10-d32-l2")]
    assert runner._next_ready(pending, {"stable-d32-l2": "completed"}).run_id == "M10-d32-l2"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the budget.s .* epochs")
def test_a_branch_grid_runs_stable_runs_first_and_fits_only_branches(tmp_path):
    """A micro ladder with an lr sweep, through the runner with submitit's debug executor (in this process;
    its log redirection does not mix with pytest's capture, so the runner prints to a buffer)."""
    import io

    from analysis.sources import Conventions, load_runs
    from launch import plan as plan_lib
    from launch import runner
    from launch import status as status_lib

    base = config_lib.to_dict(micro_config(tmp_path, 24))
    base["budget"] = {"tokens": None, "token_multiplier": 1.0}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = tmp_path / "micro.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "micro", "kind": "overtrain", "base": str(tmp_path / "base.yaml"), "out_dir": str(tmp_path / "runs"),
        "token_multipliers": [0.8, 1.2], "models": [{"name": "m", "overrides": {"model.d_model": 32}}],
        "lr_sweep": {"rates": [3e-3, 1e-2]}}))
    grid = plan_lib.load(spec)
    out = io.StringIO()
    assert runner.run_grid(grid, executor="debug", stream=out) == 0
    starts = [line.split()[1] for line in out.getvalue().splitlines() if line.strip().startswith("start ")]
    assert starts[:2] == ["stable-m-lr0.003", "stable-m-lr0.01"] and len(starts) == 6
    branch = read_summary(grid.run_dir("M1.2-m-lr0.01"))
    assert (branch.role, branch.branch_of, branch.branch_step, branch.steps) == ("branch", "stable-m-lr0.01", 36, 48)
    statuses = {item.run_id: item for item in status_lib.grid_status(grid)}
    assert all(item.status == "completed" for item in statuses.values())
    assert [statuses[f"stable-m-lr{lr}"].fit for lr in ("0.003", "0.01")] == \
        ["not a point: WSD stable run (not decayed): its branches are the fit points"] * 2
    kept = sorted(run_id for run_id, item in statuses.items() if item.fit.startswith("point: best of 2 rates"))
    data = load_runs(grid.spec.grid_dir, Conventions())
    assert sorted(data.run_ids) == kept and [run_id.split("-")[0] for run_id in kept] == ["M0.8", "M1.2"]


def test_the_plan_drops_a_cell_whose_warmup_and_decay_do_not_fit(tmp_path):
    from launch import plan as plan_lib

    overrides = {**OVERTRAIN["overrides"], "optimizer.warmup_rule": "steps", "optimizer.warmup_steps": 100}
    grid = plan_lib.load(write_spec(tmp_path, overrides=overrides))
    assert [item.run_id for item in grid.dropped] == ["M10-d24-l2"]  # M10-d32-l2: 100 + 26 <= 130 steps
    assert grid.dropped[0].reason == ("optimizer.decay_fraction: 14 decay steps plus 67 warmup steps "
                                      "(optimizer.warmup_rule=steps) exceed the run's 68 steps for schedule=wsd")
    assert all(run.steps - run.prefix_steps + run.warmup[0] <= run.steps for run in grid.runs if run.role == "branch")
