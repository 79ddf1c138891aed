"""Inference-aware sizing (Sardana & Frankle 2023): for a fitted L(N, D), a target loss and D_inf tokens
served over the model's lifetime, the (N, D) minimising total FLOPs 6·N·D + 2·N·D_inf at that loss.

On the constraint L(N, D) = target, D is a function of N, D(N) = (B / (target - E - A/N^α))^(1/β), which
exists for N above N_min = (A / (target - E))^(1/α); the total is minimised over log N. With D_inf = 0
this is the Chinchilla-optimal model for that loss (the frontier of approach 3).

A target is sized only where the law describes real models: above E (below it no model reaches it) and
below E + min(A, B), so that N_min > 1 and every D(N) > 1 (above it the "optimal" model would have under
one parameter or train on under one token, as 1e308 or a 1e-5-FLOP budget would ask).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize

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
