"""The fits by name: each approach's point estimate, its bootstrap, and how its table reads.

`run_fit(data, approach, options)` is what `isoflop fit` and `isoflop report` both call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from analysis import chinchilla, conditional, datacon, frontier, kaplan, overtrain
from analysis.bootstrap import RESAMPLING, bootstrap, resample_residuals, resample_runs
from analysis.errors import AnalysisError
from analysis.laws import PF_DAY_FLOPS, ChinchillaLaw
from analysis.results import FitResult, fmt
from analysis.robust import Objective, objective_named
from analysis.select import repeated_sizes
from analysis.sources import Dataset

APPROACHES = ("1", "2", "3", "kaplan", "overtrain", "datacon", "conditional")  # what a report of runs fits
FIT_APPROACHES = APPROACHES + ("frontier",)  # plus fits of a table of optima
# Each law as its paper fitted it: Hoffmann et al. (and Muennighoff et al., following them) Huber on log L;
# Gadre et al. least squares on L (scipy.optimize.curve_fit).
DEFAULT_OBJECTIVES = {"3": "huber-log", "datacon": "huber-log", "overtrain": "lsq", "conditional": "huber-log"}
PAPERS = {"3": "Hoffmann et al. 2022", "datacon": "Muennighoff et al. 2023", "overtrain": "Gadre et al. 2024",
          "conditional": "Hoffmann et al. 2022 (approach 3)"}
DEFAULT_LBFGS_STARTS = 64


@dataclasses.dataclass(frozen=True)
class FitOptions:
    n_resamples: int = 1000
    seed: int = 0
    progress: bool = False
    # L-BFGS runs from this many of the 4,500 Hoffmann starts (the lowest initial objectives); None = all.
    lbfgs_starts: int | None = DEFAULT_LBFGS_STARTS
    reference_flops: float | None = None  # over-training: compute at which penalties are reported
    window: int | None = None  # approach 2: the runs nearest each budget's lowest loss its parabola uses
    objective: str | None = None  # approaches 3, overtrain, datacon: None = the approach's paper's objective
    sigma_col: str | None = None  # frontier: the column holding the standard deviation of log N*
    ci_level: float = 95.0  # percent of the bootstrap draws each interval holds
    # What a bootstrap draw resamples: runs, or residuals of a fixed design where the approach has a model of
    # each budget (approach 2); a report's other approaches then keep resampling runs.
    resample: str = "runs"


@dataclasses.dataclass(frozen=True)
class Spec:
    title: str
    rows: list[tuple[str, str]]
    point: Callable[[Dataset, FitOptions], dict]
    # Given the point estimate, the estimator the bootstrap calls on each resample (warm-started).
    resample: Callable[[dict, FitOptions], Callable[[Dataset], dict]]
    within_budgets: bool
    describe: Callable[[dict, FitResult], tuple[list[str], list[str]]]  # (extra table lines, notes)
    # For `--resample residuals`: (fitted, leverage, strata) of the point fit's model, or None if it has none.
    residual_model: Callable[[Dataset, dict, FitOptions], tuple] | None = None
    residual_model_name: str = ""


def _same(point_fn):
    """Resample with the same estimator as the point fit (closed-form fits need no warm start)."""
    return lambda point, options: (lambda sample: point_fn(sample, options))


def _approach1_point(data, options):
    return chinchilla.fit_approach1(data)


def _approach1_resample(point, options):
    budgets = tuple(point["details"]["frontier_budgets"])  # the point fit's frontier, in every resample
    return lambda sample: chinchilla.fit_approach1(sample, budgets)


def _approach2_point(data, options):
    return chinchilla.fit_approach2(data, window=options.window)


def _approach2_resample(point, options):
    budgets = tuple(point["details"]["fit_budgets"])  # every resample fits the point fit's budgets, or is degenerate
    inside = options.resample != "residuals"  # see approach2_budgets: only a case resample loses its edge sizes
    return lambda sample: chinchilla.fit_approach2(sample, window=options.window, budgets=budgets, inside=inside)


def _approach2_residual_model(data, point, options):
    return chinchilla.approach2_residual_model(data, point, options.window)


def _frontier_point(data, options):
    return frontier.fit_frontier(data, options.sigma_col)


def _describe_frontier(estimates, result):
    details = estimates["details"]
    weighting = (f"weighted 1/σ² by column '{details['weighted_by']}' (σ: standard deviation of ln N*)"
                 if details["weighted_by"] else "unweighted (the scatter about the line estimates the noise)")
    notes = [f"log N*{' and log D*' if details['fits_D'] else ''} regressed on log C by least squares over "
             f"{details['n_optima']} optima, {weighting}; *_se are the least-squares standard errors"]
    if not details["fits_D"]:
        notes.append("no tokens column: D* not fitted (D* = C/(6·N*) would only restate N*)")
    return [], notes


def _kaplan_point(data, options):
    return kaplan.fit_kaplan(data)


# ------------------------------------------------------------------------------------ per-approach text


def _describe_approach1(estimates, result):
    lines = ["  lowest-loss run of each budget:"]
    lines += [
        f"    C={fmt(row['flops'])}  N={fmt(row['params'])}  D={fmt(row['tokens'])}  L={row['loss']:.4f}  ({row['run_id']})"
        for row in estimates["details"]["frontier"]
    ]
    notes = ["N_opt = k_N·C^a and D_opt = k_D·C^b by least squares in log-log space"]
    if estimates["details"]["n_budgets_skipped"]:
        notes.append(f"{estimates['details']['n_budgets_skipped']} budgets with a single run left out")
    return lines, notes


def _describe_approach2(estimates, result):
    details = estimates["details"]
    used = ("all runs of each budget" if details["window"] is None else
            f"the {details['window']} runs centred (in log N) on each budget's lowest loss (--window)")
    lines = [f"  per budget: parabola minimum in log N and log D through {used}; asymmetry = where the minimum "
             "sits in the span of the points used (0 centred, ±1 at an edge)"]
    lines.append(f"    {'C':>10}  {'used':>7}  {'N used':>21}  {'N_opt':>10}  {'D_opt':>10}  {'L_min':>7}  "
                 f"{'asym N':>7}  {'asym D':>7}")
    for budget in details["budgets"]:
        low, high = budget["params_used"]
        lines.append(
            f"    {fmt(budget['flops']):>10}  {budget['n_runs']:>3}/{budget['n_runs_budget']:<3}  "
            f"{fmt(low) + '..' + fmt(high):>21}  {fmt(budget['params_opt']):>10}  "
            f"{fmt(budget['tokens_opt']):>10}  {budget['loss_min']:>7.4f}  {budget['asymmetry_N']:>+7.2f}  "
            f"{budget['asymmetry_D']:>+7.2f}"
        )
    notes = ["the runs each budget used are listed in the JSON (details.budgets[].runs_used)"]
    if details["n_budgets_skipped"]:
        notes.append(f"{details['n_budgets_skipped']} budgets skipped (fewer than 3 model sizes or a parabola opening downward)")
    worst = estimates["max_abs_asymmetry_N"]
    if worst > 1:
        notes.append(f"grid asymmetry: some minima lie outside their budget's sampled sizes (|asym| up to {worst:.2f}); "
                     "those minima are extrapolated and bias a and b")
    elif worst > 0.5:
        notes.append(f"grid asymmetry: minima sit off-centre (|asym| up to {worst:.2f}); a parabola through an "
                     "asymmetric grid biases approach 2 — centre the grids on N_opt or prefer approach 3")
    else:
        notes.append(f"grid asymmetry: minima near the centre of each grid (|asym| <= {worst:.2f}), little bias expected")
    return lines, notes


def _describe_approach3(estimates, result):
    law = ChinchillaLaw(**{key: estimates[key] for key in ("E", "A", "B", "alpha", "beta")})
    lines = [f"  objective ({objective_of('3', result.options).description}): {estimates['objective']:.6g}",
             "  compute-optimal frontier at the data's budgets (C = 6·N·D): N_opt = G·(C/6)^a, D_opt = (C/6)^b / G"]
    budgets = np.unique(result.details.get("budget_labels", []))
    band = chinchilla.frontier_band(result.samples, budgets, result.ci_level / 100) if len(budgets) else None
    for i, flops in enumerate(budgets):
        n_opt, d_opt = law.frontier(flops)
        text = f"    C={fmt(flops):>10}  N_opt={fmt(n_opt):>10}  D_opt={fmt(d_opt):>10}  L={float(law.loss(n_opt, d_opt)):.4f}"
        if band is not None:
            text += f"  N_opt {result.ci_level:g}% [{fmt(band[0][i])}, {fmt(band[1][i])}]"
        lines.append(text)
    return lines, []


def _describe_kaplan(estimates, result):
    return [f"  C_c = {fmt(estimates['C_c'] / PF_DAY_FLOPS)} PF-days"], [
        "L(N), L(D), L(C) fitted through the compute frontier (lowest-loss run of each budget); L(N, D) on every run"
    ]


def _describe_overtrain(estimates, result):
    reference = estimates["details"]["reference_flops"]
    optimal_loss = estimates["E"] + 2 * np.sqrt(estimates["a_M"] * estimates["b_M"]) * reference ** -estimates["eta"]
    lines = [f"  at C = {fmt(reference)}: compute-optimal M* = {estimates['M_opt']:.1f} reaches L = {optimal_loss:.4f}; "
             "penalty_M<m> is the loss an M-times over-trained model gives up:"]
    lines += [
        f"    M={multiplier:>4}  +{estimates[f'penalty_M{multiplier}']:.4f}  "
        f"(+{100 * estimates[f'penalty_M{multiplier}'] / optimal_loss:.2f}%)"
        for multiplier in overtrain.REPORTED_MULTIPLIERS
    ]
    return lines, []


def _describe_datacon(estimates, result):
    details = estimates["details"]
    notes = [f"L(N, D) from {details['n_single_epoch']} single-epoch runs; R_D* and R_N* together from "
             f"{details['n_repeated']} runs that repeat data ({details['n_excess_params']} of them with parameters "
             "in excess of N_opt(U), U_N = min(N, N_opt(U)))"]
    if "R_N_star" not in estimates:
        notes.append("R_N* not estimated: no repeated run has more parameters than N_opt(U), so the data say "
                     "nothing about excess parameters")
    return [], notes


# ------------------------------------------------------------------------------------------- registry


def objective_of(approach: str, options: FitOptions) -> Objective:
    """The objective `approach` is fitted by: the one asked for, else its paper's."""
    return objective_named(options.objective or DEFAULT_OBJECTIVES[approach])


