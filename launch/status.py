"""Where each planned run of a grid stands: completed, running, failed or not started.

The trainer's summary.json (common/run_contract.py, docs/CONTRACTS.md) is the authority on how a run ended. The launcher adds one small
record per run under out_dir/name/_grid/state/<run_id>.json (who runs it: pid, host, start time, job id,
and how the process ended), which tells a live run from a dead one that left no summary (SIGKILL, a
crash before the trainer could write one).

Each run also shows its role (run, WSD stable or branch), its peak learning rate (a rate transferred from
an lr sweep once that sweep has completed: `with_transfers_resolved`), and whether it is a point of the
fits (common/fit_points.py: a stable run is not, nor an lr sweep's losing rates).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import time

from common import fit_points
from common.files import atomic_write
from common.run_contract import CONFIG_FILE, SUMMARY_FILE, ContractError, RunSummary, last_logged_step, read_summary
from common.validation import ConfigError
from launch.plan import GRID_DIR, GridPlan, PlannedRun, resolve_transfer

STATUSES = ("completed", "running", "failed", "not started")


@dataclasses.dataclass(frozen=True)
class RunStatus:
    run_id: str
    status: str  # one of STATUSES
    step: int | None
    planned_steps: int
    final_eval_loss: float | None
    wall_seconds: float | None
    detail: str
    role: str = "run"  # run | stable | branch (the plan's)
    learning_rate: float | None = None  # the plan's peak rate (None: to be transferred from lr_transfer's sweep)
    lr_transfer: str | None = None  # the lr sweep group the rate is transferred from
    fit: str = ""  # a completed run: whether it is a fit point, and why (common/fit_points.py)
    summary: RunSummary | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "summary"}


# ----------------------------------------------------------------------------- launcher records


def record_path(plan: GridPlan, run_id: str) -> pathlib.Path:
    return plan.spec.state_dir / "state" / f"{run_id}.json"


def read_record(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(path: pathlib.Path, **fields) -> dict:
    """Merge `fields` into a run's launcher record at `path` (common.files.atomic_write)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**(read_record(path) or {}), **fields}
    atomic_write(path, json.dumps(record, indent=2) + "\n")
    return record


def start_record(path: pathlib.Path, *, executor: str, pid: int, job_id: str | None = None) -> dict:
    """A fresh record for an attempt that starts now (the previous attempt's ending is cleared)."""
    return write_record(path, executor=executor, host=socket.gethostname(), pid=pid,
                        pid_start=process_start_ticks(pid), job_id=job_id, started=time.time(),
                        finished=None, returncode=None, error=None)


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a live pid from a reused one."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start_ticks is not None:
        now = process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was reused by another process
    return True


def record_is_live(record: dict | None) -> bool | None:
    """True/False when it can be checked on this host; None for a record from another host (a cluster node)."""
    if not record or record.get("finished"):
        return False
    if record.get("pid") is None:  # submitted to a cluster, not started yet (or started and not yet recorded)
        return None if record.get("job_id") else False
    if record.get("host") != socket.gethostname():
        return None
    return pid_alive(int(record["pid"]), record.get("pid_start"))


# ----------------------------------------------------------------------------------------- status


def _summary(run_dir: pathlib.Path) -> tuple[RunSummary | None, float | None, str | None]:
    """(summary, its mtime, why it cannot be read): a summary that breaks the contract is a failed run
    whose detail is the contract's one line."""
    try:
        summary = read_summary(run_dir, missing_ok=True)
        return summary, (run_dir / SUMMARY_FILE).stat().st_mtime if summary is not None else None, None
    except (ContractError, OSError) as err:
        return None, None, str(err)


def _facts(run: PlannedRun) -> dict:
    """The plan's role and peak rate of a run (a reader handed only run_id and steps gets the defaults)."""
    config = getattr(run, "config", None)
    return {"role": getattr(run, "role", "run"), "learning_rate": run.learning_rate if config is not None else None,
            "lr_transfer": config.run.lr_transfer if config is not None else None}


def _origin(run: PlannedRun) -> str:
    role = getattr(run, "role", "run")
    if role == "branch":
        return f"from {run.parent}@{run.prefix_steps}"
    if role == "stable":
        return f"stable for {run.coords.get('branches', 0)} branches"
    config = getattr(run, "config", None)
    if config is not None and config.run.lr_transfer is not None:
        return f"lr transferred from {config.run.lr_transfer}"
    return ""


