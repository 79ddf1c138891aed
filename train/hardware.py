"""Peak FLOP/s, memory bandwidth and power of the devices a run uses, so MFU, the decode bandwidth bound
and energy are honest numbers or null.

Accelerators come from tables of vendor figures (FLOP/s dense, i.e. without 2:4 sparsity; memory
bandwidth of HBM/GDDR), each with its source. A CPU has no spec sheet that matches what XLA achieves,
so its peak and its bandwidth are measured once (a matmul and a read calibration) and cached per
machine, labelled `measured`. An unknown device gives `None` and one warning: a null MFU is better
than a wrong one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import pathlib
import platform
import re
import time

from common import cpuinfo
from common.files import WriteError, atomic_write
from common.vocabulary import PRECISION_COMPUTE_DTYPES
from common.warn import warn_once

TERA = 1e12
DTYPES = ("fp32", "tf32", "bf16", "fp8", "int8")

# CPU power: a current server CPU's TDP per core (AMD EPYC 9755 datasheet: 128 cores, 500 W default
# TDP). Package power only (no DRAM, board or fans); multiplied by the cores this process may use.
CPU_WATTS_PER_CORE = 500.0 / 128
CPU_WATTS_SOURCE = "estimate: AMD EPYC 9755 datasheet, 500 W TDP / 128 cores = 3.9 W per core"

_NVIDIA_DENSE = "dense = datasheet figure 'with sparsity' / 2; fp32 = non-tensor-core FP32"


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One row of the table. Peaks are dense FLOP/s (int8: OP/s) per JAX device; None = not offered."""

    name: str
    pattern: str  # regex searched in the normalised device_kind (lower case, '-'/'_' -> ' ')
    fp32: float | None  # vector-unit FP32 (not TF32); on TPUs no figure is published
    tf32: float | None
    bf16: float | None
    fp8: float | None
    int8: float | None
    tdp_watts: float | None  # the datasheet's maximum board/chip power; None where unpublished
    source: str


# Patterns are anchored so that no two rows match one name (tests check every known name): `\b`
# keeps H100 from matching H200/GH200, B200 from GB200, L4 from L40S, A10 from A10G/A100.
TABLE: tuple[Accelerator, ...] = (
    # Cloud TPU: one JAX device per chip (v4/v5p megacore). fp32 runs on the MXU in bf16 passes.
    Accelerator("TPU v4", r"^tpu v4$", None, None, 275 * TERA, None, 275 * TERA, 192.0,
                "Cloud TPU docs, TPU v4 (cloud.google.com/tpu/docs/v4): 275 TFLOP/s bf16 or int8 per chip;"
                " power = max of measured min/mean/max 90/170/192 W"),
    Accelerator("TPU v5e", r"^tpu v5 ?(lite|e)$", None, None, 197 * TERA, None, 393 * TERA, None,
                "Cloud TPU docs, TPU v5e (cloud.google.com/tpu/docs/v5e): 197 TFLOP/s bf16, 393 TOP/s int8;"
                " no published power"),
    Accelerator("TPU v5p", r"^tpu v5p?$", None, None, 459 * TERA, None, 918 * TERA, None,
                "Cloud TPU docs, TPU v5p (cloud.google.com/tpu/docs/v5p): 459 TFLOP/s bf16; int8 918 TOP/s from"
                " Google Cloud blog 'Introducing Cloud TPU v5p' (2023-12); no published power"),
    Accelerator("TPU v6e", r"^tpu v6 ?(lite|e)$", None, None, 918 * TERA, None, 1836 * TERA, None,
                "Cloud TPU docs, TPU v6e / Trillium (cloud.google.com/tpu/docs/v6e): 918 TFLOP/s bf16,"
                " 1836 TOP/s int8; no published power"),
    # NVIDIA data-centre GPUs.
    Accelerator("NVIDIA A100 SXM", r"^(?!.*\bpcie\b).*\ba100\b", 19.5 * TERA, 156 * TERA, 312 * TERA, None,
                624 * TERA, 400.0,
                "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100): FP32 19.5,"
                " TF32 156, BF16 312 TFLOP/s, INT8 624 TOP/s dense; 400 W (SXM4 40/80GB)"),
    Accelerator("NVIDIA A100 PCIe 40GB", r"^(?!.*\b80gb\b)(?=.*\bpcie\b).*\ba100\b", 19.5 * TERA, 156 * TERA,
                312 * TERA, None, 624 * TERA, 250.0,
                "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100): as SXM; 250 W"),
    Accelerator("NVIDIA A100 PCIe 80GB", r"^(?=.*\bpcie\b)(?=.*\b80gb\b).*\ba100\b", 19.5 * TERA, 156 * TERA,
                312 * TERA, None, 624 * TERA, 300.0,
                "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100): as SXM; 300 W"),
    Accelerator("NVIDIA H100 SXM", r"^(?!.*\b(pcie|nvl)\b).*\bh100\b", 67 * TERA, 494.5 * TERA, 989.5 * TERA,
                1979 * TERA, 1979 * TERA, 700.0,
                "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): FP32 67, TF32 989*,"
                f" BF16 1979*, FP8 3958*, INT8 3958* (*sparse); up to 700 W; {_NVIDIA_DENSE}"),
    Accelerator("NVIDIA H100 PCIe", r"^(?=.*\bpcie\b).*\bh100\b", 51 * TERA, 378 * TERA, 756.5 * TERA,
                1513 * TERA, 1513 * TERA, 350.0,
                "NVIDIA H100 datasheet, PCIe column, and H100 PCIe product brief PB-11133-001: FP32 51, TF32 756*,"
                f" BF16 1513*, FP8 3026*, INT8 3026* (*sparse); 350 W max TDP; {_NVIDIA_DENSE}"),
    Accelerator("NVIDIA H100 NVL", r"^(?=.*\bnvl\b).*\bh100\b", 60 * TERA, 417.5 * TERA, 835.5 * TERA,
                1670.5 * TERA, 1670.5 * TERA, 400.0,
                "NVIDIA H100 Tensor Core GPU datasheet, NVL column: FP32 60, TF32 835*, BF16 1671*, FP8 3341*,"
                f" INT8 3341* (*sparse); 350-400 W; {_NVIDIA_DENSE}"),
    Accelerator("NVIDIA H200 SXM", r"^(?!.*\bnvl\b).*\bh200\b", 67 * TERA, 494.5 * TERA, 989.5 * TERA,
                1979 * TERA, 1979 * TERA, 700.0,
                "NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200), SXM column: FP32 67, TF32 989*,"
                f" BF16 1979*, FP8 3958*, INT8 3958* (*sparse); up to 700 W; {_NVIDIA_DENSE}"),
    Accelerator("NVIDIA H200 NVL", r"^(?=.*\bnvl\b).*\bh200\b", 60 * TERA, 417.5 * TERA, 835.5 * TERA,
                1670.5 * TERA, 1670.5 * TERA, 600.0,
                "NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200), NVL column: FP32 60, TF32 835*,"
                f" BF16 1671*, FP8 3341*, INT8 3341* (*sparse); up to 600 W; {_NVIDIA_DENSE}"),
    Accelerator("NVIDIA B200", r"\bb200\b", 75 * TERA, 1100 * TERA, 2250 * TERA, 4500 * TERA, 4500 * TERA,
                1000.0,
                "NVIDIA HGX B200 specifications (nvidia.com/en-us/data-center/hgx), per GPU: FP32 75, TF32 2.2P*,"
                f" BF16 4.5P*, FP8 9P*, INT8 9P* (*sparse); configurable up to 1000 W; {_NVIDIA_DENSE}"),
    Accelerator("NVIDIA L4", r"\bl4\b", 30.3 * TERA, 60 * TERA, 121 * TERA, 242.5 * TERA, 242.5 * TERA, 72.0,
                "NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4): FP32 30.3, TF32 120*, BF16 242*,"
                f" FP8 485*, INT8 485* (*sparse); 72 W; {_NVIDIA_DENSE}"),
    Accelerator("NVIDIA A10", r"\ba10\b", 31.2 * TERA, 62.5 * TERA, 125 * TERA, None, 250 * TERA, 150.0,
                "NVIDIA A10 datasheet (nvidia.com/en-us/data-center/products/a10-gpu): FP32 31.2, TF32 62.5,"
                " BF16 125 TFLOP/s, INT8 250 TOP/s dense; 150 W"),
    Accelerator("NVIDIA V100 SXM2", r"^(?!.*\bpcie\b).*\bv100\b", 15.7 * TERA, None, None, None, None, 300.0,
                "NVIDIA V100 datasheet (images.nvidia.com/content/technologies/volta/pdf/"
                "volta-v100-datasheet-update-us-1165301-r5.pdf): FP32 15.7 TFLOP/s, no bf16/tf32/fp8; 300 W"),
    Accelerator("NVIDIA V100 PCIe", r"^(?=.*\bpcie\b).*\bv100\b", 14 * TERA, None, None, None, None, 250.0,
                "NVIDIA V100 datasheet (images.nvidia.com/content/technologies/volta/pdf/"
                "volta-v100-datasheet-update-us-1165301-r5.pdf): FP32 14 TFLOP/s, no bf16/tf32/fp8; 250 W"),
)


