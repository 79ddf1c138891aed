"""Train one config under its FLOP budget into a run directory (docs/CONTRACTS.md), resuming exactly if asked.

`train` runs in three phases, so that a rejected command leaves nothing behind:
  1. `check` — everything that can be checked without data or writes: the config, the data source,
     the budget against the steps, the schedule, the mesh and batch, the output path (ConfigError, exit 2);
  2. the data is tokenised into its cache (not the run directory), which finds the data problems only
     reading it can (an empty split, a window longer than the data);
  3. under the run directory's lock: config.yaml, then the step built (`build_training`), restored and run.
SIGTERM/SIGINT become a flag from the start (train/stop.py): before training they end the command with
one line (`stop.Interrupted`), during it a checkpoint of the step reached. Any failed write stops the run
at once with a `common.files.WriteError` (one line); the last good checkpoint stays, and a rerun resumes
bitwise. A stop or a failed write is exit 1 at the command line; a rejected command is exit 2.
A WSD decay branch (`run.branch_from`) starts, when it has no checkpoint of its own, from its stable run's
checkpoint at its decay start, data iterator and accumulators included (train/branches.py); a stable run
(`run.branch_points`) keeps the checkpoints of those steps.

The loop itself is short because each thing it calls has one job: `run_dir` (the directory contract),
`budget` (steps from FLOPs), `optimizer` (AdamW + schedule), `data` (grain batches), `step` (the jitted
update), `checkpoint` (Orbax), `metric_log` (jsonl + TensorBoard + progress), `hardware`/`energy` (MFU, kWh).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from common.run_contract import CHECKPOINT_DIR, RunSummary, write_summary
from modeling import accounting
from modeling.transformer import Transformer
from train import branches, cpu_paths, multihost
from train import budget as budget_lib
from train import data as data_lib
from train import run_dir as run_dir_lib
from train import stop as stop_lib
from train.checkpoint import Checkpointer, restore_branch_point
from train.config import Config
from train.energy import EnergyMeter
from train.hardware import compute_dtype_of, describe_devices, device_nominal_peak, device_peak, mfu
from train.lengths import warmup_steps
from train.metric_log import MetricLog, peak_memory_bytes
from train.optimizer import build_optimizer, schedule_for
from train.sharding import batch_sharding, check_batch_divides, make_mesh, param_shardings, replicated
from modeling.moe import router_log_scalars
from train.step import make_eval_step, make_train_step


class NonFiniteLoss(RuntimeError):
    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# ----------------------------------------------------------------------------- phase 1: check


@dataclasses.dataclass(frozen=True)
class Checked:
    """What `check` established: the plan, the mesh, and whether the directory holds this run already."""

    plan: budget_lib.BudgetPlan
    mesh: Mesh
    resume: bool
    branch_step: int | None  # a WSD branch: the stable run's step it starts from


def check(config: Config, run_path: pathlib.Path) -> Checked:
    """Everything checkable without reading data or writing a file; raises ConfigError (exit 2)."""
    data_lib.check(config)  # the config as a whole, then the corpus: exists, readable, token file sizes
    resume = run_dir_lib.check(run_path, config)
    plan = budget_lib.plan_for(config)  # at least one step
    schedule_for(config, plan.steps)  # warmup and decay fit the steps
    mesh = make_mesh(config.run)
    check_batch_divides(config.data.batch_size, mesh)
    k = None
    if config.run.branch_from is not None:  # its stable run is needed until the branch has a checkpoint of its own
        k = branches.branch_step(config, plan.steps)
        if not (resume and _has_checkpoints(run_path)):
            branches.check_parent(config, plan.steps)
    return Checked(plan, mesh, resume, k)


def _has_checkpoints(run_path: pathlib.Path) -> bool:
    directory = run_path / CHECKPOINT_DIR
    return directory.is_dir() and any(entry.name.isdigit() for entry in directory.iterdir())


# ----------------------------------------------------------------------------- the step


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """The compiled-to-be step and the state it updates: the one way to build them (trainer, bench, profiler)."""

    mesh: Mesh
    optimizer: optax.GradientTransformation
    graphdef: nnx.GraphDef
    params: object
    opt_state: object
    param_sharding: object
    opt_sharding: object
    data_sharding: NamedSharding
    train_step: Callable  # (params, opt_state, batch) -> (params, opt_state, metrics)
    eval_step: Callable  # (params, batch) -> mean token cross-entropy
    host_paths: dict  # the CPU-specific paths the model was built with, and why (train/cpu_paths.py)


def build_training(config: Config, total_steps: int, mesh: Mesh | None = None) -> TrainingSetup:
    """Params and optimizer state created directly in their sharded layout, and the jitted steps. The model
    takes this host's CPU paths for its "auto" knobs (train/cpu_paths.py; the same parameters either way)."""
    mesh = make_mesh(config.run) if mesh is None else mesh
    check_batch_divides(config.data.batch_size, mesh)
    model_config, host_paths = cpu_paths.resolve(config.model, config.data.seq_len)
    optimizer = build_optimizer(config.optimizer, total_steps, warmup_steps(config, total_steps)[0],
                                model=model_config)  # μP's per-role Adam multipliers (modeling/mup.py)
    abstract = nnx.eval_shape(lambda: Transformer(model_config, nnx.Rngs(config.run.seed)))
    graphdef, abstract_params = nnx.split(abstract)
    param_sh = param_shardings(abstract_params, mesh)
    params = jax.jit(lambda: nnx.split(Transformer(model_config, nnx.Rngs(config.run.seed)))[1],
                     out_shardings=param_sh)()
    opt_sh = _optimizer_shardings(optimizer, abstract_params, param_sh, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(params)
    data_sh = batch_sharding(mesh)
    train_step = make_train_step(graphdef, optimizer, z_loss=config.optimizer.z_loss,
                                 grad_accum_steps=config.optimizer.grad_accum_steps,
                                 shardings=(param_sh, opt_sh, data_sh))
    return TrainingSetup(mesh, optimizer, graphdef, params, opt_state, param_sh, opt_sh, data_sh, train_step,
                         make_eval_step(graphdef), host_paths)


def _optimizer_shardings(optimizer, abstract_params, param_sh, mesh):
    """Moments follow their parameter's sharding; counters and the like are replicated."""
    abstract_state = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_state, param_sh,
                                 transform_non_params=lambda _: replicated(mesh))


