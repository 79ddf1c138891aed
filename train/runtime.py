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
will use the CPU backend, per JAX_PLATFORMS or, when unset, the absence of an accelerator plugin —
except in an inference command serving fp32 weights, where "auto" is "system": its decode steps
allocate no large buffer, but small ones from two threads at once (one-row products split over the
cores, modeling/matvec.py), and one arena made them wait (a batch-1 step of configs/models/ladder-5.yaml
~0.5 ms slower, ~10 %). Other precisions keep "keep": XLA:CPU converts their weights to fresh copies at
every decode step, and without it glibc faulted those back in (bf16: 5.8 M against 0.13 M page faults,
13.4 -> 28.9 ms a step). docs/INFERENCE.md has the numbers.
A no-op where the C library is not glibc.

On the CPU backend it also adds one XLA flag, `CPU_XLA_FLAG` (unless XLA_FLAGS already name it): copy
insertion with region-based live ranges. Without it XLA:CPU copies every donated buffer that a step
reads before updating it in place, twice: all of the KV cache at every decode step (a batch-64 decode step of configs/models/ladder-5.yaml 136 -> 73 ms; docs/INFERENCE.md).
Training steps are unchanged by it (shape A 688/692 ms without, 667/684 ms with). The other XLA:CPU
flags tried (oneDNN, XNNPACK off, YNN/oneDNN fusion types, 512-bit vectors) moved step time within
+-5% noise (docs/PERFORMANCE.md), and XLA reads its flags once at backend start, so none is chosen per run.

`host_runtime()` says which of these process-start settings is in effect and why, for the run's
`host_paths` (train/cpu_paths.py): the allocator as configured here (or as the environment set it), and
XLA_FLAGS as they stand, with what isoflop added.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys

from common.validation import ConfigError

MODES = ("auto", "keep", "system")
# The model precision whose inference runs under glibc's defaults when "auto": its matmuls read the stored
# weights as they are (every other precision converts them at each step: see the module docstring).
SERVING_SYSTEM_PRECISION = "fp32"
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


_KEEP_WHAT = "one glibc arena, no mmap for large blocks, no heap trimming"
_KEEP = f"host allocator: {_KEEP_WHAT}"
_outcome: tuple[str, str] | None = None  # (value, reason) of this process's configure_host_runtime()
_MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
CPU_XLA_FLAG = "--xla_cpu_copy_insertion_use_region_analysis=true"
_flag_outcome: str | None = None  # why XLA_FLAGS are what they are, once configure_host_runtime() decided


def configure_host_runtime(mode: str | None = None, *, serving_precision: str | None = None) -> str | None:
    """Apply the host allocator setting and the CPU XLA flag (see module docstring); returns what was done
    to the allocator, or None.

    `mode` defaults to $ISOFLOP_HOST_ALLOCATOR, else "auto". `serving_precision`: the model precision of an
    inference-only command (`generate`, `bench infer`), which settles "auto" for it. Call once, first
    thing in an entry point (an inference command: once its config is read, before JAX starts). What it
    decided, and why, is kept for `host_runtime()` (the run's `host_paths`).
    """
    global _outcome, _flag_outcome
    mode = mode or os.environ.get(ENV_VAR, "auto")
    if mode not in MODES:
        raise ConfigError([f"{ENV_VAR}: {mode!r} is not one of {', '.join(MODES)}"])
    if _flag_outcome is None:
        _flag_outcome = _add_cpu_xla_flag(os.environ)
    if _outcome is None or _outcome[0] != "keep":  # once made, the settings hold for the process's lifetime
        _outcome = _apply(mode, serving_precision)
    return _KEEP if _outcome[0] == "keep" else None


def _apply(mode: str, serving_precision: str | None = None) -> tuple[str, str]:
    """(value, reason) after applying `mode`: "keep" when the mallopt calls were made, else "system"."""
    if mode == "system":
        return "system", f"{ENV_VAR}=system: glibc's defaults"
    if mode == "auto" and serving_precision == SERVING_SYSTEM_PRECISION:
        return "system", ("auto: inference with fp32 weights allocates no large buffer per step, and one arena would"
                          " make the threads of a split one-row product wait for each other (docs/INFERENCE.md)")
    if mode == "auto" and not cpu_backend_expected():
        return "system", "auto: an accelerator backend is expected (JAX_PLATFORMS or an installed plugin)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system", "not glibc: nothing to set"
    if _backend_started():  # its threads already own arenas: too late to help, so change nothing
        return "system", "JAX's backend started before configure_host_runtime(): too late, nothing changed"
    libc = ctypes.CDLL("libc.so.6")
    # M_TRIM_THRESHOLD takes an int; -1 becomes SIZE_MAX inside glibc, i.e. never trim.
    done = [libc.mallopt(_M_ARENA_MAX, 1), libc.mallopt(_M_MMAP_MAX, 0), libc.mallopt(_M_TRIM_THRESHOLD, -1)]
    if not all(done):
        return "system", "glibc's mallopt refused the settings"
    return "keep", (f"{mode}: {_KEEP_WHAT} at process start, so XLA:CPU's step buffer stays in the"
                    " heap instead of being page-faulted in every step (docs/PERFORMANCE.md)")


def _add_cpu_xla_flag(environ) -> str:
    """Put `CPU_XLA_FLAG` in environ's XLA_FLAGS when the CPU backend is expected and not started yet;
    the reason for XLA_FLAGS as they then stand."""
    name = CPU_XLA_FLAG.split("=")[0]
    given = environ.get("XLA_FLAGS", "").strip()
    if name in given:
        return "from the environment, which names the copy-insertion flag itself (XLA reads it at backend start)"
    if not cpu_backend_expected(environ):
        return "from the environment; an accelerator backend is expected, so isoflop added nothing"
    if _backend_started():
        return "from the environment: JAX's backend started before configure_host_runtime(), too late to add any"
    environ["XLA_FLAGS"] = " ".join([CPU_XLA_FLAG] + ([given] if given else []))
    return (f"isoflop added {CPU_XLA_FLAG} for the CPU backend: no copies of a donated buffer read before it is"
            " updated in place, as the KV cache of every decode step (train/runtime.py)"
            + ("; the rest from the environment" if given else ""))


def host_runtime(environ=os.environ) -> dict:
    """The process-start settings in effect and why: the allocator and the XLA flags ({value, reason} each)."""
    if _outcome is not None:
        value, reason = _outcome
    else:
        env = [f"{name}={environ[name]}" for name in _MALLOC_ENV if name in environ]
        value = "environment" if env else "system"
        reason = ("configure_host_runtime() was not called by this entry point; "
                  + (f"set in the environment: {' '.join(env)}" if env else "glibc's defaults"))
    flags = environ.get("XLA_FLAGS", "").strip()
    flag_reason = _flag_outcome or ("configure_host_runtime() was not called by this entry point; "
                                    + ("from the environment (XLA reads it at backend start)" if flags else "none set"))
    return {"host_allocator": {"value": value, "reason": reason},
            "xla_flags": {"value": flags or "none", "reason": flag_reason}}
