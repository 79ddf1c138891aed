"""The scaling-law formulas, as published, and their published constants. Pure functions of arrays.

N is parameters, D training tokens, C training FLOPs (C = 6·N·D wherever a law needs to trade N for D),
M = D / N the token multiplier.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PF_DAY_FLOPS = 1e15 * 86_400

# Kaplan et al. 2020, Table 1 / eq. 1.1-1.3 (non-embedding parameters, tokens, PF-days -> FLOPs here).
KAPLAN_2020 = {
    "alpha_N": 0.076, "N_c": 8.8e13,
    "alpha_D": 0.095, "D_c": 5.4e13,
    "alpha_C": 0.050, "C_c": 3.1e8 * PF_DAY_FLOPS,
}
# Muennighoff et al. 2023: repeated data decays in value with this many repetitions as its e-folding scale.
MUENNIGHOFF_2023_R_D_STAR = 15.4


def kaplan_loss_n(n, n_c=KAPLAN_2020["N_c"], alpha_n=KAPLAN_2020["alpha_N"]):
    """L(N) = (N_c / N)^α_N: models trained to convergence, data not limiting."""
    return (n_c / np.asarray(n, dtype=float)) ** alpha_n


def kaplan_loss_d(d, d_c=KAPLAN_2020["D_c"], alpha_d=KAPLAN_2020["alpha_D"]):
    """L(D) = (D_c / D)^α_D: large models early-stopped, data limiting."""
    return (d_c / np.asarray(d, dtype=float)) ** alpha_d


def kaplan_loss_c(c, c_c=KAPLAN_2020["C_c"], alpha_c=KAPLAN_2020["alpha_C"]):
    """L(C_min) = (C_c / C)^α_C along the compute-efficient frontier (C in FLOPs)."""
    return (c_c / np.asarray(c, dtype=float)) ** alpha_c


def kaplan_loss_nd(n, d, n_c, d_c, alpha_n, alpha_d):
    """Kaplan's combined L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (eq. 1.5)."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    return ((n_c / n) ** (alpha_n / alpha_d) + d_c / d) ** alpha_d


@dataclasses.dataclass(frozen=True)
class ChinchillaLaw:
    """Hoffmann et al. 2022: L(N, D) = E + A / N^α + B / D^β."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def a(self) -> float:
        """N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def frontier(self, c):
        """Compute-optimal (N_opt, D_opt) at C = 6·N·D: N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b."""
        c6 = np.asarray(c, dtype=float) / 6
        return self.G * c6**self.a, c6**self.b / self.G

    def params_for_tokens(self, d):
        """The compute-optimal N for a model trained on D tokens (the frontier solved for N given D)."""
        return self.G * (np.asarray(d, dtype=float) * self.G) ** (self.beta / self.alpha)

    def frontier_loss(self, c):
        n_opt, d_opt = self.frontier(c)
        return self.loss(n_opt, d_opt)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


HOFFMANN_2022 = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def gadre_loss(c, m, E, a, b, eta):
    """Gadre et al. 2024: L(C, M) = E + (a·M^η + b·M^-η)·C^-η at token multiplier M = D/N."""
    c, m = np.asarray(c, dtype=float), np.asarray(m, dtype=float)
    return E + (a * m**eta + b * m ** (-eta)) * c ** (-eta)


def gadre_optimal_multiplier(a, b, eta):
    """The M minimising L at fixed C: a·M^η = b·M^-η, so M* = (b/a)^(1/2η)."""
    return (b / a) ** (1 / (2 * eta))


def gadre_overtrain_penalty(c, m, a, b, eta):
    """Loss an M-times over-trained model gives up against the compute-optimal M* at the same C."""
    m = np.asarray(m, dtype=float)
    return (a * m**eta + b * m ** (-eta) - 2 * np.sqrt(a * b)) * np.asarray(c, dtype=float) ** (-eta)


@dataclasses.dataclass(frozen=True)
class DataConstrainedLaw:
    """Muennighoff et al. 2023: L(N, D, U) = E + A/N'^α + B/D'^β with U unique tokens.

    D' = U + U·R_D*·(1 - exp(-R_D/R_D*)), R_D = D/U - 1 (repetitions of the data), and
    N' = U_N + U_N·R_N*·(1 - exp(-R_N/R_N*)), U_N = min(N, N_opt(U)), R_N = N/U_N - 1 (parameters in
    excess of the compute-optimal size for U tokens), as in the paper's released code."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    R_D_star: float
    R_N_star: float

    @property
    def base(self) -> ChinchillaLaw:
        """The law without repetition (U = D, N at most compute-optimal): Hoffmann's form."""
        return ChinchillaLaw(E=self.E, A=self.A, B=self.B, alpha=self.alpha, beta=self.beta)

    def effective(self, n, d, unique):
        """(N', D'): parameters and tokens worth as much as fresh ones."""
        n, d, unique = (np.asarray(value, dtype=float) for value in (n, d, unique))
        repeats = np.maximum(d / unique - 1, 0)
        unique_params = np.minimum(n, self.base.params_for_tokens(unique))
        excess = np.maximum(n / unique_params - 1, 0)
        d_eff = unique * (1 + self.R_D_star * -np.expm1(-repeats / self.R_D_star))
        n_eff = unique_params * (1 + self.R_N_star * -np.expm1(-excess / self.R_N_star))
        return n_eff, d_eff

    def loss(self, n, d, unique):
        return self.base.loss(*self.effective(n, d, unique))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def effective_tokens(tokens, epochs, r_d_star=MUENNIGHOFF_2023_R_D_STAR):
    """Muennighoff et al. 2023: D' = U + U·R*·(1 - exp(-R/R*)) with U unique tokens and R = epochs - 1 repeats."""
    tokens, epochs = np.asarray(tokens, dtype=float), np.asarray(epochs, dtype=float)
    epochs = np.maximum(epochs, 1.0)
    unique = tokens / epochs
    return unique * (1 + r_d_star * -np.expm1(-(epochs - 1) / r_d_star))
