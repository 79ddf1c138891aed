"""The run-directory contract: what a training run leaves on disk, and the one writer and reader of it.

    <run dir>/config.yaml            the resolved config (written first; a rerun must match it)
              metrics.jsonl          one JSON object per logged step
              summary.json           a `RunSummary` plus `schema_version`, rewritten atomically at the end
              checkpoints/           Orbax checkpoints (the trainer's own; no other reader)
              events.out.tfevents.*  TensorBoard events (a view of metrics.jsonl)
              .lock                  held by the training that owns the directory right now

`train/` writes it, `analysis/` and `launch/` read it, `analysis.synthetic` fabricates it for tests, all
through this module, so none of them can drift from the others. It imports neither jax nor numpy.
docs/CONTRACTS.md documents every field and the versioning rule: readers refuse an unknown major
version with one line; a minor version only adds fields (with defaults) and is read as-is. A summary
without `schema_version` was written before versioning and holds exactly the 1.0 fields: read as 1.0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import pathlib
import typing
from typing import Any

from common.files import atomic_write
from common.validation import ConfigError, coerce

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
EVENTS_GLOB = "events.out.tfevents.*"

# 1.1 added `inference`; 1.2 the learning-rate, warmup, sweep and branch fields; 1.3 `mfu_nominal`, `host_paths`
# and the nominal peak in `hardware`
SCHEMA_VERSION = "1.3"
# What a run is to a fit: a `run` or a WSD `branch` is a point; a WSD `stable` run (not decayed) is not.
ROLES = ("run", "stable", "branch")
LEGACY_VERSION = "1.0"  # what a summary without schema_version is read as (the fields it always had)
# How a run ended; "failed" includes an interrupted run (its `error` says so, and rerunning resumes it).
STATUSES = ("completed", "failed")
_TAIL_BYTES = 8192  # enough for the last few metrics lines of any run


class ContractError(ConfigError):
    """A run directory that breaks the contract (unreadable, malformed, unknown major version); one line.

    A ConfigError, so `isoflop train` on such a directory exits 2 with the line; analysis re-raises it
    as its one-line error and the grid status shows it as a run's detail.
    """

    def __init__(self, message: str):
        super().__init__([message])


# ------------------------------------------------------------------------------------------ the summary


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameter counts (modeling.accounting.param_counts); keyed by common.vocabulary.PARAM_KINDS."""

    total: int
    embedding: int
    non_embedding: int
    active: int


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What ran and the peak/power MFU and energy were computed from, each with its source."""

    platform: str
    device_kind: str
    accelerator: str | None
    count: int
    compute_dtype: str
    peak_flops_per_second: float | None
    peak_flops_source: str
    tdp_watts: float | None
    tdp_scope: str  # "device" or "host" (a CPU host's devices share one power figure)
    tdp_source: str
    nominal_peak_flops_per_second: float | None = None  # the hardware's nominal peak (1.3; docs/HARDWARE.md)
    nominal_peak_flops_source: str | None = None


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Everything analysis needs about one run, flat where it can be (units in docs/CONTRACTS.md)."""

    run_id: str
    experiment: str
    status: str  # one of STATUSES
    error: str | None
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab_size: int
    seq_len: int
    batch_size: int
    attention: str
    window: int | None
    ffn: str
    precision: str
    params: ParamCounts
    flops_per_token: dict[str, float]  # training FLOPs per token, by common.vocabulary.FLOP_COUNTS name
    mfu_flops_per_token: float
    budget_convention: str
    budget_flops: float
    steps: int
    planned_steps: int
    tokens: int
    flops: dict[str, float]  # training FLOPs spent, same keys as flops_per_token
    unique_tokens: int
    epochs: float
    data: dict[str, Any]  # the data source's own facts (train.data Dataset.summary())
    planned_epochs: float
    final_train_loss: float | None
    final_eval_loss: float | None
    wall_seconds: float
    tokens_per_second: float | None
    mfu: float | None
    peak_memory_bytes: int | None
    energy_kwh: float | None
    energy_source: str | None
    co2e_kg: float | None
    hardware: Hardware
    software: dict[str, str | None]  # package -> version (None: not installed)
    inference: dict[str, Any] | None = None  # `isoflop bench infer RUN_DIR` results (train/bench_infer.py)
    learning_rate: float | None = None  # the peak rate used
    learning_rate_source: str | None = None  # why this rate: the config's, or one of an lr sweep's
    warmup_steps: int | None = None
    warmup_source: str | None = None  # the warmup rule and what it was computed from
    lr_sweep: str | None = None  # the sweep group (runs differing only in rate); fits keep its best
    role: str = "run"  # one of ROLES
    branch_of: str | None = None  # a branch: the stable run directory it continued
    branch_step: int | None = None  # a branch: the step it left the stable run
    mfu_nominal: float | None = None  # MFU against hardware.nominal_peak_flops_per_second (1.3)
    host_paths: dict[str, Any] | None = None  # the CPU-specific paths in effect and why (train/cpu_paths.py; 1.3)
    def to_dict(self) -> dict:
        """The JSON object summary.json holds: `schema_version` first, then the fields in order."""
        return {"schema_version": SCHEMA_VERSION, **to_json_value(dataclasses.asdict(self))}

    @classmethod
    def from_dict(cls, raw: dict, where: str = SUMMARY_FILE) -> RunSummary:
        """Check the version and every field; raises ContractError with one line naming `where`."""
        if not isinstance(raw, dict):
            raise ContractError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        check_version(raw.get("schema_version", LEGACY_VERSION), where)
        problems: list[str] = []
        summary = _parse(cls, raw, "", problems)
        if not problems and summary.status not in STATUSES:
            problems.append(f"status: {summary.status!r} is not one of {', '.join(STATUSES)}")
        if not problems and summary.role not in ROLES:
            problems.append(f"role: {summary.role!r} is not one of {', '.join(ROLES)}")
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ContractError(f"{where}: {problems[0]}{more}")
        return summary


