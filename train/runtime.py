"""Process settings that must be made before JAX starts its backend (issue 5; docs/PERFORMANCE.md).

XLA:CPU gives every run of a compiled step one temporary buffer for its intermediates (750 MB for a
train step of configs/bench/shape-a.yaml, 3.1 GB for shape-b), allocated with malloc from a worker
thread and freed when the step ends. glibc serves a block that large from a fresh `mmap` in the
thread's arena and unmaps it on free, so every step page-faults the whole buffer back in and the kernel
zeroes it again: ~195,000 minor faults and a quarter of the step's time on shape A. Keeping the
block in the heap removes all of them (A fp32 589 → 433 ms per step, bf16 374 → 265, B 3.25 → 2.64 s).

`configure_host_runtime()` makes glibc keep it: one malloc arena (thread arenas cannot hold such a
block and fall back to mmap), no mmap for large blocks, no trimming of the heap top. It must run
before JAX creates its CPU client (whose threads pick their arena on first use), i.e. at the start of
the command-line entry point, before anything initialises a JAX backend.

The trade (knob `ISOFLOP_HOST_ALLOCATOR` or the `mode` argument): "keep" holds the process's peak heap
for its lifetime instead of returning freed blocks to the OS (a training process reuses them every
step anyway) and serialises malloc on one arena (XLA:CPU allocates a few large blocks per step, so
contention is negligible); "system" leaves glibc's defaults; "auto" (default) = "keep" when the run
will use the CPU backend, per JAX_PLATFORMS or, when unset, the absence of an accelerator plugin.
A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys

MODES = ("auto", "keep", "system")
ENV_VAR = "ISOFLOP_HOST_ALLOCATOR"

# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_MODULES = ("libtpu",)  # TPU runtime; GPU plugins register under the jax_plugins namespace


def _accelerator_plugin_installed() -> bool:
    """True when JAX would find a GPU/TPU plugin (checked without importing jax)."""
    if any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES):
        return True
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    return spec is not None and any(
        os.listdir(path) for path in (spec.submodule_search_locations or []) if os.path.isdir(path))


def cpu_backend_expected(environ=os.environ) -> bool:
    """Whether this process's JAX default backend will be the CPU, decided before JAX starts."""
    platforms = environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME")
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not _accelerator_plugin_installed()


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(bridge is not None and getattr(bridge, "_backends", None))


def configure_host_runtime(mode: str | None = None) -> str | None:
    """Apply the host allocator setting (see module docstring); returns what was done, or None.

    `mode` defaults to $ISOFLOP_HOST_ALLOCATOR, else "auto". Call once, first thing in an entry point.
    """
    mode = mode or os.environ.get(ENV_VAR, "auto")
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}: {mode!r} is not one of {', '.join(MODES)}")
    if mode == "system" or (mode == "auto" and not cpu_backend_expected()):
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if _backend_started():  # its threads already own arenas: too late to help, so change nothing
        return None
    libc = ctypes.CDLL("libc.so.6")
    # M_TRIM_THRESHOLD takes an int; -1 becomes SIZE_MAX inside glibc, i.e. never trim.
    done = [libc.mallopt(_M_ARENA_MAX, 1), libc.mallopt(_M_MMAP_MAX, 0), libc.mallopt(_M_TRIM_THRESHOLD, -1)]
    if not all(done):
        return None
    return "host allocator: one glibc arena, no mmap for large blocks, no heap trimming"
