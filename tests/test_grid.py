"""Grid launcher: planned budgets hold, cells are what the spec says, bad specs fail before any run, and a
half-finished grid resumes (completed runs skipped, failures reported) on every executor."""

import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
import yaml

from analysis.sources import Conventions, load_runs
from analysis.synthetic import run_summary
from common.run_contract import write_summary
from train import multihost
from launch import plan as plan_lib
from launch import status as status_lib
from launch.cli import main
from launch.runner import Progress
from modeling.accounting import param_counts, training_flops_per_token
from train.config import CONFIG_ROOT, load

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"
MICRO_MODEL = {"vocab_size": 256, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 32}


def write_base(tmp_path: pathlib.Path) -> pathlib.Path:
    """A micro config on a ~40 KB text corpus: a run is a few seconds of compute."""
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for i in range(40):
        (corpus / f"f{i}.py").write_text(TEXT.replace("add", f"add{i}") * 12)
    base = {
        "model": MICRO_MODEL,
        "data": {"source": "text", "path": str(corpus), "seq_len": 32, "batch_size": 8, "eval_tokens": 512,
                 "eval_fraction": 0.1, "cache_dir": str(tmp_path / "cache")},
        "optimizer": {"learning_rate": 1e-2},
        "budget": {"tokens": 256 * 40},
        "run": {"log_every": 10, "eval_every": 20, "checkpoint_every": 20},
        "hardware": {"peak_flops_per_second": 1e11},
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def write_spec(tmp_path: pathlib.Path, name: str, **fields) -> pathlib.Path:
    spec = {"name": name, "out_dir": str(tmp_path / "runs"), **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ planning


ISOFLOP = {
    "kind": "isoflop", "base": "tiny.yaml", "budgets": ["1e12", 3.0e12, "1e13"], "convention": "6N",
    "overrides": {"data.seq_len": 128, "data.batch_size": 16},
    "ladder": {"d_model": [32, 64, 96, 128, 192], "aspect_ratio": 32, "head_dim": 32},
    "tokens_per_param": {"min": 1, "max": 200}, "min_steps": 20,
}


def test_isoflop_plan_spends_each_budget_and_filters_by_tokens_per_param(tmp_path):
    grid = plan_lib.load(write_spec(tmp_path, "iso", **ISOFLOP))
    tokens_per_step = 16 * 128
    kept = {run.run_id for run in grid.runs}
    expected_kept = set()
    for budget in (1e12, 3e12, 1e13):
        for d_model, n_layers in ((32, 1), (64, 2), (96, 3), (128, 4), (192, 6)):
            model = load(CONFIG_ROOT / "tiny.yaml", [f"model.d_model={d_model}", f"model.n_layers={n_layers}",
                                                      f"model.n_heads={d_model // 32}",
                                                      f"model.d_ff={math.ceil(8 * d_model / 3 / 32) * 32}"]).model
            n = param_counts(model)["non_embedding"]
            per_token = training_flops_per_token(model, 128)["6N"]
            assert per_token == 6 * n
            tokens = math.floor(budget / (per_token * tokens_per_step)) * tokens_per_step  # independent count
            run_id = f"C{plan_lib.format_number(budget)}-d{d_model}-l{n_layers}"
            if 1 <= tokens / n <= 200 and tokens // tokens_per_step >= 20:
                expected_kept.add(run_id)
                run = next(r for r in grid.runs if r.run_id == run_id)
                assert run.n_params == n and run.tokens == tokens
    assert kept == expected_kept and len(kept) == 7
    for run in grid.runs:
        budget = run.coords["budget_flops"]
        spent = run.flops["6N"]
        assert spent == pytest.approx(6 * run.n_params * run.tokens, rel=1e-12)  # C = 6·N·D
        assert budget - 6 * run.n_params * tokens_per_step < spent <= budget  # within one step of C
        assert 1 <= run.tokens_per_param <= 200
        assert run.config.budget.flops == budget and run.config.budget.convention == "6N"
        assert run.config.run.experiment == "iso" and run.config.run.run_id == run.run_id
        assert grid.run_dir(run) == tmp_path / "runs" / "iso" / run.run_id
    reasons = {item.run_id: item.reason for item in grid.dropped}
    assert reasons["C1e13-d32-l1"].startswith("D/N = ") and "> tokens_per_param.max 200" in reasons["C1e13-d32-l1"]
    assert "< tokens_per_param.min 1" in reasons["C1e12-d192-l6"]
    assert len(grid.runs) + len(grid.dropped) == 15
    # N·D products: within each budget, N·D is the same up to one step
    for budget in (1e12, 3e12, 1e13):
        products = [run.n_params * run.tokens for run in grid.runs if run.coords["budget_flops"] == budget]
        assert max(products) <= budget / 6 and min(products) > budget / 6 * 0.9


def test_generated_ladder_reproduces_the_ladder_presets():
    problems = []
    by_width = plan_lib.ladder_models(plan_lib.parse_ladder(
        {"d_model": [64, 96, 128, 192, 288, 384], "aspect_ratio": 32, "head_dim": 32, "ffn_ratio": "8/3",
         "ffn_multiple": 32}, problems), problems)
    by_depth = plan_lib.ladder_models(plan_lib.parse_ladder({"n_layers": [2, 3, 4, 6, 9, 12]}, problems), problems)
    assert not problems
    for rung, (width, depth) in enumerate(zip(by_width, by_depth)):
        preset = yaml.safe_load((CONFIG_ROOT / "models" / f"ladder-{rung}.yaml").read_text())["model"]
        expected = {f"model.{key}": preset[key] for key in ("d_model", "n_layers", "n_heads", "d_ff")}
        assert width.overrides == expected and depth.overrides == expected
        assert width.label == f"d{preset['d_model']}-l{preset['n_layers']}"


def test_overtrain_plan_trains_multiples_of_n(tmp_path):
    spec = write_spec(tmp_path, "ot", kind="overtrain", base="tiny.yaml", token_multipliers=[5, 20, 80],
                      models=["ladder-0", {"preset": "ladder-1", "name": "rung1"}],
                      overrides={"data.seq_len": 128}, branches=False)  # standalone runs (branches: test_branches.py)
    grid = plan_lib.load(spec)
    assert [run.run_id for run in grid.runs] == ["M5-d64-l2", "M5-rung1", "M20-d64-l2", "M20-rung1",
                                                 "M80-d64-l2", "M80-rung1"]
    tokens_per_step = grid.runs[0].budget.tokens_per_step
    for run in grid.runs:
        target = run.coords["token_multiplier"] * run.n_params
        assert target - tokens_per_step < run.tokens <= target
        assert run.config.budget.token_multiplier == run.coords["token_multiplier"]
        assert run.config.budget.flops is None and run.config.budget.tokens is None
    assert grid.runs[1].config.model.d_model == 96  # the preset replaced tiny.yaml's model


def test_sweep_is_the_cartesian_product_of_its_axes(tmp_path):
    spec = write_spec(tmp_path, "arch", kind="sweep", base="tiny.yaml", seeds=[0, 1], axes={
        "model.ffn": ["swiglu", "gelu"],
        "attention": {"mha": {"model.attention": "mha"}, "gqa": {"model.attention": "gqa", "model.n_kv_heads": 2}},
    })
    grid = plan_lib.load(spec)
    assert [run.run_id for run in grid.runs] == [
        "ffn-swiglu_attention-mha-s0", "ffn-swiglu_attention-mha-s1", "ffn-swiglu_attention-gqa-s0",
        "ffn-swiglu_attention-gqa-s1", "ffn-gelu_attention-mha-s0", "ffn-gelu_attention-mha-s1",
        "ffn-gelu_attention-gqa-s0", "ffn-gelu_attention-gqa-s1"]
    for run in grid.runs:
        assert run.config.model.ffn == run.coords["model.ffn"]
        assert run.config.model.attention == run.coords["attention"]
        assert run.config.model.kv_heads == (2 if run.coords["attention"] == "gqa" else 4)
        assert run.config.run.seed == run.coords["seed"]
        assert run.config.budget.flops == 1.5e13  # the base budget
    assert plan_lib.load(spec).to_dict() == grid.to_dict()  # deterministic


@pytest.mark.parametrize("fields, message", [
    ({"kind": "isoflp"}, "kind: 'isoflp' is not allowed (did you mean 'isoflop'?); choose one of isoflop, overtrain, "
                         "sweep"),
    ({"budgets": [1e12, -3]}, "budgets[1]: -3.0 must be > 0"),
    ({"budget": [1e12]}, "budget: unknown key (did you mean 'budgets'?)"),
    ({"models": ["ladder-0"]}, "models: set exactly one of models"),
    ({"ladder": {"d_model": [40], "head_dim": 32}}, "ladder.d_model[0]: 40 is not a multiple of ladder.head_dim=32"),
    ({"convention": "7N"}, "convention: '7N' is not allowed; choose one of 6N, 6N_attn, chinchilla"),
    ({"tokens_per_param": {"min": 50, "max": 2}}, "tokens_per_param: min 50.0 exceeds max 2.0"),
    ({"overrides": {"run.run_id": "x"}}, "overrides.run.run_id: set by the grid"),
    ({"overrides": {"model.attention": "gqa"}}, "run C1e12-d32-l1: model.n_kv_heads: required for attention=gqa"),
    ({"base": "nope.yaml"}, "base: 'nope.yaml' not found"),
    ({"budgets": [1e3]}, "grid: every cell was dropped (C1000-d32-l1: budget.flops: 1000 is less than one step"),
])
def test_bad_specs_fail_with_one_line_before_any_run(tmp_path, capsys, fields, message):
    spec = write_spec(tmp_path, "bad", **{**ISOFLOP, **fields})
    for command in (["grid", "plan", str(spec)], ["grid", "run", str(spec)]):
        assert main(command) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert any(line.startswith(f"isoflop grid: {message}") for line in lines), lines
    assert not (tmp_path / "runs").exists()


def test_plan_json_totals_and_estimate(tmp_path, capsys):
    spec = write_spec(tmp_path, "iso", **ISOFLOP)
    assert main(["grid", "plan", str(spec), "--json", "--tokens-per-second", "2e4", "--startup-seconds", "5"]) == 0
    document = json.loads(capsys.readouterr().out)
    runs = document["runs"]
    assert document["totals"]["tokens"] == sum(run["tokens"] for run in runs)
    assert document["totals"]["flops"]["6N"] == pytest.approx(sum(run["flops"]["6N"] for run in runs))
    for run in runs:
        assert run["estimated_seconds"] == pytest.approx(5 + run["tokens"] / 2e4)
    assert document["totals"]["estimated_seconds"] == pytest.approx(sum(run["estimated_seconds"] for run in runs))
    assert main(["grid", "plan", str(spec)]) == 0
    table = capsys.readouterr().out
    assert "C1e12-d64-l2" in table and "dropped C1e13-d32-l1: D/N = " in table


def test_eta_model_fits_fixed_cost_and_rate():
    progress = Progress(total=4, stream=open(os.devnull, "w"))
    assert progress.seconds_for(1e9) is None
    progress.samples = [(1e9, 12.0)]
    assert progress.seconds_for(2e9) == pytest.approx(24.0)  # one run: proportional
    progress.samples = [(1e9, 12.0), (3e9, 32.0), (2e9, 22.0)]
    assert progress.seconds_for(5e9) == pytest.approx(2.0 + 5e9 * 1e-8)  # 2 s per run + 1e8 FLOP/s


# --------------------------------------------------------------------------------------------- status


def test_status_tells_live_dead_and_finished_runs_apart(tmp_path):
    spec = write_spec(tmp_path, "st", kind="sweep", base=str(write_base(tmp_path)),
                      axes={"optimizer.learning_rate": [0.01, 0.02, 0.03, 0.04]})
    grid = plan_lib.load(spec)
    live, dead, done, fresh = grid.runs
    for run in (live, dead, done):
        grid.run_dir(run).mkdir(parents=True)
        (grid.run_dir(run) / "config.yaml").write_text("{}")
    (grid.run_dir(dead) / "metrics.jsonl").write_text('{"step": 10}\n{"step": 20}\n')
    status_lib.start_record(status_lib.record_path(grid, live.run_id), executor="local", pid=os.getpid())
    gone = subprocess.Popen(["true"])
    gone.wait()
    status_lib.start_record(status_lib.record_path(grid, dead.run_id), executor="local", pid=gone.pid)
    write_summary(grid.run_dir(done), run_summary(done.run_id, 1e6, 2e7, 1.5, 1.2e14))
    states = {item.run_id: item for item in status_lib.grid_status(grid)}
    assert states[live.run_id].status == "running" and f"pid {os.getpid()}" in states[live.run_id].detail
    assert states[dead.run_id].status == "failed"
    assert states[dead.run_id].detail.startswith("stopped without a summary at step 20/40")
    assert (states[done.run_id].status, states[done.run_id].final_eval_loss) == ("completed", 1.5)
    assert states[fresh.run_id].status == "not started"
    # a record from another host (a cluster node) cannot be checked: reported as running, saying so
    status_lib.write_record(status_lib.record_path(grid, dead.run_id), host=socket.gethostname() + "-node7",
                            executor="slurm", job_id="42")
    assert "not verifiable" in status_lib.run_status(grid, dead).detail


# ---------------------------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_local_grid_resumes_skips_completed_and_reports_failures(tmp_path, capsys):
    spec = write_spec(tmp_path, "micro", kind="sweep", base=str(write_base(tmp_path)), axes={"case": {
        "ok": {"optimizer.learning_rate": 0.01},
        "nan": {"optimizer.learning_rate": 1.0e9},  # the trainer stops on a non-finite loss: status failed
        "crash": {"data.path": str(tmp_path / "missing")},  # `isoflop train` exits 2 without a summary
    }})
    assert main(["grid", "run", str(spec), "--only", "case-ok"]) == 0
    capsys.readouterr()
    assert main(["grid", "status", str(spec), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["counts"] == {"completed": 1, "running": 0, "failed": 0, "not started": 2}
    finished = tmp_path / "runs" / "micro" / "case-ok" / "summary.json"
    stamp = finished.stat().st_mtime_ns

    assert main(["grid", "run", str(spec)]) == 1  # half-finished grid: the rest runs, two fail
    out = capsys.readouterr().out
    assert "case-ok: skipped, already completed" in out
    assert "case-nan: FAILED" in out and "loss became nan" in out
    assert "case-crash: FAILED" in out and "exit code 2" in out and "missing' does not exist" in out
    assert finished.stat().st_mtime_ns == stamp  # the completed run was not touched
    assert main(["grid", "status", str(spec), "--json"]) == 0
    runs = {item["run_id"]: item for item in json.loads(capsys.readouterr().out)["runs"]}
    assert {key: item["status"] for key, item in runs.items()} == {
        "case-ok": "completed", "case-nan": "failed", "case-crash": "failed"}
    assert "loss became nan" in runs["case-nan"]["detail"] and "exit code 2" in runs["case-crash"]["detail"]

    # the grid's run dirs are what analysis reads: completed runs in, the failed one counted out
    dataset = load_runs(tmp_path / "runs" / "micro", Conventions())
    assert list(dataset.run_ids) == ["case-ok"]
    assert any("1 failed" in note for note in dataset.notes)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the budget.s .* epochs")
def test_isoflop_grid_through_submitit_local_and_debug(tmp_path, capsys):
    spec = write_spec(tmp_path, "iso-micro", kind="isoflop", base=str(write_base(tmp_path)), budgets=["1.5e9", "3e9"],
                      convention="6N", models=[{"name": "a", "overrides": {"model.d_model": 32}},
                                               {"name": "b", "overrides": {"model.d_model": 64, "model.n_heads": 2,
                                                                          "model.d_ff": 128}}],
                      tokens_per_param={"min": 0.25})
    grid = plan_lib.load(spec)
    assert [run.run_id for run in grid.runs] == ["C1.5e9-a", "C3e9-a", "C3e9-b"]  # C1.5e9-b: D/N 0.15 < 0.25
    # SLURM is not installed: submitit's AutoExecutor falls back to local subprocesses
    assert main(["grid", "run", str(spec), "--executor", "slurm", "--only", "C1.5e9-a"]) == 0
    assert "no SLURM here" in capsys.readouterr().out
    assert main(["grid", "run", str(spec), "--executor", "debug"]) == 0  # in this process
    out = capsys.readouterr().out
    assert "C1.5e9-a: skipped, already completed" in out and out.count("completed in") == 2
    for run in grid.runs:
        summary = json.loads((grid.run_dir(run) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["budget_flops"] == run.coords["budget_flops"]
        assert summary["flops"]["6N"] == run.flops["6N"] <= run.coords["budget_flops"]
    dataset = load_runs(grid.spec.grid_dir, Conventions())
    assert sorted(set(dataset.budget)) == [1.5e9, 3e9]
    assert main(["grid", "run", str(spec), "--executor", "local"]) == 0
    assert "nothing to run (3 of 3 skipped)" in capsys.readouterr().out


def test_changed_spec_is_refused_before_any_run(tmp_path, capsys):
    base = write_base(tmp_path)
    spec = write_spec(tmp_path, "chg", kind="sweep", base=str(base),
                      axes={"optimizer.learning_rate": [0.01, 0.02, 0.03, 0.04, 0.05]})
    grid = plan_lib.load(spec)
    for run in grid.runs:
        grid.run_dir(run).mkdir(parents=True)
        (grid.run_dir(run) / "config.yaml").write_text(yaml.safe_dump({"model": {"d_model": 999}}))
    assert main(["grid", "run", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a run with a different config is already there" in err[0] and "and 2 more" in err[0]
    assert not any((grid.spec.state_dir / "configs").glob("*.yaml"))  # refused before anything was written
    (grid.run_dir(grid.runs[0]) / "config.yaml").unlink()
    (grid.run_dir(grid.runs[0]) / "notes.txt").write_text("not a run")
    assert main(["grid", "run", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and f"run {grid.runs[0].run_id} under" in err[1] and "not an isoflop run directory" in err[1]
    assert main(["grid", "run", str(spec), "--partition", "gpu"]) == 2
    assert "--partition: only used with --executor slurm" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ multi-host


def test_multihost_detection():
    assert multihost.detect({}) is None
    assert multihost.detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert multihost.detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}) == ("slurm", {})
    assert multihost.detect({"OMPI_COMM_WORLD_SIZE": "4"}) == ("openmpi", {})
    assert multihost.detect({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == ("tpu", {})
    assert multihost.detect({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    calls = []
    assert multihost.initialize_from_env(env, initialize=lambda **kw: calls.append(kw)) == "explicit"
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]
    assert multihost.initialize_from_env({}, initialize=lambda **kw: calls.append(kw)) is None and len(calls) == 1
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        multihost.detect({"JAX_COORDINATOR_ADDRESS": "h:1"})


@pytest.mark.slow
def test_two_cpu_processes_join_one_jax_runtime(tmp_path):
    script = ("from train import multihost; how = multihost.initialize_from_env(); import jax; "
              "print(how, jax.process_index(), jax.process_count(), len(jax.devices()))")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": "2"}
    processes = [subprocess.Popen([sys.executable, "-c", script], env={**env, "JAX_PROCESS_ID": str(i)},
                                  stdout=subprocess.PIPE, text=True) for i in range(2)]
    outputs = sorted(process.communicate(timeout=60)[0].strip() for process in processes)
    assert outputs == ["explicit 0 2 2", "explicit 1 2 2"]


@pytest.mark.slow
def test_job_array_path_submits_and_follows_jobs(tmp_path):
    """The SLURM branch (one submitit job array, records written before submission), run on submitit's
    local executor: the same map_array/poll code, with subprocesses instead of sbatch."""
    from launch import runner

    spec = write_spec(tmp_path, "arr", kind="sweep", base=str(write_base(tmp_path)),
                      axes={"optimizer.learning_rate": [0.01]})
    grid = plan_lib.load(spec)
    runner.write_plan_files(grid)
    backend = runner._SubmititBackend(grid, "slurm", {}, max_parallel=1)
    assert backend.name == "local"  # no sbatch on this machine
    (active,) = backend.submit_all(list(grid.runs))
    record = status_lib.read_record(status_lib.record_path(grid, grid.runs[0].run_id))
    assert record["job_id"] in (str(active.handle.job_id), "submitting") or record["pid"] is not None
    result, deadline = None, time.monotonic() + 300  # one micro run; minutes would mean a hung job
    while result is None and time.monotonic() < deadline:
        time.sleep(0.2)
        result = backend.poll(active)
    assert result is not None, "the job did not finish within 300 s"
    assert result["status"] == "completed" and result["final_eval_loss"] > 0
    record = status_lib.read_record(status_lib.record_path(grid, grid.runs[0].run_id))
    assert record["finished"] and record["error"] is None and record["pid"] != os.getpid()
    assert status_lib.run_status(grid, grid.runs[0]).status == "completed"
