"""Reading a fitted law back from the JSON `isoflop fit --json` wrote: the one reader for every `--law FILE`
option, so a missing, non-UTF-8 or non-object file gets the same one-line error wherever it is given."""

from __future__ import annotations

import json
import pathlib

from analysis.errors import AnalysisError


def read_fit_json(path: str, expected: str) -> dict:
    """The JSON object in `path`; `expected` names what should have written it, for the error line."""
    try:
        fitted = json.loads(pathlib.Path(path).read_bytes().decode("utf-8"))
    except OSError as err:
        raise AnalysisError(f"--law {path}: {err.strerror} (expected {expected})") from None
    except ValueError:  # not UTF-8, or not JSON
        raise AnalysisError(f"--law {path}: not JSON (expected {expected})") from None
    if not isinstance(fitted, dict):
        raise AnalysisError(f"--law {path}: not a JSON object (expected {expected})")
    return fitted


def described_conventions(fitted: dict) -> str:
    """The counting conventions a fit recorded, as `key=value, ...` (the CSV column map left out)."""
    conventions = fitted.get("conventions")
    conventions = conventions if isinstance(conventions, dict) else {}
    return ", ".join(f"{key}={value}" for key, value in conventions.items() if key != "csv_columns") or "not recorded"
