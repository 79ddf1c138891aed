"""`isoflop report`: every fit the data allow, the figures, and report.md tying them together.

Writes into one directory: the PNG figures, report.md (which lists every figure), fits.json (every
result, and why any fit was skipped) and, when approach 3 succeeded, law.json for `isoflop size --law`.
The directory is checked before any fit and created only once one succeeded; every file is written
with `common.files.atomic_write`.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from analysis import conditional, plots
from analysis.errors import AnalysisError
from analysis.fits import APPROACHES, FitOptions, run_fit
from analysis.results import FitResult, fmt
from analysis.sources import Dataset
from common.files import WriteError, atomic_write
from common.validation import output_directory

TITLES = {
    "1": "Chinchilla approach 1 — minimum loss per budget",
    "2": "Chinchilla approach 2 — iso-FLOP parabolas",
    "3": "Chinchilla approach 3 — parametric L(N, D)",
    "kaplan": "Kaplan et al. power laws",
    "overtrain": "Over-training (Gadre et al.)",
    "datacon": "Data-constrained (Muennighoff et al.)",
    "conditional": "Architecture-conditional (Bian et al.)",
}


def run_all(data: Dataset, options: FitOptions) -> tuple[dict[str, FitResult], dict[str, str]]:
    """Each approach that the data support; the others with the reason they could not be fitted."""
    fits, skipped = {}, {}
    for approach in APPROACHES:
        if approach == "conditional" and not conditional.applies(data):
            continue  # a grid of one architecture: not a failed fit, a question the runs did not ask
        try:
            fits[approach] = run_fit(data, approach, options)
        except AnalysisError as err:
            skipped[approach] = str(err)
    return fits, skipped


def draw_figures(data: Dataset, fits: dict[str, FitResult], out_dir: pathlib.Path) -> list[tuple[str, str]]:
    """(file name, caption) of every figure written."""
    planned = [
        ("isoflop_curves.png", "Loss against model size at each iso-FLOP budget, with the approach-2 parabola "
         "through each budget and its minimum (star); the dashed line is approach 3's optimum.",
         lambda path: plots.isoflop_curves(data, fits.get("2"), fits.get("3"), path)),
        ("loss_vs_compute.png", "Loss of every run against its training compute, with approach 3's compute-optimal "
         "frontier and Kaplan's L(C) fitted through the lowest-loss run of each budget.",
         lambda path: plots.loss_vs_compute(data, fits.get("3"), fits.get("kaplan"), path)),
        ("optimal_allocation.png", "Compute-optimal parameters and tokens against compute: approach 1 (circles) and "
         "approach 2 (squares) with their power-law fits, approach 3 (line) with its 95% bootstrap band.",
         lambda path: plots.optimal_allocation(data, fits, path)),
    ]
    if "3" in fits:
        planned.append(("loss_contours.png", "Contours of the fitted L(N, D) with the compute-optimal line, the "
                        "iso-FLOP lines of the budgets (dotted) and the runs; over-trained runs are triangles.",
                        lambda path: plots.loss_contours(data, fits["3"], path)))
    if "overtrain" in fits:
        planned.append(("overtraining.png", "Loss against tokens per parameter at fixed compute, with the Gadre et al. "
                        "fit per budget and the compute-optimal multiplier M*.",
                        lambda path: plots.overtraining(data, fits["overtrain"], path)))
    if "datacon" in fits:
        planned.append(("data_constrained.png", "Observed against predicted loss for L(N, D') with repeated-data "
                        "decay R_D*, and (hollow) counting repeated tokens as fresh.",
                        lambda path: plots.data_constrained(data, fits["datacon"], path)))
    if "conditional" in fits:
        planned.append(("conditional_pareto.png", "Predicted loss against modelled decode throughput of the "
                        "architectures the conditional law's search considered at the largest run's N and D (Pareto "
                        "front), the LLaMA-style baseline and the search's choice; runs with `bench infer` results "
                        "on their own (measured) axis.",
                        lambda path: conditional.pareto_plot(fits["conditional"].details["search"], path,
                                                             conditional.measured_points(data))))
    planned += [
        ("efficiency.png", "Per-run model FLOPs utilisation and energy, as recorded in summary.json.",
         lambda path: plots.efficiency(data, path)),
        ("learning_curves.png", "Training loss against tokens for every run with a metrics.jsonl.",
         lambda path: plots.learning_curves(data, path)),
    ]
    written = []
    for name, caption, draw in planned:
        if draw(out_dir / name) is not None:
            written.append((name, caption))
    return written


def _headline(fits: dict[str, FitResult]) -> list[str]:
    """The exponents a and b from every approach side by side."""
    level = next(iter(fits.values())).ci_level if fits else 95
    lines = [f"| approach | a (N_opt ∝ C^a) | {level:g}% interval | b (D_opt ∝ C^b) | {level:g}% interval |",
             "|---|---|---|---|---|"]
    for approach in ("1", "2", "3"):
        if approach not in fits:
            continue
        result = fits[approach]
        cells = []
        for name in ("a", "b"):
            low, high = result.ci.get(name, (float("nan"), float("nan")))
            interval = "n/a" if math.isnan(low) else f"[{low:.3f}, {high:.3f}]"
            cells += [f"{result.estimates[name]:.3f}", interval]
        lines.append(f"| {approach} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(data: Dataset, fits, skipped, figures, options: FitOptions, command: str) -> str:
    lines = [
        "# Scaling-law report",
        "",
        f"- source: `{data.source}` ({len(data)} runs)",
        f"- conventions: {data.conventions.describe()}",
        f"- bootstrap: {options.n_resamples} resamples of {options.resample}, seed {options.seed}; intervals are "
        f"{options.ci_level:g}% percentile intervals",
        f"- reproduce: `{command}`",
        "",
        "## Data",
        "",
        *[f"- {note}" for note in data.notes],
        "",
        "## Compute-optimal exponents",
        "",
        *_headline(fits),
        "",
    ]
    if "3" in fits:
        est = fits["3"].estimates
        largest = float(np.max(data.flops))  # stay inside the data: no extrapolation in the headline
        n_opt = est["G"] * (largest / 6) ** est["a"]
        d_opt = largest / (6 * n_opt)
        lines += [
            f"Approach 3 puts the compute-optimal model at the largest budget here, C = {fmt(largest)} FLOPs, at "
            f"N_opt = {fmt(n_opt)} parameters and D_opt = {fmt(d_opt)} tokens ({d_opt / n_opt:.1f} tokens per parameter). "
            "`law.json` in this directory feeds `isoflop size --law law.json` for inference-aware sizing.",
            "",
        ]
    for approach, result in fits.items():
        lines += [f"## {TITLES[approach]}", "", "```", result.table(), "```", ""]
    if skipped:
        lines += ["## Fits not possible on these data", ""]
        lines += [f"- {TITLES[approach]}: {reason}" for approach, reason in skipped.items()]
        lines.append("")
    lines += ["## Figures", ""]
    for name, caption in figures:
        lines += [f"### {name}", "", caption, "", f"![{name}]({name})", ""]
    return "\n".join(lines)


def build_report(data: Dataset, out_dir, options: FitOptions = FitOptions(), command: str = "isoflop report") -> pathlib.Path:
    problems = output_directory("output directory", out_dir)
    if problems:
        raise AnalysisError(problems[0])
    out_dir = pathlib.Path(out_dir)
    fits, skipped = run_all(data, options)
    if not fits:
        raise AnalysisError("no fit was possible: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(out_dir, err) from None
    figures = draw_figures(data, fits, out_dir)
    atomic_write(out_dir / "fits.json", json.dumps(
        {"fits": {approach: result.as_dict() for approach, result in fits.items()}, "skipped": skipped}, indent=2
    ))
    if "3" in fits:
        atomic_write(out_dir / "law.json", fits["3"].to_json())
    return atomic_write(out_dir / "report.md", write_markdown(data, fits, skipped, figures, options, command))
