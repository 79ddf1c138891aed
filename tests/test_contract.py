"""The run-directory contract (common/run_contract.py): writer -> reader round trip, the version rule,
legacy summaries, strict fields, torn metrics lines, and the summary a real training writes."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import types

import pytest
import yaml

from analysis.errors import AnalysisError
from analysis.sources import Conventions, load_runs
from analysis.synthetic import run_summary
from common.files import WriteError
from common.run_contract import (
    LEGACY_VERSION, METRICS_FILE, SCHEMA_VERSION, SUMMARY_FILE, ContractError, RunSummary, last_logged_step,
    metrics_line, metrics_record, read_metrics, read_summary, write_summary,
)
from common.validation import ConfigError
from launch import status as status_lib
from launch.cli import main


@pytest.fixture
def summary():
    """A summary with every optional field set to something other than its null, and one failed-run error."""
    base = run_summary("r1", 1.5e7, 3e8, 3.1, 9e16, epochs=2.0, status="failed", mfu=0.41)
    return dataclasses.replace(base, window=128, error="interrupted by SIGTERM at step 9; rerun to resume",
                               data={"source": "text", "files": 3, "cache_reused": False})


def write_raw(run_dir: pathlib.Path, raw: dict) -> pathlib.Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(raw))
    return run_dir


def one_line_error(run_dir) -> str:
    with pytest.raises(ContractError) as err:
        read_summary(run_dir)
    text = str(err.value)
    assert "\n" not in text and str(run_dir) in text
    return text


# ------------------------------------------------------------------------------------------ summary


def test_round_trip_keeps_every_field(tmp_path, summary):
    path = write_summary(tmp_path, summary)
    raw = json.loads(path.read_text())
    assert list(raw)[0] == "schema_version" and raw["schema_version"] == SCHEMA_VERSION
    assert set(raw) == {"schema_version"} | {field.name for field in dataclasses.fields(RunSummary)}
    assert read_summary(tmp_path) == summary  # dataclass equality: every field, nested ones included


def test_non_finite_values_become_null_and_required_ones_are_refused(tmp_path, summary):
    write_summary(tmp_path, dataclasses.replace(summary, mfu=math.nan, final_eval_loss=math.inf))
    back = read_summary(tmp_path)
    assert back.mfu is None and back.final_eval_loss is None
    before = (tmp_path / SUMMARY_FILE).read_bytes()
    with pytest.raises(ContractError, match="refusing to write.*wall_seconds: expected a number, got None"):
        write_summary(tmp_path, dataclasses.replace(summary, wall_seconds=math.nan))
    assert (tmp_path / SUMMARY_FILE).read_bytes() == before


def test_write_is_atomic_and_respects_the_umask(tmp_path, summary, monkeypatch):
    old = os.umask(0o022)
    try:
        write_summary(tmp_path, summary)
    finally:
        os.umask(old)
    assert (tmp_path / SUMMARY_FILE).stat().st_mode & 0o777 == 0o644

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(WriteError, match="cannot write .*summary.json: disk full"):
        write_summary(tmp_path, dataclasses.replace(summary, status="completed", error=None))
    assert read_summary(tmp_path) == summary  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_FILE]  # no temp file left behind


def test_unknown_major_version_is_refused_in_one_line(tmp_path, summary):
    raw = {**summary.to_dict(), "schema_version": "2.0"}
    text = one_line_error(write_raw(tmp_path, raw))
    assert "schema_version 2.0 is not readable by this isoflop (it reads 1.x)" in text
    write_raw(tmp_path, {**raw, "schema_version": "one"})
    assert "'one' is not MAJOR.MINOR" in one_line_error(tmp_path)
    write_raw(tmp_path, {**raw, "schema_version": None})
    assert "is not MAJOR.MINOR" in one_line_error(tmp_path)


def test_newer_minor_version_is_read_and_its_new_fields_ignored(tmp_path, summary):
    raw = summary.to_dict()
    raw["schema_version"] = "1.7"
    raw["moe_experts"] = 8  # a field a later minor version added
    raw["hardware"]["interconnect"] = "nvlink"
    assert read_summary(write_raw(tmp_path, raw)) == summary


def test_summary_without_a_version_is_read_as_legacy_1_0(tmp_path, summary):
    raw = summary.to_dict()
    del raw["schema_version"]
    assert LEGACY_VERSION == "1.0"
    assert read_summary(write_raw(tmp_path, raw)) == summary


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.pop("tokens"), "missing field 'tokens'"),
    (lambda raw: raw["params"].pop("active"), "missing field 'params.active'"),
    (lambda raw: raw.update(tokens="300000000"), "tokens: expected a number, got the string"),
    (lambda raw: raw.update(status="running"), "status: 'running' is not one of completed, failed"),
    (lambda raw: raw.update(flops={"6N": "lots"}), "flops['6N']: expected a number"),
    (lambda raw: raw.update(hardware=[]), "hardware: expected an object of Hardware fields"),
    (lambda raw: [raw.pop("tokens"), raw.pop("steps")], "missing field 'steps' (and 1 more)"),
])
def test_malformed_summary_is_one_line(tmp_path, summary, change, message):
    raw = summary.to_dict()
    change(raw)
    assert message in one_line_error(write_raw(tmp_path, raw))


def test_unreadable_or_missing_summary(tmp_path):
    assert read_summary(tmp_path, missing_ok=True) is None
    assert "no such file" in one_line_error(tmp_path)
    (tmp_path / SUMMARY_FILE).write_text('{"status": "comp')
    assert "not valid JSON" in one_line_error(tmp_path)
    (tmp_path / SUMMARY_FILE).write_text("[1, 2]")
    assert "expected a JSON object, got list" in one_line_error(tmp_path)
    assert issubclass(ContractError, ConfigError)  # `isoflop train` on such a directory: one line, exit 2


def test_readers_turn_a_contract_error_into_their_own_line(tmp_path, summary):
    """analysis: its one-line AnalysisError; launch: the run's status detail."""
    run_dir = write_raw(tmp_path / "runs" / "r1", {**summary.to_dict(), "schema_version": "2.3"})
    with pytest.raises(AnalysisError, match="schema_version 2.3 is not readable") as err:
        load_runs(tmp_path / "runs", Conventions())
    assert "\n" not in str(err.value)
    plan = types.SimpleNamespace(run_dir=lambda run: run_dir, spec=types.SimpleNamespace(state_dir=tmp_path / "_grid"))
    run = types.SimpleNamespace(run_id="r1", steps=10)
    state = status_lib.run_status(plan, run)
    assert state.status == "failed" and "schema_version 2.3 is not readable" in state.detail