def _global_batch(local_batch: dict, sharding) -> dict:
    """One global array per key from this process's rows (all rows when there is one process)."""
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in local_batch.items()}


def _process_rows(batch: dict) -> dict:
    """This process's contiguous share of a full batch (the loader's train split follows the same rule)."""
    rows = len(batch["inputs"]) // jax.process_count()
    first = jax.process_index() * rows
    return {key: value[first : first + rows] for key, value in batch.items()}


def _evaluate(eval_step, params, eval_batches, sharding) -> float:
    losses = [eval_step(params, _global_batch(_process_rows(batch), sharding)) for batch in eval_batches]
    return float(np.mean(jax.device_get(losses)))


def schedule_facts(config: Config, total_steps: int) -> dict:
    """The summary's record of which learning rate and warmup a run used and why, and its WSD role."""
    run = config.run
    warmup, warmup_source = warmup_steps(config, total_steps)
    source = ("optimizer.learning_rate" if run.lr_sweep is None else
              f"one rate of lr sweep {run.lr_sweep} (optimizer.learning_rate); fits keep the sweep's lowest final "
              "eval loss")
    if run.lr_transfer is not None:
        source = (f"transferred from lr sweep {run.lr_transfer}: the rate of its lowest final eval loss "
                  "(optimizer.learning_rate; μP, lr_sweep.transfer)")
    role = "branch" if run.branch_from is not None else "stable" if run.branch_points else "run"
    return {"learning_rate": config.optimizer.learning_rate, "learning_rate_source": source,
            "warmup_steps": warmup, "warmup_source": f"{config.optimizer.warmup_rule}: {warmup_source}",
            "lr_sweep": run.lr_sweep, "role": role,
            "branch_of": pathlib.Path(run.branch_from).name if run.branch_from is not None else None,
            "branch_step": branches.branch_step(config, total_steps) if run.branch_from is not None else None}


# ----------------------------------------------------------------------------- train


def train(config: Config, run_path: pathlib.Path) -> RunSummary:
    """Run (or resume) training; returns the final summary. Raises ConfigError before anything is
    written, train.stop.Interrupted on a stop signal before training, WriteError on a failed write."""
    run_path = pathlib.Path(run_path)
    with stop_lib.catching() as stop:
        checked = check(config, run_path)
        multihost.barrier("isoflop: run directory checked")  # every process checks before any writes
        if checked.resume:  # rerunning a finished run changes nothing
            finished = run_dir_lib.completed_summary(run_dir_lib.RunDir(run_path, resumed=True))
            if finished is not None:
                return finished
        stop.raise_if_received("before the data was prepared")
        dataset = data_lib.prepare(config)
        epochs = dataset.epochs(checked.plan.tokens)  # warns when the budget repeats data
        stop.raise_if_received("while the data was prepared")
        with run_dir_lib.locked(run_path, exclusive=jax.process_index() == 0):
            run = run_dir_lib.prepare(run_path, config, checked.resume, primary=jax.process_index() == 0)
            return _Session(config, run, checked, dataset, epochs, stop).run()


