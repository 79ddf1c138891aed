"""Warn once per key per process: a condition hit every step (an emulated fp8 matmul, a failing power
counter) must not flood stderr, but the first occurrence must be seen."""

from __future__ import annotations

import warnings

_seen: set[str] = set()


def warn_once(message: str, key: str | None = None, category: type[Warning] = UserWarning, stacklevel: int = 2) -> bool:
    """Emit `message` unless `key` (default: the message) was warned about before; True if emitted."""
    key = message if key is None else key
    if key in _seen:
        return False
    _seen.add(key)
    warnings.warn(message, category, stacklevel=stacklevel + 1)
    return True


def reset() -> None:
    """Forget what was warned (tests that assert a warning appears)."""
    _seen.clear()