def _approach3_point(data, options):
    return chinchilla.fit_approach3(data, n_best=options.lbfgs_starts, objective=objective_of("3", options))


def _approach3_resample(point, options):
    start = chinchilla.law_theta(ChinchillaLaw(**{key: point[key] for key in ("E", "A", "B", "alpha", "beta")}))
    return lambda sample: chinchilla.fit_approach3(sample, starts=start[None], objective=objective_of("3", options))


def _overtrain_point(data, options):
    return overtrain.fit_overtrain(data, reference_flops=options.reference_flops,
                                   objective=objective_of("overtrain", options))


def _overtrain_resample(point, options):
    start = np.array([[np.log(point["E"]), np.log(point["a_M"]), np.log(point["b_M"]), point["eta"]]])
    reference = point["details"]["reference_flops"]
    return lambda sample: overtrain.fit_overtrain(sample, reference_flops=reference, starts=start,
                                                  objective=objective_of("overtrain", options))


def _datacon_point(data, options):
    return datacon.fit_datacon(data, n_best=options.lbfgs_starts, objective=objective_of("datacon", options))


def _datacon_resample(point, options):
    start = chinchilla.law_theta(ChinchillaLaw(**{key: point[key] for key in ("E", "A", "B", "alpha", "beta")}))
    need_r_n = "R_N_star" in point
    return lambda sample: datacon.fit_datacon(sample, starts=start[None], n_best=None,
                                              objective=objective_of("datacon", options), need_r_n=need_r_n)