# ------------------------------------------------------------------------------------------ metrics


def write_metrics(run_dir: pathlib.Path, text: str) -> None:
    (run_dir / METRICS_FILE).write_text(text)


def test_metrics_rows_round_trip_and_a_torn_last_line_is_dropped(tmp_path):
    records = [metrics_record(step, {"train_loss": 2.0 / step, "mfu": math.nan, "energy_source": "x"})
               for step in (5, 10)]
    assert records[0] == {"step": 5, "train_loss": 0.4, "mfu": None, "energy_source": "x"}
    lines = "".join(metrics_line(record) for record in records)
    write_metrics(tmp_path, lines)
    assert read_metrics(tmp_path) == records and last_logged_step(tmp_path) == 10
    write_metrics(tmp_path, lines + '{"step": 15, "train_lo')  # killed during the write
    assert read_metrics(tmp_path) == records and last_logged_step(tmp_path) == 10
    write_metrics(tmp_path, lines + '{"step": 15}')  # complete but for its newline: a row
    assert read_metrics(tmp_path)[-1] == {"step": 15} and last_logged_step(tmp_path) == 15


def test_metrics_damage_before_the_last_line_is_an_error(tmp_path):
    write_metrics(tmp_path, '{"step": 5}\n{"step": 10, "tr\n{"step": 15}\n')
    with pytest.raises(ContractError, match="metrics.jsonl line 2: not a metrics row") as err:
        read_metrics(tmp_path)
    assert "\n" not in str(err.value)
    write_metrics(tmp_path, '{"step": 5}\n{"step": "ten"}\n{"step": 15}\n')
    with pytest.raises(ContractError, match="line 2"):
        read_metrics(tmp_path)
    assert last_logged_step(tmp_path) == 15


def test_no_metrics_yet(tmp_path):
    assert read_metrics(tmp_path) == [] and last_logged_step(tmp_path) is None


# ------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_the_contract_imports_neither_jax_nor_numpy():
    code = "import sys, common.run_contract; print(sorted({'jax', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_real_training_writes_a_summary_the_reader_accepts(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"f{i}.py").write_text(f"def add{i}(a, b):\n    return a + b\n" * 40)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"vocab_size": 256, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 32},
        "data": {"source": "text", "path": str(corpus), "seq_len": 32, "batch_size": 8, "eval_tokens": 256,
                 "eval_fraction": 0.1, "cache_dir": str(tmp_path / "cache")},
        "budget": {"tokens": 256 * 10},
        "run": {"log_every": 5, "eval_every": 5, "checkpoint_every": 10},
        "hardware": {"peak_flops_per_second": 1e11},
    }))
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    summary = read_summary(run)
    assert json.loads((run / SUMMARY_FILE).read_text())["schema_version"] == SCHEMA_VERSION
    assert (summary.status, summary.steps, summary.tokens) == ("completed", 10, 2560)
    assert summary.params.total == summary.params.embedding + summary.params.non_embedding
    assert summary.hardware.count >= 1 and summary.software["python"]
    rows = read_metrics(run)
    assert [row["step"] for row in rows] == [5, 10] and last_logged_step(run) == 10
    assert summary.final_eval_loss == rows[-1]["eval_loss"]