@dataclasses.dataclass(frozen=True)
class Peak:
    """Peak FLOP/s per device for the dtype the matmuls run in, and where the number came from."""

    flops_per_second: float | None
    source: str


# ----------------------------------------------------------------------------- matching

def normalise_kind(device_kind: str) -> str:
    return re.sub(r"[\s_\-]+", " ", device_kind.lower()).strip()


def match_accelerator(device_kind: str) -> Accelerator | None:
    """The table row for a `jax.Device.device_kind`, or None (unknown, MIG slice or ambiguous)."""
    kind = normalise_kind(device_kind)
    if re.search(r"\bmig\b", kind):  # a MIG slice has a fraction of the peak: no honest number
        return None
    matches = [row for row in TABLE if re.search(row.pattern, kind)]
    if len(matches) > 1:
        warn_once(f"hardware table: {device_kind!r} matches {[m.name for m in matches]}; treating as unknown")
        return None
    return matches[0] if matches else None


def compute_dtype_of(precision: str) -> str:
    """The dtype the matmuls compute in under a `model.precision` policy."""
    if precision not in PRECISION_COMPUTE_DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISION_COMPUTE_DTYPES)}")
    return PRECISION_COMPUTE_DTYPES[precision]


# ----------------------------------------------------------------------------- fp32 on accelerators

# How f32 dots execute under jax_default_matmul_precision (lax.Precision names and DotAlgorithmPreset
# names): JAX's default favours speed, i.e. one bf16 MXU pass on TPU and TF32 tensor cores on GPU.
_PRECISION_CLASS = {
    None: "default", "default": "default", "fastest": "default", "bfloat16": "default",
    "high": "high", "bfloat16_3x": "high", "tensorfloat32": "high",
    "highest": "highest", "float32": "highest",
    "f32_f32_f32": "highest", "tf32_tf32_f32": "tf32",
    "bf16_bf16_f32": "bf16", "bf16_bf16_f32_x3": "bf16x3", "bf16_bf16_f32_x6": "bf16x6",
}
_TPU_FP32 = {"default": ("bf16", 1), "high": ("bf16", 3), "highest": ("bf16", 6), "bf16": ("bf16", 1),
             "bf16x3": ("bf16", 3), "bf16x6": ("bf16", 6)}
_GPU_FP32 = {"default": ("tf32", 1), "high": ("tf32", 1), "tf32": ("tf32", 1), "highest": ("fp32", 1),
             "bf16": ("bf16", 1), "bf16x3": ("bf16", 3), "bf16x6": ("bf16", 6)}


