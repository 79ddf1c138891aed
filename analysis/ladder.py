"""A ladder of grids, each changing one thing, and the exponent each gives (Porian et al. 2024, Figure 1).

Porian et al. ("Resolving Discrepancies in Compute-Optimal Scaling of Language Models", 2024) walk from
Kaplan's setup to Chinchilla's one correction at a time and show the fitted exponent a (N_opt ∝ C^a) at
every step. A step here is a directory of run directories and the FLOP count its budgets were spent
under: each step is fitted in its own count, as the paper does, with approach 2 (iso-FLOP parabolas)
and, when asked, approach 3, each with bootstrap intervals. `isoflop ladder` writes the table
(ladder.md, ladder.json) and the figure (ladder.png): N_opt against C per step and a per step.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from analysis.errors import AnalysisError
from analysis.fits import FitOptions, run_fit
from analysis.results import FitResult, fmt
from analysis.sources import Conventions, check_conventions, load_source
from common.files import atomic_write

KAPLAN_A, HOFFMANN_A = 0.73, 0.50  # the two published exponents the ladder walks between


@dataclasses.dataclass(frozen=True)
class Step:
    label: str  # e.g. "(a) Kaplan"
    source: str  # a directory of run directories
    flops: str  # the count its budgets were spent under (a FLOP convention)


@dataclasses.dataclass(frozen=True)
class StepFit:
    step: Step
    approach2: FitResult
    approach3: FitResult | None


def fit_steps(steps: list[Step], params: str, options: FitOptions, approach3: bool) -> list[StepFit]:
    """Each step fitted in its own FLOP count; a step that cannot be fitted stops the ladder (one line)."""
    if not steps:
        raise AnalysisError("ladder: give at least one --step LABEL DIR FLOPS")
    fits = []
    for step in steps:
        conventions = Conventions(params=params, flops=step.flops, named=frozenset({"params", "flops", "loss"}))
        check_conventions(conventions)
        data = load_source(step.source, conventions)
        try:
            two = run_fit(data, "2", options)
            three = run_fit(data, "3", options) if approach3 else None
        except AnalysisError as err:
            raise AnalysisError(f"ladder step {step.label!r} ({step.source}): {err}") from None
        fits.append(StepFit(step, two, three))
    return fits


def _interval(result: FitResult | None, name: str) -> tuple[float, float] | None:
    return None if result is None or name not in result.ci else result.ci[name]


def as_dict(fits: list[StepFit]) -> dict:
    return {"steps": [{"label": fit.step.label, "source": fit.step.source, "flops": fit.step.flops,
                       "approach2": fit.approach2.as_dict(),
                       "approach3": fit.approach3.as_dict() if fit.approach3 else None} for fit in fits]}


def table(fits: list[StepFit]) -> str:
    """Markdown: a (and b) per step with their intervals, the points used and the grid's worst asymmetry."""
    level = fits[0].approach2.ci_level
    lines = [f"| step | FLOPs | runs | a (approach 2) [{level:g}% CI] | CI width | b (approach 2) | "
             "a (approach 3) | worst asymmetry |", "|---|---|---|---|---|---|---|---|"]
    for fit in fits:
        two = fit.approach2
        a_low, a_high = _interval(two, "a") or (float("nan"), float("nan"))
        b_low, b_high = _interval(two, "b") or (float("nan"), float("nan"))
        three = "—"
        if fit.approach3 is not None:
            low, high = _interval(fit.approach3, "a") or (float("nan"), float("nan"))
            three = f"{fit.approach3.estimates['a']:.3f} [{low:.3f}, {high:.3f}]"
        lines.append(f"| {fit.step.label} | {fit.step.flops} | {two.n_points} | {two.estimates['a']:.3f} "
                     f"[{a_low:.3f}, {a_high:.3f}] | {a_high - a_low:.3f} | {two.estimates['b']:.3f} "
                     f"[{b_low:.3f}, {b_high:.3f}] | {three} | {two.estimates['max_abs_asymmetry_N']:.2f} |")
    return "\n".join(lines)


def write_ladder(fits: list[StepFit], output: str | pathlib.Path, command: str) -> pathlib.Path:
    """ladder.png, ladder.json and ladder.md (the table, the sources and the command) under `output`."""
    from analysis.plots import ladder_figure  # matplotlib only when figures are asked for

    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    figure = ladder_figure(fits, output / "ladder.png", reference=(("Kaplan et al. 2020", KAPLAN_A),
                                                                   ("Hoffmann et al. 2022", HOFFMANN_A)))
    atomic_write(output / "ladder.json", json.dumps(as_dict(fits), indent=2) + "\n")
    notes = [f"- {fit.step.label}: {fit.step.source}, budgets under {fit.step.flops}, "
             f"{fit.approach2.conventions.describe()}" for fit in fits]
    text = (f"# Exponent ladder\n\n`{command}`\n\n{table(fits)}\n\n![a per step]({figure.name})\n\n"
            + "\n".join(notes) + "\n\nPer-budget optima: " + ", ".join(
                f"{fit.step.label} " + "; ".join(f"C {fmt(b['flops'])}: N_opt {fmt(b['params_opt'])}"
                                                 for b in fit.approach2.details["budgets"]) for fit in fits) + "\n")
    return atomic_write(output / "ladder.md", text)