def run_status(plan: GridPlan, run: PlannedRun) -> RunStatus:
    run_dir = plan.run_dir(run)
    summary, summary_time, unreadable = _summary(run_dir)
    record = read_record(record_path(plan, run.run_id))
    planned = run.steps
    step = last_logged_step(run_dir)

    facts = _facts(run)
    detail_prefix = _origin(run)

    def make(status, detail="", source: RunSummary | None = None):
        detail = "; ".join(part for part in (detail_prefix, detail) if part)
        if source is None:
            return RunStatus(run.run_id, status, step, planned, None, None, detail, **facts)
        return RunStatus(run.run_id, status, source.steps, planned, source.final_eval_loss, source.wall_seconds,
                         detail, **facts, summary=source)

    live = record_is_live(record)
    record_newer = record is not None and (summary_time is None or (record.get("started") or 0) > summary_time)
    if record_newer and live is not False:
        where = f"pid {record['pid']}" if live else (
            f"{record.get('executor')} job {record.get('job_id')}" + (f" on {record['host']}" if record.get("host")
                                                                      else " (queued?)")
            + f"; not verifiable from this host - if the job is gone, delete {record_path(plan, run.run_id)}")
        progress = f"step {step}/{planned}" if step is not None else "starting"
        return make("running", f"{progress}, {where}")
    if summary is not None and summary.status == "completed":
        return make("completed", "", summary)
    if record_newer and record.get("finished") and record.get("error"):
        return make("failed", record["error"])
    if summary is not None and summary.status == "failed":
        return make("failed", summary.error or "failed (no error recorded)", summary)
    if unreadable is not None:
        return make("failed", unreadable)
    if (run_dir / CONFIG_FILE).exists():
        at = f" at step {step}/{planned}" if step is not None else ""
        return make("failed", f"stopped without a summary{at} (killed or crashed); `isoflop grid run` resumes it")
    return make("not started")


def sweep_summaries(plan: GridPlan, run: PlannedRun) -> list[RunSummary] | None:
    """The summaries of the runs a transferred run waits for (its lr sweep); None until all have completed."""
    statuses = [run_status(plan, plan.run(run_id)) for run_id in run.waits_for]
    if any(item.status != "completed" or item.summary is None for item in statuses):
        return None
    return [item.summary for item in statuses]


def with_transfers_resolved(plan: GridPlan) -> GridPlan:
    """The plan with the rate of every transferred run whose sweep has completed (launch/plan.py
    `resolve_transfer`); the others, and one whose sweep has no finite loss, stay pending."""
    runs = []
    for run in plan.runs:
        sweep = sweep_summaries(plan, run) if run.lr_pending else None
        if sweep is not None:
            try:
                run = resolve_transfer(run, sweep)
            except ConfigError:
                pass
        runs.append(run)
    return dataclasses.replace(plan, runs=tuple(runs))


def grid_status(plan: GridPlan) -> list[RunStatus]:
    """Every planned run's status; completed ones also say whether they are fit points."""
    plan = with_transfers_resolved(plan)
    statuses = [run_status(plan, run) for run in plan.runs]
    completed = [item for item in statuses if item.status == "completed" and item.summary is not None]
    verdicts = fit_points.verdicts([item.summary for item in completed])
    chosen = {item.run_id: (f"point: {v.reason}" if v.reason else "point") if v.selected else f"not a point: {v.reason}"
              for item, v in zip(completed, verdicts)}
    return [dataclasses.replace(item, fit=chosen.get(item.run_id, "")) for item in statuses]


def counts(statuses: list[RunStatus]) -> dict[str, int]:
    return {name: sum(item.status == name for item in statuses) for name in STATUSES}


def strays(plan: GridPlan) -> list[str]:
    """Run directories under the grid's folder that this plan does not contain (an older version of the spec)."""
    if not plan.spec.grid_dir.is_dir():
        return []
    planned = {run.run_id for run in plan.runs}
    return sorted(path.name for path in plan.spec.grid_dir.iterdir()
                  if path.is_dir() and path.name != GRID_DIR and path.name not in planned
                  and (path / CONFIG_FILE).exists())


__all__ = [
    "RunStatus",
    "STATUSES",
    "counts",
    "grid_status",
    "pid_alive",
    "read_record",
    "record_path",
    "record_is_live",
    "run_status",
    "start_record",
    "strays",
    "sweep_summaries",
    "with_transfers_resolved",
    "write_record",
]
