"""What /proc/cpuinfo says about the host CPU: vendor, model, instruction-set flags, clock, SMT.

Jax-free and read one way for everyone: `modeling/precision.py` asks whether the CPU has native bf16
dot instructions (which kernel an fp32-result bf16 matmul runs), `train/hardware.py` keys its
calibration caches by the identity and computes the nominal peak from the flags and clock, and
`train/cpu_paths.py` records what the host offers beside the paths it chose; the cores the process
may use are counted here too (the grid's CPU slots, the calibration key, the split of one-row products).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

PROC_CPUINFO = "/proc/cpuinfo"
# Instructions that multiply bf16 pairs into fp32 in hardware: x86 AVX512_BF16 (VDPBF16PS), x86 AMX-BF16
# (TDPBF16PS tiles) and Arm FEAT_BF16 (BFDOT/BFMMLA; "bf16" in the Features line).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# The flags the host-adaptive paths and the nominal peak look at (what summaries and bench print).
SIMD_FLAGS = ("fma", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve", "bf16")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """The first processor's entry of /proc/cpuinfo (every core of a host is the same model)."""

    vendor: str | None  # vendor_id: GenuineIntel, AuthenticAMD; None on Arm and where unreadable
    model_name: str | None
    family: int | None  # cpu family, decimal as /proc/cpuinfo prints it
    model: int | None
    stepping: int | None
    flags: frozenset[str]  # x86 "flags" or Arm "Features"; empty when unknown
    mhz: float | None  # "cpu MHz": the clock when read; in a VM usually the base/TSC clock
    threads_per_core: float  # "siblings" / "cpu cores": 2 with SMT; 1 without, or when not stated


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse(text: str) -> CpuInfo:
    """The first processor block of a /proc/cpuinfo text (keys missing on a platform give None)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is complete
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        mhz = float(fields["cpu MHz"]) if "cpu MHz" in fields else None
    except ValueError:
        mhz = None
    siblings, cores = _int(fields.get("siblings")), _int(fields.get("cpu cores"))
    threads = siblings / cores if siblings and cores and siblings >= cores else 1.0
    return CpuInfo(
        vendor=fields.get("vendor_id"),
        model_name=fields.get("model name"),
        family=_int(fields.get("cpu family")),
        model=_int(fields.get("model")),
        stepping=_int(fields.get("stepping")),
        flags=frozenset((fields.get("flags") or fields.get("Features") or "").split()),
        mhz=mhz,
        threads_per_core=threads,
    )


def read(path: str = PROC_CPUINFO) -> CpuInfo:
    """This host's CpuInfo; an unreadable file gives one with every field unknown."""
    try:
        return parse(pathlib.Path(path).read_text())
    except OSError:
        return parse("")


@functools.cache
def host() -> CpuInfo:
    """This host's CpuInfo, read once per process (the CPU does not change under a running process)."""
    return read()


def usable_cores() -> list[int]:
    """The cores this process may run on, in order (all of them where affinity is not available): what
    XLA's CPU thread pool is sized by, and what a pinned grid slot (launch/cpu_slots.py) narrows."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def native_bf16(info: CpuInfo) -> bool | None:
    """Whether the CPU multiplies bf16 in hardware; None when its flags are unknown (not x86/Arm Linux)."""
    if not info.flags:
        return None
    return any(flag in info.flags for flag in NATIVE_BF16_FLAGS)


def simd_flags(info: CpuInfo) -> list[str]:
    """The flags of SIMD_FLAGS this CPU has, in that order."""
    return [flag for flag in SIMD_FLAGS if flag in info.flags]


__all__ = ["CpuInfo", "NATIVE_BF16_FLAGS", "SIMD_FLAGS", "host", "native_bf16", "parse", "read", "simd_flags",
           "usable_cores"]
