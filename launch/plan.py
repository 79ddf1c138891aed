"""Grid planning: a grid spec (YAML) becomes a list of fully resolved, validated runs. No compute, no jax.

A spec names a base config, overrides for every run, a kind and that kind's axes:

- `isoflop`   FLOP budgets C × model sizes; each cell trains under `budget.flops = C` (one convention),
              and cells whose tokens per parameter D/N fall outside `tokens_per_param`, or that need
              fewer than `min_steps` steps, are dropped with the reason (Hoffmann et al. 2022, approach 2).
- `overtrain` model sizes × token multipliers M = D/N (`budget.token_multiplier`; Gadre et al. 2024). By
              default (`branches: true`) as WSD cooldown branches (Hägele et al. 2024; train/branches.py):
              one warmup–stable run per size (`stable-<model>`, role stable) and a decay branch per M that
              starts from its checkpoint; the grid total counts the shared prefix once, each branch's own
              FLOPs and summary the whole D.
- `sweep`     the cartesian product of arbitrary overrides at the base budget (an architecture sweep).

isoflop and overtrain grids may sweep the peak learning rate (`lr_sweep: {rates: [...]}` or `{min, max,
count}`, log-spaced): every cell is trained at each rate (`-lr<rate>` run ids, one `run.lr_sweep` group per
cell), and fits keep each group's lowest final eval loss (common/fit_points.py). Under μP, `transfer:
smallest` sweeps only the smallest width of each column of the grid and trains the larger sizes at the rate
it selects, once it has completed (`with_transferred_rates`). `resources:` says what each run needs on a
cluster (SLURM through submitit, GKE manifests from launch/export.py).

Model sizes are a list of presets/overrides (`models`) or a ladder generated at a fixed aspect ratio
(`ladder`). Every run gets run.experiment = the grid's name and a run_id that describes its cell
(`C3e13-d128-l4`, `M20-d64-l2`, `attention-gqa_ffn-gelu`), so its directory is out_dir/name/run_id.

The YAML is read into typed frozen dataclasses (one per kind, so a key of another kind is an unknown key
with a did-you-mean) through `common.validation.build`, then resolved into a `GridSpec`: every problem is
reported on its own line naming the field and what is allowed, before any run starts.
"""

from __future__ import annotations

import copy
import dataclasses
import fractions
import itertools
import math
import pathlib
import re
import typing
from collections.abc import Sequence

from common import fit_points
from common.run_contract import RunSummary
from common.validation import (
    ConfigError,
    build,
    coerce,
    name_component,
    one_of,
    output_directory,
    positive,
)
from common.vocabulary import BUDGET_FLOP_CONVENTIONS, PARAM_KINDS
from modeling.accounting import param_counts
from train import branches as branches_lib
from train import budget as budget_lib
from train import config as config_lib
from train.config import CONFIG_ROOT, MAX_SEED, Config
from train.lengths import warmup_steps, wsd_overrun

KINDS = ("isoflop", "overtrain", "sweep")
# Achieved FLOP/s is counted like the trainer's MFU: Hoffmann et al.'s count covers all the matmul work.
RATE_CONVENTION = "chinchilla"
GRID_DIR = "_grid"  # out_dir/name/_grid: resolved configs, logs, launcher state (no summary.json inside)
# Fields the grid sets in every run (experiment = name, run_id per cell, out_dir from the spec or --out-dir).
GRID_SET_FIELDS = ("run.experiment", "run.run_id", "run.out_dir", "run.lr_sweep", "run.lr_transfer",
                   "run.branch_points", "run.branch_from")
LR_TRANSFERS = ("smallest",)  # lr_sweep.transfer
MAX_SWEEP_RATES = 64  # a log-spaced range longer than this is a typo (count: 1000)
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


# ------------------------------------------------------------------------------------ the YAML, typed


@dataclasses.dataclass(frozen=True)
class Resources:
    """`resources:` what each run needs on a cluster: submitit's SLURM parameters, and the GKE pod's."""

    nodes: int = 1
    tasks_per_node: int = 1  # processes per node (one per GPU for multi-process JAX)
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    timeout_min: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines run before each job (e.g. 'module load cuda')
    env: dict | None = None  # environment variables of every run: NAME: value


@dataclasses.dataclass(frozen=True)
class SpecFields:
    """The keys every grid kind has, as written in the YAML."""

    kind: str = ""
    name: str | None = None  # default: the spec file's stem
    description: str = ""
    base: str | None = None  # a config YAML, next to the spec or under configs/
    overrides: typing.Any = None  # a mapping {dotted.key: value} or a list of 'dotted.key=value'
    out_dir: str | None = None  # default: the base config's run.out_dir
    seeds: tuple[int, ...] | None = None
    min_steps: int = 1
    resources: Resources | None = None


@dataclasses.dataclass(frozen=True)
class LrSweep:
    """`lr_sweep:` the peak learning rates each cell is trained at: `rates`, or `count` rates log-spaced
    from `min` to `max` (both included). Fits keep each cell's lowest final eval loss. `transfer: smallest`
    (μP only): only the smallest width of each column is swept; the larger sizes take its best rate."""

    rates: tuple[float, ...] | None = None
    min: float | None = None
    max: float | None = None
    count: int | None = None
    transfer: str | None = None


@dataclasses.dataclass(frozen=True)
class TokensPerParam:
    """`tokens_per_param:` the window of D/N an isoflop grid keeps; cells outside it are dropped."""

    min: float | None = None
    max: float | None = None


@dataclasses.dataclass(frozen=True)
class SizedFields(SpecFields):
    """The keys of the kinds that train model sizes under a budget axis."""

    convention: str | None = None  # default: the base config's budget.convention
    params: str = "non_embedding"  # which parameter count is N in D/N
    models: tuple[typing.Any, ...] | None = None  # each a preset name or a mapping (ModelEntry)
    ladder: dict | None = None  # a Ladder, parsed by `parse_ladder` (its ratios may be fractions like '8/3')
    lr_sweep: LrSweep | None = None


