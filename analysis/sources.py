"""Reading what the fits consume: run directories (docs/CONTRACTS.md) or a CSV of published results.

Both become a `Dataset`: one row per run with params N, tokens D, training FLOPs C and a loss, plus the
iso-FLOP budget each row belongs to and optional per-run columns (epochs, MFU, energy, ...). Which
parameter count, FLOP count and loss were used is carried along in `Conventions`, and everything the
loader decided on its own (skipped runs, derived columns, dropped outliers) is carried in `notes`, so
every output can say it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from analysis.errors import AnalysisError
from common import fit_points
from common.validation import suggest
from common.vocabulary import FLOP_COUNTS, PARAM_KINDS
from common.run_contract import SUMMARY_FILE, ContractError, RunSummary, read_metrics, read_summary

PARAMS_CONVENTIONS = PARAM_KINDS
FLOPS_CONVENTIONS = FLOP_COUNTS
LOSS_CHOICES = ("eval", "train")
CSV_ROLES = ("params", "tokens", "flops", "loss")
# Optional per-run numbers read from summary.json (and from CSV columns of the same name).
EXTRA_NUMBERS = (
    "epochs", "unique_tokens", "mfu", "energy_kwh", "co2e_kg", "wall_seconds",
    "tokens_per_second", "peak_memory_bytes",
    "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",  # the architecture (analysis/conditional.py)
)
DEFAULT_BUDGET_RTOL = 0.05


@dataclasses.dataclass(frozen=True)
class Conventions:
    """Which counts the fits use; `columns` is set for a CSV (role -> column name).

    A CSV holds whatever counts its columns hold: a convention the user did not name (`named`) is
    described as "as given in column X", never as the run-directory default it has no evidence for."""

    params: str = "non_embedding"
    flops: str = "6N"
    loss: str = "eval"
    columns: Mapping[str, str] | None = None
    named: frozenset[str] = frozenset({"params", "flops", "loss"})

    def label(self, role: str) -> str:
        """How the `role` ('params', 'flops' or 'loss') of every row was counted."""
        if self.columns is None or role in self.named:
            return getattr(self, role)
        if role in self.columns:
            return f"as given in column '{self.columns[role]}'"
        if role == "flops":
            return "C = 6·N·D of the CSV's columns"
        return "not in the CSV"  # a table of optima without losses

    def describe(self) -> str:
        parts = [f"{role}={self.label(role)}" if role in self.named or self.columns is None
                 else f"{role} {self.label(role)}" for role in ("params", "flops", "loss")]
        text = ", ".join(parts)
        if self.columns is not None:
            cols = ", ".join(f"{role}='{name}'" for role, name in self.columns.items())
            text += f" (CSV columns: {cols})"
        return text

    def as_dict(self) -> dict:
        out = {role: self.label(role) for role in ("params", "flops", "loss")}
        if self.columns is not None:
            out["csv_columns"] = dict(self.columns)
        return out


def check_conventions(conventions: Conventions) -> None:
    for name, value, allowed in (
        ("--params", conventions.params, PARAMS_CONVENTIONS),
        ("--flops", conventions.flops, FLOPS_CONVENTIONS),
        ("--loss", conventions.loss, LOSS_CHOICES),
    ):
        if value not in allowed:
            raise AnalysisError(f"{name} {value!r} is not one of {', '.join(allowed)}{suggest(value, allowed)}")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One row per run. `budget` labels the iso-FLOP group of each row (in FLOPs)."""

    source: str
    conventions: Conventions
    params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    budget: np.ndarray
    run_ids: np.ndarray
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    curves: Mapping[str, Mapping[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    # A CSV's every column as text (for --where, --group-by, --sigma-col), and the tolerance its rows were
    # grouped into budgets with: a selection of rows is regrouped with it (None: budgets come from the runs).
    cells: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    budget_rtol: float | None = None

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def multiplier(self) -> np.ndarray:
        """Tokens per parameter, M = D / N."""
        return self.tokens / self.params

    def take(self, index) -> Dataset:
        """The rows at `index` (an index array or boolean mask); repeats allowed (bootstrap)."""
        return dataclasses.replace(
            self,
            params=self.params[index], tokens=self.tokens[index], flops=self.flops[index],
            loss=self.loss[index], budget=self.budget[index], run_ids=self.run_ids[index],
            extras={key: values[index] for key, values in self.extras.items()},
            cells={key: values[index] for key, values in self.cells.items()},
        )

    def with_note(self, note: str) -> Dataset:
        return dataclasses.replace(self, notes=self.notes + (note,))

    def extra(self, key: str) -> np.ndarray:
        """A per-run column, NaN where missing."""
        return self.extras.get(key, np.full(len(self), np.nan))

    def budget_groups(self) -> list[np.ndarray]:
        """Row indices of each iso-FLOP budget, smallest budget first."""
        labels = np.unique(self.budget)
        return [np.flatnonzero(self.budget == label) for label in labels]


# ----------------------------------------------------------------------------------------------- runs


def load_runs(root: str | pathlib.Path | Sequence[str | pathlib.Path], conventions: Conventions,
              with_curves: bool = False) -> Dataset:
    """Every run directory under `root` (any depth) with a summary.json, read through the run contract
    (common.run_contract); only completed runs are kept, the rest counted. Several roots read as one
    source (an architecture sweep with the isoFLOP grid it is fitted with, say)."""
    check_conventions(conventions)
    roots = [pathlib.Path(root)] if isinstance(root, (str, pathlib.Path)) else [pathlib.Path(r) for r in root]
    root = " + ".join(str(path) for path in roots)
    found = {path: [summary.parent for summary in sorted(path.rglob(SUMMARY_FILE))] for path in roots}
    empty = [str(path) for path, dirs in found.items() if not dirs]
    if empty:
        raise AnalysisError(f"no {SUMMARY_FILE} found under {', '.join(empty)}")
    run_dirs = [run_dir for dirs in found.values() for run_dir in dirs]
    if len({run_dir.resolve() for run_dir in run_dirs}) < len(run_dirs):
        raise AnalysisError(f"{root}: the roots overlap (a run directory lies under more than one of them)")
    names = {run_dir: (run_dir.relative_to(path) if len(roots) == 1 else path.name / run_dir.relative_to(path))
             for path, dirs in found.items() for run_dir in dirs}
    rows, skipped = [], {}
    for run_dir in run_dirs:
        summary = _contract(read_summary, run_dir)
        if summary.status != "completed":
            skipped[summary.status] = skipped.get(summary.status, 0) + 1
            continue
        rows.append((run_dir, summary))
    # Not fit points (common/fit_points.py): WSD stable runs, and the losing rates of each lr sweep.
    verdicts = fit_points.verdicts([summary for _, summary in rows])
    not_points = [f"{summary.run_id} ({verdict.reason})" for (_, summary), verdict in zip(rows, verdicts)
                  if not verdict.selected]
    rows = [row for row, verdict in zip(rows, verdicts) if verdict.selected]
    skipped_text = ", ".join(f"{count} {status}" for status, count in sorted(skipped.items()))
    if not rows:
        raise AnalysisError(f"no completed runs under {root} (skipped: {skipped_text or 'none'}; not fit points: "
                            f"{len(not_points)})")

    records = [_run_record(run_dir, summary, conventions) for run_dir, summary in rows]
    notes = [f"read {len(records)} completed runs from {root}"]
    if len({record["run_id"] for record in records}) < len(records):
        for (run_dir, _), record in zip(rows, records):
            record["run_id"] = names[run_dir].as_posix()
        notes.append("run_ids repeat across experiments: runs are named by their directory under the source")
    if skipped:
        notes.append(f"skipped {sum(skipped.values())} runs that are not completed ({skipped_text})")
    if not_points:
        notes.append(f"left out {len(not_points)} completed runs that are not fit points: {'; '.join(not_points)}")
    derived = sum(record["flops_derived"] for record in records)
    if derived:
        notes.append(
            f"{derived} runs have no flops['{conventions.flops}']: used "
            f"flops_per_token['{conventions.flops}'] x tokens"
        )
    curves = {}
    if with_curves:
        for (run_dir, _), record in zip(rows, records):
            curve = learning_curve(run_dir)
            if curve:
                curves[record["run_id"]] = curve
    return _dataset_from_records(root, conventions, records, notes, curves)


def _contract(read, run_dir: pathlib.Path):
    """A contract reader's result; its one-line ContractError becomes analysis's one-line error."""
    try:
        return read(run_dir)
    except ContractError as err:
        raise AnalysisError(str(err)) from None


def _positive(value, what: str) -> float:
    if value is None or value == "":
        raise AnalysisError(f"{what} is empty")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnalysisError(f"{what} is not a number (got {value!r})") from None
    if not math.isfinite(number) or number <= 0:
        raise AnalysisError(f"{what} must be positive (got {value!r})")
    return number


def _run_record(run_dir: pathlib.Path, summary: RunSummary, conventions: Conventions) -> dict:
    """The numbers a fit takes from one run, under `conventions`; a missing or non-positive one is an error."""
    where = str(run_dir / SUMMARY_FILE)
    loss_key = f"final_{conventions.loss}_loss"
    if getattr(summary, loss_key) is None:
        hint = " (use --loss train if the runs have no eval)" if conventions.loss == "eval" else ""
        raise AnalysisError(f"{where}: missing '{loss_key}'{hint}")
    tokens = _positive(summary.tokens, f"{where}: tokens")
    flops_derived = summary.flops.get(conventions.flops) is None
    if flops_derived:
        per_token = summary.flops_per_token.get(conventions.flops)
        if per_token is None:
            raise AnalysisError(f"{where}: missing flops['{conventions.flops}'] and flops_per_token['{conventions.flops}']")
        flops = _positive(per_token, f"{where}: flops_per_token['{conventions.flops}']") * tokens
    else:
        flops = _positive(summary.flops[conventions.flops], f"{where}: flops['{conventions.flops}']")
    record = {
        "run_id": summary.run_id,
        "params": _positive(getattr(summary.params, conventions.params), f"{where}: params['{conventions.params}']"),
        "tokens": tokens,
        "flops": flops,
        "loss": _positive(getattr(summary, loss_key), f"{where}: {loss_key}"),
        "budget": _positive(summary.budget_flops, f"{where}: budget_flops"),
        "flops_derived": flops_derived,
    }
    for key in EXTRA_NUMBERS:
        value = getattr(summary, key)
        record[key] = math.nan if value is None else float(value)
    record["energy_source"] = summary.energy_source or ""
    record["ffn"] = summary.ffn
    record["decode_tokens_per_second"] = _best_decode_throughput(summary.inference)
    return record


def _best_decode_throughput(inference) -> float:
    """The highest decode tokens/s over the batch sizes `isoflop bench infer` measured; NaN if none."""
    rows = (inference or {}).get("results") or []
    values = [row.get("decode_tokens_per_second") for row in rows if isinstance(row, dict)]
    values = [float(value) for value in values if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return max(values) if values else math.nan


def learning_curve(run_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """A run's metrics.jsonl as columns: one array per numeric logged field, NaN where a row lacks it;
    {} when the run has none."""
    rows = _contract(read_metrics, run_dir)
    keys = {key for row in rows for key, value in row.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return {key: np.array([_number(row.get(key)) for row in rows], dtype=float) for key in sorted(keys)}


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _dataset_from_records(source, conventions, records, notes, curves) -> Dataset:
    column = lambda key: np.array([record[key] for record in records], dtype=float)
    extras = {key: column(key) for key in EXTRA_NUMBERS}
    extras["energy_source"] = np.array([record["energy_source"] for record in records], dtype=object)
    extras["ffn"] = np.array([record["ffn"] for record in records], dtype=object)
    extras["decode_tokens_per_second"] = column("decode_tokens_per_second")
    return Dataset(
        source=source, conventions=conventions,
        params=column("params"), tokens=column("tokens"), flops=column("flops"), loss=column("loss"),
        budget=column("budget"), run_ids=np.array([record["run_id"] for record in records], dtype=object),
        extras=extras, notes=tuple(notes), curves=curves,
    )


# ------------------------------------------------------------------------------------------------ csv


def load_csv(
    path: str | pathlib.Path,
    conventions: Conventions,
    columns: Mapping[str, str | None] | None = None,
    budget_rtol: float = DEFAULT_BUDGET_RTOL,
    skip_blank: bool = False,
    need_loss: bool = True,
) -> Dataset:
    """A CSV with a loss column and any two of params / tokens / flops; the third is derived with C = 6ND.

    `columns` maps a role (params, tokens, flops, loss) to a column name; a role named explicitly must be
    present, a role left at its default name may be absent (and is then derived). Every cell of a role
    column must be a finite positive number; a bad one is one error naming its line and column, except
    that `skip_blank` leaves out rows with an empty role cell (listed in the notes). Without `need_loss`
    (a table of optima) the loss column may be absent, and the losses are then NaN.
    """
    check_conventions(conventions)
    path = pathlib.Path(path)
    header, rows = _read_table(path)
    names = _role_columns(path, header, columns or {}, need_loss)
    rows, blank_note = _blank_rows(path, rows, names, skip_blank)
    data = {
        role: np.array([_positive(row.get(name, ""), f"{path} line {line}: column '{name}'") for line, row in rows])
        for role, name in names.items()
    }
    if "loss" not in names:
        data["loss"] = np.full(len(rows), np.nan)
    with np.errstate(over="ignore", under="ignore"):  # an out-of-range result is refused just below
        notes = [f"read {len(rows)} rows from {path}"] + blank_note + _derive_third(data)
    for role in ("params", "tokens", "flops"):
        bad = np.flatnonzero(~(np.isfinite(data[role]) & (data[role] > 0)))
        if len(bad):  # only a derived column can be: the given ones were checked cell by cell
            raise AnalysisError(f"{path} line {rows[bad[0]][0]}: derived {role} {data[role][bad[0]]:g} is out of "
                                "range (C = 6·N·D of the other two columns under- or overflows)")
    run_column = next((name for name in ("run_id", "name", "model") if name in header), None)
    run_ids = [(row.get(run_column) if run_column else "") or f"row{line}" for line, row in rows]
    extras = {key: np.array([_optional_number(row.get(key, "")) for _, row in rows]) for key in EXTRA_NUMBERS
              if key in header}
    conventions = dataclasses.replace(conventions, columns={role: names[role] for role in CSV_ROLES if role in names})
    notes.append(f"grouped rows into iso-FLOP budgets by flops within {budget_rtol:.0%}")
    return Dataset(
        source=str(path), conventions=conventions,
        params=data["params"], tokens=data["tokens"], flops=data["flops"], loss=data["loss"],
        budget=cluster_budgets(data["flops"], budget_rtol),
        run_ids=np.array(run_ids, dtype=object), extras=extras, notes=tuple(notes),
        cells={name: np.array([row.get(name, "") for _, row in rows], dtype=object) for name in header if name},
        budget_rtol=budget_rtol,
    )


def _blank_rows(path, rows, names: Mapping[str, str], skip_blank: bool):
    """(rows kept, notes): a row with an empty role cell is an error naming it, or with `skip_blank` left out."""
    blank = [(line, name) for line, row in rows for name in names.values() if not row.get(name, "")]
    if not blank:
        return rows, []
    if not skip_blank:
        line, name = blank[0]
        raise AnalysisError(f"{path} line {line}: column '{name}' is empty (leave such rows out with --skip-blank)")
    lines = sorted({line for line, _ in blank})
    kept = [(line, row) for line, row in rows if line not in set(lines)]
    if not kept:
        raise AnalysisError(f"{path}: every row has an empty cell in {', '.join(sorted(set(names.values())))}")
    return kept, [f"--skip-blank: left out {len(lines)} rows with an empty cell (lines {', '.join(map(str, lines))})"]


def _read_table(path: pathlib.Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV's header and its (line number, {column: cell}) rows, blank lines skipped.

    An unreadable, binary, non-UTF-8, empty, header-only, ragged or ambiguous (repeated column name) file
    is one error naming the file and, where there is one, the line: never a guess at what was meant.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not a column name
    except OSError as err:
        raise AnalysisError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise AnalysisError(f"{path}: not UTF-8 text (byte {err.start}); expected a CSV") from None
    if "\x00" in text:
        raise AnalysisError(f"{path}: contains NUL bytes (a binary file?); expected a CSV")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        records = [(reader.line_num, record) for record in reader if any(cell.strip() for cell in record)]
    except csv.Error as err:
        raise AnalysisError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None
    if not records:
        raise AnalysisError(f"{path}: empty (expected a header line of column names, then one row per run)")
    header = [name.strip() for name in records[0][1]]
    first_seen = {}
    for index, name in enumerate(header, start=1):
        if name in first_seen and name:
            raise AnalysisError(f"{path}: column '{name}' appears twice in the header (columns {first_seen[name]} "
                                f"and {index}); rename one")
        first_seen.setdefault(name, index)
    if len(records) == 1:
        raise AnalysisError(f"{path}: a header but no rows")
    rows = []
    for line, record in records[1:]:
        if any(cell.strip() for cell in record[len(header):]):
            raise AnalysisError(f"{path} line {line}: {len(record)} fields but the header names {len(header)} columns")
        rows.append((line, {name: cell.strip() for name, cell in zip(header, record)}))
    return header, rows


def _role_columns(path: pathlib.Path, header: list[str], columns: Mapping[str, str | None],
                  need_loss: bool = True) -> dict[str, str]:
    """Role -> column name: the loss (if `need_loss`) and at least two of params/tokens/flops must be there."""
    names = {}
    for role in CSV_ROLES:
        explicit = columns.get(role)
        name = explicit or role
        if name in header:
            names[role] = name
        elif explicit or (role == "loss" and need_loss):
            raise AnalysisError(f"{path}: no column '{name}' for {role} (columns: {', '.join(header)})")
    present = [role for role in ("params", "tokens", "flops") if role in names]
    if len(present) < 2:
        raise AnalysisError(
            f"{path}: need two of params/tokens/flops columns, found {', '.join(present) or 'none'} "
            f"(columns: {', '.join(header)}; map others with --params-col/--tokens-col/--flops-col)"
        )
    return names


def _derive_third(data: dict[str, np.ndarray]) -> list[str]:
    """Fill in whichever of params/tokens/flops is missing with C = 6·N·D; the notes say which."""
    if "flops" not in data:
        data["flops"] = 6 * data["params"] * data["tokens"]
        return ["flops derived as C = 6·N·D (no flops column)"]
    if "tokens" not in data:
        data["tokens"] = data["flops"] / (6 * data["params"])
        return ["tokens derived as D = C / (6·N) (no tokens column)"]
    if "params" not in data:
        data["params"] = data["flops"] / (6 * data["tokens"])
        return ["params derived as N = C / (6·D) (no params column)"]
    return []


def _optional_number(text: str) -> float:
    """An optional per-run column's cell (epochs, MFU, ...): NaN when empty, not a number, or not finite."""
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def cluster_budgets(flops: np.ndarray, rtol: float = DEFAULT_BUDGET_RTOL) -> np.ndarray:
    """Label each row with its iso-FLOP budget: sorted FLOPs split where neighbours differ by > rtol.

    The label is the geometric mean of the group, so rows of one budget share it exactly.
    """
    if not 0 < rtol < math.inf:
        raise AnalysisError(f"--budget-rtol must be a finite number > 0 (got {rtol})")
    log_flops = np.log(flops)
    order = np.argsort(log_flops)
    breaks = np.diff(log_flops[order]) > math.log1p(rtol)
    group_of_sorted = np.concatenate([[0], np.cumsum(breaks)])
    labels = np.empty(len(flops))
    for group in np.unique(group_of_sorted):
        members = order[group_of_sorted == group]
        labels[members] = math.exp(log_flops[members].mean())
    return labels


# --------------------------------------------------------------------------------------------- common


def load_source(
    source: str | pathlib.Path | Sequence[str | pathlib.Path],
    conventions: Conventions,
    columns: Mapping[str, str | None] | None = None,
    with_curves: bool = False,
    budget_rtol: float = DEFAULT_BUDGET_RTOL,
    skip_blank: bool = False,
    need_loss: bool = True,
) -> Dataset:
    """A run-directory root (or several) or one CSV file, whichever `source` is (`skip_blank`, `need_loss`:
    CSV only)."""
    sources = [source] if isinstance(source, (str, pathlib.Path)) else list(source)
    for item in sources:
        if "\x00" in str(item):
            raise AnalysisError(f"{str(item)!r}: a path cannot contain a NUL byte")
        if not pathlib.Path(item).exists():
            raise AnalysisError(f"{item}: no such file or directory")
    if all(pathlib.Path(item).is_dir() for item in sources):
        return load_runs(sources, conventions, with_curves=with_curves)
    if len(sources) > 1:
        raise AnalysisError(f"{' '.join(map(str, sources))}: several sources must all be run-directory roots "
                            "(a CSV is read alone)")
    return load_csv(pathlib.Path(sources[0]), conventions, columns, budget_rtol, skip_blank=skip_blank,
                    need_loss=need_loss)


def exclude_outliers(
    data: Dataset,
    drop_highest: int = 0,
    max_loss: float | None = None,
    drop_runs: Sequence[str] = (),
) -> Dataset:
    """Drop rows explicitly, and log each one in the notes: named runs, losses above a threshold, the K highest."""
    if drop_highest < 0:
        raise AnalysisError(f"--drop-highest must be >= 0 (got {drop_highest})")
    if max_loss is not None and not max_loss > 0:
        raise AnalysisError(f"--max-loss must be positive (got {max_loss})")
    unknown = sorted(set(drop_runs) - set(data.run_ids))
    if unknown:
        raise AnalysisError(f"--drop-run: no run named {', '.join(unknown)}")
    keep = ~np.isin(data.run_ids, list(drop_runs))
    reasons = {int(index): "named" for index in np.flatnonzero(~keep)}
    if max_loss is not None:
        for index in np.flatnonzero(keep & (data.loss > max_loss)):
            reasons[int(index)] = f"loss > {max_loss:g}"
        keep &= data.loss <= max_loss
    if drop_highest:
        candidates = np.flatnonzero(keep)
        highest = candidates[np.argsort(data.loss[candidates])[::-1][:drop_highest]]
        for index in highest:
            reasons[int(index)] = f"among the {drop_highest} highest losses"
        keep[highest] = False
    if not reasons:
        return data
    if not keep.any():
        raise AnalysisError("outlier exclusion dropped every row")
    listed = "; ".join(
        f"{data.run_ids[index]} (loss {data.loss[index]:.4g}, {reason})" for index, reason in sorted(reasons.items())
    )
    return data.take(keep).with_note(f"excluded {len(reasons)} rows: {listed}")
