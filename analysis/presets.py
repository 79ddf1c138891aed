"""Published scaling laws by name, with their constants as published (unrounded where the source has more
digits), each with its citation and counting conventions; and reading a law from a fit's JSON.

`isoflop predict --law NAME|FILE` and `isoflop size --law NAME|FILE` both read laws through `read_law`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from analysis.errors import AnalysisError
from analysis.law_files import described_conventions, read_fit_json
from analysis.laws import HOFFMANN_2022, KAPLAN_2020, PF_DAY_FLOPS, ChinchillaLaw, DataConstrainedLaw


@dataclasses.dataclass(frozen=True)
class KaplanLaw:
    """Kaplan et al. 2020's single-variable laws: L(N), L(D) and L(C_min) (C in FLOPs)."""

    alpha_N: float
    N_c: float
    alpha_D: float
    D_c: float
    alpha_C: float
    C_c: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Preset:
    law: ChinchillaLaw | DataConstrainedLaw | KaplanLaw
    citation: str
    conventions: str


PRESETS = {
    "kaplan2020": Preset(
        KaplanLaw(**KAPLAN_2020),
        "Kaplan et al. 2020, Scaling Laws for Neural Language Models, arXiv:2001.08361, eqs. 1.1-1.3 "
        "(alpha_N=0.076, N_c=8.8e13; alpha_D=0.095, D_c=5.4e13; alpha_C=0.050, C_c=3.1e8 PF-days)",
        "non-embedding parameters, tokens, C_min in FLOPs (1 PF-day = 8.64e19 FLOPs); loss in nats per token "
        "on WebText2"),
    "hoffmann2022": Preset(
        HOFFMANN_2022,
        "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, arXiv:2203.15556, eq. 10 "
        "(the rounded values printed in the paper)",
        "total parameters, tokens, C = 6ND; loss on MassiveText"),
    "hoffmann2022-tex": Preset(
        ChinchillaLaw(E=1.6934, A=406.4, B=410.7, alpha=0.3392, beta=0.2849),
        "Hoffmann et al. 2022, arXiv:2203.15556, the unrounded E, alpha, beta in the paper's LaTeX source, "
        "as reported by Besiroglu et al. 2024, arXiv:2404.10102, section 3",
        "total parameters, tokens, C = 6ND; loss on MassiveText"),
    "besiroglu2024": Preset(
        ChinchillaLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
        "Besiroglu, Erdil, Barnett, You 2024, Chinchilla Scaling: A replication attempt, arXiv:2404.10102 "
        "(approach 3 refitted to the data of Hoffmann et al.'s Figure 4)",
        "total parameters, tokens, C = 6ND; loss on MassiveText"),
    "muennighoff2023": Preset(
        DataConstrainedLaw(E=math.exp(0.6254804), A=math.exp(6.255414), B=math.exp(7.3049974), alpha=0.3526596,
                           beta=0.3526596, R_D_star=15.387756, R_N_star=5.309743),
        "Muennighoff et al. 2023, Scaling Data-Constrained Language Models, arXiv:2305.16264; the C4 fit as "
        "released in github.com/huggingface/datablations (README, Parametric Fit: log A=6.255414, "
        "log B=7.3049974, log E=0.6254804, alpha=beta=0.3526596, R_D*=15.387756, R_N*=5.309743)",
        "parameters, tokens, unique tokens U; C = 6ND; loss on C4"),
}