@dataclasses.dataclass(frozen=True)
class IsoflopFields(SizedFields):
    budgets: tuple[float, ...] | None = None
    tokens_per_param: TokensPerParam | None = None


@dataclasses.dataclass(frozen=True)
class OvertrainFields(SizedFields):
    token_multipliers: tuple[float, ...] | None = None
    branches: bool = True  # WSD cooldown branches off one stable run per size (module docstring)


@dataclasses.dataclass(frozen=True)
class SweepFields(SpecFields):
    axes: dict | None = None  # dotted.key: [values], or name: {label: {dotted.key: value, ...}}


KIND_FIELDS = {"isoflop": IsoflopFields, "overtrain": OvertrainFields, "sweep": SweepFields}
KIND_AXIS = {"isoflop": ("budgets", "budget.flops", "C", "budget_flops",
                         "a list of FLOP budgets, e.g. [1e12, 3e12, 1e13]"),
             "overtrain": ("token_multipliers", "budget.token_multiplier", "M", "token_multiplier",
                           "a list of D/N, e.g. [5, 20, 80]")}


@dataclasses.dataclass(frozen=True)
class Ladder:
    """`ladder:` model sizes at a fixed aspect ratio d_model / n_layers (see `ladder_models`)."""

    d_model: tuple[int, ...] | None = None
    n_layers: tuple[int, ...] | None = None
    aspect_ratio: fractions.Fraction = fractions.Fraction(32)
    head_dim: int = 32
    ffn_ratio: fractions.Fraction = fractions.Fraction(8, 3)
    ffn_multiple: int = 32


_LADDER_RATIOS = ("aspect_ratio", "ffn_ratio")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One `models:` entry as written: a preset, overrides on top of it, a label for run ids."""

    preset: str | None = None
    name: str | None = None
    overrides: typing.Any = None  # as SpecFields.overrides


# ----------------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One model size of a grid: a label for run ids and the config tree pieces that make it."""

    label: str
    preset: pathlib.Path | None
    overrides: dict  # dotted key -> value


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid before it is resolved: its run id, what it varies, and its overrides."""

    run_id: str
    coords: dict  # what this cell varies, e.g. {"budget_flops": 1e12, "model": "d64-l2"}
    preset: pathlib.Path | None
    overrides: tuple[dict, ...]  # applied in order after the grid's own overrides


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    run_id: str
    coords: dict
    config: Config
    budget: budget_lib.BudgetPlan
    params: dict  # param_counts of the model
    params_key: str  # which count is "N" for D/N
    role: str = "run"  # run | stable (a WSD stable phase, not a fit point) | branch (common.run_contract.ROLES)
    parent: str | None = None  # a branch: the run id of its stable run
    prefix_steps: int = 0  # a branch: the steps it shares with its stable run (trained once, by the stable run)
    waits_for: tuple[str, ...] = ()  # runs that must complete first: a branch's stable run, a transfer's sweep
    lr_pending: bool = False  # a transferred rate not resolved yet: optimizer.learning_rate is a placeholder

    @property
    def n_params(self) -> int:
        return self.params[self.params_key]

    @property
    def tokens(self) -> int:
        return self.budget.tokens

    @property
    def steps(self) -> int:
        return self.budget.steps

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.n_params

    @property
    def flops(self) -> dict[str, float]:
        return self.budget.flops

    @property
    def added_steps(self) -> int:
        """The steps this run adds to the grid: all of them, or a branch's decay only."""
        return self.steps - self.prefix_steps

    @property
    def added_flops(self) -> dict[str, float]:
        return self.budget.flops_after(self.added_steps * self.budget.tokens_per_step)

    @property
    def warmup(self) -> tuple[int, str]:
        return warmup_steps(self.config, self.steps)

    @property
    def learning_rate(self) -> float | None:
        """The peak rate; None while it is to be transferred from a sweep that has not completed."""
        return None if self.lr_pending else self.config.optimizer.learning_rate

    @property
    def learning_rate_label(self) -> str:
        transfer = self.config.run.lr_transfer
        return f"transferred from {transfer}" if self.lr_pending else format_number(self.learning_rate)

    @property
    def learning_rate_source(self) -> str:
        group, transfer = self.config.run.lr_sweep, self.config.run.lr_transfer
        if transfer is not None:
            return f"transferred from lr sweep {transfer}: the rate of its lowest final eval loss (μP)"
        return "optimizer.learning_rate" if group is None else f"lr sweep {group}: fits keep its lowest eval loss"

    def to_dict(self) -> dict:
        model = self.config.model
        warmup, warmup_source = self.warmup
        return {
            "run_id": self.run_id,
            "coords": dict(self.coords),
            "d_model": model.d_model,
            "n_layers": model.n_layers,
            "params": dict(self.params),
            "params_key": self.params_key,
            "n_params": self.n_params,
            "tokens": self.tokens,
            "tokens_per_param": self.tokens_per_param,
            "steps": self.steps,
            "budget_convention": self.budget.convention,
            "budget_flops": self.budget.budget_flops,
            "flops": dict(self.flops),
            "role": self.role,
            "parent": self.parent,
            "prefix_steps": self.prefix_steps,
            "added_steps": self.added_steps,
            "added_flops": self.added_flops,
            "learning_rate": self.learning_rate,
            "learning_rate_source": self.learning_rate_source,
            "lr_sweep": self.config.run.lr_sweep,
            "lr_transfer": self.config.run.lr_transfer,
            "waits_for": list(self.waits_for),
            "warmup_steps": warmup,
            "warmup_source": f"{self.config.optimizer.warmup_rule}: {warmup_source}",
        }