def _kaplan_resample(point, options):
    start = np.array([[point["alpha_N_joint"], point["alpha_D_joint"], np.log(point["N_c_joint"]), np.log(point["D_c_joint"])]])
    budgets = tuple(point["details"]["frontier_budgets"])
    return lambda sample: kaplan.fit_kaplan(sample, joint_starts=start, budgets=budgets)


def _conditional_point(data, options):
    return conditional.fit_conditional(data, n_best=options.lbfgs_starts, objective=objective_of("conditional", options))


def _conditional_resample(point, options):
    start = conditional.warm_start(point)
    return lambda sample: conditional.fit_conditional(sample, starts=start, held_out=False,
                                                      objective=objective_of("conditional", options))


def _describe_conditional(estimates, result):
    details = estimates["details"]
    held, found = details["held_out"], details["search"]
    lines = [f"  held-out runs ({held['folds']}-fold, each part predicted by a fit to the rest): relative error "
             f"rms {100 * held['rmse_relative']:.2f}%, max {100 * held['max_abs_relative']:.2f}%",
             f"  search at the largest run's N={fmt(found['params'])}, D={fmt(found['tokens'])}, "
             f"loss <= the LLaMA-style baseline's {found['target_loss']:.4f}:"]
    for key in ("baseline", "best"):
        arch = found[key]["architecture"]
        lines.append(f"    {key:>8}: d={arch['d_model']} layers={arch['n_layers']} heads={arch['n_heads']} "
                     f"kv={arch['n_kv_heads']} d_ff={arch['d_ff']} (d/√N={arch['width_ratio']:.3f}, r={arch['ratio']:.2f}, "
                     f"N={fmt(arch['params'])})  L={found[key]['loss']:.4f}  {fmt(found[key]['tokens_per_second'])} tok/s")
    lines.append(f"    modelled decode throughput gain over the baseline: {100 * found['throughput_gain']:+.1f}%")
    notes = [f"the factors are {conditional.PAPER}'s eq. 3 (a0 + a1·ln x + a2/x, and b0 + b1·ln r + b2/r) divided "
             "by their minima, so that E, A and B stay identified (docs/ANALYSIS-CONDITIONAL.md); GQA enters the "
             "search, not the law",
             "throughput in the search is modelled (analysis/conditional.py CostModel, a nominal device): read "
             "ratios, not absolute figures"]
    return lines, notes


