"""Choosing rows before a fit: `--where col<op>value` and `--group-by col[,col]`.

Published tables mix datasets and configurations in one file; pooling them silently fits a law nobody
measured. A selection of a CSV's rows is regrouped into iso-FLOP budgets with the tolerance the file was
read with, so budgets are formed from the rows that are fitted. Repeated model sizes within one budget
are the usual sign of pooled groups: `repeated_sizes` says where.
"""

from __future__ import annotations

import dataclasses
import math
import operator

import numpy as np

from analysis.errors import AnalysisError
from analysis.sources import Dataset, cluster_budgets

# Longest first, so that '<=' is not read as '<' followed by '=value'.
OPERATORS = {"!=": operator.ne, "<=": operator.le, ">=": operator.ge, "=": operator.eq, "<": operator.lt,
             ">": operator.gt}
ROLE_COLUMNS = ("params", "tokens", "flops", "loss", "budget", "run_id")


@dataclasses.dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value}"

    def holds(self, cell) -> bool:
        """Numeric comparison when both sides are numbers, text comparison otherwise."""
        left, right = _number(cell), _number(self.value)
        if left is None or right is None:
            left, right = str(cell), self.value
        return OPERATORS[self.op](left, right)


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def parse_where(text: str) -> Condition:
    """'col=value', 'col!=value', 'col<value', 'col<=value', 'col>value' or 'col>=value'."""
    positions = [(text.find(op), -len(op), op) for op in OPERATORS if text.find(op) > 0]
    if not positions:
        raise AnalysisError(f"--where {text!r}: expected COLUMN OP VALUE with OP one of {', '.join(OPERATORS)} "
                            "(e.g. --where dataset=c4)")
    index, _, op = min(positions)
    column, value = text[:index].strip(), text[index + len(op):].strip()
    return Condition(column, op, value)


def columns(data: Dataset) -> list[str]:
    """What --where and --group-by can name: a CSV's own columns, then the fit's roles and per-run numbers."""
    names = list(data.cells)
    names += [name for name in (*ROLE_COLUMNS, *data.extras) if name not in names]
    return names


def column(data: Dataset, name: str, option: str) -> np.ndarray:
    """The values of column `name`, one per row; an unknown name is one error listing the known ones."""
    if name in data.cells:
        return data.cells[name]
    roles = {"params": data.params, "tokens": data.tokens, "flops": data.flops, "loss": data.loss,
             "budget": data.budget, "run_id": data.run_ids}
    if name in roles:
        return roles[name]
    if name in data.extras:
        return data.extras[name]
    raise AnalysisError(f"{option}: no column '{name}' (columns: {', '.join(columns(data))})")


def numeric_column(data: Dataset, name: str, option: str) -> np.ndarray:
    """A column as finite positive numbers (a standard deviation, say); a bad cell names its row."""
    values = column(data, name, option)
    numbers = np.array([_number(value) if _number(value) is not None else math.nan for value in values])
    bad = np.flatnonzero(~(numbers > 0))
    if len(bad):
        raise AnalysisError(f"{option} {name}: row {data.run_ids[bad[0]]} has {values[bad[0]]!r}, "
                            "not a finite number > 0")
    return numbers


def take_rows(data: Dataset, mask: np.ndarray) -> Dataset:
    """The rows in `mask`, a CSV's regrouped into budgets among themselves."""
    subset = data.take(mask)
    if data.budget_rtol is not None:
        subset = dataclasses.replace(subset, budget=cluster_budgets(subset.flops, data.budget_rtol))
    return subset


def select(data: Dataset, conditions: list[Condition]) -> Dataset:
    """The rows for which every condition holds; none is an error."""
    if not conditions:
        return data
    mask = np.ones(len(data), dtype=bool)
    for condition in conditions:
        values = column(data, condition.column, "--where")
        mask &= np.array([condition.holds(value) for value in values], dtype=bool)
    described = " and ".join(str(condition) for condition in conditions)
    if not mask.any():
        raise AnalysisError(f"--where {described}: no rows match (of {len(data)})")
    return take_rows(data, mask).with_note(f"selected {int(mask.sum())} of {len(data)} rows where {described}")


def parse_group_by(text: str | None) -> list[str]:
    if text is None:
        return []
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise AnalysisError(f"--group-by {text!r}: expected COLUMN or COLUMN,COLUMN,... (no empty names)")
    return names


def split(data: Dataset, names: list[str]) -> list[tuple[dict[str, str], Dataset]]:
    """One (key, rows) per distinct combination of the columns' values, in order of first appearance."""
    if not names:
        return [({}, data)]
    values = [column(data, name, "--group-by") for name in names]
    keys = [tuple(str(value[i]) for value in values) for i in range(len(data))]
    groups = []
    for key in dict.fromkeys(keys):
        mask = np.array([row_key == key for row_key in keys], dtype=bool)
        described = ", ".join(f"{name}={value}" for name, value in zip(names, key))
        groups.append((dict(zip(names, key)), take_rows(data, mask).with_note(f"group {described}")))
    return groups


def repeated_sizes(data: Dataset) -> str | None:
    """A warning when some budget has two rows of the same N (pooled groups?), naming those budgets."""
    budgets = [float(data.budget[group[0]]) for group in data.budget_groups()
               if len(np.unique(data.params[group])) < len(group)]
    if not budgets:
        return None
    named = ", ".join(f"C={budget:.4g}" for budget in budgets)
    return (f"warning: rows with the same N in one iso-FLOP budget ({named}): pooled groups or repeated runs? "
            "select rows with --where or fit each group with --group-by")
