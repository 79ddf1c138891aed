"""The validation toolkit shared by model configs, training configs and grid specs.

Every check returns a list of one-line problems (field, value, what is allowed) instead of raising on
the first, so a user fixes a bad input in one round trip; `ConfigError` carries the list to the CLI,
which prints one line per problem and exits 2 before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import pathlib
import re
import sys
import types
import typing

import yaml

# A name that becomes one directory (experiment, run id, grid name): no separators, no "." or "..".
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
MAX_NAME_LENGTH = 128  # well under every filesystem's 255-byte component limit, leaving room for suffixes


class ConfigError(ValueError):
    """One or more input problems; str() is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def suggest(name: str, options) -> str:
    """' (did you mean 'x'?)' for the closest option, or ''."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------------- value checks


def one_of(field: str, value, allowed) -> list[str]:
    if value in allowed:
        return []
    return [f"{field}: {value!r} is not allowed{suggest(value, allowed) if isinstance(value, str) else ''}; "
            f"choose one of {', '.join(map(str, allowed))}"]


def finite(field: str, value) -> list[str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return []
    return [f"{field}: {value!r} must be a finite number"]


def positive(field: str, value) -> list[str]:
    if value is None or finite(field, value):
        return [f"{field}: {value!r} must be a finite number > 0"]
    return [] if value > 0 else [f"{field}: {value!r} must be > 0"]


def non_negative(field: str, value) -> list[str]:
    if value is None or finite(field, value):
        return [f"{field}: {value!r} must be a finite number >= 0"]
    return [] if value >= 0 else [f"{field}: {value!r} must be >= 0"]


def in_range(field: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> list[str]:
    """`low <= value <= high`, either end open if asked; the message writes the interval."""
    if value is None or finite(field, value):
        return [f"{field}: {value!r} must be a finite number"]
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if above and below:
        return []
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return [f"{field}: {value!r} must be in {interval}"]


def at_most(field: str, value, limit: int, why: str) -> list[str]:
    """An upper bound on work a value sets (layers built, rows read), with the reason for the bound."""
    return [] if value is None or value <= limit else [f"{field}: {value!r} exceeds {limit:,} ({why})"]


def name_component(field: str, value) -> list[str]:
    """A name that becomes exactly one path component under an output directory."""
    if not isinstance(value, str) or not value:
        return [f"{field}: {value!r} must be a non-empty name"]
    if value in (".", "..") or _NAME_UNSAFE.search(value):
        shown = value.replace("\x00", "\\0")
        return [f"{field}: {shown!r} must be a single name of letters, digits and . _ + = - "
                "(no '/', no '..'; it becomes one directory)"]
    if len(value) > MAX_NAME_LENGTH:
        return [f"{field}: {len(value)}-character name exceeds {MAX_NAME_LENGTH} characters"]
    return []


def output_directory(field: str, value) -> list[str]:
    """A directory the command may create or reuse: not empty, not NUL, not an existing file."""
    if not isinstance(value, (str, pathlib.Path)) or not str(value):
        return [f"{field}: {value!r} must be a non-empty path"]
    if "\x00" in str(value):
        return [f"{field}: path contains a NUL byte"]
    path = pathlib.Path(value)
    if path.exists() and not path.is_dir():
        return [f"{field}: {str(path)!r} exists and is not a directory"]
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return [f"{field}: {str(parent)!r} (a parent of {str(path)!r}) is a file, not a directory"]
    return []


def output_file(field: str, value) -> list[str]:
    """A file the command will write: not a directory, its parent not a file."""
    if not isinstance(value, (str, pathlib.Path)) or not str(value) or "\x00" in str(value):
        return [f"{field}: {value!r} must be a non-empty path"]
    path = pathlib.Path(value)
    if path.is_dir():
        return [f"{field}: {str(path)!r} is a directory, not a file"]
    return output_directory(field, path.parent) if str(path.parent) not in ("", ".") else []


# ----------------------------------------------------------------------------------- YAML


def parse_yaml_value(text: str, where: str):
    """A YAML scalar/list/mapping from a command line (safe loader); a bad value is one ConfigError line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError([f"{where}: {text!r} is not a valid YAML value ({first})"]) from None