_LAW_ROWS = [("E", "irreducible loss"), ("A", "coefficient of N"), ("B", "coefficient of D"),
             ("alpha", "exponent of N"), ("beta", "exponent of D")]

SPECS = {
    "1": Spec(
        "Chinchilla approach 1: minimum loss at each FLOP budget -> N_opt ∝ C^a, D_opt ∝ C^b",
        [("a", "N_opt ∝ C^a"), ("b", "D_opt ∝ C^b"), ("k_N", "N_opt = k_N·C^a"), ("k_D", "D_opt = k_D·C^b")],
        _approach1_point, _approach1_resample, True, _describe_approach1,
    ),
    "2": Spec(
        "Chinchilla approach 2: iso-FLOP parabolas in log N and log D -> N_opt ∝ C^a, D_opt ∝ C^b",
        [("a", "N_opt ∝ C^a (parabolas in log N)"), ("b", "D_opt ∝ C^b (parabolas in log D)"),
         ("k_N", "N_opt = k_N·C^a"), ("k_D", "D_opt = k_D·C^b"), ("mean_asymmetry_N", "mean grid asymmetry in log N")],
        _approach2_point, _approach2_resample, True, _describe_approach2,
        _approach2_residual_model, "parabola in log N",
    ),
    "3": Spec(
        "Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta (L-BFGS)",
        _LAW_ROWS + [("a", "N_opt ∝ C^a = beta/(alpha+beta)"), ("b", "D_opt ∝ C^b = alpha/(alpha+beta)"),
                     ("G", "N_opt = G·(C/6)^a")],
        _approach3_point, _approach3_resample, False, _describe_approach3,
    ),
    "kaplan": Spec(
        "Kaplan et al. 2020: L(N) = (N_c/N)^alpha_N, L(D) = (D_c/D)^alpha_D, L(C) = (C_c/C)^alpha_C; "
        "L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
        [("alpha_N", "L(N) exponent"), ("N_c", "L(N) scale"), ("alpha_D", "L(D) exponent"), ("D_c", "L(D) scale"),
         ("alpha_C", "L(C_min) exponent"), ("C_c", "L(C_min) scale, FLOPs"),
         ("alpha_N_joint", "L(N, D) alpha_N"), ("alpha_D_joint", "L(N, D) alpha_D"),
         ("N_c_joint", "L(N, D) N_c"), ("D_c_joint", "L(N, D) D_c")],
        _kaplan_point, _kaplan_resample, True, _describe_kaplan,
    ),
    "overtrain": Spec(
        "Over-training (Gadre et al. 2024): L(C, M) = E + (a_M·M^eta + b_M·M^-eta)·C^-eta, M = D/N",
        [("E", "irreducible loss"), ("a_M", "coefficient of M^eta"), ("b_M", "coefficient of M^-eta"),
         ("eta", "exponent"), ("M_opt", "compute-optimal tokens per parameter")]
        + [(f"penalty_M{m}", f"loss given up at M={m}") for m in overtrain.REPORTED_MULTIPLIERS],
        _overtrain_point, _overtrain_resample, False, _describe_overtrain,
    ),
    "datacon": Spec(
        "Data-constrained (Muennighoff et al. 2023): L(N', D') with D' = U + U·R_D*·(1 - exp(-R_D/R_D*)), "
        "N' = U_N + U_N·R_N*·(1 - exp(-R_N/R_N*))",
        [("R_D_star", "repetitions at which repeated data's value decays by 1/e"),
         ("R_N_star", "excess-parameter ratio at which their value decays by 1/e"),
         ("worth_of_4_epochs", "fraction of 4 epochs' tokens worth fresh data")] + _LAW_ROWS,
        _datacon_point, _datacon_resample, False, _describe_datacon,
    ),
}

