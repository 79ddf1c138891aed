"""Which completed runs are points of a scaling-law fit, and why the others are not (no jax, no numpy).

Two kinds of completed run are not fit points (Porian et al. 2024 show both bias the fitted exponents):
- a WSD `stable` run (summary `role`): trained at the peak rate and never decayed; its branches are the
  points (Hägele et al. 2024);
- every run of a learning-rate sweep group (summary `lr_sweep`) but the one with the lowest final eval
  loss: the grid tunes the rate per cell, and a fit through untuned rates measures the rate, not the size.
`analysis/sources.py` (load_runs) keeps only fit points; `isoflop grid status` shows each run's verdict.
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


def verdicts(summaries: Sequence[RunSummary]) -> list[Verdict]:
    """One Verdict per completed run summary, in order (see the module docstring)."""
    best: dict[str, RunSummary] = {}
    sizes: dict[str, int] = {}
    for summary in summaries:
        group = summary.lr_sweep
        if group is None or summary.role == "stable":
            continue
        sizes[group] = sizes.get(group, 0) + 1
        if group not in best or _loss(summary) < _loss(best[group]):
            best[group] = summary
    found = []
    for summary in summaries:
        group = summary.lr_sweep
        if summary.role == "stable":
            found.append(Verdict(False, "WSD stable run (not decayed): its branches are the fit points"))
        elif group is None:
            found.append(Verdict(True, ""))
        elif best[group] is summary and _loss(summary) < math.inf:
            found.append(Verdict(True, f"best of {sizes[group]} rates in lr sweep {group}"))
        else:
            winner = best[group]
            found.append(Verdict(False, f"lr sweep {group}: eval loss {_loss(summary):.4g} > {_loss(winner):.4g} "
                                        f"at lr {winner.learning_rate:g}"))
    return found


__all__ = ["Verdict", "verdicts"]