@dataclasses.dataclass(frozen=True)
class Dropped:
    run_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A checked spec: every path found, every axis parsed, every model size labelled."""

    path: pathlib.Path
    name: str
    kind: str
    description: str
    base: pathlib.Path
    overrides: dict  # dotted key -> value, for every run
    out_dir: pathlib.Path
    seeds: tuple[int, ...] | None
    min_steps: int
    values: tuple[float, ...] = ()  # isoflop: FLOP budgets; overtrain: token multipliers
    convention: str | None = None
    params: str = "non_embedding"
    models: tuple[ModelChoice, ...] = ()  # isoflop/overtrain, labelled
    tokens_per_param: TokensPerParam = TokensPerParam()
    axes: tuple[tuple[str, tuple[tuple[str, dict], ...]], ...] = ()  # sweep: (axis, ((label, overrides), ...))
    learning_rates: tuple[float, ...] = ()  # lr_sweep: every cell at each of these peak rates
    lr_transfer: str | None = None  # lr_sweep.transfer: only the smallest width swept (with_transferred_rates)
    branches: bool = False  # overtrain: WSD branches off a stable run per size
    resources: Resources = Resources()

    @property
    def grid_dir(self) -> pathlib.Path:
        return self.out_dir / self.name

    @property
    def state_dir(self) -> pathlib.Path:
        return self.grid_dir / GRID_DIR


@dataclasses.dataclass(frozen=True)
class GridPlan:
    spec: GridSpec
    runs: tuple[PlannedRun, ...]
    dropped: tuple[Dropped, ...]
    notes: tuple[str, ...]

    def run_dir(self, run: PlannedRun | str) -> pathlib.Path:
        return self.spec.grid_dir / (run if isinstance(run, str) else run.run_id)

    def config_path(self, run: PlannedRun | str) -> pathlib.Path:
        return self.spec.state_dir / "configs" / f"{run if isinstance(run, str) else run.run_id}.yaml"

    def run(self, run_id: str) -> PlannedRun:
        return next(run for run in self.runs if run.run_id == run_id)

    def totals(self) -> dict:
        """What the grid trains: a branch's shared prefix counts once (in its stable run). `flops_standalone`:
        what the runs that are fit points would cost trained one by one (no branches)."""
        points = [run for run in self.runs if run.role != "stable"]
        return {
            "runs": len(self.runs),
            "dropped": len(self.dropped),
            "tokens": sum(run.added_steps * run.budget.tokens_per_step for run in self.runs),
            "steps": sum(run.added_steps for run in self.runs),
            "flops": {name: sum(run.added_flops[name] for run in self.runs) for name in BUDGET_FLOP_CONVENTIONS},
            "flops_standalone": {name: sum(run.flops[name] for run in points) for name in BUDGET_FLOP_CONVENTIONS},
        }

    def to_dict(self) -> dict:
        spec = self.spec
        return {
            "name": spec.name, "kind": spec.kind, "spec": str(spec.path), "base": str(spec.base),
            "grid_dir": str(spec.grid_dir), "description": spec.description,
            "runs": [run.to_dict() for run in self.runs],
            "dropped": [dataclasses.asdict(item) for item in self.dropped],
            "notes": list(self.notes),
            "totals": self.totals(),
        }


# ------------------------------------------------------------------------------------ formatting


def format_number(value: float) -> str:
    """Compact and deterministic: 2.5e11 -> '2.5e11', 1e-05 -> '1e-5', 20.0 -> '20', 0.5 -> '0.5'."""
    text = f"{value:.4g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def format_ratio(value: float) -> str:
    """Tokens per parameter for people: 1,941 / 46.4 / 0.376."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _value_label(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return format_number(value)
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "+".join(_value_label(item) for item in value) or "empty"
    return str(value)


def safe_run_id(text: str) -> str:
    return _RUN_ID_UNSAFE.sub("_", text).strip("_") or "run"


# ---------------------------------------------------------------------------------- field parsers


def _ratio(value, field: str, problems: list) -> fractions.Fraction | None:
    """A positive ratio: a finite number or an exact fraction string such as '8/3'."""
    if isinstance(value, str) and "/" in value:
        try:
            ratio = fractions.Fraction(value.replace(" ", ""))
        except (ValueError, ZeroDivisionError):
            problems.append(f"{field}: {value!r} is not a number or a fraction like '8/3'")
            return None
    else:
        found: list[str] = []
        number = coerce(value, float, field, found)
        if found:
            problems += found
            return None
        ratio = fractions.Fraction(number).limit_denominator(10**6)
    if ratio <= 0:
        problems.append(f"{field}: {value!r} must be > 0")
        return None
    return ratio


def _positive_list(values: tuple, field: str, problems: list) -> tuple:
    """A non-empty list of numbers > 0 without repeats (already typed by `build`)."""
    if not values:
        problems.append(f"{field}: expected a non-empty list, got []")
        return ()
    found = [problem for i, value in enumerate(values) for problem in positive(f"{field}[{i}]", value)]
    problems += found
    if not found and len(set(values)) != len(values):
        problems.append(f"{field}: {list(values)} repeats a value")
    return tuple(values)