def check_version(version, where: str) -> None:
    """Refuse a version whose major part this reader does not know (a minor part only adds fields)."""
    major = SCHEMA_VERSION.split(".")[0]
    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ContractError(f"{where}: schema_version {version!r} is not MAJOR.MINOR")
    if parts[0] != major:
        raise ContractError(f"{where}: schema_version {version} is not readable by this isoflop (it reads "
                            f"{major}.x); use the isoflop version that wrote the run")


def _parse(cls, raw: dict, path: str, problems: list[str]):
    """A contract dataclass from a JSON object: every field without a default must be there and have its
    type; keys this version does not know are ignored (a newer minor version added them)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        where = f"{path}.{field.name}" if path else field.name
        if field.name not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                problems.append(f"missing field '{where}'")
            continue
        kwargs[field.name] = _coerce(raw[field.name], hints[field.name], where, problems)
    if problems:
        return None
    return cls(**kwargs)


def _coerce(value, annotation, where: str, problems: list[str]):
    """validation.coerce, plus nested contract dataclasses (tolerant of new keys) and typed mapping values."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object of {annotation.__name__} fields, got {value!r}")
            return None
        return _parse(annotation, value, where, problems)
    if typing.get_origin(annotation) is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {value!r}")
            return {}
        _, item = typing.get_args(annotation)
        return {key: _coerce(item_value, item, f"{where}['{key}']", problems) for key, item_value in value.items()}
    if isinstance(value, str) and annotation is not Any and str not in (typing.get_args(annotation) or (annotation,)):
        problems.append(f"{where}: expected a number, got the string {value!r}")  # coerce would parse it (YAML)
        return None
    return coerce(value, annotation, where, problems)


def to_json_value(value):
    """Plain JSON data from numpy/jax scalars; NaN/inf become null so the file stays strict JSON."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:  # numpy / jax scalar or 1-element array
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} as JSON")


def write_summary(run_dir: str | os.PathLike, summary: RunSummary) -> pathlib.Path:
    """Atomically (re)write run_dir/summary.json. What the reader would refuse is never written: a field
    the writer turned into null (NaN/inf) where the contract needs a number raises ContractError."""
    path = pathlib.Path(run_dir) / SUMMARY_FILE
    data = summary.to_dict()
    RunSummary.from_dict(data, f"{path} (refusing to write)")
    return atomic_write(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_summary(run_dir: str | os.PathLike, missing_ok: bool = False) -> RunSummary | None:
    """run_dir/summary.json as a RunSummary; ContractError (one line) when it is unreadable, malformed or
    of an unknown major version. With `missing_ok`, a run without a summary gives None."""
    path = pathlib.Path(run_dir) / SUMMARY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ContractError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ContractError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ContractError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    return RunSummary.from_dict(raw, str(path))


# ------------------------------------------------------------------------------------------ metrics


def metrics_record(step: int, metrics: dict) -> dict:
    """One metrics.jsonl row: `step` first, then the values as plain JSON (NaN/inf as null)."""
    return {"step": int(step), **{str(key): to_json_value(value) for key, value in metrics.items()}}


def metrics_line(record: dict) -> str:
    """The line (newline included) that writes a `metrics_record` to metrics.jsonl."""
    return json.dumps(record, allow_nan=False) + "\n"


def _row(line: str) -> dict | None:
    """A metrics row from one line, or None when the line is not one (torn, not JSON, no integer step)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
        return None
    return row


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of run_dir/metrics.jsonl in order ([] when absent). A torn last line (a kill during the
    write) is dropped; any other line that is not a row is a ContractError naming it."""
    path = pathlib.Path(run_dir) / METRICS_FILE
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise ContractError(f"{path}: cannot read ({err.strerror})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for number, line in enumerate(lines, start=1):
        row = _row(line)
        if row is None and number < len(lines):
            raise ContractError(f"{path} line {number}: not a metrics row (a JSON object with an integer step)")
        if row is not None:
            rows.append(row)
    return rows


def last_logged_step(run_dir: str | os.PathLike) -> int | None:
    """The step of the last complete row of metrics.jsonl, reading only the file's tail (live status
    of many long runs); None when there is none."""
    try:
        with (pathlib.Path(run_dir) / METRICS_FILE).open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _TAIL_BYTES))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    rows = (_row(line) for line in reversed(lines))
    return next((row["step"] for row in rows if row is not None), None)


__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "ContractError",
    "EVENTS_GLOB",
    "Hardware",
    "LEGACY_VERSION",
    "LOCK_FILE",
    "METRICS_FILE",
    "ParamCounts",
    "ROLES",
    "RunSummary",
    "SCHEMA_VERSION",
    "STATUSES",
    "SUMMARY_FILE",
    "check_version",
    "last_logged_step",
    "metrics_line",
    "metrics_record",
    "read_metrics",
    "read_summary",
    "to_json_value",
    "write_summary",
]