SPECS["conditional"] = Spec(
    "Architecture-conditional (Bian et al. 2025): L = (E + A/N^alpha + B/D^beta)·(1 + c_width·h(ln(x/x*)))"
    "·(1 + c_ratio·h(ln(r/r*))), h(u) = u + e^-u - 1, x = d/√N, r = MLP/attention parameters",
    _LAW_ROWS + [("c_width", "curvature in d/√N"), ("width_opt", "x* = optimal d/√N"),
                 ("c_ratio", "curvature in r"), ("ratio_opt", "r* = optimal MLP-to-attention ratio")],
    _conditional_point, _conditional_resample, False, _describe_conditional,
)

SPECS["frontier"] = Spec(
    "Compute-optimal frontier from a table of optima: N* = k_N·C^a, D* = k_D·C^b (least squares in log-log)",
    [("a", "N* ∝ C^a"), ("a_se", "standard error of a"), ("k_N", "N* = k_N·C^a"),
     ("b", "D* ∝ C^b"), ("b_se", "standard error of b"), ("k_D", "D* = k_D·C^b")],
    _frontier_point, _same(_frontier_point), False, _describe_frontier,
)


def check_approach(approach: str) -> str:
    if approach not in SPECS:
        raise AnalysisError(f"unknown approach {approach!r}: choose one of {', '.join(FIT_APPROACHES)}")
    return approach


