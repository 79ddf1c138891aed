"""The token cache: one directory per content hash, built once, atomically, and then only read.

A cache entry is `<cache root>/<source>-<tokenizer><vocab>-<key>/` holding the token files and
`meta.json`. It is built in a hidden temporary sibling and renamed into place when complete, so a killed
run never leaves a half-written entry that a later run trusts; leftovers of killed builds are removed by
the next build. An exclusive `flock` per entry makes concurrent runs (a local grid) wait for one build
instead of each tokenizing the corpus. An OS error while building (disk full, read-only) is a one-line
`common.files.WriteError` and leaves nothing behind; a cache directory that cannot be created or locked
is a setting problem (DataError).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Callable

from common.files import WriteError, atomic_write, fsync_dir
from train.data.errors import DataError

# Bump when the cached bytes or meta.json change meaning; it is part of every key.
CACHE_FORMAT_VERSION = 1
META_FILE = "meta.json"


def default_cache_root() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "isoflop"


def cache_root(cache_dir: str | None) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_root()


def content_key(material: dict) -> str:
    """Hex SHA-256 of everything that determines the cached bytes (plus the format version)."""
    payload = json.dumps({"format": CACHE_FORMAT_VERSION, **material}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_meta(entry: pathlib.Path) -> dict | None:
    try:
        return json.loads((entry / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_meta(entry: pathlib.Path, meta: dict) -> None:
    """meta.json is written last by a build; its presence marks a complete entry."""
    atomic_write(entry / META_FILE, json.dumps(meta, indent=2, sort_keys=True))


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    try:
        handle = open(path, "a+b")
    except OSError as err:
        raise DataError(f"data.cache_dir: cannot write {path.parent} ({err.strerror or err})") from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def get_or_build(
    root: pathlib.Path, name: str, build: Callable[[pathlib.Path], dict]
) -> tuple[pathlib.Path, dict, bool]:
    """(entry path, meta, built now?) for cache entry `name`, calling `build(tmp_dir) -> meta` if absent.

    `build` writes its files into the empty directory it is given and returns the metadata to record;
    it may raise, and then nothing is left behind.
    """
    entry = root / name
    meta = read_meta(entry)
    if meta is not None:
        return entry, meta, False
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.cache_dir: cannot create {root} ({err.strerror or err})") from None
    with _locked(root / f".{name}.lock"):
        meta = read_meta(entry)  # another process may have built it while we waited
        if meta is not None:
            return entry, meta, False
        for stale in root.glob(f".tmp-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if entry.exists():  # no meta.json: not one of ours, or tampered with; never trust it
            shutil.rmtree(entry)
        tmp = root / f".tmp-{name}-{os.getpid()}"
        try:
            tmp.mkdir()
            meta = _build_into(tmp, entry, build)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise WriteError(err.filename or tmp, err) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry, meta, True


def _build_into(tmp: pathlib.Path, entry: pathlib.Path, build: Callable[[pathlib.Path], dict]) -> dict:
    """Fill `tmp`, make every file durable, mark it complete (meta.json) and rename it to `entry`."""
    meta = build(tmp)
    for path in tmp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    write_meta(tmp, meta)
    os.rename(tmp, entry)
    fsync_dir(entry.parent)
    return meta
