"""Running a planned grid: every run that is not completed, locally or through submitit, with progress.

- `local` (default): one `isoflop train <resolved config> --out <run dir>` subprocess per run, at most
  `max_parallel` at a time, so a crash kills one run, not the grid. Output goes to _grid/logs/<run_id>.log.
- `slurm`: submitit's AutoExecutor, one job per run (a job array on SLURM, at most `max_parallel` running).
  Without SLURM, submitit falls back to its local executor (subprocesses); the grid then submits at
  most `max_parallel` jobs at a time. Jobs are `Checkpointable`: on preemption or time-out submitit
  requeues them and the trainer resumes from its last Orbax checkpoint.
- `debug`: submitit's debug executor, in this process, one run after another (for tests and pdb).

Resume: a completed run is skipped; any other run is (re)started, and the trainer resumes it from its
own checkpoint. A run another launcher is running right now (a live pid in its record) is left alone.
Before anything starts, every run directory that exists must hold the same config the plan resolves.

A run that waits for others (`PlannedRun.waits_for`) starts once they have all completed: a WSD branch
waits for its stable run (local, debug: in the queue; SLURM: `--dependency=afterok:<stable job>`), a run
whose rate is transferred from an lr sweep (μP, `lr_sweep.transfer`) for that sweep, whose best rate it
takes when it starts (on SLURM it is submitted then, so `--no-wait` leaves it to the next `grid run`).
One whose wait ended in a failure is reported, not started. The spec's `resources:` are submitit's
defaults (command-line options win) and `resources.env` the environment of every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import shlex
import time
import traceback

import yaml

from common import cpuinfo
from common.files import LockedError, WriteError, atomic_write
from common.formatting import format_count, format_duration
from common.run_contract import CONFIG_FILE, SUMMARY_FILE, ContractError, RunSummary, last_logged_step, read_summary
from launch import cpu_slots
from launch import status as status_lib
from launch.plan import RATE_CONVENTION, GridPlan, PlannedRun, Resources, format_number, resolve_transfer
from train.config import ConfigError, dump_yaml, from_dict, to_dict

EXECUTORS = ("local", "slurm", "debug")
DEFAULT_TIMEOUT_MIN = 24 * 60  # submitit's own default is 5 minutes, too short for training


# ------------------------------------------------------------------------------------ preflight


def check_run_dirs(plan: GridPlan) -> None:
    """Refuse, before anything starts, run dirs that hold a different config (the trainer would too):
    one line for all of them (a renamed spec or a changed override differs in every run)."""
    changed, foreign = [], []
    for run in plan.runs:
        saved = plan.run_dir(run) / CONFIG_FILE
        if saved.exists():
            try:  # through from_dict, so a config field added since (with its default) is not a difference
                same = to_dict(from_dict(yaml.safe_load(saved.read_text()))) == to_dict(run.config)
            except (yaml.YAMLError, ConfigError, TypeError, AttributeError):
                same = False
            if not same:
                changed.append(run.run_id)
        elif plan.run_dir(run).exists() and any(plan.run_dir(run).iterdir()):
            foreign.append(run.run_id)
    problems = []
    if changed:
        problems.append(f"{_some(changed)} under {plan.spec.grid_dir}: a run with a different config is already there "
                        "(the grid spec changed, or another experiment's runs?); rename the grid or move them away")
    if foreign:
        problems.append(f"{_some(foreign)} under {plan.spec.grid_dir}: not empty and not an isoflop run directory "
                        "(no config.yaml); move it away")
    if problems:
        raise ConfigError(problems)


def _some(run_ids: list[str], shown: int = 3) -> str:
    more = f" and {len(run_ids) - shown} more" if len(run_ids) > shown else ""
    return f"run {run_ids[0]}" if len(run_ids) == 1 else f"runs {', '.join(run_ids[:shown])}{more}"


def write_plan_files(plan: GridPlan) -> None:
    """_grid/plan.json and one resolved config per run (what `isoflop train` is given)."""
    for run in plan.runs:
        write_config(plan, run)
    atomic_write(plan.spec.state_dir / "plan.json", json.dumps(plan.to_dict(), indent=2) + "\n")


def write_config(plan: GridPlan, run: PlannedRun) -> None:
    """The resolved config `isoflop train` is given for `run` (rewritten only when it changed)."""
    path = plan.config_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {plan.spec.name} / {run.run_id}: resolved from {plan.spec.path} by `isoflop grid run`\n" \
           + dump_yaml(run.config)
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text)


def select(plan: GridPlan, only: list[str] | None) -> list[PlannedRun]:
    """The runs --only names (all without it), with the runs each of them waits for, in plan order."""
    if not only:
        return list(plan.runs)
    known = {run.run_id: run for run in plan.runs}
    unknown = [run_id for run_id in only if run_id not in known]
    if unknown:
        dropped = {item.run_id for item in plan.dropped}
        why = [f"{r} (dropped by the planner)" if r in dropped else r for r in unknown]
        raise ConfigError([f"--only: {', '.join(why)} not in the plan; planned runs: {', '.join(known)}"])
    wanted = set(only) | {waited for run_id in only for waited in known[run_id].waits_for}
    return [run for run in plan.runs if run.run_id in wanted]


def submitit_parameters(resources: Resources, given: dict) -> dict:
    """submitit AutoExecutor parameters: the spec's resources, overridden by the command line's `given`."""
    from_spec = {"nodes": resources.nodes, "tasks_per_node": resources.tasks_per_node,
                 "gpus_per_node": resources.gpus_per_node or None, "cpus_per_task": resources.cpus_per_task,
                 "mem_gb": resources.mem_gb, "timeout_min": resources.timeout_min,
                 "slurm_partition": resources.partition, "slurm_account": resources.account,
                 "slurm_qos": resources.qos, "slurm_constraint": resources.constraint,
                 "slurm_setup": list(resources.setup) + [f"export {key}={shlex.quote(value)}"
                                                         for key, value in (resources.env or {}).items()] or None}
    return {**{key: value for key, value in from_spec.items() if value is not None}, **given}


# -------------------------------------------------------------------------------------- progress


class Progress:
    """One line per run started/finished, with the grid's ETA from this session's measured run times.

    Run time is modelled as seconds = a + b · FLOPs (chinchilla count): a is the fixed cost of a run
    (process start, compile, evals), b the inverse of the achieved FLOP/s. Fitted by least squares
    on the runs finished so far (a ≥ 0); with one run, a = 0. Until then the ETA is unknown.
    """

    def __init__(self, total: int, stream=None):
        self.total = total
        self.stream = stream or sys.stdout
        self.samples: list[tuple[float, float]] = []  # (flops, seconds) of runs finished in this session
        self.done = self.failed = self.skipped = 0
        self.started_at = time.time()

    def print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _index(self) -> str:
        width = len(str(self.total))
        return f"[{self.done + self.failed + self.skipped:>{width}}/{self.total}]"

    def skip(self, run: PlannedRun, why: str) -> None:
        self.skipped += 1
        self.print(f"{self._index()} {run.run_id}: skipped, {why}")

    def start(self, run: PlannedRun, where: str) -> None:
        self.print(f"  start {run.run_id} ({where}): N {format_count(run.n_params)}, D {format_count(run.tokens)}, "
                   f"{run.steps} steps, {format_number(run.flops[RATE_CONVENTION])} FLOPs ({RATE_CONVENTION})")

    def seconds_for(self, flops: float) -> float | None:
        if not self.samples:
            return None
        xs = [x for x, _ in self.samples]
        ys = [y for _, y in self.samples]
        slope = sum(ys) / sum(xs)
        intercept = 0.0
        if len(self.samples) >= 2 and max(xs) > min(xs):
            mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
            fitted = sum((x - mean_x) * (y - mean_y) for x, y in self.samples) / sum((x - mean_x) ** 2 for x in xs)
            if fitted > 0 and mean_y - fitted * mean_x >= 0:
                slope, intercept = fitted, mean_y - fitted * mean_x
        return intercept + slope * flops

    def eta(self, remaining: list[PlannedRun], running: dict[str, float], parallel: int) -> float | None:
        """Seconds left: the runs not started, plus what the running ones still need, over `parallel` slots."""
        if not self.samples:
            return None
        seconds = sum(self.seconds_for(run.flops[RATE_CONVENTION]) for run in remaining)
        seconds += sum(max(0.0, estimate) for estimate in running.values())
        return seconds / max(1, parallel)

    def finish(self, run: PlannedRun, result: dict, seconds: float, remaining: list[PlannedRun],
               running: list[tuple[PlannedRun, float]], parallel: int) -> None:
        """Report a finished run; `running` holds (run, seconds since it started) of the others still going."""
        if result["status"] == "completed":
            self.done += 1
            self.samples.append((run.flops[RATE_CONVENTION], seconds))
            loss = result.get("final_eval_loss")
            outcome = f"completed in {format_duration(seconds)}" + (f", eval loss {loss:.4f}" if loss else "")
        else:
            self.failed += 1
            outcome = f"FAILED after {format_duration(seconds)}: {result.get('error') or 'no error recorded'}"
        left = self.total - self.done - self.failed - self.skipped
        eta = self.eta(remaining, {other.run_id: self.seconds_for(other.flops[RATE_CONVENTION]) - elapsed
                                   for other, elapsed in running} if self.samples else {}, parallel)
        tail = f" | {left} left, ETA {format_duration(eta)}" if left else ""
        self.print(f"{self._index()} {run.run_id}: {outcome}{tail}")


# ----------------------------------------------------------------------------------- the job body


def _result(summary: RunSummary | None, error: str | None = None) -> dict:
    """What a finished run reports to the grid: status, error, final losses."""
    if summary is None:
        return {"status": "failed", "error": error or f"the run left no {SUMMARY_FILE}"}
    return {"status": summary.status, "error": summary.error or error,
            "final_eval_loss": summary.final_eval_loss, "wall_seconds": summary.wall_seconds}


def _outcome(run_dir: pathlib.Path, since: float, error: str | None) -> dict:
    """The result of an attempt that started at `since`, from the summary it wrote (one left by an
    earlier attempt does not count; one that breaks the contract is a failure saying so)."""
    try:
        if (run_dir / SUMMARY_FILE).stat().st_mtime < since:
            return _result(None, error)
        return _result(read_summary(run_dir), error)
    except FileNotFoundError:
        return _result(None, error)
    except ContractError as err:
        return {"status": "failed", "error": str(err)}


# Importing submitit runs logging.config.dictConfig, which shuts down every handler already registered;
# absl's handler then closes the stream it had captured (a redirected or test-captured stderr). Without
# that configuration submitit's warnings still reach the current stderr (logging's last-resort handler).
os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")

try:
    import submitit

    _Checkpointable = submitit.helpers.Checkpointable
except ImportError:  # submitit is a dependency; this only keeps `grid plan` working without it
    submitit = None
    _Checkpointable = object


class TrainJob(_Checkpointable):
    """The body of one submitit job: train one run of a grid, never raise (submitit's debug executor
    opens pdb on an exception), return the result. Checkpointable: a preempted or timed-out SLURM
    job is requeued with the same arguments and the trainer resumes from its checkpoint."""

    def __call__(self, config_path: str, run_dir: str, record_path: str, executor: str,
                 env: dict | None = None) -> dict:
        """Train the resolved config written at submission (a later edit of the spec does not leak in), in
        the spec's `resources.env` (a job process of its own: not the debug executor's, which is this one)."""
        from train import multihost, stop

        if executor != "debug":
            os.environ.update(env or {})
        multihost.initialize_from_env()  # a no-op unless a multi-process launch set the usual variables
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or \
            os.environ.get("SUBMITIT_DEBUG_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
        record_path = pathlib.Path(record_path)
        status_lib.start_record(record_path, executor=executor, pid=os.getpid(), job_id=job_id)
        try:
            from train import config as config_lib
            from train import loop

            result = _result(loop.train(config_lib.load(config_path), pathlib.Path(run_dir)))
        except Exception as err:  # noqa: BLE001 - any failure of one run is reported, not raised
            if not isinstance(err, (ConfigError, WriteError, LockedError, stop.Interrupted)):  # one line by design
                traceback.print_exc()
            message = getattr(err, "problems", None) or [str(err) or type(err).__name__]
            result = {"status": "failed", "error": f"{type(err).__name__}: {message[0]}"}
        status_lib.write_record(record_path, finished=time.time(),
                                error=None if result["status"] == "completed" else result.get("error"))
        return result


# -------------------------------------------------------------------------------------- executors


@dataclasses.dataclass
class _Active:
    run: PlannedRun
    started: float
    handle: object  # subprocess.Popen or a submitit Job
    log: object = None
    cores: tuple[int, ...] | None = None  # the CPU slot a pinned local run holds


def _train_command(plan: GridPlan, run: PlannedRun) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "train", str(plan.config_path(run)), "--out", str(plan.run_dir(run))]


def _last_line(path: pathlib.Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class _LocalBackend:
    """`isoflop train` subprocesses; with `slots` (launch/cpu_slots.py) each holds its own cores."""

    name = "local"

    def __init__(self, plan: GridPlan, slots: list[tuple[int, ...]] | None = None):
        self.plan = plan
        self.log_dir = plan.spec.state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.free_slots = list(slots or [])

    def _environment(self, cores: tuple[int, ...] | None) -> dict:
        env = {**os.environ, **(self.plan.spec.resources.env or {})}
        return cpu_slots.environment(cores, env) if cores else env

    def calibrate_slots(self) -> None:
        """Measure the CPU peaks and bandwidth of each slot size (cached per usable-core count) while the
        machine is idle, before the runs start: a run measuring them beside another would be refused the
        cache (busy) and measure again every time."""
        for cores in {len(cores): cores for cores in self.free_slots}.values():
            with (self.log_dir / f"calibrate-{len(cores)}-cores.log").open("a") as log:
                subprocess.run([sys.executable, "-m", "train.hardware"], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=self._environment(cores),
                               preexec_fn=cpu_slots.pin(cores), check=False)

    def start(self, run: PlannedRun) -> _Active:
        log_path = self.log_dir / f"{run.run_id}.log"
        log = log_path.open("a")
        command = _train_command(self.plan, run)
        cores = self.free_slots.pop(0) if self.free_slots else None
        where = f" (cores {','.join(map(str, cores))})" if cores else ""
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}{where}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=self._environment(cores), preexec_fn=cpu_slots.pin(cores) if cores else None)
        status_lib.start_record(status_lib.record_path(self.plan, run.run_id), executor="local", pid=process.pid)
        return _Active(run, time.time(), process, log, cores)

    def poll(self, active: _Active) -> dict | None:
        returncode = active.handle.poll()
        if returncode is None:
            return None
        active.log.close()
        if active.cores:
            self.free_slots.append(active.cores)
        run_dir = self.plan.run_dir(active.run)
        log_path = self.log_dir / f"{active.run.run_id}.log"
        error = None
        if returncode < 0:
            step = last_logged_step(run_dir)
            error = (f"killed by {signal.Signals(-returncode).name}" + (f" after step {step}" if step else "")
                     + "; `isoflop grid run` resumes it from its last checkpoint")
        elif returncode > 0:
            error = f"exit code {returncode}: {_last_line(log_path)} (log: {log_path})"
        result = _outcome(run_dir, active.started, error)
        if returncode != 0 and result["status"] == "completed":
            result = {"status": "failed", "error": error}
        status_lib.write_record(status_lib.record_path(self.plan, active.run.run_id), finished=time.time(),
                                returncode=returncode,
                                error=None if result["status"] == "completed" else result["error"])
        return result

    def interrupt(self, active: _Active) -> None:
        if active.handle.poll() is None:
            active.handle.send_signal(signal.SIGINT)  # the trainer checkpoints and exits

    def wait(self, active: _Active) -> None:
        active.handle.wait()


class _SubmititBackend:
    """submitit jobs; `throttle` submits one job per free slot (local fallback, debug)."""

    def __init__(self, plan: GridPlan, executor_name: str, slurm: dict, max_parallel: int):
        if submitit is None:
            raise ConfigError(["--executor: submitit is not installed; pip install submitit"])
        self.plan = plan
        folder = plan.spec.state_dir / "submitit" / "%j"
        self.executor = submitit.AutoExecutor(folder=folder, cluster="debug" if executor_name == "debug" else None)
        self.name = self.executor.cluster  # slurm | local | debug
        parameters = {"name": f"isoflop-{plan.spec.name}", "timeout_min": slurm.pop("timeout_min", None)
                      or DEFAULT_TIMEOUT_MIN, **{k: v for k, v in slurm.items() if v is not None}}
        if self.name == "slurm":
            parameters["slurm_array_parallelism"] = max_parallel
        self.executor.update_parameters(**parameters)

    @property
    def note(self) -> str | None:
        if self.name == "local":
            return "no SLURM here (sbatch not found): submitit runs the jobs as local subprocesses"
        return None

    def _job_args(self, run: PlannedRun) -> tuple[str, str, str, str, dict]:
        return (str(self.plan.config_path(run)), str(self.plan.run_dir(run)),
                str(status_lib.record_path(self.plan, run.run_id)), self.name, dict(self.plan.spec.resources.env or {}))

    def submit_all(self, runs: list[PlannedRun]) -> list[_Active]:
        """One job array for the runs that wait for none of `runs` (SLURM), then each other run as a job that
        waits for their jobs (afterok); a run it waits for that is not in `runs` has completed already."""
        now = time.time()
        records = {run.run_id: status_lib.record_path(self.plan, run.run_id) for run in runs}
        for path in records.values():  # before submitting: a job that starts at once writes its own pid and host
            status_lib.write_record(path, executor=self.name, job_id="submitting", started=now, finished=None,
                                    error=None, pid=None, host=None, returncode=None)
        first = [run for run in runs if not set(run.waits_for) & records.keys()]
        jobs = dict(zip((run.run_id for run in first),
                        self.executor.map_array(TrainJob(), *zip(*(self._job_args(run) for run in first)))))
        for run in runs:
            if run.run_id not in jobs:
                waited = [jobs[run_id].job_id for run_id in run.waits_for if run_id in jobs]
                self.executor.update_parameters(slurm_additional_parameters=_after(waited))
                jobs[run.run_id] = self.executor.submit(TrainJob(), *self._job_args(run))
        self.executor.update_parameters(slurm_additional_parameters={})
        for run_id, path in records.items():
            if (status_lib.read_record(path) or {}).get("pid") is None:
                status_lib.write_record(path, job_id=str(jobs[run_id].job_id))
        return [_Active(run, now, jobs[run.run_id]) for run in runs]

    def start(self, run: PlannedRun) -> _Active:
        started = time.time()
        job = self.executor.submit(TrainJob(), *self._job_args(run))
        if self.name == "debug":
            job.result()  # runs it here and now
        return _Active(run, started, job)

    def poll(self, active: _Active) -> dict | None:
        job = active.handle
        if not job.done():
            return None
        try:
            return job.result()
        except Exception as err:  # noqa: BLE001 - the job died outside TrainJob (killed, time-out, node failure)
            text = str(err).strip().splitlines()
            error = f"submitit job {job.job_id} failed: {text[-1] if text else type(err).__name__}"
            status_lib.write_record(status_lib.record_path(self.plan, active.run.run_id), finished=time.time(),
                                    error=error)
            return _outcome(self.plan.run_dir(active.run), active.started, error)

    def interrupt(self, active: _Active) -> None:
        if self.name == "local":
            active.handle.cancel(check=False)

    def wait(self, active: _Active) -> None:
        pass


def _after(job_ids: list) -> dict:
    """sbatch's --dependency: start once every job of `job_ids` has completed successfully."""
    return {"dependency": "afterok:" + ":".join(str(job_id) for job_id in job_ids)}