def check_resampling(approach: str | None, resample: str) -> None:
    """An unknown way to resample, or (for one named approach) residuals where it has no model, is an error."""
    if resample not in RESAMPLING:
        raise AnalysisError(f"unknown --resample {resample!r}: choose one of {', '.join(RESAMPLING)}")
    if approach is not None and resample == "residuals" and SPECS[check_approach(approach)].residual_model is None:
        with_models = ", ".join(name for name, spec in SPECS.items() if spec.residual_model is not None)
        raise AnalysisError(f"--resample residuals applies to approach {with_models} only (got --approach {approach})")


def _resampler(spec: Spec, data: Dataset, point: dict, options: FitOptions):
    if options.resample == "residuals" and spec.residual_model is not None:
        fitted, leverage, strata = spec.residual_model(data, point, options)
        return resample_residuals(data, fitted, leverage, strata, spec.residual_model_name)
    return resample_runs(data, within_budgets=spec.within_budgets)


def run_fit(data: Dataset, approach: str, options: FitOptions = FitOptions()) -> FitResult:
    """The point estimate, the bootstrap around it, and the result with every note on how it was made."""
    spec = SPECS[check_approach(approach)]
    check_resampling(None, options.resample)
    if len(data) == 0:
        raise AnalysisError("no data points to fit")
    if options.objective is not None:
        objective_named(options.objective)  # an unknown name is an error whichever approach runs
    point = spec.point(data, options)
    estimates = {name: float(value) for name, value in point.items() if name != "details"}
    result = FitResult(
        approach=approach, title=spec.title, estimates=estimates, ci={}, rows=spec.rows, n_points=len(data),
        source=data.source, conventions=data.conventions, notes=list(data.notes), ci_level=options.ci_level,
        details={**point.get("details", {}), "budget_labels": sorted(set(data.budget.tolist()))}, options=options,
    )
    if approach in DEFAULT_OBJECTIVES:
        objective = objective_of(approach, options)
        default = objective.name == DEFAULT_OBJECTIVES[approach]
        result.details["objective"] = objective.name
        result.notes.append(f"objective: {objective.description} (--objective {objective.name}; "
                            + (f"as {PAPERS[approach]} fitted it)" if default else
                               f"{PAPERS[approach]} used {DEFAULT_OBJECTIVES[approach]})"))
    warning = repeated_sizes(data)
    if warning and approach != "conditional":  # varying the architecture at one N is that law's design
        result.notes.append(warning)
    epochs = data.extra("epochs")
    repeated = int(np.sum(np.isfinite(epochs) & (epochs > 1 + 1e-9)))
    if repeated and approach != "datacon":
        result.notes.append(f"{repeated} runs repeat data (epochs > 1) and their tokens count as fresh here; "
                            "see --approach datacon, or leave them out with --drop-run")
    if approach in ("3", "datacon"):
        starts = "all" if options.lbfgs_starts is None else f"the {options.lbfgs_starts} best"
        result.notes.append(f"L-BFGS from {starts} of Hoffmann et al.'s 4,500 initialisations (screened by objective); "
                            "bootstrap refits warm-start from the point estimate")
    if options.n_resamples:
        draws = bootstrap(spec.resample(point, options), _resampler(spec, data, point, options),
                          options.n_resamples, options.seed, progress=options.progress, label=f"bootstrap {approach}")
        result.samples = draws.samples if draws.reliable else {}
        result.draws = draws
        result.ci = {name: draws.interval(name, options.ci_level / 100) for name in estimates}
        result.se = {name: draws.standard_error(name) for name in estimates}
        result.notes.append(draws.note(options.ci_level / 100))
    else:
        result.notes.append("no bootstrap (0 resamples): no intervals")
    extra_lines, notes = spec.describe(point, result)
    result.extra_lines, result.notes = extra_lines, result.notes + notes
    return result