def _jax_matmul_precision() -> str | None:
    import jax

    value = jax.config.jax_default_matmul_precision
    return None if value is None else str(value)


def _table_dtype(platform: str, row: Accelerator, compute_dtype: str, matmul_precision: str | None):
    """(table column, passes, note) for the dtype the hardware actually multiplies in."""
    if compute_dtype != "fp32":
        return compute_dtype, 1, ""
    name = None if matmul_precision is None else str(matmul_precision).lower().rsplit(".", 1)[-1]
    kind = _PRECISION_CLASS.get(name)
    rule = (_TPU_FP32 if platform == "tpu" else _GPU_FP32).get(kind) if kind else None
    if rule is None:
        return None, 1, f"matmul precision {matmul_precision!r}"
    dtype, passes = rule
    if dtype == "tf32" and row.tf32 is None:  # pre-Ampere: no TF32, f32 dots run on the FP32 units
        dtype = "fp32"
    passes_text = f" x{passes} passes" if passes > 1 else ""
    note = f"f32 dots at matmul precision {name or 'default'} run as {dtype}{passes_text}"
    return dtype, passes, note


# ----------------------------------------------------------------------------- CPU calibration


def _cpu_identity() -> dict:
    """What makes a CPU peak reusable: model, family/model/stepping (cloud VMs often say only
    'AMD EPYC'), usable cores and the jax version (XLA's CPU codegen changes between releases)."""
    import jax

    info = cpuinfo.host()
    name = info.model_name or platform.processor() or platform.machine() or "unknown cpu"
    numbers = (("family", info.family), ("model", info.model), ("stepping", info.stepping))
    detail = " ".join(f"{label} {value}" for label, value in numbers if value is not None)
    return {"cpu": f"{name} ({detail})" if detail else name, "cores": _usable_cpus(), "jax": jax.__version__}


def _usable_cpus() -> int:
    return len(cpuinfo.usable_cores())


def default_cache_path() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "isoflop" / "cpu_peak.json"


def measure_cpu_peak(compute_dtype: str, sizes=(1024, 1536, 2048), repeats: int = 3) -> float:
    """Best-of FLOP/s of a jitted square matmul on the first CPU device, inputs in `compute_dtype`.

    Low-precision inputs are timed with both a same-dtype and an f32 result, and the faster counts
    (a peak is the best the hardware does for that dtype): on an AVX512_BF16 host the f32-result
    bf16 dot measured ~2x f32 while the bf16-result one ran at about the f32 rate.
    """
    import jax
    import jax.numpy as jnp

    dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp8": jnp.float8_e4m3fn}[compute_dtype]
    cpu = jax.devices("cpu")[0]
    results = (None,) if compute_dtype == "fp32" else (None, jnp.float32)
    best = 0.0
    for result in results:
        dot = jax.jit(lambda a, b, result=result: jnp.dot(a, b, preferred_element_type=result))
        for n in sizes:
            keys = jax.random.split(jax.random.key(n))
            a, b = (jax.device_put(jax.random.normal(k, (n, n), jnp.float32).astype(dtype), cpu) for k in keys)
            dot(a, b).block_until_ready()  # compile + warm up
            for _ in range(repeats):
                start = time.perf_counter()
                dot(a, b).block_until_ready()
                best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _busy_seconds() -> tuple[float, float] | None:
    """(CPU-busy seconds of the whole machine, of this process) so far; None off Linux."""
    import resource

    try:
        fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields  # steal: taken by the hypervisor
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def _with_others_share(measure) -> tuple[dict, float]:
    """(what `measure()` returned, share of the machine's CPU time other processes took meanwhile): a
    busy machine lowers a measured peak, and a low peak inflates MFU or the bandwidth-bound fraction."""
    before, start = _busy_seconds(), time.perf_counter()
    fields = measure()
    after, wall = _busy_seconds(), time.perf_counter() - start
    if before is None or after is None:
        return fields, 0.0
    others = (after[0] - before[0]) - (after[1] - before[1])
    return fields, max(0.0, others / (wall * (os.cpu_count() or 1)))


_session_peaks: dict[str, dict] = {}  # measurements this process made but did not cache


