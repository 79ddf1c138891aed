"""The report's figures, one function each, drawn with matplotlib's Agg canvas (no pyplot, no display).

Each takes the dataset and the fit results it needs (a result may be None when that fit was not
possible) and writes one PNG, returning its path, or None when there is nothing to draw. A PNG is
rendered in memory and written with `common.files.atomic_write`, so a kill or a full disk never leaves
half a figure.
"""

from __future__ import annotations

import io
import pathlib

import matplotlib
import matplotlib.cm
import matplotlib.colors
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import chinchilla
from analysis.laws import ChinchillaLaw, DataConstrainedLaw, effective_tokens, gadre_loss, kaplan_loss_c
from analysis.results import FitResult
from analysis.sources import Dataset
from common.files import atomic_write

# How far past the compute-optimal token count a run must train to be marked over-trained.
OVERTRAINED_FACTOR = 2.0


def _figure(ncols: int = 1, width: float = 6.4) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    return atomic_write(path, png.getvalue())


# Up to this many budgets get a legend entry each; more (digitised tables) get a colour bar of log10 C.
MAX_LEGEND_BUDGETS = 10
_BUDGET_CMAP = matplotlib.colors.ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0, 0.9, 256)))


def _budget_norm(data: Dataset) -> matplotlib.colors.Normalize:
    low, high = np.log10(data.budget.min()), np.log10(data.budget.max())
    return matplotlib.colors.Normalize(low - 0.5, high + 0.5) if low == high else matplotlib.colors.Normalize(low, high)


def _budget_colours(data: Dataset):
    """Each budget's colour: its position in log10 C, so that a colour bar can stand in for the legend."""
    norm = _budget_norm(data)
    return {budget: tuple(_BUDGET_CMAP(norm(np.log10(budget)))) for budget in np.unique(data.budget)}


def _budget_label(data: Dataset, budget: float) -> str | None:
    """A legend label per budget, or None when there are too many for a legend to be read."""
    return f"C={budget:.2g}" if len(np.unique(data.budget)) <= MAX_LEGEND_BUDGETS else None


