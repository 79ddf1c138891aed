"""`isoflop grid plan|run|status|export`: plan a grid (no compute), run what is not completed, report where it
stands, or write the cluster manifests that run it (launch/export.py)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from common.formatting import format_count, format_duration
from common.validation import (
    ConfigError,
    non_negative_float,
    non_negative_int,
    one_line_parser_errors,
    positive_float,
    positive_int,
)
from common.vocabulary import BUDGET_FLOP_CONVENTIONS
from launch import plan as plan_lib

PREFIX = "isoflop grid"  # every problem line of these commands starts so, as launch/cli.py prints them
SLURM_OPTIONS = {  # CLI dest -> submitit AutoExecutor parameter
    "partition": "slurm_partition",
    "time": "timeout_min",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "nodes": "nodes",
    "tasks_per_node": "tasks_per_node",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "slurm_setup": "slurm_setup",
}


def register(commands) -> None:
    grid = one_line_parser_errors(
        commands.add_parser("grid", help="plan, run and follow isoFLOP / over-training / sweep grids"), PREFIX)
    kinds = grid.add_subparsers(dest="grid_command", required=True, metavar="ACTION")

    plan = kinds.add_parser("plan", help="the runs a grid spec makes: N, D, D/N, FLOPs, steps, time (no compute)")
    _common(plan)
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rate = plan.add_mutually_exclusive_group()
    rate.add_argument("--tokens-per-second", type=positive_float,
                      help="estimate wall time at this training throughput")
    rate.add_argument("--flops-per-second", type=positive_float,
                      help="estimate wall time at this achieved FLOP/s (chinchilla count, as MFU counts)")
    rate.add_argument("--bench", type=positive_int, nargs="?", const=5, metavar="STEPS",
                      help="measure tokens/s of each distinct model for STEPS steps (default 5) and estimate from it")
    plan.add_argument("--startup-seconds", type=non_negative_float, default=0.0,
                      help="fixed cost per run added to each estimate (process start, data, compile)")
    plan.set_defaults(func=_plan)

    run = kinds.add_parser("run", help="run every planned run that is not completed (resumes partial runs)")
    _common(run)
    run.add_argument("--executor", default="local", choices=("local", "slurm", "debug"),
                     help="local: `isoflop train` subprocesses (default); slurm: submitit (falls back to local "
                          "subprocesses without SLURM); debug: submitit in this process")
    run.add_argument("--max-parallel", type=positive_int, default=1, metavar="K",
                     help="runs at a time (default 1); on the local executor each gets its own 1/K of the cores")
    run.add_argument("--no-pin", dest="pin", action="store_false",
                     help="local runs side by side share all cores instead of one slot each (launch/cpu_slots.py)")
    run.add_argument("--only", nargs="+", metavar="RUN_ID", help="run only these cells")
    cluster = run.add_argument_group("SLURM (submitit) options, with --executor slurm")
    cluster.add_argument("--partition")
    cluster.add_argument("--time", type=positive_int, metavar="MINUTES",
                         help=f"time limit per run (default {24 * 60}; submitit requeues a run that hits it)")
    cluster.add_argument("--gpus-per-node", type=non_negative_int)
    cluster.add_argument("--cpus-per-task", type=positive_int)
    cluster.add_argument("--mem-gb", type=positive_int)
    cluster.add_argument("--nodes", type=positive_int, help="nodes per run (multi-host JAX: see train/multihost.py)")
    cluster.add_argument("--tasks-per-node", type=positive_int, help="processes per node (one per GPU for multi-process JAX)")
    cluster.add_argument("--account")
    cluster.add_argument("--qos")
    cluster.add_argument("--constraint")
    cluster.add_argument("--slurm-setup", action="append", metavar="COMMAND",
                         help="shell line run before each job, e.g. 'module load cuda' (repeatable)")
    cluster.add_argument("--no-wait", action="store_true", help="submit and return (follow with `grid status`)")
    run.set_defaults(func=_run)

    status = kinds.add_parser("status", help="completed / running / failed / not started, per run")
    _common(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    export = kinds.add_parser("export", help="cluster manifests that run the grid (GKE Indexed Jobs)")
    _common(export)
    export.add_argument("--gke", action="store_true", required=True,
                        help="Kubernetes Indexed Jobs, one per stage (runs, then WSD branches)")
    export.add_argument("--image", required=True, help="container image with isoflop installed (its workdir the repo)")
    export.add_argument("--claim", required=True, metavar="PVC",
                        help="PersistentVolumeClaim holding the run directories")
    export.add_argument("--mount", default="/runs", help="where the claim is mounted in each pod (default /runs)")
    export.add_argument("--namespace", default="default")
    export.add_argument("--max-parallel", type=positive_int, metavar="K", help="pods at a time per stage (default all)")
    export.add_argument("--service-account", help="Kubernetes service account of the pods")
    export.add_argument("--accelerator", metavar="TYPE",
                        help="GKE node selector cloud.google.com/gke-accelerator, e.g. nvidia-h100-80gb")
    export.add_argument("--spec-path", help="the spec's path inside the image (default: GRID.yaml as given)")
    export.add_argument("--stage", type=int, choices=(0, 1),
                        help="only this stage's Job (0: runs from step 0, 1: WSD branches, after 0 completed)")
    export.add_argument("--output", "-o", metavar="FILE", help="write the manifest here instead of stdout")
    export.set_defaults(func=_export)


def _common(parser: argparse.ArgumentParser) -> None:
    one_line_parser_errors(parser, PREFIX)
    parser.add_argument("spec", metavar="GRID.yaml", help="grid spec (see configs/grids/)")
    parser.add_argument("--out-dir", help="root of the run directories (default: the spec's out_dir, else the base "
                                          "config's run.out_dir)")


def _load(args) -> plan_lib.GridPlan:
    return plan_lib.load(args.spec, args.out_dir)


# ------------------------------------------------------------------------------------------- plan


def _estimates(args, grid: plan_lib.GridPlan) -> tuple[list[float | None], str | None]:
    if args.bench is not None:
        rates = _bench(grid, args.bench)
        seconds = [args.startup_seconds + rates[_shape_key(run)][1]
                   + run.added_steps * run.budget.tokens_per_step / rates[_shape_key(run)][0]
                   for run in grid.runs]
        return seconds, (f"measured tokens/s per model ({args.bench} steps each) + compile time"
                         + (f" + {args.startup_seconds:g} s per run" if args.startup_seconds else ""))
    if args.tokens_per_second is None and args.flops_per_second is None:
        return [None] * len(grid.runs), None
    seconds = [plan_lib.estimate_seconds(run, tokens_per_second=args.tokens_per_second,
                                         flops_per_second=args.flops_per_second,
                                         startup_seconds=args.startup_seconds) for run in grid.runs]
    basis = (f"{args.tokens_per_second:,.0f} tokens/s" if args.tokens_per_second else
             f"{args.flops_per_second:.3g} FLOP/s achieved ({plan_lib.RATE_CONVENTION} count)")
    return seconds, basis + (f" + {args.startup_seconds:g} s per run" if args.startup_seconds else "")


def _shape_key(run: plan_lib.PlannedRun) -> str:
    config = run.config
    return json.dumps([config.model.__repr__(), config.data.seq_len, config.data.batch_size,
                       config.optimizer.grad_accum_steps])


def _bench(grid: plan_lib.GridPlan, steps: int) -> dict[str, tuple[float, float]]:
    """tokens/s and compile seconds of each distinct model shape of the grid, measured here."""
    from train.bench import bench_train

    rates = {}
    for run in grid.runs:
        key = _shape_key(run)
        if key in rates:
            continue
        result = bench_train(run.config, steps=steps)
        rates[key] = (result["tokens_per_second"], result["compile_seconds"])
        print(f"bench {run.coords.get('model', run.run_id)}: {result['tokens_per_second']:,.0f} tokens/s, "
              f"compile {result['compile_seconds']:.1f} s", file=sys.stderr, flush=True)
    return rates


def _shown(path) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


def _flops(value: float) -> str:
    return f"{value:.3g}".replace("e+", "e")


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)


def _origin(run: plan_lib.PlannedRun) -> str:
    """Where a run's training starts: step 0, or a branch's stable run and step."""
    if run.role == "branch":
        return f"{run.parent}@{run.prefix_steps}"
    return "0 (stable)" if run.role == "stable" else "0"


def _plan(args) -> int:
    grid = _load(args)
    seconds, basis = _estimates(args, grid)
    if args.json:
        document = grid.to_dict()
        for item, estimate in zip(document["runs"], seconds):
            item["estimated_seconds"] = estimate
        document["totals"]["estimated_seconds"] = sum(seconds) if basis else None
        document["estimate_basis"] = basis
        print(json.dumps(document, indent=2))
        return 0
    spec = grid.spec
    convention = grid.runs[0].budget.convention
    print(f"grid {spec.name} ({spec.kind}): {len(grid.runs)} runs, {len(grid.dropped)} cells dropped; "
          f"base {_shown(spec.base)}; "
          f"run dirs {spec.grid_dir}/<run_id>")
    print(f"N = {grid.runs[0].params_key} params; budgets spent under {convention}; C[x] = training FLOPs of the run "
          "under convention x")
    header = ["run_id", "N", "D", "D/N", "steps"] + [f"C[{name}]" for name in BUDGET_FLOP_CONVENTIONS] + \
        ["lr", "warmup", "starts from"]
    if basis:
        header.append("est. time")
    rows = [header]
    for run, estimate in zip(grid.runs, seconds):
        row = [run.run_id, format_count(run.n_params), format_count(run.tokens),
               plan_lib.format_ratio(run.tokens_per_param),
               str(run.steps)] + [_flops(run.flops[name]) for name in BUDGET_FLOP_CONVENTIONS] + \
            [run.learning_rate_label, str(run.warmup[0]), _origin(run)]
        if basis:
            row.append(format_duration(estimate))
        rows.append(row)
    totals = grid.totals()
    total_row = ["total", "", format_count(totals["tokens"]), "", str(totals["steps"])] + \
        [_flops(totals["flops"][name]) for name in BUDGET_FLOP_CONVENTIONS] + ["", "", ""]
    if basis:
        total_row.append(format_duration(sum(seconds)))
    rows.append(total_row)
    print(_table(rows, right=set(range(1, len(header))) - {len(header) - 1 - bool(basis)}))
    if any(run.role == "branch" for run in grid.runs):
        print("branches: D, steps and C count each whole run; the total counts a shared prefix once (its stable run)")
    warmups = sorted({f"{run.config.optimizer.warmup_rule}" for run in grid.runs})
    print(f"warmup rule: {', '.join(warmups)} (optimizer.warmup_rule); lr: "
          + ("the smallest width's sweep in each column, its best rate transferred to the larger sizes (μP)"
             if grid.spec.lr_transfer else "the lr sweep's rates, fits keep each cell's lowest final eval loss"
             if grid.spec.learning_rates else "optimizer.learning_rate of each run's config"))
    if basis:
        print(f"estimated from {basis}")
    for item in grid.dropped:
        print(f"dropped {item.run_id}: {item.reason}")
    for note in grid.notes:
        print(f"note: {note}")
    return 0


# -------------------------------------------------------------------------------------------- run


def _run(args) -> int:
    from launch import runner

    grid = _load(args)
    slurm = {target: getattr(args, dest) for dest, target in SLURM_OPTIONS.items() if getattr(args, dest) is not None}
    if args.executor != "slurm":
        given = [f"--{dest.replace('_', '-')}" for dest in SLURM_OPTIONS if getattr(args, dest) is not None]
        if args.no_wait:
            given.append("--no-wait")
        if given:
            raise ConfigError([f"{given[0]}: only used with --executor slurm (got --executor {args.executor})"])
    return runner.run_grid(grid, executor=args.executor, max_parallel=args.max_parallel, only=args.only,
                           slurm=slurm, wait=not args.no_wait, pin=args.pin)


# ----------------------------------------------------------------------------------------- status


def _status(args) -> int:
    from launch import status as status_lib

    grid = _load(args)
    statuses = status_lib.grid_status(grid)
    counts = status_lib.counts(statuses)
    strays = status_lib.strays(grid)
    if args.json:
        print(json.dumps({"name": grid.spec.name, "grid_dir": str(grid.spec.grid_dir), "counts": counts,
                          "runs": [item.to_dict() for item in statuses], "not_in_plan": strays}, indent=2))
        return 0
    print(f"grid {grid.spec.name} ({grid.spec.kind}): run dirs {grid.spec.grid_dir}")
    rows = [["run_id", "status", "step", "eval loss", "wall", "lr", "fit", "detail"]]
    for item in statuses:
        step = f"{item.step if item.step is not None else '-'}/{item.planned_steps}"
        loss = f"{item.final_eval_loss:.4f}" if item.final_eval_loss is not None else "-"
        wall = format_duration(item.wall_seconds) if item.wall_seconds is not None else "-"
        rate = (plan_lib.format_number(item.learning_rate) if item.learning_rate is not None
                else f"transferred from {item.lr_transfer}")
        rows.append([item.run_id, item.status, step, loss, wall, rate,
                     item.fit or "-", item.detail])
    print(_table(rows, right={2, 3, 4, 5}))
    print(f"{len(statuses)} runs: " + ", ".join(f"{count} {name}" for name, count in counts.items()))
    if strays:
        print(f"not in this plan (an older spec?), yet read by analysis of {grid.spec.grid_dir}: {', '.join(strays)}")
    return 0


# ----------------------------------------------------------------------------------------- export


def _export(args) -> int:
    from common.files import atomic_write
    from common.validation import output_file
    from launch import export

    if args.out_dir is not None:
        raise ConfigError(["--out-dir: the pods write under --mount (the volume's path in each pod)"])
    if args.output is not None and (problems := output_file("--output", args.output)):
        raise ConfigError(problems)
    grid = plan_lib.load(args.spec, args.mount)
    text = export.gke_manifest(grid, image=args.image, spec_path=args.spec_path or args.spec, claim=args.claim,
                               mount=args.mount, namespace=args.namespace, max_parallel=args.max_parallel,
                               service_account=args.service_account, accelerator=args.accelerator,
                               stage=args.stage)
    if args.output is None:
        print(text, end="")
    else:
        atomic_write(args.output, text)
        print(f"wrote {args.output}: {text.count('kind: Job')} Indexed Job(s) for {len(grid.runs)} runs",
              file=sys.stderr)
    return 0