def _read_entries(path: pathlib.Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache["entries"] if isinstance(cache, dict) and isinstance(cache.get("entries"), dict) else {}


@contextlib.contextmanager
def _cache_lock(path: pathlib.Path):
    """An flock beside a cache while one process reads, measures and writes it, so processes that start
    together wait for one measurement instead of making two (and caching whichever wrote last). A cache
    directory that cannot be written is used unlocked: it only costs a re-measurement."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(f".{path.name}.lock"), "a+b")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def calibrated(what: str, key: str, measure, path: pathlib.Path, recalibrate: bool, *,
                valid=lambda entry: True, cache_when_busy: bool = False) -> tuple[dict, str]:
    """(entry, where it came from) for a host measurement cached per `key` in `path`.

    A cached entry that `valid` refuses (a hand-edited or truncated file) is measured again. A measurement
    during which other processes took more than 20% of the machine's CPU is used for this process but
    not cached (it is low), and says so, unless `cache_when_busy`: a comparison of candidates timed in
    turn under the same load (train/cpu_paths.py) is cached with the load it was made under.
    `measure()` returns the fields to record; its exceptions reach the caller.
    """
    if recalibrate:
        _session_peaks.pop(key, None)
    elif key in _session_peaks:  # this process measured on a busy machine: reuse, never re-measure per call
        entry = _session_peaks[key]
        return entry, f"others used {entry['others_cpu_share']:.0%} of the CPU meanwhile, not cached"
    with _cache_lock(path):
        entries = _read_entries(path)  # read under the lock: another process may have just measured
        if not recalibrate and key in entries and _valid(valid, entries[key]):
            return entries[key], f"cached in {path}"
        fields, others = _with_others_share(measure)
        entry = {**_cpu_identity(), **fields, "others_cpu_share": round(others, 3),
                 "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if others > 0.2 and not cache_when_busy:
            _session_peaks[key] = entry
            warn_once(f"{what}: other processes used {others:.0%} of the CPU during calibration; the figure may"
                      " be low; not cached (rerun `python -m train.hardware --recalibrate` when idle)")
            return entry, f"others used {entry['others_cpu_share']:.0%} of the CPU meanwhile, not cached"
        entries[key] = entry
        _write_json_atomic(path, {"version": 1, "entries": entries}, what)
    return entry, f"cached in {path}"


def _valid(valid, entry) -> bool:
    try:
        return isinstance(entry, dict) and "measured_at" in entry and bool(valid(entry))
    except (KeyError, TypeError, ValueError):
        return False


def identity_key() -> str:
    """The part of every host-measurement cache key that names the machine: CPU, usable cores, jax."""
    ident = _cpu_identity()
    return f"{ident['cpu']} | {ident['cores']} cores | jax {ident['jax']}"


def cpu_peak(compute_dtype: str, cache_path: str | os.PathLike | None = None, recalibrate: bool = False) -> Peak:
    """The host's measured matmul peak, calibrated once per (CPU, cores, jax, dtype) and cached."""
    path = pathlib.Path(cache_path) if cache_path else default_cache_path()
    key = f"{identity_key()} | {compute_dtype}"
    try:
        entry, where = calibrated(
            "CPU peak", key, lambda: {"dtype": compute_dtype, "flops_per_second": measure_cpu_peak(compute_dtype)},
            path, recalibrate, valid=lambda entry: float(entry["flops_per_second"]) > 0)
    except Exception as err:  # a dtype XLA's CPU backend cannot multiply: no honest number
        warn_once(f"CPU peak: calibration in {compute_dtype} failed ({type(err).__name__}: {err}); MFU is null")
        return Peak(None, f"CPU calibration in {compute_dtype} failed")
    return Peak(float(entry["flops_per_second"]),
                f"measured: XLA CPU matmul calibration ({compute_dtype} inputs, best of n=1024..2048) on {key}"
                f" at {entry['measured_at']}, {where}")


def _write_json_atomic(path: pathlib.Path, data: dict, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=2))
    except (OSError, WriteError) as err:  # a read-only cache only costs a re-calibration next time
        warn_once(f"{what}: could not write cache {path} ({err})")


# ----------------------------------------------------------------------------- CPU nominal peak


@dataclasses.dataclass(frozen=True)
class FmaRule:
    """One CPU microarchitecture's FMA datapath: FMA instructions a core issues per cycle and their width.
    `models` are inclusive ranges of the cpuid model; `name` (a regex on the lower-cased model name)
    tells apart SKUs of one model whose FMA unit count differs."""

    microarchitecture: str
    vendor: str  # /proc/cpuinfo vendor_id
    family: int
    models: tuple[tuple[int, int], ...]
    fma_units: int
    fma_bits: int
    source: str
    name: str | None = None


_INTEL_ORM = "Intel 64 and IA-32 Architectures Optimization Reference Manual"
# Rules are disjoint (a test checks it). A CPU no rule matches gets a null nominal peak, never a guess.
CPU_FMA_TABLE: tuple[FmaRule, ...] = (
    FmaRule("AMD Zen / Zen+", "AuthenticAMD", 0x17, ((0x00, 0x2F),), 2, 128,
            "AMD Software Optimization Guide for AMD Family 17h Processors (pub. 55723): four 128-bit FP pipes,"
            " FMA on two"),
    FmaRule("AMD Zen 2", "AuthenticAMD", 0x17, ((0x30, 0xFF),), 2, 256,
            "AMD Software Optimization Guide for AMD Family 17h Models 30h and Greater (pub. 56305): 256-bit FP"
            " datapath, FMA on two pipes"),
    FmaRule("AMD Zen 3 / Zen 4", "AuthenticAMD", 0x19, ((0x00, 0xFF),), 2, 256,
            "AMD Software Optimization Guides for Family 19h (pub. 56665) and the Zen 4 microarchitecture"
            " (pub. 57647): two 256-bit FMA pipes; Zen 4 executes a 512-bit AVX-512 op as two 256-bit halves"),
    FmaRule("AMD Zen 5 (server, desktop)", "AuthenticAMD", 0x1A, ((0x00, 0x1F), (0x40, 0x4F)), 2, 512,
            "AMD Software Optimization Guide for the Zen 5 microarchitecture (pub. 58455): 512-bit FP datapath,"
            " FMA on two pipes (mobile Zen 5 parts keep a 256-bit datapath: no rule)"),
    FmaRule("Intel Xeon Skylake-SP/Cascade Lake/Cooper Lake, Platinum and Gold 6000", "GenuineIntel", 6,
            ((0x55, 0x55),), 2, 512,
            f"{_INTEL_ORM}: 512-bit FMA on port 0 (ports 0+1 fused) and port 5; Intel ARK: 2 AVX-512 FMA units"
            " on these SKUs", name=r"\b(platinum|gold 6\d{3})"),
    FmaRule("Intel Xeon Skylake-SP/Cascade Lake, Silver and Bronze", "GenuineIntel", 6, ((0x55, 0x55),), 1, 512,
            f"{_INTEL_ORM}; Intel ARK: 1 AVX-512 FMA unit on these SKUs", name=r"\b(silver|bronze)\b"),
    FmaRule("Intel Xeon Ice Lake-SP / Sapphire, Emerald, Granite Rapids", "GenuineIntel", 6,
            ((0x6A, 0x6A), (0x6C, 0x6C), (0x8F, 0x8F), (0xAD, 0xAE), (0xCF, 0xCF)), 2, 512,
            f"{_INTEL_ORM}: 512-bit FMA on port 0 (ports 0+1 fused) and port 5; Intel ARK: 2 AVX-512 FMA units"),
    FmaRule("Intel Ice Lake / Tiger Lake / Rocket Lake client", "GenuineIntel", 6,
            ((0x7D, 0x7E), (0x8C, 0x8D), (0xA7, 0xA7)), 1, 512,
            f"{_INTEL_ORM}: one 512-bit FMA (ports 0+1 fused) on client cores"),
    FmaRule("Intel Haswell .. Comet Lake", "GenuineIntel", 6,
            ((0x3C, 0x3D), (0x3F, 0x3F), (0x45, 0x47), (0x4E, 0x4F), (0x56, 0x56), (0x5E, 0x5E), (0x8E, 0x8E),
             (0x9E, 0x9E), (0xA5, 0xA6)), 2, 256,
            f"{_INTEL_ORM}: two 256-bit FMA units (ports 0 and 1) since Haswell"),
)
# Per-core bf16 multiply-accumulate beyond the FMA lanes (the fastest the core offers counts).
AMX_BF16_FLOPS_PER_CYCLE = 1024
AMX_SOURCE = ("Intel AMX-BF16: TDPBF16PS multiplies a 16x32 by a 32x16 bf16 tile (16,384 FLOP) every 16 cycles,"
              f" 1,024 FLOP/cycle per core ({_INTEL_ORM}, AMX chapter)")
