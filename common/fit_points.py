"""Which completed runs are points of a scaling-law fit, and why the others are not (no jax, no numpy).

Two kinds of completed run are not fit points (Porian et al. 2024 show both bias the fitted exponents):
- a WSD `stable` run (summary `role`): trained at the peak rate and never decayed; its branches are the
  points (Hägele et al. 2024);
- every run of a learning-rate sweep group (summary `lr_sweep`) but the one with the lowest final eval
  loss: the grid tunes the rate per cell, and a fit through untuned rates measures the rate, not the size.
`analysis/sources.py` (load_runs) keeps only fit points; `isoflop grid status` shows each run's verdict; a
grid with `lr_sweep.transfer` gives the larger sizes the rate of their sweep's winner (launch/plan.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from common.run_contract import RunSummary


@dataclasses.dataclass(frozen=True)
class Verdict:
    selected: bool
    reason: str  # one line: why the run is or is not a fit point ("" for a plain run)


def _loss(summary: RunSummary) -> float:
    loss = summary.final_eval_loss
    return loss if loss is not None and math.isfinite(loss) else math.inf


def best_by_group(summaries: Sequence[RunSummary]) -> dict[str, RunSummary]:
    """Each lr sweep group's winner: its run with the lowest finite final eval loss (a stable run never).
    The fits keep it, and a grid's `lr_sweep.transfer` trains the larger sizes at its rate."""
    best: dict[str, RunSummary] = {}
    for summary in summaries:
        group = summary.lr_sweep
        if group is None or summary.role == "stable" or _loss(summary) == math.inf:
            continue
        if group not in best or _loss(summary) < _loss(best[group]):
            best[group] = summary
    return best


def verdicts(summaries: Sequence[RunSummary]) -> list[Verdict]:
    """One Verdict per completed run summary, in order (see the module docstring)."""
    best = best_by_group(summaries)
    sizes: dict[str, int] = {}
    for summary in summaries:
        if summary.lr_sweep is not None and summary.role != "stable":
            sizes[summary.lr_sweep] = sizes.get(summary.lr_sweep, 0) + 1
    found = []
    for summary in summaries:
        group = summary.lr_sweep
        if summary.role == "stable":
            found.append(Verdict(False, "WSD stable run (not decayed): its branches are the fit points"))
        elif group is None:
            found.append(Verdict(True, ""))
        elif best.get(group) is summary:
            found.append(Verdict(True, f"best of {sizes[group]} rates in lr sweep {group}"))
        elif group not in best:
            found.append(Verdict(False, f"lr sweep {group}: no rate reached a finite eval loss"))
        else:
            winner = best[group]
            found.append(Verdict(False, f"lr sweep {group}: eval loss {_loss(summary):.4g} > {_loss(winner):.4g} "
                                        f"at lr {winner.learning_rate:g}"))
    return found


__all__ = ["Verdict", "best_by_group", "verdicts"]