def _start_order(pending: list[PlannedRun]) -> list[PlannedRun]:
    """Side by side, the runs others wait for (sweeps, stable phases) first, then the largest first: the
    longest-processing-time rule, so the grid does not end on one long run while the other slots idle."""
    awaited = {run_id for run in pending for run_id in run.waits_for}
    return sorted(pending, key=lambda run: (run.run_id not in awaited, -max(run.flops.values(), default=0.0)))


def _next_ready(pending: list[PlannedRun], outcome: dict[str, str]) -> PlannedRun | None:
    """Take the first pending run that can start: every run it waits for has completed."""
    for run in pending:
        if all(outcome.get(run_id) == "completed" for run_id in run.waits_for):
            pending.remove(run)
            return run
    return None


def _blocked(pending: list[PlannedRun], outcome: dict[str, str], active: list) -> list[PlannedRun]:
    """Take the pending runs that wait for a run that will not complete in this session (failed, or not run)."""
    running = {item.run.run_id for item in active} | {run.run_id for run in pending}
    blocked = [run for run in pending if any(outcome.get(run_id) != "completed" and run_id not in running
                                             for run_id in run.waits_for)]
    for run in blocked:
        pending.remove(run)
    return blocked


def _with_rate(plan: GridPlan, run: PlannedRun) -> PlannedRun:
    """A run whose rate is transferred, at its completed sweep's best rate, with its config written."""
    if not run.lr_pending:
        return run
    run = resolve_transfer(run, status_lib.sweep_summaries(plan, run))
    write_config(plan, run)
    return run


