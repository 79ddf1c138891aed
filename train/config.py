"""The experiment config: typed frozen dataclasses loaded from YAML with `extends` and dotted overrides.

Configs are data (big_vision/nanodo style): every section is a frozen dataclass, a YAML file may name
a base file it `extends`, and `key.sub=value` arguments override single fields. Everything is checked
before any compute and every problem is reported on its own line, naming the field and what is allowed.
The checks and the typed coercion come from common/validation.py, the toolkit that model configs and grid
specs share; the names several packages agree on (FLOP conventions, parameter-count kinds) from
common/vocabulary.py.
"""

from __future__ import annotations

import dataclasses
import pathlib

import yaml

from common.validation import (
    ConfigError,
    build,
    in_range,
    name_component,
    non_negative,
    one_of,
    output_directory,
    parse_yaml_value,
    positive,
    read_yaml_mapping,
)
from common.vocabulary import BUDGET_FLOP_CONVENTIONS, PARAM_KINDS
from modeling.config import ModelConfig, RopeScaling, validate_model

CONFIG_ROOT = pathlib.Path(__file__).resolve().parent.parent / "configs"
SCHEDULES = ("cosine", "wsd", "constant")
# How the warmup length is set (train/optimizer.py `warmup_steps`): a share of the run, or a length that does
# not depend on the run's length (which WSD branches need, and Porian et al. 2024 recommend: a fixed long
# warmup hurts small models; `params` is their rule, warmup tokens = N).
WARMUP_RULES = ("fraction", "steps", "tokens", "params")
DATA_SOURCES = ("stdlib", "text", "jsonl", "tokens")
TOKENIZERS = ("byte", "bpe")
TOKEN_DTYPES = ("uint16", "uint32")
MAX_SEED = 2**32 - 1  # grain's shuffle accepts seeds in [0, 2**32 - 1]
# Upper bounds on a budget, each with its reason: far beyond any training run, and small enough that every
# quantity derived from them (tokens x FLOPs per token, step counts) stays a finite float.
BUDGET_LIMITS = {
    "flops": (1e40, "10^14x the largest reported training runs, ~1e26 FLOPs"),
    "tokens": (1e30, "10^16x the largest published training corpora, ~1e14 tokens"),
    "token_multiplier": (1e9, "10^5x the most over-trained published models, ~2000 tokens per parameter"),
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "stdlib"  # stdlib (offline default corpus) | text | jsonl | tokens
    path: str | None = None  # text/jsonl: directory, file or glob; tokens: a token file
    jsonl_field: str = "text"
    tokenizer: str = "byte"  # byte (vocab 256) | bpe (trained locally, vocab = model.vocab_size)
    token_dtype: str | None = None  # tokens source: uint16 | uint32
    seq_len: int = 128
    batch_size: int = 8  # global batch, in sequences
    eval_fraction: float = 0.05  # share of files held out for eval (by path hash)
    eval_tokens: int = 16384  # tokens scored at each eval
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/isoflop or ~/.cache/isoflop


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 3e-3  # peak
    schedule: str = "cosine"  # cosine (warmup + cosine to floor) | wsd (warmup-stable-decay) | constant
    warmup_rule: str = "fraction"  # fraction | steps | tokens | params (see WARMUP_RULES)
    warmup_fraction: float = 0.05  # rule fraction: of total steps
    warmup_steps: int = 0  # rule steps
    warmup_tokens: float = 0.0  # rule tokens: ceil(warmup_tokens / tokens per step) steps
    warmup_params_ratio: float = 1.0  # rule params: warmup tokens = ratio x N (N under budget.params; Porian: 1)
    decay_fraction: float = 0.2  # wsd: final share of steps spent decaying
    min_lr_ratio: float = 0.1  # floor as a fraction of the peak
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms_biases_embeddings: bool = False
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    z_loss: float = 0.0  # coefficient of log(Z)^2 (PaLM); 0 disables
    grad_accum_steps: int = 1


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """Exactly one of flops, tokens, token_multiplier (D = M * N, N under `params`)."""

    flops: float | None = None
    convention: str = "6N_attn"  # which FLOP count the budget spends
    tokens: float | None = None
    token_multiplier: float | None = None
    params: str = "non_embedding"  # N used by token_multiplier: non_embedding | total | active


@dataclasses.dataclass(frozen=True)
class RunConfig:
    experiment: str = "default"
    run_id: str | None = None  # default: derived from the config's hash
    out_dir: str = "runs"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    mesh_data: int = -1  # -1: all devices not used by the other axes
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    mesh_expert: int = 1  # devices an MoE's experts are split over (modeling/sharding.py); also splits the batch
    # Set by grids (launch/plan.py), recorded in the summary:
    lr_sweep: str | None = None  # the learning-rate sweep group this run belongs to (analysis keeps its best)
    lr_transfer: str | None = None  # the sweep group whose best rate this run trains at (μP, lr_sweep.transfer)
    branch_points: tuple[int, ...] = ()  # a WSD stable run: keep checkpoints at these steps for its branches
    branch_from: str | None = None  # a WSD decay branch: the stable run directory it starts from


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    pue: float = 1.1  # power usage effectiveness of the facility (1.1: typical hyperscale)
    # Grid carbon intensity, kg CO2e per kWh: 0.475 is the 2019 world average (IEA, Global Energy & CO2 Status).
    grid_kg_co2e_per_kwh: float = 0.475
    peak_flops_per_second: float | None = None  # override the table / CPU calibration, per device
    tdp_watts: float | None = None  # override the table's power per device


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    budget: BudgetConfig = BudgetConfig()
    run: RunConfig = RunConfig()
    hardware: HardwareConfig = HardwareConfig()


# ----------------------------------------------------------------------------- YAML, extends, overrides


def deep_merge(base: dict, update: dict) -> dict:
    """`update` over `base`, mappings merged key by key (how `extends` and model presets layer)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_field(tree: dict, dotted: str, value, where: str = "override") -> None:
    """Set `section.field` (any depth) in a config tree in place, creating mappings on the way."""
    parts = dotted.split(".") if isinstance(dotted, str) else [""]
    if "" in parts:
        raise ConfigError([f"{where}: {dotted!r} must be a dotted field name like model.d_model"])
    node = tree
    *parents, leaf = parts
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"{where}: {dotted!r} goes through a non-mapping field {part!r}"])
        node = child
    node[leaf] = value


def _resolve_extends(target, relative_to: pathlib.Path) -> pathlib.Path:
    if not isinstance(target, str) or not target:
        raise ConfigError([f"extends: expected the path of a config YAML (e.g. tiny.yaml), got {target!r}"])
    for candidate in (relative_to / target, CONFIG_ROOT / target):
        if candidate.exists():  # a directory too: read_yaml_mapping says what it is
            return candidate
    raise ConfigError([f"extends: {target!r} not found next to {relative_to} or under {CONFIG_ROOT}"])


def load_yaml_tree(path: str | pathlib.Path, what: str = "config", expected: str = "of sections",
                   _seen: tuple = ()) -> dict:
    """The YAML at `path` merged over the file it `extends` (recursively); training configs and grid specs
    (`what`, `expected` word the error when a file is not a mapping) layer the same way."""
    path = pathlib.Path(path)
    if path.resolve() in _seen:
        raise ConfigError([f"extends: cycle through {path}"])
    raw = read_yaml_mapping(path, what, expected)
    if "extends" not in raw:
        return raw
    parent = raw.pop("extends")
    base = load_yaml_tree(_resolve_extends(parent, path.parent), what, expected, _seen + (path.resolve(),))
    return deep_merge(base, raw)


def parse_override(item: str, where: str = "override") -> tuple[str, object]:
    """`section.field=value` -> (dotted key, value parsed as safe YAML; empty means null); `where` starts
    each problem line (a grid names the list entry)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError([f"{where}: {item!r} must look like section.field=value"])
    return key, parse_yaml_value(text, f"{where} {key}") if text else None


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `section.field=value` strings to a copy of `tree`; values are parsed as YAML scalars/lists."""
    tree = deep_merge({}, tree)
    for item in overrides:
        key, value = parse_override(item)
        set_field(tree, key, value)
    return tree


def from_dict(tree: dict) -> Config:
    """Build and validate a Config; raise ConfigError listing every problem."""
    problems: list[str] = []
    config = build(Config, tree, "", problems)
    if problems:  # cross-field checks need the types right
        raise ConfigError(problems)
    problems = validate(config)
    if problems:
        raise ConfigError(problems)
    return config


def load(path: str | pathlib.Path, overrides: list[str] = ()) -> Config:
    return from_dict(apply_overrides(load_yaml_tree(path), list(overrides)))


def to_dict(config) -> dict:
    """Plain-data form (YAML/JSON-safe), the inverse of from_dict."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


# ----------------------------------------------------------------------------- cross-field checks


def _data_problems(data: DataConfig, model: ModelConfig) -> list[str]:
    problems = one_of("data.source", data.source, DATA_SOURCES)
    problems += one_of("data.tokenizer", data.tokenizer, TOKENIZERS)
    if data.token_dtype is not None:
        problems += one_of("data.token_dtype", data.token_dtype, TOKEN_DTYPES)
    if data.source in ("text", "jsonl", "tokens") and not data.path:
        problems.append(f"data.path: required for data.source={data.source}")
    if data.source == "tokens" and data.token_dtype is None:
        problems.append("data.token_dtype: required for data.source=tokens; choose one of uint16, uint32")
    if data.source == "jsonl" and not data.jsonl_field:
        problems.append("data.jsonl_field: must name the field that holds each record's text")
    if data.cache_dir is not None:
        problems += output_directory("data.cache_dir", data.cache_dir)
    for field in ("seq_len", "batch_size", "eval_tokens"):
        problems += positive(f"data.{field}", getattr(data, field))
    problems += in_range("data.eval_fraction", data.eval_fraction, 0, 1, low_open=True, high_open=True)
    if data.seq_len > model.max_seq_len:
        problems.append(f"data.seq_len: {data.seq_len} exceeds model.max_seq_len={model.max_seq_len}")
    if data.tokenizer == "byte" and data.source != "tokens" and model.vocab_size < 256:
        problems.append(f"model.vocab_size: {model.vocab_size} is below 256, the byte tokenizer's vocabulary")
    if data.tokenizer == "bpe" and model.vocab_size < 260:
        problems.append(f"model.vocab_size: {model.vocab_size} too small for a BPE tokenizer (needs >= 260)")
    return problems


def _optimizer_problems(opt: OptimizerConfig, batch_size: int) -> list[str]:
    problems = one_of("optimizer.schedule", opt.schedule, SCHEDULES)
    problems += positive("optimizer.learning_rate", opt.learning_rate)
    problems += positive("optimizer.eps", opt.eps)  # 0 divides 0 by 0 for a parameter whose gradient is 0
    problems += positive("optimizer.grad_accum_steps", opt.grad_accum_steps)
    problems += one_of("optimizer.warmup_rule", opt.warmup_rule, WARMUP_RULES)
    for field in ("warmup_fraction", "decay_fraction", "min_lr_ratio"):
        problems += in_range(f"optimizer.{field}", getattr(opt, field), 0, 1)
    for field in ("warmup_steps", "warmup_tokens", "warmup_params_ratio"):
        problems += non_negative(f"optimizer.{field}", getattr(opt, field))
    for field in ("beta1", "beta2"):
        problems += in_range(f"optimizer.{field}", getattr(opt, field), 0, 1, high_open=True)
    for field in ("weight_decay", "grad_clip", "z_loss"):
        problems += non_negative(f"optimizer.{field}", getattr(opt, field))
    if opt.schedule == "wsd" and opt.warmup_rule == "fraction" and opt.warmup_fraction + opt.decay_fraction > 1:
        problems.append(f"optimizer.decay_fraction: {opt.decay_fraction} plus optimizer.warmup_fraction "
                        f"{opt.warmup_fraction} exceed the whole run for schedule=wsd (their sum must be <= 1)")
    if opt.grad_accum_steps > 0 and batch_size > 0 and batch_size % opt.grad_accum_steps:
        problems.append(
            f"optimizer.grad_accum_steps: {opt.grad_accum_steps} does not divide data.batch_size={batch_size}"
        )
    return problems


def _branch_problems(config: Config) -> list[str]:
    """A WSD branch reproduces a standalone WSD run only when its warmup does not depend on the run length."""
    opt = config.optimizer
    if config.run.branch_from is None:
        return []
    problems = []
    if opt.schedule != "wsd":
        problems.append(f"optimizer.schedule: {opt.schedule!r}, but a branch (run.branch_from) is the decay of a "
                        "WSD run; set optimizer.schedule=wsd")
    if opt.warmup_rule == "fraction":
        problems.append("optimizer.warmup_rule: 'fraction' makes the warmup depend on the run length, so a branch "
                        "could not share its stable run's warmup; choose steps, tokens or params")
    return problems


def _budget_problems(budget: BudgetConfig) -> list[str]:
    forms = [name for name in BUDGET_LIMITS if getattr(budget, name) is not None]
    problems = []
    if len(forms) > 1:
        problems.append(f"budget: set exactly one of flops, tokens, token_multiplier (got {', '.join(forms)})")
    for name in forms:
        value, (limit, why) = getattr(budget, name), BUDGET_LIMITS[name]
        found = positive(f"budget.{name}", value)
        if not found and value > limit:
            found = [f"budget.{name}: {value:.4g} exceeds {limit:.0e} ({why})"]
        problems += found
    problems += one_of("budget.convention", budget.convention, BUDGET_FLOP_CONVENTIONS)
    problems += one_of("budget.params", budget.params, PARAM_KINDS)
    return problems


def _run_problems(run: RunConfig) -> list[str]:
    problems = name_component("run.experiment", run.experiment)
    if run.run_id is not None:
        problems += name_component("run.run_id", run.run_id)
    problems += output_directory("run.out_dir", run.out_dir)
    problems += in_range("run.seed", run.seed, 0, MAX_SEED)
    for field in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "mesh_fsdp", "mesh_tensor",
                  "mesh_expert"):
        problems += positive(f"run.{field}", getattr(run, field))
    if run.mesh_data == 0 or run.mesh_data < -1:
        problems.append(f"run.mesh_data: {run.mesh_data} must be -1 (all remaining devices) or > 0")
    for field in ("lr_sweep", "lr_transfer"):
        if getattr(run, field) is not None:
            problems += name_component(f"run.{field}", getattr(run, field))
    problems += [problem for i, step in enumerate(run.branch_points)
                 for problem in positive(f"run.branch_points[{i}]", step)]
    if run.branch_points and run.branch_from is not None:
        problems.append("run.branch_points: a branch (run.branch_from set) cannot itself keep branch points")
    if run.branch_from is not None and not run.branch_from:
        problems.append("run.branch_from: expected the stable run's directory, got ''")
    return problems