AVX512_BF16_SOURCE = ("AVX512_BF16: VDPBF16PS accumulates two bf16 products into each fp32 lane (4 FLOP per lane"
                      " per instruction) at the FMA rate, so twice the fp32 figure")
CPUFREQ_MAX = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"


def fma_rule(info: cpuinfo.CpuInfo) -> FmaRule | None:
    """The FMA datapath rule of a CPU, or None for one no rule describes."""
    name = (info.model_name or "").lower()
    for rule in CPU_FMA_TABLE:
        if (info.vendor == rule.vendor and info.family == rule.family and info.model is not None
                and any(lo <= info.model <= hi for lo, hi in rule.models)
                and (rule.name is None or re.search(rule.name, name))):
            return rule
    return None


def cpu_clock(info: cpuinfo.CpuInfo, cpufreq_path: str = CPUFREQ_MAX) -> tuple[float | None, str]:
    """(Hz, where it came from): cpufreq's maximum when the kernel exposes one, else /proc/cpuinfo's
    "cpu MHz" (the clock when read; in a VM usually the base/TSC clock, below any boost clock)."""
    try:
        khz = int(pathlib.Path(cpufreq_path).read_text().strip())
        if khz > 0:
            return khz * 1e3, f"{khz / 1e6:.3f} GHz, cpufreq cpuinfo_max_freq of cpu0"
    except (OSError, ValueError):
        pass
    if info.mhz:
        return info.mhz * 1e6, (f"{info.mhz / 1e3:.3f} GHz, 'cpu MHz' of /proc/cpuinfo (no cpufreq: the clock when"
                                " read, in a VM the base clock; boost can exceed it)")
    return None, "no clock readable (no cpufreq maximum, no 'cpu MHz' in /proc/cpuinfo)"


def nominal_cpu_peak(compute_dtype: str, info: cpuinfo.CpuInfo, cores: float, clock_hz: float | None,
                     clock_source: str) -> Peak:
    """The host's nominal matmul peak: cores x FMA units x lanes x 2 FLOP x clock (docs/HARDWARE.md).

    fp32 lanes = FMA width / 32. bf16: AMX-BF16 where present (1,024 FLOP/cycle/core), else AVX512_BF16's
    dot product (twice the fp32 figure), else the fp32 figure (bf16 is converted and multiplied in fp32).
    No x86 CPU here multiplies fp8, tf32 or (as a FLOP) int8: null. `cores` are physical cores.
    """
    rule = fma_rule(info)
    cpu = f"{info.vendor} family {info.family} model {info.model} ({info.model_name})"
    if compute_dtype not in ("fp32", "bf16"):
        return Peak(None, f"nominal: no {compute_dtype} arithmetic modelled for CPUs")
    if rule is None:
        return Peak(None, f"nominal: no FMA datapath rule for {cpu} (train/hardware.py CPU_FMA_TABLE)")
    if clock_hz is None:
        return Peak(None, f"nominal: {clock_source}")
    lanes = rule.fma_bits // 32
    fp32 = cores * rule.fma_units * lanes * 2 * clock_hz
    formula = (f"{cores:g} cores x {rule.fma_units} FMA x {lanes} fp32 lanes ({rule.fma_bits}-bit) x 2 FLOP"
               f" x {clock_source}")
    where = f"{rule.microarchitecture}: {rule.source}"
    if compute_dtype == "bf16" and "amx_bf16" in info.flags:
        return Peak(cores * AMX_BF16_FLOPS_PER_CYCLE * clock_hz,
                    f"nominal: {cores:g} cores x {AMX_BF16_FLOPS_PER_CYCLE} bf16 FLOP/cycle x {clock_source}"
                    f" — {AMX_SOURCE}")
    if compute_dtype == "bf16" and "avx512_bf16" in info.flags:
        return Peak(2 * fp32, f"nominal: 2 x [{formula}] — {AVX512_BF16_SOURCE}; {where}")
    if compute_dtype == "bf16":
        return Peak(fp32, f"nominal: no native bf16, bf16 runs on the fp32 lanes: {formula} — {where}")
    return Peak(fp32, f"nominal: {formula} — {where}")


def cpu_nominal_peak(compute_dtype: str) -> Peak:
    """This host's nominal peak over the physical cores the process may use (SMT threads share a core's
    FMA units, so usable logical CPUs / threads per core)."""
    info = cpuinfo.host()
    clock_hz, clock_source = cpu_clock(info)
    return nominal_cpu_peak(compute_dtype, info, _usable_cpus() / info.threads_per_core, clock_hz, clock_source)


# ----------------------------------------------------------------------------- public API