def read_yaml_mapping(path: str | pathlib.Path, what: str, expected: str) -> dict:
    """A YAML file that must hold a mapping; a missing, unreadable, non-UTF-8, malformed or non-mapping
    file is one ConfigError line starting with `what` (e.g. "config", "grid")."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ConfigError([f"{what}: {str(path)!r} is a directory, not a YAML file"])
    if not path.is_file():
        raise ConfigError([f"{what}: file {str(path)!r} does not exist"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([f"{what}: {path} is not UTF-8 text (byte {err.start})"]) from None
    except OSError as err:
        raise ConfigError([f"{what}: cannot read {path} ({err.strerror})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"{what}: {path} is not valid YAML ({str(err).splitlines()[0]})"]) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError([f"{what}: {path} must hold a mapping ({expected}), got {type(raw).__name__}"])
    return raw


# ----------------------------------------------------------------------------------- typed coercion


def coerce(value, annotation, path: str, problems: list[str]):
    """Check/convert one YAML value against a dataclass field annotation; append a problem on mismatch.

    Floats must be finite (YAML's .inf, .nan and overflowing literals like 1e400 are refused here, once
    for every config section and grid spec), and ints accept integral floats (YAML reads 1e3 as a float).
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, path, problems)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping of {annotation.__name__} fields, got {value!r}")
            return annotation()
        return build(annotation, value, path, problems)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {value!r}")
            return ()
        return tuple(coerce(v, args[0], f"{path}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:  # YAML reads 1e8 (no dot) as a string
                number = float(value)
                if math.isfinite(number) and number.is_integer():
                    return int(number)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:  # YAML reads 3e14 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a number, got {value!r}")
            return value
        if not math.isfinite(value):
            problems.append(f"{path}: {value!r} must be a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        elif "\x00" in value:
            problems.append(f"{path}: contains a NUL byte")
        return value
    if annotation is typing.Any:
        return value
    raise TypeError(f"unsupported annotation {annotation!r} at {path}")


def build(cls, raw: dict, path: str, problems: list[str]):
    """A dataclass from a mapping: unknown keys (with did-you-mean) and type mismatches become problems."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            problems.append(f"{where}: unknown key{suggest(str(key), known)}; allowed: {', '.join(sorted(known))}")
            continue
        kwargs[key] = coerce(value, hints[key], where, problems)
    return cls(**kwargs)


# ----------------------------------------------------------------------------------- argparse types


def _cli_number(convert, accept, wanted: str, name: str):
    """An argparse `type=` that converts with `convert` and refuses what `accept` rejects, as one line."""

    def parse(text: str):
        try:
            value = convert(text)
        except (TypeError, ValueError, OverflowError):
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {wanted} (got {text!r})")
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _finite_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else None  # 'inf', 'nan' and '1e400' (which float() reads as inf)


def _integer(text: str) -> int:
    """An integer, also written as an integral float ('1e3'), as configs accept."""
    try:
        return int(text)
    except ValueError:
        value = _finite_float(text)
        return int(value) if value is not None and value.is_integer() else None


finite_float = _cli_number(_finite_float, lambda v: True, "a finite number", "finite_float")
positive_float = _cli_number(_finite_float, lambda v: v > 0, "a finite number > 0", "positive_float")
non_negative_float = _cli_number(_finite_float, lambda v: v >= 0, "a finite number >= 0", "non_negative_float")
positive_int = _cli_number(_integer, lambda v: v > 0, "an integer > 0", "positive_int")
non_negative_int = _cli_number(_integer, lambda v: v >= 0, "an integer >= 0", "non_negative_int")


def one_line_parser_errors(parser: argparse.ArgumentParser, prefix: str) -> argparse.ArgumentParser:
    """Make argparse's own errors (a bad option value, a missing argument) one stderr line `prefix: message`
    and exit 2, like every other input problem, instead of a usage block."""

    def error(message: str):
        print(f"{prefix}: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    return parser