def _hardware_problems(hardware: HardwareConfig) -> list[str]:
    problems = []
    if hardware.pue < 1:  # coerce made it a finite float
        problems.append(f"hardware.pue: {hardware.pue} must be >= 1 (facility power over the IT power it feeds)")
    problems += non_negative("hardware.grid_kg_co2e_per_kwh", hardware.grid_kg_co2e_per_kwh)
    for field in ("peak_flops_per_second", "tdp_watts"):
        if getattr(hardware, field) is not None:
            problems += positive(f"hardware.{field}", getattr(hardware, field))
    return problems


def validate(config: Config) -> list[str]:
    """Every problem of a typed config (the model's, each section's, and those across sections)."""
    return (validate_model(config.model)
            + _data_problems(config.data, config.model)
            + _optimizer_problems(config.optimizer, config.data.batch_size)
            + _budget_problems(config.budget)
            + _run_problems(config.run)
            + _branch_problems(config)
            + _hardware_problems(config.hardware))


__all__ = [
    "BudgetConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "HardwareConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RopeScaling",
    "RunConfig",
    "WARMUP_RULES",
    "deep_merge",
    "dump_yaml",
    "from_dict",
    "load",
    "load_yaml_tree",
    "parse_override",
    "read_yaml_mapping",
    "set_field",
    "to_dict",
    "validate",
]