def _overrides(value, field: str, problems: list) -> dict:
    """Overrides as a mapping {dotted.key: value} or a list of 'dotted.key=value' strings (values safe YAML)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        bad = [key for key in value if not isinstance(key, str) or not key]
        if bad:
            problems.append(f"{field}: keys must be dotted field names like model.d_model, got {bad[0]!r}")
            return {}
        return dict(value)
    if isinstance(value, (list, tuple)):
        parsed = {}
        for i, item in enumerate(value):
            if not isinstance(item, str):
                problems.append(f"{field}[{i}]: {item!r} must look like section.field=value")
                continue
            try:
                key, parsed[key] = config_lib.parse_override(item, f"{field}[{i}]")
            except ConfigError as err:
                problems += err.problems
        return parsed
    problems.append(f"{field}: expected a mapping of dotted.key: value (or a list of key=value), got {value!r}")
    return {}


def _find_config(target: str, relative_to: pathlib.Path) -> pathlib.Path | None:
    """The first of target[.yaml] next to the spec, under configs/, under configs/models/ that exists (a
    directory too, so the problem can say it is one)."""
    names = [target] if target.endswith((".yaml", ".yml")) else [target, f"{target}.yaml"]
    for root in (relative_to, CONFIG_ROOT, CONFIG_ROOT / "models"):
        for name in names:
            if (root / name).exists():
                return root / name
    return None


# ---------------------------------------------------------------------------------- the spec


def load_spec(path: str | pathlib.Path, out_dir: str | pathlib.Path | None = None) -> GridSpec:
    """Read and check a grid spec (the configs it makes are checked by `plan`); `out_dir` is --out-dir."""
    path = pathlib.Path(path)
    raw = config_lib.load_yaml_tree(path, "spec", "name, kind, base, ...")  # a spec may `extend` another
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(one_of("kind", kind, KINDS))
    problems: list[str] = []
    fields = build(KIND_FIELDS[kind], raw, "", problems)
    if problems:  # the checks below need the types right
        raise ConfigError(problems)
    name = fields.name if fields.name is not None else path.stem
    problems += name_component("name", name)
    base = _base(fields.base, path, problems)
    overrides = _overrides(fields.overrides, "overrides", problems)
    for key in overrides:
        if key in GRID_SET_FIELDS:
            problems.append(f"overrides.{key}: set by the grid (experiment = name, run_id per cell, out_dir "
                            "from the spec's out_dir or --out-dir, lr_sweep from lr_sweep, branch fields from "
                            "branches)")
    seeds = _seeds(fields.seeds, problems)
    problems += positive("min_steps", fields.min_steps)
    axes = _kind_axes(kind, fields, path.parent, base, overrides, problems)
    resolved_out_dir = _out_dir(out_dir, fields.out_dir, base, problems)
    resources = _resources(fields.resources, problems)
    if problems:
        raise ConfigError(problems)
    return GridSpec(path=path, name=name, kind=kind, description=fields.description.strip(), base=base,
                    overrides=overrides, out_dir=resolved_out_dir, seeds=seeds, min_steps=fields.min_steps,
                    resources=resources, **axes)


def _resources(resources: Resources | None, problems: list) -> Resources:
    """Counts >= 1 (GPUs >= 0), sizes and the time limit > 0, env a mapping of NAME: string."""
    resources = resources or Resources()
    for field in ("nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min"):
        if getattr(resources, field) is not None:
            problems += positive(f"resources.{field}", getattr(resources, field))
    if resources.gpus_per_node < 0:
        problems.append(f"resources.gpus_per_node: {resources.gpus_per_node} must be >= 0")
    for key, value in (resources.env or {}).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            problems.append(f"resources.env: {key!r} is not an environment variable name")
        elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(f"resources.env.{key}: expected a string or a number, got {value!r}")
    return dataclasses.replace(resources, env={key: str(value) for key, value in (resources.env or {}).items()})


def _learning_rates(sweep: LrSweep | None, problems: list) -> tuple[float, ...]:
    """The sweep's rates: listed, or `count` log-spaced from min to max; () without a sweep."""
    if sweep is None:
        return ()
    ranged = (sweep.min, sweep.max, sweep.count)
    if (sweep.rates is None) == all(value is None for value in ranged):
        problems.append("lr_sweep: give either rates (a list) or min, max and count (log-spaced)")
        return ()
    if sweep.rates is not None:
        return _positive_list(sweep.rates, "lr_sweep.rates", problems)
    if any(value is None for value in ranged):
        problems.append("lr_sweep: a range needs all of min, max and count")
        return ()
    found = positive("lr_sweep.min", sweep.min) + positive("lr_sweep.max", sweep.max)
    if not found and sweep.min >= sweep.max:
        found.append(f"lr_sweep: min {sweep.min} must be below max {sweep.max}")
    if not 2 <= sweep.count <= MAX_SWEEP_RATES:
        found.append(f"lr_sweep.count: {sweep.count} must be between 2 and {MAX_SWEEP_RATES}")
    problems += found
    if found:
        return ()
    ratio = math.log(sweep.max / sweep.min) / (sweep.count - 1)
    return tuple(float(f"{sweep.min * math.exp(ratio * i):.3g}") for i in range(sweep.count))


def _base(value: str | None, spec_path: pathlib.Path, problems: list) -> pathlib.Path | None:
    if not value:
        problems.append(f"base: expected the path of a config YAML (e.g. tiny.yaml), got {value!r}")
        return None
    found = _find_config(value, spec_path.parent)
    if found is None:
        problems.append(f"base: {value!r} not found next to {spec_path} or under {CONFIG_ROOT}")
    elif found.is_dir():
        problems.append(f"base: {value!r} is a directory, not a config YAML")
        found = None
    return found


def _seeds(seeds: tuple[int, ...] | None, problems: list) -> tuple[int, ...] | None:
    if seeds is None:
        return None
    if not seeds:
        problems.append("seeds: expected a non-empty list of integers, got []")
    for i, seed in enumerate(seeds):
        if not 0 <= seed <= MAX_SEED:
            problems.append(f"seeds[{i}]: {seed} must be between 0 and {MAX_SEED}")
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds: {list(seeds)} repeats a seed")
    return seeds


def _out_dir(given, in_spec: str | None, base: pathlib.Path | None, problems: list) -> pathlib.Path | None:
    """--out-dir, else the spec's out_dir, else the base config's run.out_dir; checked as a directory to write."""
    if given is not None:
        field, value = "--out-dir", given
    elif in_spec is not None:
        field, value = "out_dir", in_spec
    elif base is not None:
        run = config_lib.load_yaml_tree(base).get("run")
        value = run.get("out_dir", config_lib.RunConfig.out_dir) if isinstance(run, dict) else config_lib.RunConfig.out_dir
        field = f"run.out_dir of {base}"
    else:
        return None
    found = output_directory(field, value)
    problems += found
    return None if found else pathlib.Path(value)