def _raise_on_sigterm():
    """SIGTERM stops the grid like Ctrl-C (running runs checkpoint); returns the handler to restore."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def run_grid(plan: GridPlan, *, executor: str = "local", max_parallel: int = 1, only: list[str] | None = None,
             slurm: dict | None = None, wait: bool = True, pin: bool = True, stream=None) -> int:
    """Run every selected run that is not completed. Exit code: 0 all completed, 1 some failed, 130 interrupted.

    `pin`: local runs side by side each get their own cores (launch/cpu_slots.py)."""
    if executor not in EXECUTORS:
        raise ConfigError([f"--executor: {executor!r} is not allowed; choose one of {', '.join(EXECUTORS)}"])
    if max_parallel < 1:
        raise ConfigError([f"--max-parallel: {max_parallel} must be >= 1"])
    plan = status_lib.with_transfers_resolved(plan)  # a rerun after the sweep: its runs' configs as trained
    selected = select(plan, only)
    check_run_dirs(plan)
    write_plan_files(plan)
    progress = Progress(len(selected), stream)

    pending, outcome = [], {}
    for run, state in zip(selected, (status_lib.run_status(plan, run) for run in selected)):
        outcome[run.run_id] = state.status
        if state.status == "completed":
            loss = f", eval loss {state.final_eval_loss:.4f}" if state.final_eval_loss else ""
            progress.skip(run, f"already completed{loss}")
        elif state.status == "running":
            progress.skip(run, f"running elsewhere ({state.detail})")
        else:
            pending.append(run)
    if max_parallel > 1:
        pending = _start_order(pending)
    if not pending:
        progress.print(f"grid {plan.spec.name}: nothing to run ({progress.skipped} of {len(selected)} skipped)")
        return 0

    slots = cpu_slots.partition(cpuinfo.usable_cores(), min(max_parallel, len(pending))) \
        if executor == "local" and pin else None
    backend = _LocalBackend(plan, slots) if executor == "local" else _SubmititBackend(
        plan, executor, submitit_parameters(plan.spec.resources, dict(slurm or {})), max_parallel)
    where = f"executor {backend.name}" + (f", {max_parallel} at a time" if max_parallel > 1 else "") \
        + (f", pinned to {cpu_slots.describe(slots)}" if slots else "")
    progress.print(f"grid {plan.spec.name}: {len(pending)} run(s) to go under {plan.spec.grid_dir} ({where})")
    if getattr(backend, "note", None):
        progress.print(f"  note: {backend.note}")
    if slots:
        backend.calibrate_slots()

    active: list[_Active] = []
    if backend.name == "slurm":
        active = backend.submit_all([run for run in pending if not run.lr_pending])
        for item in active:
            progress.print(f"  submitted {item.run.run_id} as slurm job {item.handle.job_id}")
        pending = [run for run in pending if run.lr_pending]  # submitted once their sweep has completed
        if not wait:
            later = f"; {len(pending)} wait for their lr sweep: run `isoflop grid run` again once it has completed" \
                if pending else ""
            progress.print(f"submitted {len(active)} job(s); follow them with `isoflop grid status {plan.spec.path}`"
                           + later)
            return 0
    interrupted = False
    previous_term = _raise_on_sigterm()
    try:
        while pending or active:
            while len(active) < max_parallel and (run := _next_ready(pending, outcome)) is not None:
                try:
                    run = _with_rate(plan, run)
                except ConfigError as err:
                    outcome[run.run_id] = "failed"
                    progress.finish(run, {"status": "failed", "error": f"not started: {err.problems[0]}"}, 0.0,
                                    pending, [], max_parallel)
                    continue
                progress.start(run, backend.name)
                active.append(backend.start(run))
            for run in _blocked(pending, outcome, active):
                outcome[run.run_id] = "failed"
                what = f"its stable run {run.parent}" if run.role == "branch" else \
                    f"its lr sweep {run.config.run.lr_transfer}"
                progress.finish(run, {"status": "failed", "error": f"not started: {what} did not complete"}, 0.0,
                                pending, [], max_parallel)
            for item in list(active):
                result = backend.poll(item)
                if result is None:
                    continue
                active.remove(item)
                outcome[item.run.run_id] = result["status"]
                now = time.time()
                progress.finish(item.run, result, now - item.started, pending,
                                [(other.run, now - other.started) for other in active], max_parallel)
            if active:
                time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        progress.print("interrupted: stopping the running run(s); they checkpoint and resume on the next `grid run`")
        for item in active:
            backend.interrupt(item)
        for item in active:
            backend.wait(item)
            result = backend.poll(item) if backend.name == "local" else None
            progress.print(f"  {item.run.run_id}: {result['status'] if result else 'cancelled'}")
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    elapsed = time.time() - progress.started_at
    progress.print(f"grid {plan.spec.name}: {progress.done} completed, {progress.failed} failed, {progress.skipped} "
                   f"skipped in {format_duration(elapsed)}" + ("" if progress.failed == 0 else
                                                               f"; see `isoflop grid status {plan.spec.path}`"))
    if interrupted:
        return 130
    return 1 if progress.failed else 0
