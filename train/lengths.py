"""Warmup and decay lengths in steps (train/optimizer.py's module docstring gives the rules): plain
arithmetic without jax, so the grid planner (launch/plan.py) computes what the trainer will.
"""

from __future__ import annotations

import math

from modeling.accounting import param_counts
from train.config import Config, ConfigError, OptimizerConfig


def warmup_steps(config: Config, total_steps: int) -> tuple[int, str]:
    """(W, why) under `optimizer.warmup_rule` for a run of `total_steps` steps (see the module docstring)."""
    opt = config.optimizer
    tokens_per_step = config.data.batch_size * config.data.seq_len
    if opt.warmup_rule == "fraction":
        steps, why = round(opt.warmup_fraction * total_steps), f"{opt.warmup_fraction:g} of {total_steps} steps"
    elif opt.warmup_rule == "steps":
        steps, why = opt.warmup_steps, "optimizer.warmup_steps"
    elif opt.warmup_rule == "tokens":
        steps = math.ceil(opt.warmup_tokens / tokens_per_step)
        why = f"{opt.warmup_tokens:.4g} tokens at {tokens_per_step} tokens per step"
    elif opt.warmup_rule == "params":
        n_params = param_counts(config.model)[config.budget.params]
        steps = math.ceil(opt.warmup_params_ratio * n_params / tokens_per_step)
        why = (f"{opt.warmup_params_ratio:g} x N tokens (N = {n_params:,} {config.budget.params} params; "
               "Porian et al. 2024)")
    else:
        raise ConfigError([f"optimizer.warmup_rule: {opt.warmup_rule!r} unknown"])
    if steps > total_steps - 1:
        steps, why = max(total_steps - 1, 0), f"{why}, capped at total_steps - 1"
    return steps, why


def decay_steps(opt: OptimizerConfig, total_steps: int) -> int:
    """WSD: the final steps spent decaying, round(decay_fraction · total_steps), at least 1 when > 0."""
    return max(round(opt.decay_fraction * total_steps), 1 if opt.decay_fraction > 0 else 0)


def wsd_overrun(opt: OptimizerConfig, warmup: int, total_steps: int) -> str | None:
    """The problem line when a WSD run's warmup and decay do not fit in its steps, else None."""
    decay = decay_steps(opt, total_steps)
    if opt.schedule != "wsd" or warmup + decay <= total_steps:
        return None
    if opt.warmup_rule == "fraction":
        return (f"optimizer.decay_fraction: {opt.decay_fraction} plus optimizer.warmup_fraction {opt.warmup_fraction}"
                " exceed the whole run for schedule=wsd (their sum must be <= 1)")
    return (f"optimizer.decay_fraction: {decay} decay steps plus {warmup} warmup steps (optimizer.warmup_rule="
            f"{opt.warmup_rule}) exceed the run's {total_steps} steps for schedule=wsd")
