"""Inference-aware sizing (Sardana & Frankle 2023): for a fitted L(N, D), a target loss and D_inf tokens
served over the model's lifetime, the (N, D) minimising total FLOPs 6·N·D + 2·N·D_inf at that loss; and,
with the architecture-conditional law (analysis/conditional.py, Bian et al. 2025), the (N, D, shape)
minimising total device-seconds, training plus serving.

On the constraint L(N, D) = target, D is a function of N, D(N) = (B / (target - E - A/N^α))^(1/β), which
exists for N above N_min = (A / (target - E))^(1/α); the total is minimised over log N. With D_inf = 0
this is the Chinchilla-optimal model for that loss (the frontier of approach 3).

A target is sized only where the law describes real models: above E (below it no model reaches it) and
below E + min(A, B), so that N_min > 1 and every D(N) > 1 (above it the "optimal" model would have under
one parameter or train on under one token, as 1e308 or a 1e-5-FLOP budget would ask).

FLOPs are the right cost of a model only while every model runs at the same FLOP/s. Models of one N
but different shapes do not decode at the same speed (a step is bound by the weights and KV cache it
reads, and the shape sets the cache), so the architecture-aware total is in seconds of one device
(conditional.CostModel): training 6·N·D FLOPs at its sustained rate, serving D_inf decoded tokens at the
shape's decode throughput. At a fixed shape the law is Chinchilla's with E, A, B scaled by the shape's
factor, so each shape is sized as above (on a relaxation with fractional layers), then made whole.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import optimize

from analysis.conditional import (
    FFN_MATRICES, LLAMA_HEADS_PER_KV, LLAMA_RATIO, LLAMA_WIDTH_RATIO, Architecture, ConditionalLaw, CostModel,
    SearchSpace, kv_choices, kv_for, layer_of,
)
from analysis.errors import AnalysisError
from analysis.laws import ChinchillaLaw


@dataclasses.dataclass(frozen=True)
class Plan:
    params: float
    tokens: float
    loss: float
    inference_tokens: float

    @property
    def train_flops(self) -> float:
        return 6 * self.params * self.tokens

    @property
    def inference_flops(self) -> float:
        return 2 * self.params * self.inference_tokens

    @property
    def total_flops(self) -> float:
        return self.train_flops + self.inference_flops

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    def as_dict(self) -> dict:
        return {
            "params": self.params, "tokens": self.tokens, "loss": self.loss, "tokens_per_param": self.tokens_per_param,
            "train_flops": self.train_flops, "inference_flops": self.inference_flops, "total_flops": self.total_flops,
        }


@dataclasses.dataclass(frozen=True)
class Sizing:
    target_loss: float
    inference_tokens: float
    chinchilla: Plan
    inference_optimal: Plan

    @property
    def overtrain_ratio(self) -> float:
        """How many times more tokens per parameter the inference-optimal model trains on."""
        return self.inference_optimal.tokens_per_param / self.chinchilla.tokens_per_param

    @property
    def flops_saved(self) -> float:
        return self.chinchilla.total_flops - self.inference_optimal.total_flops

    def as_dict(self) -> dict:
        return {
            "target_loss": self.target_loss, "inference_tokens": self.inference_tokens,
            "chinchilla_optimal": self.chinchilla.as_dict(), "inference_optimal": self.inference_optimal.as_dict(),
            "overtrain_ratio": self.overtrain_ratio, "flops_saved": self.flops_saved,
            "flops_saved_fraction": self.flops_saved / self.chinchilla.total_flops,
        }


def tokens_for_loss(law: ChinchillaLaw, params, target_loss: float):
    """D such that L(N, D) = target (inf where N alone cannot reach it)."""
    room = target_loss - law.E - law.A / np.asarray(params, dtype=float) ** law.alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 0, (law.B / room) ** (1 / law.beta), np.inf)


def compute_optimal_tokens(law: ChinchillaLaw, params: float) -> float:
    """D of the compute-optimal model with N parameters: where N = N_opt(C), C = 6·N·D."""
    c6 = (params / law.G) ** (1 / law.a)
    return float(c6 / params)


def check_target(law: ChinchillaLaw, target_loss: float, origin: str = "") -> None:
    """Refuse a target the law cannot size (module docstring): one line saying which side it falls off."""
    ceiling = law.E + min(law.A, law.B)
    what = f"target loss {target_loss:.6g}{origin}"
    if not target_loss > law.E:  # also NaN
        raise AnalysisError(f"{what} is unreachable: not above the law's irreducible loss "
                            f"E = {law.E:.6g}; choose a target between {law.E:.4g} and {ceiling:.4g}")
    if not target_loss < ceiling:
        raise AnalysisError(f"{what} is not below E + min(A, B) = {ceiling:.4g}, where the law would "
                            f"size models of under one parameter or one token; choose a target between {law.E:.4g} "
                            f"and {ceiling:.4g}")


def cheapest_plan(law: ChinchillaLaw, target_loss: float, inference_tokens: float) -> Plan:
    """Minimise 6·N·D(N) + 2·N·D_inf over N on the curve L(N, D) = target."""
    check_target(law, target_loss)
    if not 0 <= inference_tokens < math.inf:
        raise AnalysisError(f"--inference-tokens must be a finite number >= 0 (got {inference_tokens:g})")
    log_n_min = math.log(law.A / (target_loss - law.E)) / law.alpha

    def log_total_flops(log_n):
        room = target_loss - law.E - law.A * math.exp(-law.alpha * log_n)
        if room <= 0:
            return math.inf
        log_d = (math.log(law.B) - math.log(room)) / law.beta
        per_param = np.logaddexp(math.log(6) + log_d, math.log(2 * inference_tokens) if inference_tokens else -math.inf)
        return log_n + per_param

    # Unimodal in log N: D explodes near N_min, the cost grows like N far above it.
    result = optimize.minimize_scalar(
        log_total_flops, bounds=(log_n_min + 1e-9, log_n_min + 60 / law.alpha), method="bounded",
        options={"xatol": 1e-10, "maxiter": 2000},
    )
    params = math.exp(result.x)
    return Plan(params=params, tokens=float(tokens_for_loss(law, params, target_loss)), loss=target_loss,
                inference_tokens=inference_tokens)


def size(law: ChinchillaLaw, inference_tokens: float, target_loss: float | None = None,
         budget_flops: float | None = None) -> Sizing:
    """Exactly one of a target loss or a training budget (whose Chinchilla-optimal loss becomes the target)."""
    if (target_loss is None) == (budget_flops is None):
        raise AnalysisError("give exactly one of --target-loss or --budget")
    if budget_flops is not None:
        if not 0 < budget_flops < math.inf:
            raise AnalysisError(f"--budget must be a finite number > 0 (got {budget_flops:g})")
        target_loss = float(law.frontier_loss(budget_flops))
        check_target(law, target_loss, f" (the Chinchilla-optimal loss at --budget {budget_flops:g})")
    result = Sizing(
        target_loss=target_loss, inference_tokens=inference_tokens,
        chinchilla=dataclasses.replace(cheapest_plan(law, target_loss, 0.0), inference_tokens=inference_tokens),
        inference_optimal=cheapest_plan(law, target_loss, inference_tokens),
    )
    if not all(math.isfinite(value) for plan in (result.chinchilla, result.inference_optimal)
               for value in plan.as_dict().values()):
        raise AnalysisError(f"sizing target loss {target_loss:g} with {inference_tokens:g} inference tokens overflows "
                            "the float range (over 1.8e308 FLOPs); choose fewer inference tokens or a higher target")
    return result


# ------------------------------------------------------------------------- architecture (Bian et al. 2025)

LOG_PARAMS_SPAN = 30.0  # ln N searched above the least N that reaches the target (e^30 ≈ 1e13 times it)
BASELINE_SHAPE = (LLAMA_WIDTH_RATIO, LLAMA_RATIO, LLAMA_HEADS_PER_KV)  # (d/√N, r, query heads per KV head)
# Query heads per KV head of stage one (math.inf: one KV head). In the paper GQA follows the shape; here the
# KV cache is part of the cost, so the best r depends on GQA and the two are searched together.
GQA_GRID = (1, 2, 4, 8, 16, 32, math.inf)


@dataclasses.dataclass(frozen=True)
class ArchitecturePlan:
    """An architecture trained on the tokens that bring it to the target loss, and its costs in seconds."""

    arch: Architecture
    tokens: float
    loss: float
    train_seconds: float
    inference_seconds: float
    tokens_per_second: float  # decoding

    @property
    def total_seconds(self) -> float:
        return self.train_seconds + self.inference_seconds

    def as_dict(self) -> dict:
        return {"architecture": self.arch.as_dict(), "tokens": self.tokens,
                "tokens_per_param": self.tokens / self.arch.params, "loss": self.loss,
                "train_flops": 6 * self.arch.params * self.tokens,
                "decode_tokens_per_second": self.tokens_per_second, "train_seconds": self.train_seconds,
                "inference_seconds": self.inference_seconds, "total_seconds": self.total_seconds}


@dataclasses.dataclass(frozen=True)
class ArchitectureSizing:
    target_loss: float
    inference_tokens: float
    baseline: ArchitecturePlan  # LLaMA-style shape, Chinchilla-optimal (training cost alone) for the target
    baseline_lifetime: ArchitecturePlan  # the same shape with N, D sized for the lifetime: what sizing alone saves
    recommended: ArchitecturePlan
    cost: CostModel

    @property
    def saving_seconds(self) -> float:
        return self.baseline.total_seconds - self.recommended.total_seconds

    def as_dict(self) -> dict:
        return {"target_loss": self.target_loss, "inference_tokens": self.inference_tokens, "cost_unit": "device-seconds",
                "cost_model": dataclasses.asdict(self.cost), "baseline": self.baseline.as_dict(),
                "baseline_lifetime": self.baseline_lifetime.as_dict(), "recommended": self.recommended.as_dict(),
                "saving_seconds": self.saving_seconds, "saving_fraction": self.saving_seconds / self.baseline.total_seconds}


def plan_architecture(law: ConditionalLaw, arch: Architecture, target_loss: float, inference_tokens: float,
                      cost: CostModel) -> ArchitecturePlan | None:
    """`arch` trained to the target and serving `inference_tokens`; None when no number of tokens gets it there."""
    width = arch.d_model / math.sqrt(arch.params)
    tokens = float(tokens_for_loss(law.at_shape(width, arch.ratio), arch.params, target_loss))
    if not math.isfinite(tokens):
        return None
    return ArchitecturePlan(arch, tokens, float(law.loss(arch.params, tokens, width, arch.ratio)),
                            cost.train_seconds(arch.params, tokens), cost.inference_seconds(arch, inference_tokens),
                            cost.tokens_per_second(arch))


def _relaxed(params: float, width: float, ratio: float, heads_per_kv: float, space: SearchSpace) -> Architecture:
    """The shape at exactly N parameters with fractional width, heads, KV heads, d_ff and layers: the
    smooth cost curve the optimum N is found on."""
    d_model = width * math.sqrt(params)
    n_heads = d_model / space.head_dim
    n_kv_heads = max(1.0, n_heads / heads_per_kv)
    attention = Architecture(d_model, 1, n_heads, n_kv_heads, 1, space.ffn).attention_params
    return Architecture(d_model, params / (attention * (1 + ratio)), n_heads, n_kv_heads,
                        ratio * attention / (FFN_MATRICES[space.ffn] * d_model), space.ffn)


def _optimal_params(law, shape, target_loss, inference_tokens, cost, space) -> float | None:
    """The N of least total seconds for this shape on the curve L = target; None when the shape's floor
    is at or above the target."""
    width, ratio, heads_per_kv = shape
    fixed = law.at_shape(width, ratio)
    if not target_loss > fixed.E:
        return None
    log_n_min = math.log(fixed.A / (target_loss - fixed.E)) / fixed.alpha

    def log_total_seconds(log_n):
        params = math.exp(log_n)
        tokens = float(tokens_for_loss(fixed, params, target_loss))
        if not math.isfinite(tokens):
            return math.inf
        serving = cost.inference_seconds(_relaxed(params, width, ratio, heads_per_kv, space), inference_tokens)
        return math.log(cost.train_seconds(params, tokens) + serving)

    result = optimize.minimize_scalar(log_total_seconds, bounds=(log_n_min + 1e-9, log_n_min + LOG_PARAMS_SPAN),
                                      method="bounded", options={"xatol": 1e-5, "maxiter": 2000})
    return math.exp(result.x)


def _shape_plan(law, shape, target_loss, inference_tokens, cost, space, sized_for: float) -> ArchitecturePlan | None:
    """The whole architecture of this shape that is cheapest when it serves `sized_for` tokens (d_model a
    multiple of head_dim × the standard heads per KV head, n_kv_heads an allowed divisor of n_heads, the
    better of the two layer counts about the relaxed optimum), costed serving `inference_tokens`."""
    params = _optimal_params(law, shape, target_loss, sized_for, cost, space)
    if params is None:
        return None
    width, ratio, heads_per_kv = shape
    multiple = space.head_dim * space.heads_per_kv  # so that standard GQA divides the heads
    d_model = max(1, round(width * math.sqrt(params) / multiple)) * multiple
    layer = layer_of(d_model, ratio, kv_for(d_model // space.head_dim, heads_per_kv, space), space)
    stacks = {max(1, math.floor(params / layer.params)), max(1, math.ceil(params / layer.params))}
    sized = [plan_architecture(law, dataclasses.replace(layer, n_layers=n), target_loss, sized_for, cost) for n in stacks]
    sized = [plan for plan in sized if plan is not None]
    if not sized:
        return None
    return plan_architecture(law, min(sized, key=lambda plan: plan.total_seconds).arch, target_loss, inference_tokens, cost)


def architecture_target(law: ConditionalLaw, target_loss=None, budget_flops=None,
                        target_params=None) -> tuple[float, str]:
    """(target, what it is) from exactly one of a target loss, a training budget or a model size; the last
    two name the loss of the Chinchilla-optimal LLaMA-style model (nominal shape) of that budget or size."""
    if sum(value is not None for value in (target_loss, budget_flops, target_params)) != 1:
        raise AnalysisError("give exactly one of --target-loss, --budget or --target-params")
    llama = law.at_shape(*BASELINE_SHAPE[:2])
    if budget_flops is not None:
        if not 0 < budget_flops < math.inf:
            raise AnalysisError(f"--budget must be a finite number > 0 (got {budget_flops:g})")
        return (float(llama.frontier_loss(budget_flops)),
                f" (the loss of the Chinchilla-optimal LLaMA-style model of a {budget_flops:g}-FLOP training budget)")
    if target_params is not None:
        return (float(llama.loss(target_params, compute_optimal_tokens(llama, target_params))),
                f" (the loss of the Chinchilla-optimal LLaMA-style {target_params:g}-parameter model)")
    return target_loss, ""


def size_architecture(law: ConditionalLaw, inference_tokens: float, target_loss: float, cost: CostModel = CostModel(),
                      space: SearchSpace = SearchSpace(), origin: str = "") -> ArchitectureSizing:
    """The (N, D, architecture) of least training + inference seconds at the target loss, beside the
    LLaMA-style Chinchilla-optimal baseline and that shape sized for the lifetime (both candidates, so
    the recommendation is never worse than either).

    Stage one sizes every width × r of the space × heads per KV head of GQA_GRID (up to the space's cap);
    stage two, the paper's local GQA search, tries every allowed n_kv_heads of the `top` cheapest, each
    sized again."""
    check_target(law.at_shape(law.width_opt, law.ratio_opt), target_loss, origin)
    if not 0 <= inference_tokens < math.inf:
        raise AnalysisError(f"--inference-tokens must be a finite number >= 0 (got {inference_tokens:g})")
    plan = lambda shape, sized_for: _shape_plan(law, shape, target_loss, inference_tokens, cost, space, sized_for)
    baseline = plan(BASELINE_SHAPE, 0.0)
    if baseline is None:
        floor = law.at_shape(*BASELINE_SHAPE[:2]).E
        raise AnalysisError(f"target loss {target_loss:.6g}{origin} is out of the LLaMA-style baseline's reach (its "
                            f"floor is {floor:.6g}: E times its shape's factor); choose a target above {floor:.4g}")
    cap = space.max_heads_per_kv or math.inf
    grouping = sorted({g for g in GQA_GRID if g <= cap} | ({cap} if cap < math.inf else set()))
    first = [(shape, found) for shape in itertools.product(space.widths, space.ratios, grouping)
             if (found := plan(shape, inference_tokens)) is not None]
    top = sorted(first, key=lambda pair: pair[1].total_seconds)[:space.top]
    second = [plan((width, ratio, found.arch.n_heads / kv), inference_tokens)
              for (width, ratio, _), found in top for kv in kv_choices(found.arch.n_heads, space)]
    lifetime = plan(BASELINE_SHAPE, inference_tokens)
    candidates = [baseline, lifetime] + [found for _, found in first] + [found for found in second if found is not None]
    result = ArchitectureSizing(target_loss, inference_tokens, baseline, lifetime,
                                min(candidates, key=lambda found: found.total_seconds), cost)
    if not all(math.isfinite(found.total_seconds) for found in (baseline, lifetime, result.recommended)):
        raise AnalysisError(f"sizing target loss {target_loss:g} with {inference_tokens:g} inference tokens overflows "
                            "the float range; choose fewer inference tokens or a higher target")
    return result