_FROM_JAX = object()


def _local_cpu_device_count() -> int:
    import jax

    return max(1, len(jax.local_devices(backend="cpu")))


def device_peak(device, compute_dtype: str, hardware_config=None, *, matmul_precision=_FROM_JAX,
                cache_path=None) -> Peak:
    """Peak FLOP/s of one device for matmuls in `compute_dtype` (fp32 | bf16 | fp8 | int8).

    A CPU's measured peak belongs to the whole host, so it is split across the process's CPU
    devices (8 fake devices share the same cores). fp32 on accelerators follows JAX's matmul
    precision (TF32 on GPU, bf16 passes on TPU by default).
    """
    if compute_dtype not in DTYPES:
        raise ValueError(f"compute dtype {compute_dtype!r} is not one of {', '.join(DTYPES)}")
    override = getattr(hardware_config, "peak_flops_per_second", None)
    if override is not None:
        return Peak(float(override), "config override: hardware.peak_flops_per_second")
    if device.platform == "cpu":
        return _per_cpu_device(cpu_peak(compute_dtype, cache_path))
    row = match_accelerator(device.device_kind)
    if row is None:
        warn_once(f"hardware: unknown device {device.device_kind!r}; MFU is null"
                   " (set hardware.peak_flops_per_second to supply a peak)")
        return Peak(None, f"unknown device {device.device_kind!r}")
    precision = _jax_matmul_precision() if matmul_precision is _FROM_JAX else matmul_precision
    dtype, passes, note = _table_dtype(device.platform, row, compute_dtype, precision)
    value = getattr(row, dtype) if dtype else None
    if value is None:
        what = f"{dtype} peak" if dtype else f"peak for fp32 at {note}"
        warn_once(f"hardware: {row.name} has no published {what}; MFU is null")
        return Peak(None, f"table: {row.name} has no published {what}")
    detail = f"{dtype} dense" + (f"; {note}" if note else "")
    return Peak(value / passes, f"table: {row.name} {detail} — {row.source}")


def _per_cpu_device(peak: Peak) -> Peak:
    """A host figure split across the process's CPU devices (8 fake devices share the same cores)."""
    n_devices = _local_cpu_device_count()
    if peak.flops_per_second is None or n_devices == 1:
        return peak
    return Peak(peak.flops_per_second / n_devices, f"{peak.source}; host peak / {n_devices} CPU devices")


def device_nominal_peak(device, compute_dtype: str) -> Peak:
    """The hardware's nominal peak of one device: the formula of `nominal_cpu_peak` on a CPU, the vendor
    table (already nominal: MFU and nominal MFU then agree) on an accelerator. No config override: it
    says what the silicon could do, beside the peak MFU is measured against."""
    if device.platform == "cpu":
        return _per_cpu_device(cpu_nominal_peak(compute_dtype))
    peak = device_peak(device, compute_dtype)
    return Peak(peak.flops_per_second, f"nominal = the table peak ({peak.source})")


def mfu(model_flops_per_second: float | None, n_devices: int, peak: Peak) -> float | None:
    """Model FLOP/s over (devices x peak per device); None when any part is unknown."""
    if model_flops_per_second is None or peak.flops_per_second is None or peak.flops_per_second <= 0:
        return None
    if n_devices <= 0:
        raise ValueError(f"n_devices must be > 0, got {n_devices}")
    value = model_flops_per_second / (n_devices * peak.flops_per_second)
    if value > 1:  # kept (it is data) but flagged: the peak is too low, e.g. a CPU calibrated under load
        warn_once(f"MFU {value:.0%} exceeds 100%: the peak ({peak.source}) is too low"
                   " (a CPU: rerun `python -m train.hardware --recalibrate` on an idle machine)",
                   key=f"mfu>1 {peak.source}")
    return value


# ----------------------------------------------------------------------------- memory bandwidth

GIGA = 1e9


@dataclasses.dataclass(frozen=True)
class MemoryBandwidth:
    """Peak memory bandwidth of one TABLE row (bytes/s per device); `pattern` (optional) narrows a row
    whose memory differs between variants, e.g. the 40 GB and 80 GB A100."""

    accelerator: str  # an Accelerator.name
    pattern: str | None
    bytes_per_second: float
    source: str