class _Session:
    """One process's training of a locked run directory, from its latest checkpoint to the end or a stop."""

    def __init__(self, config: Config, run: run_dir_lib.RunDir, checked: Checked, dataset, epochs: float,
                 stop: stop_lib.StopFlag):
        self.config, self.run_dir, self.plan, self.dataset, self.epochs, self.stop = (
            config, run, checked.plan, dataset, epochs, stop)
        self.setup = build_training(config, checked.plan.steps, checked.mesh)
        self.params, self.opt_state = self.setup.params, self.setup.opt_state
        self.checkpointer = Checkpointer(run.checkpoint_dir, keep=config.run.keep_checkpoints,
                                         keep_steps=config.run.branch_points)
        self.iterator = dataset.train_iterator(config.run.seed, jax.process_index(), jax.process_count())
        self.accumulators = {"wall_seconds": 0.0, "energy_kwh": 0.0}
        self.start_step = self.checkpointer.latest_step() or 0
        self.primary = jax.process_index() == 0  # one process writes the run's files; all of them checkpoint
        if self.start_step:
            self.params, self.opt_state, data_state, self.accumulators = self.checkpointer.restore(
                self.start_step, self.params, self.opt_state)
            self.iterator.set_state(data_state)
        elif checked.branch_step:  # a fresh branch: the stable run's state at its decay start, and its curve so far
            self.start_step = checked.branch_step
            self.params, self.opt_state, data_state, self.accumulators = restore_branch_point(
                branches.checkpoint_dir(config), self.start_step, self.params, self.opt_state)
            self.iterator.set_state(data_state)
            if self.primary:
                branches.copy_prefix_metrics(config, run.path, self.start_step)
        self.devices = checked.mesh.devices.flatten().tolist()
        compute_dtype = compute_dtype_of(config.model.precision)
        self.hardware = describe_devices(self.devices, compute_dtype, config.hardware)
        self.peak = device_peak(self.devices[0], compute_dtype, config.hardware)
        self.nominal_peak = device_nominal_peak(self.devices[0], compute_dtype)
        self.eval_batches = dataset.eval_batches()
        self.mfu_flops_per_token = accounting.mfu_flops_per_token(config.model, config.data.seq_len)
        self.session_start = time.perf_counter()
        self.saved_step = self.start_step
        self.step = self.start_step  # the step reached
        self.energy: EnergyMeter | None = None  # opened by `run`, which closes them whatever happens
        self.log: MetricLog | None = None
        self.last: dict = {}  # the latest value of every logged metric
        # Steady-state throughput over every session: log intervals, except each session's first (compile).
        self.steady = {"seconds": self.accumulators.get("steady_seconds", 0.0),
                       "steps": self.accumulators.get("steady_steps", 0)}

    def wall_seconds(self) -> float:
        return self.accumulators["wall_seconds"] + time.perf_counter() - self.session_start

    def save(self, step: int) -> None:
        """Checkpoint `step` unless it is already saved (a stop right after a checkpoint step)."""
        if step == self.saved_step:
            return
        totals = {"wall_seconds": self.wall_seconds(), "energy_kwh": self.energy.energy_kwh or 0.0,
                  "energy_source": self.energy.energy_source, "steady_seconds": self.steady["seconds"],
                  "steady_steps": self.steady["steps"]}
        self.checkpointer.save(step, self.params, self.opt_state, self.iterator.get_state(), totals)
        self.saved_step = step

    def run(self) -> RunSummary:
        """Open the meter and the log, train, close all three sinks whatever happens (the checkpointer
        waits for its last save), write the summary."""
        status, error = "failed", None
        with contextlib.ExitStack() as closing:
            closing.callback(self.checkpointer.close)
            self.energy = closing.enter_context(EnergyMeter(
                self.devices, self.config.hardware, prior_kwh=self.accumulators["energy_kwh"],
                prior_source=self.accumulators.get("energy_source")))
            if self.primary:
                self.log = closing.enter_context(MetricLog(self.run_dir.path, self.plan.steps,
                                                           resume_step=self.start_step))
                self.last = dict(self.log.resumed_metrics)
            try:
                self._loop()
            except NonFiniteLoss as err:
                self.step, error = err.step, str(err)
            else:
                if self.step == self.plan.steps:
                    status = "completed"
                else:
                    error = f"interrupted by {self.stop.received} at step {self.step}; rerun to resume"
        return self._finish(status, error)

    def _loop(self) -> None:
        """Steps until the plan is done or a stop signal; `self.step` and `self.last` follow it."""
        config, plan, setup = self.config, self.plan, self.setup
        tokens_per_step = plan.tokens_per_step
        schedule = schedule_for(config, plan.steps)
        branch_points = set(config.run.branch_points)
        step = self.start_step
        interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0
        while step < plan.steps and self.stop.received is None:
            batch = _global_batch(next(self.iterator), setup.data_sharding)
            self.params, self.opt_state, metrics = setup.train_step(self.params, self.opt_state, batch)
            step += 1
            self.step = step
            interval_steps += 1
            is_last = step == plan.steps
            is_log = step % config.run.log_every == 0 or is_last
            is_eval = step % config.run.eval_every == 0 or is_last
            is_checkpoint = step % config.run.checkpoint_every == 0 or is_last or step in branch_points
            if not (is_log or is_eval or is_checkpoint):
                self.energy.tick()  # a counter read at most every few seconds, no host sync
                continue  # the next step is dispatched while this one runs
            loss = float(metrics["loss"])
            if not math.isfinite(loss):  # checked before any save, so every checkpoint is finite
                raise NonFiniteLoss(f"loss became {loss} at step {step}; kept the checkpoint of step "
                                    f"{self.checkpointer.latest_step() or 'none'} (lower optimizer.learning_rate?)",
                                    step)
            self.checkpointer.check()  # an earlier asynchronous save that failed stops the run here
            work_start = time.perf_counter()
            record = {"tokens": step * tokens_per_step,
                      **{f"flops_{name}": flops for name, flops in plan.flops_after(step * tokens_per_step).items()}}
            if is_log:
                seconds = work_start - interval_start - paused
                if interval_steps < step - self.start_step:  # not the interval that compiled the step
                    self.steady["seconds"] += seconds
                    self.steady["steps"] += interval_steps
                tokens_per_second = tokens_per_step * interval_steps / seconds
                memory_bytes, memory_source = peak_memory_bytes(self.devices[0])
                record |= {
                    "train_loss": loss,
                    "learning_rate": float(schedule(step - 1)),
                    "grad_norm": float(metrics["grad_norm"]),
                    "tokens_per_second": tokens_per_second,
                    "step_seconds": seconds / interval_steps,
                    "mfu": mfu(self.mfu_flops_per_token * tokens_per_second, len(self.devices), self.peak),
                    "peak_memory_bytes": memory_bytes,
                    "peak_memory_source": memory_source,
                    **router_log_scalars(metrics),  # an MoE's aux_loss and router health; {} for dense
                }
            if is_eval:
                record["eval_loss"] = _evaluate(setup.eval_step, self.params, self.eval_batches, setup.data_sharding)
            record |= self.energy.snapshot()  # polls the counter at every host sync
            if is_log or is_eval:
                self.last = {**self.last, **record}
                if self.log is not None:
                    self.log.log(step, record)
            if is_checkpoint:
                self.save(step)
            if is_log:
                interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0
            else:
                paused += time.perf_counter() - work_start
        self.save(step)  # the stop's step; a no-op when it was just saved or nothing was trained

    def _finish(self, status: str, error: str | None) -> RunSummary:
        if self.steady["steps"]:
            steady = self.plan.tokens_per_step * self.steady["steps"] / self.steady["seconds"]
            model_flops_per_second = self.mfu_flops_per_token * steady
            throughput = {"tokens_per_second": steady,
                          "mfu": mfu(model_flops_per_second, len(self.devices), self.peak),
                          "mfu_nominal": mfu(model_flops_per_second, len(self.devices), self.nominal_peak)}
        else:  # only compile intervals: no steady-state figure to report
            throughput = {"tokens_per_second": None, "mfu": None, "mfu_nominal": None}
        summary = run_dir_lib.summary(
            self.config, self.run_dir, self.plan, status=status, error=error, step=self.step,
            last_metrics={**self.last, **throughput}, wall_seconds=self.wall_seconds(), hardware=self.hardware,
            energy=self.energy, data=self.dataset.summary(), epochs=self.epochs,
        )
        summary = dataclasses.replace(summary, **schedule_facts(self.config, self.plan.steps),
                                      mfu_nominal=throughput["mfu_nominal"], host_paths=self.setup.host_paths)
        if self.primary:
            write_summary(self.run_dir.path, summary)
        return summary
