"""AdamW with a learning-rate schedule whose length comes from the budget (optax throughout).

Schedules, as a function of the optimizer step s = 0 … total_steps (the update at step s uses lr(s)):
- warmup (all schedules): lr(s) = peak · (s + 1) / (W + 1) for s ≤ W, so the first update is not wasted
  at lr 0 and lr(W) = peak. W follows `optimizer.warmup_rule` (`warmup_steps`): `fraction` (default),
  W = round(warmup_fraction · total_steps); `steps`, W = warmup_steps; `tokens`, W = ceil(warmup_tokens /
  tokens per step); `params`, warmup tokens = warmup_params_ratio · N (N under budget.params): Porian et al.
  2024 ("Resolving Discrepancies in Compute-Optimal Scaling of Language Models", §3) find a fixed long
  warmup hurts small models and scale it with the model, one N of tokens. Only the last three give a
  warmup that does not depend on the run's length, which WSD branches need (a branch shares its stable
  run's warmup). W is capped at total_steps − 1;
- `cosine`:   cosine from the peak at W to min_lr_ratio · peak at total_steps;
- `wsd`:      warmup–stable–decay (Hu et al. 2024; Hägele et al. 2024): the peak until
              total_steps − D, then a *linear* decay to min_lr_ratio · peak at total_steps, D =
              round(decay_fraction · total_steps) (at least 1 when decay_fraction > 0). Linear is Hägele et al.'s baseline (their 1-sqrt is
              slightly better; swapping is one line in `_decay`);
- `constant`: the peak after warmup.
The floor is reached at s = total_steps, one step after the last update, so no update is spent at lr 0
when min_lr_ratio = 0.

Weight decay is decoupled AdamW decay (scaled by the schedule, as optax and PyTorch do) and by default
applies only to the hidden and output weights of modeling/mup.py's roles (every kernel, the router, an
untied head), never to the input-like ones (the token and position tables, biases, norm gains).
Under μP (`model.parameterization: mup`, docs/MUP.md) the Adam step of each parameter is multiplied by
its role's multiplier (1/m for hidden kernels) before the decay is added, so the decay keeps the
schedule's rate × weight_decay at every width, as microsoft/mup's MuAdamW does.
The optimizer state is kept in fp32 whatever the parameter dtype (precision=bf16 stores bf16 weights,
whose second moments would lose the small squared gradients in bf16); updates are cast back.
Gradient accumulation and z-loss live in the train step and the loss, not here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from modeling import mup
from modeling.config import ModelConfig
from train.config import Config, ConfigError, OptimizerConfig
from train.lengths import decay_steps, warmup_steps, wsd_overrun


def _fraction_warmup(opt: OptimizerConfig, total_steps: int) -> int:
    if opt.warmup_rule != "fraction":
        raise ValueError(f"warmup_rule={opt.warmup_rule!r} needs the config: pass warmup=warmup_steps(config, ...)")
    return min(round(opt.warmup_fraction * total_steps), total_steps - 1)


def _decay(peak: float, floor: float, steps: int) -> optax.Schedule:
    return optax.linear_schedule(init_value=peak, end_value=floor, transition_steps=steps)


def learning_rate_schedule(opt: OptimizerConfig, total_steps: int, warmup: int | None = None) -> optax.Schedule:
    """lr(step) for `opt.schedule` over `total_steps` optimizer steps (see module docstring); `warmup` is
    W from `warmup_steps` (required unless the rule is `fraction`)."""
    if total_steps < 1:
        raise ConfigError([f"optimizer: total_steps {total_steps} must be >= 1 (the budget buys no step)"])
    peak, floor = opt.learning_rate, opt.min_lr_ratio * opt.learning_rate
    warmup = _fraction_warmup(opt, total_steps) if warmup is None else warmup
    start = peak / (warmup + 1)
    if opt.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(start, peak, warmup, total_steps, end_value=floor)
    ramp = optax.linear_schedule(init_value=start, end_value=peak, transition_steps=warmup)
    if opt.schedule == "constant":
        return optax.join_schedules([ramp, optax.constant_schedule(peak)], [warmup])
    if opt.schedule == "wsd":
        decay = decay_steps(opt, total_steps)
        overrun = wsd_overrun(opt, warmup, total_steps)
        if overrun:
            raise ConfigError([overrun])
        decay_start = total_steps - decay
        return optax.join_schedules(
            [ramp, optax.constant_schedule(peak), _decay(peak, floor, decay)], [warmup, decay_start]
        )
    raise ConfigError([f"optimizer.schedule: {opt.schedule!r} unknown; choose one of cosine, wsd, constant"])


def path_name(path) -> str:
    """'layers/0/attn/proj/query/kernel/value' for a pytree key path (works on nnx.State too)."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def decays(path, leaf) -> bool:
    """Default weight-decay rule: hidden and output weights, never input-like ones (by name, so a scanned
    stack's [layers, d] norm gains are not taken for matrices)."""
    return mup.role(path_name(path)) != mup.INPUT


def weight_decay_mask(params):
    """A pytree of bools shaped like `params` (a dict, or the nnx.State of a model's parameters)."""
    return jax.tree_util.tree_map_with_path(decays, params)


def _to_float32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def float32_state(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run `inner` on fp32 copies of gradients and parameters; return updates in the gradients' dtypes."""

    def init(params):
        return inner.init(_to_float32(params))

    def update(updates, state, params=None):
        dtypes = jax.tree.map(lambda x: x.dtype, updates)
        params32 = None if params is None else _to_float32(params)
        new_updates, state = inner.update(_to_float32(updates), state, params32)
        return jax.tree.map(lambda u, dtype: u.astype(dtype), new_updates, dtypes), state

    return optax.GradientTransformation(init, update)


def schedule_for(config: Config, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of a run: its optimizer section with W from its warmup rule."""
    return learning_rate_schedule(config.optimizer, total_steps, warmup_steps(config, total_steps)[0])


def scale_by_role(inner: optax.GradientTransformation, model: ModelConfig | None) -> optax.GradientTransformation:
    """`inner` (the Adam step) with each update multiplied by its parameter's μP multiplier; `inner` itself
    under SP. Wrapping rather than chaining keeps the optimizer state's structure, so SP checkpoints of
    before μP restore unchanged."""
    if model is None or model.parameterization == "sp":
        return inner

    def update(updates, state, params=None):
        updates, state = inner.update(updates, state, params)
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * mup.adam_multiplier(model, path_name(path)), updates), state

    return optax.GradientTransformation(inner.init, update)


def build_optimizer(opt: OptimizerConfig, total_steps: int, warmup: int | None = None,
                    model: ModelConfig | None = None) -> optax.GradientTransformation:
    """Global-norm clipping (if grad_clip > 0), then AdamW on the schedule (optax.adamw's three parts,
    the Adam step scaled by role under μP), state in fp32. `model` carries the parameterization."""
    mask = None if opt.decay_norms_biases_embeddings else weight_decay_mask
    adamw = optax.chain(
        scale_by_role(optax.scale_by_adam(b1=opt.beta1, b2=opt.beta2, eps=opt.eps), model),
        optax.add_decayed_weights(opt.weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate_schedule(opt, total_steps, warmup)),
    )
    parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
    return float32_state(optax.chain(*parts, adamw))
