"""WSD cooldown branches (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations"): one warmup–stable run per model, and one decay branch per target length D_i.

A branch is a run with `optimizer.schedule = wsd` over its own S_i steps and `run.branch_from` naming its
stable run. It starts from the stable run's checkpoint at k_i = S_i − decay_steps(S_i) (its decay start),
data iterator included, and trains the decay. The stable run has the same config except its schedule
(`constant`: the same warmup, then the peak), its length (the largest k_i) and `run.branch_points` (the
k_i, whose checkpoints it keeps). Before k_i both schedules give the same rates (WSD is warmup then the
peak until its decay), so the branch is the standalone WSD run of S_i steps: same data order, same
schedule, same losses — bitwise on CPU (tests/test_branches.py). The warmup must not depend on the run's
length (`optimizer.warmup_rule` steps, tokens or params; config validation refuses `fraction`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import yaml

from common.files import atomic_write
from common.run_contract import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, metrics_line, read_metrics
from train.config import Config, ConfigError, from_dict, to_dict
from train.lengths import decay_steps

# What a stable run may differ from its branches in: its schedule and length, and the grid's bookkeeping.
_STABLE_FREE = {"optimizer": ("schedule", "decay_fraction", "min_lr_ratio"),
                "budget": ("flops", "tokens", "token_multiplier", "convention", "params"),
                "run": ("run_id", "branch_points", "branch_from", "lr_sweep", "checkpoint_every", "keep_checkpoints")}


# The fields train/loop.py logs only at log steps (an eval-only row has tokens, FLOPs, eval loss, energy).
LOG_FIELDS = ("train_loss", "learning_rate", "grad_norm", "tokens_per_second", "step_seconds", "mfu",
              "peak_memory_bytes", "peak_memory_source")


def branch_step(config: Config, total_steps: int) -> int:
    """k: the step a WSD run of `total_steps` starts decaying, where its branch leaves the stable run."""
    return total_steps - decay_steps(config.optimizer, total_steps)


def stable_config(branch: Config, run_id: str, steps: int, tokens_per_step: int,
                  points: tuple[int, ...]) -> Config:
    """The stable run of `branch`'s model: constant after the same warmup, `steps` long, keeping `points`."""
    return dataclasses.replace(
        branch,
        optimizer=dataclasses.replace(branch.optimizer, schedule="constant"),
        budget=dataclasses.replace(branch.budget, flops=None, token_multiplier=None,
                                   tokens=float(steps * tokens_per_step)),
        run=dataclasses.replace(branch.run, run_id=run_id, branch_points=tuple(points), branch_from=None,
                                lr_sweep=None),
    )


def _comparable(config: Config) -> dict:
    tree = to_dict(config)
    for section, fields in _STABLE_FREE.items():
        for field in fields:
            tree[section].pop(field, None)
    return tree


def _differences(branch: Config, stable: Config) -> list[str]:
    """Dotted fields (outside _STABLE_FREE) where the stable run's config differs from the branch's."""
    left, right = _comparable(branch), _comparable(stable)
    return sorted(f"{section}.{key}" for section in left for key in set(left[section]) | set(right.get(section, {}))
                  if left[section].get(key) != right.get(section, {}).get(key))


def check_parent(config: Config, total_steps: int) -> int:
    """k, after checking the stable run directory `run.branch_from`: its config is this branch's stable
    counterpart and lists k among its branch points. ConfigError (one line each) otherwise. Reads only."""
    parent = pathlib.Path(config.run.branch_from)
    k = branch_step(config, total_steps)
    try:
        stable = from_dict(yaml.safe_load((parent / CONFIG_FILE).read_text()))
    except FileNotFoundError:
        raise ConfigError([f"run.branch_from: {parent} holds no {CONFIG_FILE} (train the stable run first)"]) from None
    except (OSError, yaml.YAMLError, ConfigError, TypeError, AttributeError) as err:
        raise ConfigError([f"run.branch_from: cannot read {parent / CONFIG_FILE} ({err})"]) from None
    problems = []
    differing = _differences(config, stable)
    if differing:
        problems.append(f"run.branch_from: {parent} was trained with other {', '.join(differing)}; a branch "
                        "must continue its own model, data and optimizer")
    if stable.optimizer.schedule != "constant":
        problems.append(f"run.branch_from: {parent} has optimizer.schedule={stable.optimizer.schedule}, not the "
                        "constant (stable) phase a branch continues")
    if k not in stable.run.branch_points:
        problems.append(f"run.branch_from: {parent} does not keep step {k}, this branch's decay start "
                        f"(its run.branch_points: {list(stable.run.branch_points)})")
    if problems:
        raise ConfigError(problems)
    return k


def checkpoint_dir(config: Config) -> pathlib.Path:
    return pathlib.Path(config.run.branch_from) / CHECKPOINT_DIR


def _as_standalone(row: dict, config: Config) -> dict:
    """A stable-run row as the standalone run logs that step: the stable run's last step logs and evaluates
    whatever the intervals say, a standalone run only on them."""
    if row["step"] % config.run.eval_every:
        row = {key: value for key, value in row.items() if key != "eval_loss"}
    if row["step"] % config.run.log_every:
        row = {key: value for key, value in row.items() if key not in LOG_FIELDS}
    return row


def copy_prefix_metrics(config: Config, run_dir: pathlib.Path, k: int) -> None:
    """The stable run's metrics rows up to k that a standalone run would have logged (its log and eval
    steps), as the branch's metrics.jsonl: the branch's learning curve starts at step 1."""
    every = (config.run.log_every, config.run.eval_every)
    rows = [_as_standalone(row, config) for row in read_metrics(config.run.branch_from)
            if row["step"] <= k and any(row["step"] % n == 0 for n in every)]
    atomic_write(pathlib.Path(run_dir) / METRICS_FILE, "".join(metrics_line(row) for row in rows))


__all__ = ["branch_step", "check_parent", "checkpoint_dir", "copy_prefix_metrics", "stable_config"]
