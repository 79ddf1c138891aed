"""A fit's outcome — point estimates, intervals (95% unless --ci says otherwise), what was used and what was decided — as a table or JSON."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

import numpy as np

from analysis.sources import Conventions


@dataclasses.dataclass
class FitResult:
    approach: str
    title: str
    estimates: dict[str, float]
    ci: dict[str, tuple[float, float]]  # bootstrap percentile intervals at ci_level percent
    rows: list[tuple[str, str]]  # (estimate name, what it is): the table's rows, in order
    n_points: int
    source: str
    conventions: Conventions
    notes: list[str]
    details: dict = dataclasses.field(default_factory=dict)
    extra_lines: list[str] = dataclasses.field(default_factory=list)  # e.g. approach 2's per-budget table
    samples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)  # bootstrap draws
    options: object = dataclasses.field(default=None, repr=False)  # the FitOptions it was made with
    ci_level: float = 95.0
    se: dict[str, float] = dataclasses.field(default_factory=dict)  # bootstrap standard errors
    draws: object = dataclasses.field(default=None, repr=False)  # the BootstrapResult, for --save-samples

    def as_dict(self) -> dict:
        return {
            "approach": self.approach,
            "law": self.title,
            **{name: _plain(value) for name, value in self.estimates.items()},
            "n_points": self.n_points,
            f"ci{self.ci_level:g}": {name: [_plain(low), _plain(high)] for name, (low, high) in self.ci.items()},
            "ci_level": self.ci_level,
            "se": {name: _plain(value) for name, value in self.se.items()},
            "conventions": self.conventions.as_dict(),
            "source": self.source,
            "notes": list(self.notes),
            "details": _plain(self.details),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def table(self) -> str:
        """The estimates with their intervals, headed by the law, the source and the conventions."""
        lines = [
            f"{self.title}",
            f"source: {self.source} ({self.n_points} points)",
            f"conventions: {self.conventions.describe()}",
        ]
        rows = [(name, meaning) for name, meaning in self.rows if name in self.estimates]  # b: only given D*
        width = max(len(name) for name, _ in rows)
        lines.append(f"  {'name':<{width}}  {'estimate':>11}  {f'{self.ci_level:g}% interval':<25}  {'std err':>10}  "
                     "meaning")
        for name, meaning in rows:
            low, high = self.ci.get(name, (math.nan, math.nan))
            interval = "n/a" if math.isnan(low) else f"[{fmt(low)}, {fmt(high)}]"
            se = self.se.get(name, math.nan)
            lines.append(f"  {name:<{width}}  {fmt(self.estimates[name]):>11}  {interval:<25}  "
                         f"{'n/a' if math.isnan(se) else fmt(se):>10}  {meaning}")
        lines += self.extra_lines
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def samples_csv(results: list[tuple[dict, FitResult]]) -> str:
    """Every fit's bootstrap draws as CSV, one row per resample that was fitted: the group's key columns,
    then one column per estimate (what `--save-samples` writes, for SEs and ranges without code)."""
    drawn = [(key, result.draws.samples if result.draws is not None else {}) for key, result in results]
    names = list(dict.fromkeys(name for _, result in results for name in result.estimates
                               if any(name in samples for _, samples in drawn)))
    keys = list(results[0][0])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys + names)
    for key, samples in drawn:
        count = max((len(values) for values in samples.values()), default=0)
        for i in range(count):
            writer.writerow([key[name] for name in keys]
                            + [repr(float(samples[name][i])) if name in samples else "" for name in names])
    return out.getvalue()


def fmt(value: float) -> str:
    """Four significant digits, scientific only where it helps."""
    if value is None or not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        short = f"{value:.4g}"  # '1e+18' rather than '1.000e+18'; but 0.0005 would print plainly
        return short if "e" in short else f"{value:.3e}"
    return f"{value:.4g}"


def _plain(value):
    """numpy scalars and arrays to JSON-ready Python values; NaN to None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