def _kind_axes(kind: str, fields: SpecFields, spec_dir: pathlib.Path, base: pathlib.Path | None,
               overrides: dict, problems: list) -> dict:
    """The GridSpec fields of the kind's axes: budget values and model sizes, or sweep axes."""
    if kind == "sweep":
        if not fields.axes:
            problems.append("axes: required for kind=sweep: a mapping of dotted.key: [values] "
                            "or name: {label: {dotted.key: value, ...}}")
            return {}
        return {"axes": tuple(sweep_axes(fields.axes, problems))}
    axis, *_, example = KIND_AXIS[kind]
    values = getattr(fields, axis)
    if values is None:
        problems.append(f"{axis}: required for kind={kind} ({example})")
    else:
        values = _positive_list(values, axis, problems)
    if fields.convention is not None:
        problems += one_of("convention", fields.convention, BUDGET_FLOP_CONVENTIONS)
    problems += one_of("params", fields.params, PARAM_KINDS)
    models = _models(fields, spec_dir, problems)
    if base is not None and not problems:  # labels read the base config and presets
        models = [dataclasses.replace(m, label=_model_label(base, overrides, m)) for m in models]
    return {"values": tuple(values or ()), "convention": fields.convention, "params": fields.params,
            "models": tuple(models), "tokens_per_param": _tokens_per_param(fields, problems),
            "learning_rates": _learning_rates(fields.lr_sweep, problems),
            "lr_transfer": _lr_transfer(fields, problems), "branches": getattr(fields, "branches", False)}


def _lr_transfer(fields: SizedFields, problems: list) -> str | None:
    """lr_sweep.transfer: a known way, and not with WSD branches (one stable run serves every token
    multiplier of a size, while each multiplier's sweep may pick another rate)."""
    transfer = fields.lr_sweep.transfer if fields.lr_sweep is not None else None
    if transfer is None:
        return None
    found = one_of("lr_sweep.transfer", transfer, LR_TRANSFERS)
    if not found and getattr(fields, "branches", False):
        found.append("lr_sweep.transfer: not with WSD branches (a stable run serves every token multiplier, whose "
                     "sweeps may pick different rates); set branches: false")
    problems += found
    return None if found else transfer


def _tokens_per_param(fields: SizedFields, problems: list) -> TokensPerParam:
    """isoflop's D/N window (none for overtrain): each end > 0 when set, min <= max."""
    bounds = getattr(fields, "tokens_per_param", None) or TokensPerParam()
    for key in ("min", "max"):
        if getattr(bounds, key) is not None:
            problems += positive(f"tokens_per_param.{key}", getattr(bounds, key))
    if bounds.min is not None and bounds.max is not None and bounds.min > bounds.max:
        problems.append(f"tokens_per_param: min {bounds.min} exceeds max {bounds.max}")
    return bounds


def _models(fields: SizedFields, spec_dir: pathlib.Path, problems: list) -> list[ModelChoice]:
    if (fields.models is None) == (fields.ladder is None):
        problems.append("models: set exactly one of models (a list of presets/overrides) or ladder "
                        f"(generated sizes){' (got both)' if fields.models is not None else ''}")
        return []
    if fields.ladder is not None:
        ladder = parse_ladder(fields.ladder, problems)
        return ladder_models(ladder, problems) if ladder is not None else []
    if not fields.models:
        problems.append("models: expected a non-empty list of presets (e.g. ladder-2) or mappings")
    return listed_models(fields.models, spec_dir, problems)


# ----------------------------------------------------------------------------------- model sizes


def parse_ladder(raw: dict, problems: list) -> Ladder | None:
    """A `ladder:` mapping as a Ladder; its ratios may be numbers or exact fractions like '8/3'."""
    before = len(problems)
    ratios = {key: raw[key] for key in _LADDER_RATIOS if key in raw}
    ladder = build(Ladder, {key: value for key, value in raw.items() if key not in ratios}, "ladder", problems)
    ladder = dataclasses.replace(ladder, **{key: _ratio(value, f"ladder.{key}", problems)
                                            for key, value in ratios.items()})
    problems += positive("ladder.head_dim", ladder.head_dim) + positive("ladder.ffn_multiple", ladder.ffn_multiple)
    axes = [axis for axis in ("d_model", "n_layers") if getattr(ladder, axis) is not None]
    if not axes:
        problems.append("ladder: set d_model (a list of widths), n_layers (a list of depths), or both (as pairs)")
    if len(axes) == 2 and len(ladder.d_model) != len(ladder.n_layers):
        problems.append(f"ladder: d_model and n_layers pair up one to one, got {len(ladder.d_model)} widths and "
                        f"{len(ladder.n_layers)} depths")
    for axis in axes:
        values = getattr(ladder, axis)
        if not values:
            problems.append(f"ladder.{axis}: expected a non-empty list, got []")
        problems += [problem for i, value in enumerate(values) for problem in positive(f"ladder.{axis}[{i}]", value)]
    return ladder if len(problems) == before else None


