"""The trainer's side of the run directory, whose contract common/run_contract.py owns (docs/CONTRACTS.md).

runs/<experiment>/<run_id>/{config.yaml, metrics.jsonl, summary.json, events.out.tfevents.*, checkpoints/, .lock}.
A directory that already holds a different config is refused before anything is touched (`check`);
a training holds `.lock` (common.files.ExclusiveLock) for its whole length, so a second training of the
same directory is refused while the first is alive, and the lock of a killed one is simply taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import pathlib
import platform

import yaml

from common.files import ExclusiveLock, WriteError, atomic_write
from common.run_contract import (CHECKPOINT_DIR, CONFIG_FILE, LOCK_FILE, Hardware, ParamCounts, RunSummary,
                                 read_summary)
from common.validation import output_directory
from modeling import accounting
from train.config import Config, ConfigError, dump_yaml, to_dict


@dataclasses.dataclass(frozen=True)
class RunDir:
    path: pathlib.Path
    resumed: bool

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return self.path / CHECKPOINT_DIR


def config_hash(config: Config) -> str:
    return hashlib.sha256(dump_yaml(config).encode()).hexdigest()[:10]


def default_path(config: Config) -> pathlib.Path:
    model = config.model
    run_id = config.run.run_id or f"d{model.d_model}-l{model.n_layers}-{model.attention}-{config_hash(config)}"
    return pathlib.Path(config.run.out_dir) / config.run.experiment / run_id


def check(path: pathlib.Path, config: Config) -> bool:
    """Whether `path` already holds a run of `config` (a resume); raises ConfigError if it cannot be
    this config's run directory. Reads only."""
    problems = output_directory("--out", path)
    if problems:
        raise ConfigError(problems)
    path = pathlib.Path(path)
    saved = path / CONFIG_FILE
    if saved.exists():
        if yaml.safe_load(saved.read_text()) != to_dict(config):
            raise ConfigError([f"--out: {path} holds a run with a different config; choose another --out or "
                               "run.run_id (nothing was changed)"])
        return True
    if path.exists() and any(entry.name != LOCK_FILE for entry in path.iterdir()):
        raise ConfigError([f"--out: {path} exists and is not an isoflop run directory (no config.yaml)"])
    return False


@contextlib.contextmanager
def locked(path: pathlib.Path, exclusive: bool = True):
    """Create the run directory if needed and hold its lock (raises common.files.LockedError).
    `exclusive=False` (the other processes of one multi-host run, which share the directory) only creates it."""
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(path, err) from None
    with ExclusiveLock(path / LOCK_FILE, f"run directory {path}") if exclusive else contextlib.nullcontext():
        yield


def prepare(path: pathlib.Path, config: Config, resume: bool, primary: bool = True) -> RunDir:
    """Accept the run dir for resume if it holds the same config, else write config.yaml (call under
    `locked`, after `check` gave `resume`). The primary process checks again under the lock (another
    training may have written in between) and writes; the others of a multi-host run share its directory
    and keep what they checked before any process wrote (their check now could see its half-written files)."""
    path = pathlib.Path(path)
    if not primary:
        return RunDir(path, resumed=resume)
    if check(path, config):
        return RunDir(path, resumed=True)
    atomic_write(path / CONFIG_FILE, dump_yaml(config))
    return RunDir(path, resumed=False)


def completed_summary(run: RunDir) -> RunSummary | None:
    """The summary of a run that already finished, else None (ContractError: a summary this isoflop cannot read)."""
    summary = read_summary(run.path, missing_ok=True) if run.resumed else None
    return summary if summary is not None and summary.status == "completed" else None


def software_versions() -> dict[str, str | None]:
    """Python and the versions of the packages a run's numbers depend on (None: not installed)."""
    packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "isoflop")
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def summary(config: Config, run: RunDir, plan, *, status: str, error: str | None, step: int, last_metrics: dict,
            wall_seconds: float, hardware: dict, energy, data: dict, epochs: float) -> RunSummary:
    """Everything analysis needs about a run (the contract's RunSummary; fields in docs/CONTRACTS.md)."""
    model = config.model
    tokens = step * plan.tokens_per_step
    return RunSummary(
        run_id=run.path.name,
        experiment=config.run.experiment,
        status=status,
        error=error,
        d_model=model.d_model,
        n_layers=model.n_layers,
        n_heads=model.n_heads,
        n_kv_heads=model.kv_heads,
        d_ff=model.d_ff,
        vocab_size=model.vocab_size,
        seq_len=config.data.seq_len,
        batch_size=config.data.batch_size,
        attention=model.attention,
        window=model.window,
        ffn=model.ffn,
        precision=model.precision,
        params=ParamCounts(**accounting.param_counts(model)),
        flops_per_token=dict(plan.flops_per_token),
        mfu_flops_per_token=accounting.mfu_flops_per_token(model, config.data.seq_len),
        budget_convention=config.budget.convention,
        budget_flops=plan.budget_flops,
        steps=step,
        planned_steps=plan.steps,
        tokens=tokens,
        flops=plan.flops_after(tokens),
        unique_tokens=data["unique_tokens"],
        epochs=tokens / data["unique_tokens"],
        data=data,
        planned_epochs=epochs,
        final_train_loss=last_metrics.get("train_loss"),
        final_eval_loss=last_metrics.get("eval_loss"),
        wall_seconds=wall_seconds,
        tokens_per_second=last_metrics.get("tokens_per_second"),
        mfu=last_metrics.get("mfu"),
        peak_memory_bytes=last_metrics.get("peak_memory_bytes"),
        energy_kwh=energy.energy_kwh,
        energy_source=energy.energy_source,
        co2e_kg=energy.co2e_kg,
        hardware=Hardware(**hardware),
        software=software_versions(),
    )