def read_law(spec: str):
    """(law, where it came from) for a preset name or a fit's JSON (approach 3 or datacon)."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        return preset.law, f"published constants '{spec}': {preset.citation}; conventions: {preset.conventions}"
    fitted = read_fit_json(spec, f"a FIT.json from `isoflop fit --approach 3 --json`, or one of {', '.join(PRESETS)}")
    values = {key: _positive_number(spec, fitted, key) for key in ("E", "A", "B", "alpha", "beta")}
    law = ChinchillaLaw(**values)
    if "R_N_star" in fitted or "R_D_star" in fitted:
        law = DataConstrainedLaw(**values, R_D_star=_positive_number(spec, fitted, "R_D_star"),
                                 R_N_star=_positive_number(spec, fitted, "R_N_star"))
    return law, f"{spec} (conventions: {described_conventions(fitted)})"


def _positive_number(spec: str, fitted: dict, key: str) -> float:
    value = fitted.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise AnalysisError(f"--law {spec}: missing, non-positive or non-finite '{key}' "
                            "(expected `isoflop fit --approach 3 --json`)")
    return float(value)


def chinchilla_form(law, spec: str) -> tuple[ChinchillaLaw, str]:
    """The L(N, D) = E + A/N^α + B/D^β that sizing needs (a data-constrained law without repetition)."""
    if isinstance(law, ChinchillaLaw):
        return law, ""
    if isinstance(law, DataConstrainedLaw):
        return law.base, " (its L(N, D) without repetition: every token unique)"
    raise AnalysisError(f"--law {spec}: sizing needs an L(N, D) of Hoffmann et al.'s form; "
                        f"{spec} has only single-variable laws (use hoffmann2022, besiroglu2024, ...)")


# ----------------------------------------------------------------------------------------------- predict


def predict(law, params=None, tokens=None, unique_tokens=None, flops=None) -> tuple[float, dict, str]:
    """(loss, the inputs it used with anything derived, which formula) under `law`."""
    if isinstance(law, KaplanLaw):
        return _predict_kaplan(law, params, tokens, unique_tokens, flops)
    given = {"params": params, "tokens": tokens, "flops": flops}
    params, tokens, how = _complete_nd(law.base if isinstance(law, DataConstrainedLaw) else law, params, tokens, flops)
    inputs = {key: value for key, value in given.items() if value is not None}
    inputs.update(params=params, tokens=tokens)
    if isinstance(law, DataConstrainedLaw):
        unique = tokens if unique_tokens is None else unique_tokens
        if unique > tokens * (1 + 1e-12):
            raise AnalysisError(f"--unique-tokens {unique:g} exceeds the training tokens {tokens:g}")
        n_eff, d_eff = law.effective(params, tokens, unique)
        inputs.update(unique_tokens=unique, effective_params=float(n_eff), effective_tokens=float(d_eff))
        return float(law.loss(params, tokens, unique)), inputs, "L = E + A/N'^alpha + B/D'^beta (Muennighoff et al.)" + how
    if unique_tokens is not None:
        raise AnalysisError("--unique-tokens needs a data-constrained law (muennighoff2023 or a datacon fit)")
    return float(law.loss(params, tokens)), inputs, "L = E + A/N^alpha + B/D^beta" + how


def _complete_nd(law: ChinchillaLaw, params, tokens, flops) -> tuple[float, float, str]:
    """N and D from any two of N, D, C (C = 6ND), or the compute-optimal pair for C alone."""
    count = sum(value is not None for value in (params, tokens, flops))
    if count == 3:
        raise AnalysisError("give two of --params, --tokens, --flops (C = 6ND fixes the third), or --flops alone")
    if params is not None and tokens is not None:
        return params, tokens, ""
    if params is not None and flops is not None:
        return params, flops / (6 * params), ", D = C/(6N)"
    if tokens is not None and flops is not None:
        return flops / (6 * tokens), tokens, ", N = C/(6D)"
    if flops is not None:
        n_opt, d_opt = law.frontier(flops)
        return float(n_opt), float(d_opt), ", at the compute-optimal N_opt(C), D_opt(C)"
    raise AnalysisError("give --params and --tokens, or two of --params/--tokens/--flops, or --flops alone "
                        "(the compute-optimal model)")


def _predict_kaplan(law: KaplanLaw, params, tokens, unique_tokens, flops) -> tuple[float, dict, str]:
    given = {key: value for key, value in (("params", params), ("tokens", tokens), ("flops", flops)) if value is not None}
    if unique_tokens is not None or len(given) != 1:
        raise AnalysisError("kaplan2020 predicts from exactly one of --params (L(N)), --tokens (L(D)) or "
                            "--flops (L(C_min))")
    (key, value), = given.items()
    scale, exponent, formula = {
        "params": (law.N_c, law.alpha_N, "L(N) = (N_c/N)^alpha_N"),
        "tokens": (law.D_c, law.alpha_D, "L(D) = (D_c/D)^alpha_D"),
        "flops": (law.C_c, law.alpha_C, f"L(C_min) = (C_c/C)^alpha_C, C_c = {law.C_c / PF_DAY_FLOPS:.3g} PF-days"),
    }[key]
    return float(np.power(scale / value, exponent)), given, formula