def ladder_models(ladder: Ladder, problems: list) -> list[ModelChoice]:
    """Model sizes at a fixed aspect ratio d_model / n_layers, like configs/models/ladder-*.yaml.

    Either `d_model: [...]` (n_layers = d_model / aspect_ratio, rounded half up, at least 1),
    `n_layers: [...]` (d_model = aspect_ratio × n_layers rounded to a multiple of head_dim), or both, paired
    one to one (sizes spaced evenly in N, which one aspect ratio cannot give at a few layers).
    n_heads = d_model / head_dim; d_ff = ffn_ratio × d_model rounded up to a multiple of ffn_multiple.
    """
    aspect, head_dim = ladder.aspect_ratio, ladder.head_dim
    shapes = []
    for i, value in enumerate(ladder.d_model if ladder.d_model is not None else ladder.n_layers):
        if ladder.d_model is not None:
            d_model = value
            n_layers = (ladder.n_layers[i] if ladder.n_layers is not None
                        else max(1, math.floor(value / aspect + fractions.Fraction(1, 2))))
            if d_model % head_dim:
                problems.append(f"ladder.d_model[{i}]: {d_model} is not a multiple of ladder.head_dim={head_dim}")
                continue
        else:
            n_layers = value
            d_model = max(1, math.floor(aspect * value / head_dim + fractions.Fraction(1, 2))) * head_dim
        d_ff = math.ceil(ladder.ffn_ratio * d_model / ladder.ffn_multiple) * ladder.ffn_multiple
        shapes.append(ModelChoice(
            label=f"d{d_model}-l{n_layers}", preset=None,
            overrides={"model.d_model": d_model, "model.n_layers": n_layers,
                       "model.n_heads": d_model // head_dim, "model.d_ff": d_ff},
        ))
    return shapes


def listed_models(models: tuple, spec_dir: pathlib.Path, problems: list) -> list[ModelChoice]:
    """`models:` entries: a preset name/path, or {preset?, name?, overrides?}. Unnamed ones get d<d>-l<l>."""
    choices = []
    for i, raw in enumerate(models):
        where = f"models[{i}]"
        if isinstance(raw, str):
            raw = {"preset": raw}
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a preset name (e.g. ladder-2) or a mapping with preset/name/overrides,"
                            f" got {raw!r}")
            continue
        found: list[str] = []
        entry = build(ModelEntry, raw, where, found)
        preset = None
        if not found and entry.preset is not None:
            preset = _find_config(entry.preset, spec_dir)
            if preset is None:
                found.append(f"{where}.preset: {entry.preset!r} not found next to the grid, under "
                             f"{CONFIG_ROOT} or {CONFIG_ROOT / 'models'}")
            elif preset.is_dir():
                found.append(f"{where}.preset: {entry.preset!r} is a directory, not a config YAML")
        overrides = _overrides(entry.overrides, f"{where}.overrides", found) if not found else {}
        if not found and preset is None and not overrides:
            found.append(f"{where}: give a preset, overrides, or both")
        if not found and entry.name is not None:
            found += name_component(f"{where}.name", entry.name)
        problems += found
        if not found:
            choices.append(ModelChoice(label=entry.name or "", preset=preset, overrides=overrides))
    return choices


def _model_label(base: pathlib.Path, grid_overrides: dict, choice: ModelChoice) -> str:
    """d<d_model>-l<n_layers> of the resolved model when the entry has no name."""
    if choice.label:
        return choice.label
    model = _tree(base, choice.preset, (grid_overrides, choice.overrides)).get("model")
    model = {**dataclasses.asdict(config_lib.ModelConfig()), **(model if isinstance(model, dict) else {})}
    return f"d{model['d_model']}-l{model['n_layers']}"


def sweep_axes(axes: dict, problems: list) -> list[tuple[str, tuple[tuple[str, dict], ...]]]:
    """Each axis as (name, ((label, overrides), ...)): `key.sub: [v1, v2]` or `name: {label: {key: value}}`."""
    result = []
    for axis, values in axes.items():
        if isinstance(axis, str) and "." in axis and isinstance(values, list) and values:
            leaf = axis.split(".")[-1]
            result.append((axis, tuple((f"{leaf}-{_value_label(value)}", {axis: value}) for value in values)))
        elif isinstance(axis, str) and isinstance(values, dict) and values:
            options = []
            for label, overrides in values.items():
                if not isinstance(overrides, dict):
                    problems.append(f"axes.{axis}.{label}: expected a mapping of dotted.key: value, got {overrides!r}")
                    continue
                options.append((f"{axis}-{label}", _overrides(overrides, f"axes.{axis}.{label}", problems)))
            result.append((axis, tuple(options)))
        else:
            problems.append(f"axes.{axis}: a dotted key (e.g. model.ffn) needs a non-empty list of values; a named "
                            f"axis needs a mapping of label: {{dotted.key: value}}; got {values!r}")
    return result


# ----------------------------------------------------------------------------------- the cells


def cells(spec: GridSpec) -> list[Cell]:
    """Every cell of the grid, in a deterministic order (budget/multiplier-major, then model, then seed)."""
    found = []
    if spec.kind in KIND_AXIS:
        _, field, prefix, coordinate, _ = KIND_AXIS[spec.kind]
        for value, model in itertools.product(spec.values, spec.models):
            # isoflop: budget.flops = C per cell; overtrain: budget.token_multiplier = M (D = M·N)
            budget_overrides = {"budget.flops": None, "budget.tokens": None, "budget.token_multiplier": None,
                                field: value}
            if spec.kind == "overtrain":
                budget_overrides["budget.params"] = spec.params
            if spec.convention:
                budget_overrides["budget.convention"] = spec.convention
            found.append(Cell(f"{prefix}{format_number(value)}-{model.label}",
                              {coordinate: value, "model": model.label},
                              model.preset, (model.overrides, budget_overrides)))
    else:
        names = [name for name, _ in spec.axes]
        for combination in itertools.product(*(options for _, options in spec.axes)):
            run_id = "_".join(label for label, _ in combination)
            coords = {name: label.split("-", 1)[1] if "-" in label else label
                      for name, (label, _) in zip(names, combination)}
            found.append(Cell(run_id, coords, None, tuple(overrides for _, overrides in combination)))
    if spec.seeds is not None and len(spec.seeds) > 1:
        found = [Cell(f"{cell.run_id}-s{seed}", {**cell.coords, "seed": seed}, cell.preset,
                      cell.overrides + ({"run.seed": seed},))
                 for cell in found for seed in spec.seeds]
    elif spec.seeds:
        found = [dataclasses.replace(cell, overrides=cell.overrides + ({"run.seed": spec.seeds[0]},)) for cell in found]
    found = [dataclasses.replace(cell, run_id=safe_run_id(cell.run_id)) for cell in found]
    if spec.learning_rates:  # each cell at each rate, one sweep group per cell
        found = [Cell(safe_run_id(f"{cell.run_id}-lr{format_number(rate)}"), {**cell.coords, "learning_rate": rate},
                      cell.preset, cell.overrides + ({"optimizer.learning_rate": rate, "run.lr_sweep": cell.run_id},))
                 for cell in found for rate in spec.learning_rates]
    return _distinct(found)