def _budget_key(fig: Figure, ax, data: Dataset, **legend) -> None:
    """The legend, plus a colour bar of the budgets when they are too many to list."""
    if len(np.unique(data.budget)) > MAX_LEGEND_BUDGETS:
        mappable = matplotlib.cm.ScalarMappable(norm=_budget_norm(data), cmap=_BUDGET_CMAP)
        fig.colorbar(mappable, ax=ax, label=f"log10 iso-FLOP budget C ({len(np.unique(data.budget))} budgets)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**legend)


def _law(result: FitResult | None) -> ChinchillaLaw | None:
    if result is None:
        return None
    return ChinchillaLaw(**{key: result.estimates[key] for key in ("E", "A", "B", "alpha", "beta")})


def _subtitle(data: Dataset) -> str:
    return ", ".join(f"{role}: {data.conventions.label(role)}" for role in ("params", "flops", "loss"))


def isoflop_curves(data: Dataset, approach2: FitResult | None, approach3: FitResult | None, path) -> pathlib.Path:
    """Loss against N at each budget, the approach-2 parabola through it and its minimum."""
    return _save(isoflop_figure(data, approach2, approach3), path)


def isoflop_figure(data: Dataset, approach2: FitResult | None, approach3: FitResult | None) -> Figure:
    fig, (ax,) = _figure()
    colours = _budget_colours(data)
    for budget, colour in colours.items():
        rows = data.budget == budget
        ax.scatter(data.params[rows], data.loss[rows], color=colour, s=18, label=_budget_label(data, budget))
    for fit in approach2.details["budgets"] if approach2 else []:
        colour = colours[fit["budget"]]
        log_n = np.linspace(*np.log(fit["params_used"]), 100)  # the sizes its parabola was fitted to (--window)
        ax.plot(np.exp(log_n), np.polyval(fit["parabola_N"], log_n), color=colour, lw=1)
        ax.plot(fit["params_opt"], fit["loss_min"], marker="*", color=colour, ms=11, mec="black", mew=0.5)
    law = _law(approach3)
    if law is not None:
        budgets = np.array(list(colours))
        n_opt, d_opt = law.frontier(budgets)
        ax.plot(n_opt, law.loss(n_opt, d_opt), "k--", lw=1, label="approach 3 optimum")
    ax.set_xscale("log")
    ax.set_xlabel(f"parameters N ({data.conventions.label('params')})")
    ax.set_ylabel("loss")
    ax.set_title("IsoFLOP curves: parabola minima (stars)\n" + _subtitle(data), fontsize=10)
    _budget_key(fig, ax, data, fontsize=7, ncols=2)
    return fig


def loss_vs_compute(data: Dataset, approach3: FitResult | None, kaplan: FitResult | None, path) -> pathlib.Path:
    """Every run's loss against its compute, with the fitted compute-optimal frontier."""
    fig, (ax,) = _figure()
    points = ax.scatter(data.flops, data.loss, c=np.log10(data.params), s=16, cmap="viridis")
    fig.colorbar(points, ax=ax, label="log10 N")
    flops = np.geomspace(data.flops.min() / 2, data.flops.max() * 4, 200)
    law = _law(approach3)
    if law is not None:
        ax.plot(flops, law.frontier_loss(flops), "k-", lw=1.5, label="approach 3 frontier L(N_opt, D_opt)")
        ax.axhline(law.E, color="grey", ls=":", lw=1, label=f"E = {law.E:.3g}")
    if kaplan is not None:
        ax.plot(flops, kaplan_loss_c(flops, kaplan.estimates["C_c"], kaplan.estimates["alpha_C"]), "r--", lw=1,
                label=f"Kaplan L(C) = (C_c/C)^{kaplan.estimates['alpha_C']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel(f"training FLOPs C ({data.conventions.label('flops')})")
    ax.set_ylabel("loss")
    ax.set_title("Loss against compute\n" + _subtitle(data), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def optimal_allocation(data: Dataset, fits: dict[str, FitResult | None], path) -> pathlib.Path:
    """N_opt(C) and D_opt(C): approach 1 and 2 points and fitted lines, approach 3 with its 95% band."""
    fig, axes = _figure(ncols=2, width=5.2)
    flops = np.geomspace(data.flops.min() / 2, data.flops.max() * 4, 100)
    law = _law(fits.get("3"))
    level = fits["3"].ci_level if law is not None else 95
    band = chinchilla.frontier_band(fits["3"].samples, flops, level / 100) if law is not None else None
    for index, (ax, what, key) in enumerate(zip(axes, ("N_opt", "D_opt"), ("params", "tokens"))):
        if law is not None:
            ax.plot(flops, law.frontier(flops)[index], "k-", label=f"approach 3 ({'a' if index == 0 else 'b'}="
                    f"{fits['3'].estimates['a' if index == 0 else 'b']:.3f})")
            if band is not None:
                ax.fill_between(flops, band[2 * index], band[2 * index + 1], color="grey", alpha=0.3,
                                label=f"{level:g}% interval")
        for approach, marker, colour in (("1", "o", "tab:blue"), ("2", "s", "tab:orange")):
            result = fits.get(approach)
            if result is None:
                continue
            exponent = result.estimates["a" if index == 0 else "b"]
            scale = result.estimates["k_N" if index == 0 else "k_D"]
            if approach == "1":
                xs = [row["flops"] for row in result.details["frontier"]]
                ys = [row[key] for row in result.details["frontier"]]
            else:
                xs = [row["flops"] for row in result.details["budgets"]]
                ys = [row["params_opt" if index == 0 else "tokens_opt"] for row in result.details["budgets"]]
            ax.scatter(xs, ys, marker=marker, color=colour, s=22, zorder=3)
            low, high = result.ci.get("a" if index == 0 else "b", (np.nan, np.nan))
            interval = "" if np.isnan(low) else f" [{low:.3f}, {high:.3f}]"
            ax.plot(flops, scale * flops**exponent, color=colour, ls="--", lw=1,
                    label=f"approach {approach}: {exponent:.3f}{interval}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"training FLOPs C ({data.conventions.label('flops')})")
        ax.set_ylabel(f"{what} ({'parameters' if index == 0 else 'tokens'})")
        ax.set_title(f"{what} against compute", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(_subtitle(data), fontsize=9)
    return _save(fig, path)


def loss_contours(data: Dataset, approach3: FitResult, path) -> pathlib.Path:
    """Contours of the fitted L(N, D), the compute-optimal line, iso-FLOP lines and the runs."""
    law = _law(approach3)
    fig, (ax,) = _figure(width=6.8)
    log_n = np.linspace(np.log10(data.params.min()) - 0.5, np.log10(data.params.max()) + 0.5, 200)
    log_d = np.linspace(np.log10(data.tokens.min()) - 0.5, np.log10(data.tokens.max()) + 0.5, 200)
    grid_n, grid_d = np.meshgrid(10.0**log_n, 10.0**log_d)
    contours = ax.contour(grid_n, grid_d, law.loss(grid_n, grid_d), levels=14, cmap="viridis", linewidths=0.8)
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    flops = np.geomspace(6 * grid_n.min() * grid_d.min(), 6 * grid_n.max() * grid_d.max(), 100)
    n_opt, d_opt = law.frontier(flops)
    ax.plot(n_opt, d_opt, "k-", lw=1.5, label="compute-optimal N_opt(C), D_opt(C)")
    for budget in np.unique(data.budget):
        ax.plot(grid_n[0], budget / (6 * grid_n[0]), color="grey", ls=":", lw=0.7)
    _, d_best = law.frontier(6 * data.params * data.tokens)
    overtrained = data.tokens > OVERTRAINED_FACTOR * d_best
    ax.scatter(data.params[~overtrained], data.tokens[~overtrained], s=14, color="tab:blue", label="runs")
    if overtrained.any():
        ax.scatter(data.params[overtrained], data.tokens[overtrained], s=30, marker="^", color="tab:red",
                   label=f"over-trained (D > {OVERTRAINED_FACTOR:g}·D_opt)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(grid_n.min(), grid_n.max())
    ax.set_ylim(grid_d.min(), grid_d.max())
    ax.set_xlabel(f"parameters N ({data.conventions.label('params')})")
    ax.set_ylabel("tokens D")
    ax.set_title("Fitted L(N, D): contours, compute-optimal line, iso-FLOP lines (dotted)\n" + _subtitle(data), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def overtraining(data: Dataset, result: FitResult, path) -> pathlib.Path:
    """Loss against tokens per parameter at each budget, with the Gadre fit and M*."""
    fig, (ax,) = _figure()
    est = result.estimates
    multipliers = np.geomspace(data.multiplier.min() / 1.5, data.multiplier.max() * 1.5, 200)
    for budget, colour in _budget_colours(data).items():
        rows = data.budget == budget
        ax.scatter(data.multiplier[rows], data.loss[rows], color=colour, s=16, label=_budget_label(data, budget))
        ax.plot(multipliers, gadre_loss(budget, multipliers, est["E"], est["a_M"], est["b_M"], est["eta"]), color=colour, lw=1)
    ax.axvline(est["M_opt"], color="black", ls="--", lw=1, label=f"M* = {est['M_opt']:.1f} tokens/param")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per parameter M = D/N")
    ax.set_ylabel("loss")
    ax.set_title("Over-training at fixed compute (Gadre et al. form)\n" + _subtitle(data), fontsize=10)
    _budget_key(fig, ax, data, fontsize=7, ncols=2)
    return _save(fig, path)


def efficiency(data: Dataset, path) -> pathlib.Path | None:
    """Per-run MFU and energy, when the runs recorded them."""
    mfu, energy = data.extra("mfu"), data.extra("energy_kwh")
    if not (np.isfinite(mfu).any() or np.isfinite(energy).any()):
        return None
    order = np.argsort(data.flops)
    fig, axes = _figure(ncols=2, width=5.2)
    labels = [str(run_id) for run_id in data.run_ids[order]]
    positions = np.arange(len(order))
    axes[0].bar(positions, 100 * mfu[order], color="tab:blue")
    axes[0].set_ylabel("MFU (%)")
    axes[0].set_title("Model FLOPs utilisation per run", fontsize=10)
    axes[1].bar(positions, energy[order], color="tab:green")
    sources = sorted({str(s) for s in data.extra("energy_source") if isinstance(s, str) and s})
    axes[1].set_ylabel("energy (kWh)")
    finite = energy[np.isfinite(energy) & (energy > 0)]
    if len(finite) and finite.max() > 100 * finite.min():
        axes[1].set_yscale("log")
    axes[1].set_title("Energy per run" + (f"\n({'; '.join(sources)})" if sources else ""), fontsize=10)
    for ax in axes:
        ax.set_xticks(positions, labels, rotation=90, fontsize=max(4, 9 - len(labels) // 15))
        ax.set_xlabel("run (ordered by compute)")
    return _save(fig, path)


def learning_curves(data: Dataset, path) -> pathlib.Path | None:
    """Training loss against tokens seen, one line per run, from metrics.jsonl."""
    curves = {run_id: curve for run_id, curve in data.curves.items() if "tokens" in curve and "train_loss" in curve}
    if not curves:
        return None
    fig, (ax,) = _figure()
    colours = _budget_colours(data)
    budget_of = dict(zip(data.run_ids, data.budget))
    for run_id, curve in curves.items():
        colour = colours.get(budget_of.get(run_id), "grey")
        logged = np.isfinite(curve["train_loss"]) & (curve["tokens"] > 0)  # eval-only lines carry no train_loss
        ax.plot(curve["tokens"][logged], curve["train_loss"][logged], color=colour, lw=0.8, alpha=0.8, marker=".", ms=3)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("training loss")
    ax.set_title("Learning curves (colour = iso-FLOP budget)", fontsize=10)
    return _save(fig, path)


def data_constrained(data: Dataset, result: FitResult, path) -> pathlib.Path:
    """Observed loss against the loss the fitted L(N, D') predicts, coloured by epochs."""
    fig, (ax,) = _figure()
    est = result.estimates
    law = _law(result)
    epochs = np.nan_to_num(data.extra("epochs"), nan=1.0)
    if "R_N_star" in est:
        both = DataConstrainedLaw(**law.as_dict(), R_D_star=est["R_D_star"], R_N_star=est["R_N_star"])
        predicted = both.loss(data.params, data.tokens, data.tokens / epochs)
    else:
        predicted = law.loss(data.params, effective_tokens(data.tokens, epochs, est["R_D_star"]))
    naive = law.loss(data.params, data.tokens)
    points = ax.scatter(predicted, data.loss, c=epochs, cmap="plasma", s=18, label="with repeated-data decay")
    ax.scatter(naive, data.loss, facecolors="none", edgecolors="grey", s=18, label="counting repeats as fresh")
    fig.colorbar(points, ax=ax, label="epochs")
    low, high = data.loss.min(), data.loss.max()
    ax.plot([low, high], [low, high], "k--", lw=1)
    ax.set_xlabel("predicted loss")
    ax.set_ylabel("observed loss")
    ax.set_title(f"Data-constrained fit: R_D* = {est['R_D_star']:.3g}\n" + _subtitle(data), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def ladder_figure(fits, path, reference=()) -> pathlib.Path:
    """Porian et al. 2024's Figure 1 for a ladder (analysis/ladder.py): the approach-2 optima N_opt(C) and
    their power law per step (left), and the fitted exponent a per step with its interval (right), beside
    the published exponents in `reference` [(label, a)]."""
    fig, (frontier, exponents) = _figure(ncols=2, width=5.6)
    colours = matplotlib.colormaps["plasma"](np.linspace(0.05, 0.8, len(fits)))
    for i, (fit, colour) in enumerate(zip(fits, colours)):
        two = fit.approach2
        budgets = two.details["budgets"]
        flops = np.array([b["flops"] for b in budgets])
        frontier.scatter(flops, [b["params_opt"] for b in budgets], color=colour, s=20, zorder=3)
        span = np.geomspace(flops.min(), flops.max(), 50)
        frontier.plot(span, two.estimates["k_N"] * span ** two.estimates["a"], color=colour, lw=1.2,
                      label=f"{fit.step.label}: a = {two.estimates['a']:.2f}")
        low, high = two.ci.get("a", (np.nan, np.nan))
        exponents.errorbar([i], [two.estimates["a"]], yerr=[[two.estimates["a"] - low], [high - two.estimates["a"]]],
                           fmt="o", color=colour, capsize=4, label=None)
        if fit.approach3 is not None:
            low3, high3 = fit.approach3.ci.get("a", (np.nan, np.nan))
            a3 = fit.approach3.estimates["a"]
            exponents.errorbar([i + 0.15], [a3], yerr=[[a3 - low3], [high3 - a3]], fmt="s", mfc="white",
                               color=colour, capsize=3, label="approach 3" if i == 0 else None)
    for (label, value), style in zip(reference, (":", "--")):
        exponents.axhline(value, color="grey", ls=style, lw=1, label=f"{label}: {value:g}")
    frontier.set_xscale("log")
    frontier.set_yscale("log")
    frontier.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # a decade's 2..9 labels collide
    frontier.set_xlabel(f"training FLOPs C (each step in its own count)")
    frontier.set_ylabel(f"N_opt ({fits[0].approach2.conventions.label('params')} params)")
    frontier.set_title("Compute-optimal size per step (approach 2)", fontsize=10)
    frontier.legend(fontsize=7)
    exponents.set_xticks(range(len(fits)), [fit.step.label for fit in fits], fontsize=8, rotation=15)
    exponents.set_ylabel(f"a in N_opt ∝ C^a ({fits[0].approach2.ci_level:g}% bootstrap CI)")
    exponents.set_title("Fitted exponent per step (circles: approach 2)", fontsize=10)
    exponents.legend(fontsize=7)
    return _save(fig, path)