# Vendor peaks (decimal GB/s, i.e. 1e9 bytes/s) of the on-package memory: what a decode step's weights
# and KV cache are read from. A peak, not a sustained figure: 80-90 % of it is what streaming kernels reach.
BANDWIDTH_TABLE: tuple[MemoryBandwidth, ...] = (
    MemoryBandwidth("TPU v4", None, 1200 * GIGA, "Cloud TPU docs, TPU v4 (cloud.google.com/tpu/docs/v4): 32 GiB HBM2,"
                    " 1200 GBps per chip"),
    MemoryBandwidth("TPU v5e", None, 819 * GIGA, "Cloud TPU docs, TPU v5e (cloud.google.com/tpu/docs/v5e): 16 GB HBM2,"
                    " 819 GBps per chip"),
    MemoryBandwidth("TPU v5p", None, 2765 * GIGA, "Cloud TPU docs, TPU v5p (cloud.google.com/tpu/docs/v5p): 95 GB"
                    " HBM2e, 2765 GBps per chip"),
    MemoryBandwidth("TPU v6e", None, 1638 * GIGA, "Cloud TPU docs, TPU v6e (cloud.google.com/tpu/docs/v6e): 32 GB HBM,"
                    " 1638 GBps per chip"),
    MemoryBandwidth("NVIDIA A100 SXM", r"\b40gb\b", 1555 * GIGA, "NVIDIA A100 datasheet"
                    " (nvidia.com/en-us/data-center/a100): A100 40GB SXM, HBM2 1,555 GB/s"),
    MemoryBandwidth("NVIDIA A100 SXM", r"\b80gb\b", 2039 * GIGA, "NVIDIA A100 datasheet"
                    " (nvidia.com/en-us/data-center/a100): A100 80GB SXM, HBM2e 2,039 GB/s"),
    MemoryBandwidth("NVIDIA A100 PCIe 40GB", None, 1555 * GIGA, "NVIDIA A100 datasheet"
                    " (nvidia.com/en-us/data-center/a100): A100 40GB PCIe, HBM2 1,555 GB/s"),
    MemoryBandwidth("NVIDIA A100 PCIe 80GB", None, 1935 * GIGA, "NVIDIA A100 datasheet"
                    " (nvidia.com/en-us/data-center/a100): A100 80GB PCIe, HBM2e 1,935 GB/s"),
    MemoryBandwidth("NVIDIA H100 SXM", None, 3350 * GIGA, "NVIDIA H100 datasheet"
                    " (nvidia.com/en-us/data-center/h100), SXM column: 80 GB HBM3, 3.35 TB/s"),
    MemoryBandwidth("NVIDIA H100 PCIe", None, 2000 * GIGA, "NVIDIA H100 PCIe product brief PB-11133-001: 80 GB"
                    " HBM2e, 2,000 GB/s ('greater than 2,000 GBps'; the figure counted here)"),
    MemoryBandwidth("NVIDIA H100 NVL", None, 3900 * GIGA, "NVIDIA H100 datasheet"
                    " (nvidia.com/en-us/data-center/h100), NVL column: 94 GB HBM3, 3.9 TB/s"),
    MemoryBandwidth("NVIDIA H200 SXM", None, 4800 * GIGA, "NVIDIA H200 datasheet"
                    " (nvidia.com/en-us/data-center/h200), SXM column: 141 GB HBM3e, 4.8 TB/s"),
    MemoryBandwidth("NVIDIA H200 NVL", None, 4800 * GIGA, "NVIDIA H200 datasheet"
                    " (nvidia.com/en-us/data-center/h200), NVL column: 141 GB HBM3e, 4.8 TB/s"),
    MemoryBandwidth("NVIDIA B200", None, 8000 * GIGA, "NVIDIA HGX B200 specifications"
                    " (nvidia.com/en-us/data-center/hgx), per GPU: HBM3e, 8 TB/s"),
    MemoryBandwidth("NVIDIA L4", None, 300 * GIGA, "NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4): 24 GB"
                    " GDDR6, 300 GB/s"),
    MemoryBandwidth("NVIDIA A10", None, 600 * GIGA, "NVIDIA A10 datasheet"
                    " (nvidia.com/en-us/data-center/products/a10-gpu): 24 GB GDDR6, 600 GB/s"),
    MemoryBandwidth("NVIDIA V100 SXM2", None, 900 * GIGA, "NVIDIA V100 datasheet (volta-v100-datasheet-update-us-"
                    "1165301-r5.pdf): 16/32 GB HBM2, 900 GB/s"),
    MemoryBandwidth("NVIDIA V100 PCIe", None, 900 * GIGA, "NVIDIA V100 datasheet (volta-v100-datasheet-update-us-"
                    "1165301-r5.pdf): 16/32 GB HBM2, 900 GB/s"),
)