def _distinct(found: list[Cell]) -> list[Cell]:
    """The cells, refused if two share a run id (their run directories would collide)."""
    problems, seen = [], {}
    for cell in found:
        if cell.run_id in seen:
            problems.append(f"run_id: {cell.run_id!r} names two cells ({seen[cell.run_id]} and {cell.coords}); "
                            "give the models distinct `name`s")
        seen[cell.run_id] = cell.coords
    if problems:
        raise ConfigError(problems)
    return found


# ------------------------------------------------------------------------------------- resolving


def _tree(base: pathlib.Path, preset: pathlib.Path | None, overrides: tuple[dict, ...]) -> dict:
    """base < model preset < overrides (in order: the grid's, then the cell's)."""
    tree = config_lib.load_yaml_tree(base)
    if preset is not None:
        tree = config_lib.deep_merge(tree, config_lib.load_yaml_tree(preset))
    for layer in overrides:
        for key, value in layer.items():
            config_lib.set_field(tree, key, copy.deepcopy(value))
    return tree


def resolve(spec: GridSpec, cell: Cell) -> Config:
    """The cell's full, validated config, with experiment/run_id/out_dir set by the grid."""
    try:
        tree = _tree(spec.base, cell.preset, (spec.overrides, *cell.overrides))
        for key, value in zip(("run.experiment", "run.run_id", "run.out_dir"), (spec.name, cell.run_id,
                                                                              str(spec.out_dir))):
            config_lib.set_field(tree, key, value)
        return config_lib.from_dict(tree)
    except ConfigError as err:
        raise ConfigError([f"run {cell.run_id}: {problem}" for problem in err.problems]) from None


def plan(spec: GridSpec) -> GridPlan:
    """Resolve and validate every cell, compute its budget, and apply the kind's filters."""
    runs, dropped, problems = [], [], []
    for cell in cells(spec):
        try:
            config = resolve(spec, cell)
        except ConfigError as err:
            problems += err.problems
            continue
        try:
            budget = budget_lib.plan_for(config)
        except ConfigError as err:
            dropped.append(Dropped(cell.run_id, err.problems[0]))
            continue
        run = PlannedRun(cell.run_id, cell.coords, config, budget, param_counts(config.model), spec.params)
        reason = _drop_reason(spec, run)
        if reason:
            dropped.append(Dropped(cell.run_id, reason))
        else:
            runs.append(run)
    if problems:
        raise ConfigError(problems)
    if not runs:
        raise ConfigError([f"grid: every cell was dropped ({'; '.join(f'{d.run_id}: {d.reason}' for d in dropped)})"])
    if spec.lr_transfer:
        runs = with_transferred_rates(runs)
    if spec.branches:
        runs = with_stable_runs(spec, runs)
    return GridPlan(spec, tuple(runs), tuple(dropped), tuple(_notes(spec, runs)))


def _column(run: PlannedRun) -> tuple:
    """What a run shares with the other sizes it is compared with: every coordinate but the model and rate."""
    return tuple(sorted((key, value) for key, value in run.coords.items() if key not in ("model", "learning_rate")))


def _transfer_problems(runs: list[PlannedRun]) -> list[str]:
    """A rate transfers only under μP, and only within one μP family (one base width and head width)."""
    sp = [run.run_id for run in runs if run.config.model.parameterization != "mup"]
    if sp:
        return [f"lr_sweep.transfer: needs model.parameterization: mup in every run ({sp[0]} is sp); under SP the "
                "best rate moves with width, so every size is swept (docs/MUP.md)"]
    bases = {(run.config.model.mup_base_width, run.config.model.mup_base_head_dim) for run in runs}
    if len(bases) > 1:
        shown = ", ".join(f"{width}/{head}" for width, head in sorted(bases, key=str))
        return [f"lr_sweep.transfer: the runs' model.mup_base_width/mup_base_head_dim differ ({shown}); a rate "
                "transfers only within one μP family"]
    return []


def with_transferred_rates(runs: list[PlannedRun]) -> list[PlannedRun]:
    """lr_sweep.transfer=smallest: in each column, the sweep of the smallest width (then fewest parameters) is
    kept; every larger size becomes one run (its cell's id, no sweep group) at the rate that sweep selects,
    pending until the sweep has completed (`resolve_transfer`), and waiting for it as a branch waits for its
    stable run (launch/runner.py). The sweeps come first, then the transferred runs."""
    problems = _transfer_problems(runs)
    if problems:
        raise ConfigError(problems)
    columns: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        columns.setdefault(_column(run), []).append(run)
    sweeps, transferred = [], []
    for members in columns.values():
        source = min(members, key=lambda run: (run.config.model.d_model, run.n_params)).config.run.lr_sweep
        swept = tuple(run.run_id for run in members if run.config.run.lr_sweep == source)
        templates: dict[str, PlannedRun] = {}  # a larger size's sweep group -> its first rate's run
        for run in members:
            if run.config.run.lr_sweep == source:
                sweeps.append(run)
            else:
                templates.setdefault(run.config.run.lr_sweep, run)
        for cell, template in templates.items():
            tree = config_lib.to_dict(template.config)
            tree["run"].update(run_id=cell, lr_sweep=None, lr_transfer=source)
            coords = {key: value for key, value in template.coords.items() if key != "learning_rate"}
            transferred.append(dataclasses.replace(template, run_id=cell, coords=coords,
                                                   config=config_lib.from_dict(tree), waits_for=swept,
                                                   lr_pending=True))
    return sweeps + transferred


def resolve_transfer(run: PlannedRun, sweep: Sequence[RunSummary]) -> PlannedRun:
    """A transferred run at the rate its completed sweep selects (common/fit_points.py, as the fits do)."""
    group = run.config.run.lr_transfer
    best = fit_points.best_by_group(sweep).get(group)
    if best is None:
        raise ConfigError([f"run {run.run_id}: lr sweep {group} has no run with a finite final eval loss to "
                           "transfer a rate from"])
    tree = config_lib.to_dict(run.config)
    tree["optimizer"]["learning_rate"] = best.learning_rate
    return dataclasses.replace(run, config=config_lib.from_dict(tree), lr_pending=False)


