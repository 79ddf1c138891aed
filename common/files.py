"""Durable writes and exclusive locks: the one rule every file the project writes follows.

The rule: write a temporary file beside the target, flush and fsync it, give it the mode a plain
`open()` would (umask respected; an existing file keeps its mode), rename it over the target, and fsync
the directory. A reader, a crash, a kill or a full disk therefore sees the old file or the new one,
never half of one. Any OS error becomes a `WriteError` whose one-line message names the path and the
error, which the CLI prints and exits on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import tempfile


class WriteError(RuntimeError):
    """A write the run depends on failed (disk full, read-only, permission); str() is one line."""

    def __init__(self, path: str | os.PathLike, err: OSError | str):
        reason = err if isinstance(err, str) else (err.strerror or str(err))
        self.path = str(path)
        self.errno = None if isinstance(err, str) else err.errno
        super().__init__(f"cannot write {self.path}: {reason}")


class LockedError(RuntimeError):
    """Another live process holds the lock; str() is one line naming it."""


def default_mode() -> int:
    """The mode `open(path, "w")` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new entry in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on directories; the data itself was synced
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> pathlib.Path:
    """Replace `path` with `data` durably and atomically (the module's rule); raises WriteError."""
    path = pathlib.Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else default_mode()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(path, err) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise WriteError(path, err) from None
    return path


def append_line(handle, line: str, path: str | os.PathLike) -> None:
    """Append one line to an open text file and make it durable; raises WriteError naming `path`."""
    try:
        handle.write(line if line.endswith("\n") else line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    except OSError as err:
        raise WriteError(path, err) from None


class ExclusiveLock:
    """An advisory lock on a file (fcntl.flock), held while the context is open.

    The kernel drops a flock when its process dies, so a lock left by a killed process is never
    "stale": the next taker simply gets it. The holder's pid is written into the file so a refusal can
    name it. Used by the trainer on its run directory, so two trainings cannot share one.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = pathlib.Path(path)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> ExclusiveLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, default_mode())
        except OSError as err:
            raise WriteError(self.path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.what} is in use by pid {holder} ({self.path}); wait for it to finish "
                              "or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