@dataclasses.dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth of one device (bytes/s) and where the number came from; None = unknown."""

    bytes_per_second: float | None
    source: str


def table_bandwidth(device_kind: str) -> Bandwidth:
    """The table's bandwidth for an accelerator's device kind; None (one warning) when unknown or ambiguous."""
    row = match_accelerator(device_kind)
    kind = normalise_kind(device_kind)
    rows = [] if row is None else [b for b in BANDWIDTH_TABLE
                                   if b.accelerator == row.name and (b.pattern is None or re.search(b.pattern, kind))]
    if len(rows) != 1:
        what = "unknown device" if row is None else f"{row.name} without one memory variant in its name"
        warn_once(f"hardware: no memory bandwidth for {device_kind!r} ({what}); the bandwidth bound is null")
        return Bandwidth(None, f"{what} {device_kind!r}")
    return Bandwidth(rows[0].bytes_per_second, f"table: {rows[0].accelerator} — {rows[0].source}")


def default_bandwidth_cache_path() -> pathlib.Path:
    return default_cache_path().with_name("cpu_bandwidth.json")


def measure_cpu_bandwidth(n_bytes: int = 256 << 20, repeats: int = 5) -> dict:
    """Best-of bytes/s XLA reaches reading a float32 array far larger than the caches, by two kernels
    that only read: a sum, and a matrix-vector product (a decode step is mostly the latter). The best
    counts, as for the FLOP peak; both are recorded. The array is filled on the device (no host copy),
    so the calibration adds only `n_bytes` to the process's peak memory."""
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    side = int((n_bytes // 4) ** 0.5)
    with jax.default_device(cpu):
        matrix, vector = jnp.full((side, side), 0.5, jnp.float32), jnp.ones((side,), jnp.float32)
    kernels = {"sum": (jax.jit(jnp.sum), (matrix,)), "gemv": (jax.jit(jnp.dot), (matrix, vector))}
    best = {}
    for name, (kernel, args) in kernels.items():
        kernel(*args).block_until_ready()  # compile + warm up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            kernel(*args).block_until_ready()
            seconds.append(time.perf_counter() - start)
        best[f"{name}_bytes_per_second"] = matrix.nbytes / min(seconds)
    return {"bytes_per_second": max(best.values()), **best, "array_bytes": matrix.nbytes}


def cpu_bandwidth(cache_path: str | os.PathLike | None = None, recalibrate: bool = False) -> Bandwidth:
    """The host's measured memory bandwidth, calibrated once per (CPU, cores, jax) and cached beside the
    FLOP peak (`python -m train.hardware --recalibrate` re-measures both)."""
    path = pathlib.Path(cache_path) if cache_path else default_bandwidth_cache_path()
    key = f"{identity_key()} | memory bandwidth"
    try:
        entry, where = calibrated("CPU bandwidth", key, measure_cpu_bandwidth, path, recalibrate,
                                   valid=lambda entry: float(entry["bytes_per_second"]) > 0)
    except Exception as err:  # e.g. no memory for the calibration array: no honest number
        warn_once(f"CPU bandwidth: calibration failed ({type(err).__name__}: {err}); the bandwidth bound is null")
        return Bandwidth(None, "CPU bandwidth calibration failed")
    return Bandwidth(float(entry["bytes_per_second"]),
                     f"measured: XLA CPU read calibration (best of sum and matrix-vector over a "
                     f"{entry['array_bytes'] / 2**20:.0f} MiB float32 array) on {key} at {entry['measured_at']},"
                     f" {where}")


def device_bandwidth(device, *, cache_path=None) -> Bandwidth:
    """Memory bandwidth of one device: the table for accelerators, the measured calibration on CPU (the
    host's figure split across the process's CPU devices, which share it)."""
    if device.platform != "cpu":
        return table_bandwidth(device.device_kind)
    bandwidth = cpu_bandwidth(cache_path)
    n_devices = _local_cpu_device_count()
    if bandwidth.bytes_per_second is None or n_devices == 1:
        return bandwidth
    return Bandwidth(bandwidth.bytes_per_second / n_devices,
                     f"{bandwidth.source}; host bandwidth / {n_devices} CPU devices")


def cpu_cores() -> int:
    return _cpu_identity()["cores"]


def tdp_watts(device, hardware_config=None) -> tuple[float | None, str]:
    """Power of one device (a CPU: the whole host's usable cores), with its source."""
    override = getattr(hardware_config, "tdp_watts", None)
    if override is not None:
        return float(override), "config override: hardware.tdp_watts"
    if device.platform == "cpu":
        cores = cpu_cores()
        return cores * CPU_WATTS_PER_CORE, f"{CPU_WATTS_SOURCE}, x {cores} cores"
    row = match_accelerator(device.device_kind)
    if row is None:
        return None, f"unknown device {device.device_kind!r}"
    if row.tdp_watts is None:
        return None, f"table: {row.name} has no published power — {row.source}"
    return row.tdp_watts, f"table: {row.name} max power — {row.source}"


def describe_devices(devices, compute_dtype: str, hardware_config=None, *, cache_path=None) -> dict:
    """summary.json's `hardware`: what ran, how many, and the peak/power used with their sources."""
    devices = list(devices)
    if not devices:
        raise ValueError("describe_devices: no devices")
    kinds = sorted({d.device_kind for d in devices})
    platforms = sorted({d.platform for d in devices})
    first = devices[0]
    if len(kinds) > 1:  # mixed devices have no single peak or power
        peak = nominal = Peak(None, f"mixed device kinds {kinds}")
        watts, watts_source = None, peak.source
        warn_once(f"hardware: mixed device kinds {kinds}; MFU is null")
    else:
        peak = device_peak(first, compute_dtype, hardware_config, cache_path=cache_path)
        nominal = device_nominal_peak(first, compute_dtype)
        watts, watts_source = tdp_watts(first, hardware_config)
    row = match_accelerator(first.device_kind) if first.platform != "cpu" else None
    return {
        "platform": ",".join(platforms),
        "device_kind": ",".join(kinds),
        "accelerator": row.name if row else None,
        "count": len(devices),
        "compute_dtype": compute_dtype,
        "peak_flops_per_second": peak.flops_per_second,
        "peak_flops_source": peak.source,
        "nominal_peak_flops_per_second": nominal.flops_per_second,
        "nominal_peak_flops_source": nominal.source,
        "tdp_watts": watts,
        "tdp_scope": "host" if first.platform == "cpu" else "device",  # a CPU host's fake devices share it
        "tdp_source": watts_source,
    }


def main(argv=None) -> None:
    """`python -m train.hardware [--recalibrate]`: this machine's devices, peaks, power and memory bandwidth."""
    import argparse

    import jax

    parser = argparse.ArgumentParser(prog="python -m train.hardware", description=main.__doc__)
    parser.add_argument("--recalibrate", action="store_true",
                        help="re-measure the CPU peak and bandwidth and update the caches (the kernel choices"
                             " of a config: python -m train.cpu_paths CONFIG --recalibrate)")
    args = parser.parse_args(argv)
    on_cpu = jax.devices()[0].platform == "cpu"
    for dtype in ("fp32", "bf16"):
        if args.recalibrate and on_cpu:
            cpu_peak(dtype, recalibrate=True)
        print(json.dumps(describe_devices(jax.devices(), dtype), indent=2))
    if args.recalibrate and on_cpu:
        cpu_bandwidth(recalibrate=True)
    info = cpuinfo.host()
    print(json.dumps({"cpu_simd_flags": cpuinfo.simd_flags(info), "cpu_native_bf16": cpuinfo.native_bf16(info)}))
    bandwidth = device_bandwidth(jax.devices()[0])
    print(json.dumps({"memory_bytes_per_second": bandwidth.bytes_per_second, "memory_source": bandwidth.source},
                     indent=2))


if __name__ == "__main__":
    main()


__all__ = [
    "Accelerator",
    "BANDWIDTH_TABLE",
    "Bandwidth",
    "MemoryBandwidth",
    "DTYPES",
    "Peak",
    "TABLE",
    "calibrated",
    "compute_dtype_of",
    "cpu_bandwidth",
    "CPU_FMA_TABLE",
    "FmaRule",
    "cpu_clock",
    "cpu_nominal_peak",
    "cpu_peak",
    "describe_devices",
    "device_bandwidth",
    "device_nominal_peak",
    "device_peak",
    "fma_rule",
    "identity_key",
    "match_accelerator",
    "measure_cpu_bandwidth",
    "measure_cpu_peak",
    "mfu",
    "nominal_cpu_peak",
    "table_bandwidth",
    "tdp_watts",
]