def _stable_id(run: PlannedRun) -> str:
    """'stable-d32-l2-lr3e-3' for 'M20-d32-l2-lr3e-3': the run id without its token multiplier."""
    return "stable-" + run.run_id.split("-", 1)[1]


def with_stable_runs(spec: GridSpec, runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs as WSD branches, after one stable run per model (and seed, and rate) that trains their
    shared prefix once and keeps a checkpoint at every branch point (train/branches.py)."""
    groups: dict[str, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(_stable_id(run), []).append(run)
    stables, branched, problems = [], [], {}  # problem -> the runs that have it
    for stable_id, members in groups.items():
        points = {run.run_id: branches_lib.branch_step(run.config, run.steps) for run in members}
        first = members[0]
        try:
            stable = config_lib.from_dict(config_lib.to_dict(branches_lib.stable_config(
                first.config, stable_id, max(points.values()), first.budget.tokens_per_step,
                tuple(sorted(set(points.values()))))))
            stable_plan = budget_lib.plan_for(stable)
        except ConfigError as err:
            for problem in err.problems:
                problems.setdefault(problem, []).append(stable_id)
            continue
        stables.append(PlannedRun(stable_id, {**{key: value for key, value in first.coords.items()
                                               if key != "token_multiplier"}, "branches": len(members)},
                                  stable, stable_plan, first.params, first.params_key, role="stable"))
        for run in members:
            tree = config_lib.to_dict(run.config)
            tree["run"]["branch_from"] = str(spec.grid_dir / stable_id)
            try:
                config = config_lib.from_dict(tree)
            except ConfigError as err:
                for problem in err.problems:
                    problems.setdefault(problem, []).append(run.run_id)
                continue
            branched.append(dataclasses.replace(run, config=config, role="branch", parent=stable_id,
                                                prefix_steps=points[run.run_id], waits_for=(stable_id,)))
    if problems:
        raise ConfigError([f"branches ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}): {problem} "
                           "(or set branches: false)" for problem, ids in problems.items()])
    return stables + branched


def _drop_reason(spec: GridSpec, run: PlannedRun) -> str | None:
    bounds = spec.tokens_per_param
    if bounds.min is not None and run.tokens_per_param < bounds.min:
        return f"D/N = {format_ratio(run.tokens_per_param)} < tokens_per_param.min {format_number(bounds.min)}"
    if bounds.max is not None and run.tokens_per_param > bounds.max:
        return f"D/N = {format_ratio(run.tokens_per_param)} > tokens_per_param.max {format_number(bounds.max)}"
    if run.steps < spec.min_steps:
        return f"{run.steps} steps < min_steps {spec.min_steps}"
    return wsd_overrun(run.config.optimizer, run.warmup[0], run.steps)  # the trainer would refuse it


def _notes(spec: GridSpec, runs: list[PlannedRun]) -> list[str]:
    notes = []
    stables = [run for run in runs if run.role == "stable"]
    if stables:
        with_branches = sum(run.flops["6N"] for run in runs if run.role != "stable")
        grid = sum(run.added_flops["6N"] for run in runs)
        notes.append(f"{len(runs) - len(stables)} WSD branches off {len(stables)} stable runs: the grid trains "
                     f"{format_number(grid)} FLOPs (6N) instead of {format_number(with_branches)} as standalone runs "
                     f"({with_branches / grid:.2f}x)")
    rates = ', '.join(format_number(rate) for rate in spec.learning_rates)
    if spec.lr_transfer:
        transferred = [run for run in runs if run.config.run.lr_transfer is not None]
        notes.append(f"lr sweep, transferred (μP): the smallest width of each column at {len(spec.learning_rates)} "
                     f"peak rates ({rates}); {len(transferred)} larger runs train at their column's best rate once "
                     "its sweep has completed")
    elif spec.learning_rates:
        notes.append(f"lr sweep: every cell at {len(spec.learning_rates)} peak rates ({rates}); fits keep each cell's "
                     "lowest final eval loss")
    if spec.kind == "isoflop":
        for budget in spec.values:
            kept = {run.coords["model"] for run in runs if run.coords["budget_flops"] == budget}
            if len(kept) < 3:
                notes.append(f"budget {format_number(budget)} keeps {len(kept)} model size(s); an iso-FLOP "
                             "parabola (approach 2) needs at least 3")
    return notes


def load(path: str | pathlib.Path, out_dir: str | pathlib.Path | None = None) -> GridPlan:
    return plan(load_spec(path, out_dir))


# ------------------------------------------------------------------------------------- estimates


def estimate_seconds(run: PlannedRun, *, tokens_per_second: float | None = None,
                     flops_per_second: float | None = None, startup_seconds: float = 0.0) -> float | None:
    """Wall-time estimate of what the run trains itself (a branch: its decay): a flat tokens/s, or an achieved
    FLOP/s (chinchilla count, as MFU counts)."""
    if tokens_per_second:
        return startup_seconds + run.added_steps * run.budget.tokens_per_step / tokens_per_second
    if flops_per_second:
        return startup_seconds + run.added_flops[RATE_CONVENTION] / flops_per_second
    return None


__all__ = [
    "Cell",
    "Dropped",
    "GridPlan",
    "GridSpec",
    "KINDS",
    "PlannedRun",
    "RATE_CONVENTION",
    "cells",
    "estimate_seconds",
    "format_number",
    "format_ratio",
    "Ladder",
    "LrSweep",
    "Resources",
    "ModelChoice",
    "ModelEntry",
    "TokensPerParam",
    "ladder_models",
    "listed_models",
    "load",
    "load_spec",
    "parse_ladder",
    "plan",
    "resolve",
    "resolve_transfer",
    "sweep_axes",
    "with_stable_runs",
    "with_transferred_rates",
]

