"""Hardware table matching, peaks per dtype, CPU calibration cache, MFU and TDP."""

import json
import re
import types

import jax
import pytest

import common.warn
from train import hardware
from train.config import HardwareConfig
from train.hardware import TABLE, Peak, compute_dtype_of, device_peak, match_accelerator, mfu, tdp_watts

KNOWN = {
    "NVIDIA H100 80GB HBM3": "NVIDIA H100 SXM",
    "NVIDIA H100 SXM5 80GB": "NVIDIA H100 SXM",
    "NVIDIA H100 PCIe": "NVIDIA H100 PCIe",
    "NVIDIA H100 NVL": "NVIDIA H100 NVL",
    "NVIDIA H200": "NVIDIA H200 SXM",
    "NVIDIA H200 141GB HBM3e": "NVIDIA H200 SXM",
    "NVIDIA H200 NVL": "NVIDIA H200 NVL",
    "NVIDIA A100-SXM4-80GB": "NVIDIA A100 SXM",
    "NVIDIA A100-SXM4-40GB": "NVIDIA A100 SXM",
    "NVIDIA A100-PCIE-40GB": "NVIDIA A100 PCIe 40GB",
    "NVIDIA A100 80GB PCIe": "NVIDIA A100 PCIe 80GB",
    "NVIDIA B200": "NVIDIA B200",
    "NVIDIA L4": "NVIDIA L4",
    "NVIDIA A10": "NVIDIA A10",
    "Tesla V100-SXM2-16GB": "NVIDIA V100 SXM2",
    "Tesla V100-PCIE-32GB": "NVIDIA V100 PCIe",
    "TPU v4": "TPU v4",
    "TPU v5 lite": "TPU v5e",
    "TPU v5e": "TPU v5e",
    "TPU v5": "TPU v5p",
    "TPU v5p": "TPU v5p",
    "TPU v6 lite": "TPU v6e",
    "TPU v6e": "TPU v6e",
}
UNKNOWN = [
    "NVIDIA GH200 480GB", "NVIDIA GB200", "NVIDIA H800", "NVIDIA H20", "NVIDIA A10G", "NVIDIA L40S",
    "NVIDIA A100 80GB PCIe MIG 1g.10gb", "Tesla V100S-PCIE-32GB", "TPU v4 lite", "TPU7x", "AMD Instinct MI300X",
    "NVIDIA B300", "",
]


def gpu(kind):
    return types.SimpleNamespace(platform="gpu", device_kind=kind)


def tpu(kind):
    return types.SimpleNamespace(platform="tpu", device_kind=kind)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    common.warn.reset()
    monkeypatch.setattr(hardware, "_session_peaks", {})


@pytest.mark.parametrize("kind,name", sorted(KNOWN.items()))
def test_known_kinds_match_exactly_one_row(kind, name):
    normalised = hardware.normalise_kind(kind)
    rows = [row.name for row in TABLE if re.search(row.pattern, normalised)]
    assert rows == [name]
    assert match_accelerator(kind).name == name


@pytest.mark.parametrize("kind", UNKNOWN)
def test_unknown_kinds_match_nothing(kind):
    assert match_accelerator(kind) is None


def test_h200_and_h100_are_not_confused():
    h100, h200 = match_accelerator("NVIDIA H100 80GB HBM3"), match_accelerator("NVIDIA H200")
    assert (h100.name, h200.name) == ("NVIDIA H100 SXM", "NVIDIA H200 SXM")
    assert device_peak(gpu("NVIDIA H200"), "bf16").source.startswith("table: NVIDIA H200 SXM")


def test_table_rows_have_sources_and_sane_values():
    for row in TABLE:
        assert ("datasheet" in row.source or "docs" in row.source) and row.name, row.name
        peaks = [getattr(row, d) for d in hardware.DTYPES if getattr(row, d) is not None]
        assert peaks and all(1e12 <= p <= 1e16 for p in peaks), row.name
        if row.bf16 and row.fp32:
            assert row.fp32 < row.bf16  # fp32 is the vector-unit figure, never the tensor-core one


@pytest.mark.parametrize(
    "device,dtype,precision,expected",
    [
        (gpu("NVIDIA H100 80GB HBM3"), "bf16", None, 989.5e12),
        (gpu("NVIDIA H100 80GB HBM3"), "fp8", None, 1979e12),
        (gpu("NVIDIA H100 80GB HBM3"), "fp32", None, 494.5e12),  # JAX default: TF32 tensor cores
        (gpu("NVIDIA H100 80GB HBM3"), "fp32", "highest", 67e12),
        (gpu("NVIDIA A100-SXM4-80GB"), "fp32", "float32", 19.5e12),
        (gpu("NVIDIA A100-SXM4-80GB"), "fp32", "tensorfloat32", 156e12),
        (gpu("NVIDIA H100 PCIe"), "bf16", None, 756.5e12),
        (gpu("NVIDIA B200"), "bf16", None, 2250e12),
        (gpu("Tesla V100-SXM2-16GB"), "fp32", None, 15.7e12),  # no TF32: f32 dots use the FP32 units
        (tpu("TPU v5 lite"), "bf16", None, 197e12),
        (tpu("TPU v5 lite"), "fp32", None, 197e12),  # one bf16 MXU pass at DEFAULT precision
        (tpu("TPU v6 lite"), "fp32", "highest", 918e12 / 6),
        (tpu("TPU v5"), "int8", None, 918e12),
    ],
)
def test_device_peak_values(device, dtype, precision, expected):
    peak = device_peak(device, dtype, matmul_precision=precision)
    assert peak.flops_per_second == pytest.approx(expected)
    assert peak.source.startswith("table: ")


def test_missing_dtype_and_unknown_device_give_null_with_one_warning(recwarn):
    for _ in range(3):
        assert device_peak(tpu("TPU v5p"), "fp8").flops_per_second is None
        peak = device_peak(gpu("NVIDIA H800"), "bf16")
    assert peak == Peak(None, "unknown device 'NVIDIA H800'")
    assert mfu(1e15, 8, peak) is None
    warnings = [str(w.message) for w in recwarn]
    assert len(warnings) == 2 and "H800" in warnings[1] and "fp8" in warnings[0]


def test_override_wins_and_mfu_arithmetic():
    peak = device_peak(gpu("NVIDIA H800"), "bf16", HardwareConfig(peak_flops_per_second=1e14))
    assert peak == Peak(1e14, "config override: hardware.peak_flops_per_second")
    assert mfu(2e14, 4, peak) == pytest.approx(0.5)
    assert mfu(None, 4, peak) is None
    with pytest.raises(ValueError):
        mfu(1.0, 0, peak)


def test_compute_dtype_of_an_unknown_policy_names_it():
    with pytest.raises(ValueError, match="fp16"):
        compute_dtype_of("fp16")


def test_tdp_watts():
    assert tdp_watts(gpu("NVIDIA H200"))[0] == 700.0
    assert tdp_watts(gpu("NVIDIA H200 NVL"))[0] == 600.0
    assert tdp_watts(tpu("TPU v6 lite"))[0] is None
    assert tdp_watts(gpu("NVIDIA H800")) == (None, "unknown device 'NVIDIA H800'")
    override = HardwareConfig(tdp_watts=350)
    assert tdp_watts(gpu("NVIDIA H800"), override) == (350.0, "config override: hardware.tdp_watts")
    watts, source = tdp_watts(jax.devices("cpu")[0])
    assert watts == pytest.approx(hardware.cpu_cores() * 500 / 128) and "per core" in source


@pytest.fixture
def fake_calibration(monkeypatch):
    calls = []

    def measure(compute_dtype, sizes=(1024, 1536, 2048), repeats=3):
        calls.append(compute_dtype)
        return 2.0e11

    monkeypatch.setattr(hardware, "measure_cpu_peak", measure)
    monkeypatch.setattr(hardware, "_busy_seconds", lambda: None)  # no other processes measured
    # Process-wide memory of earlier calibrations and warnings (another test in this worker may have
    # calibrated for real) must not leak in.
    monkeypatch.setattr(hardware, "_session_peaks", {})
    common.warn.reset()
    return calls


def test_cpu_peak_is_measured_once_and_cached(tmp_path, fake_calibration, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu = jax.devices("cpu")[0]
    first = device_peak(cpu, "fp32")
    second = device_peak(cpu, "fp32")
    assert first == second and first.flops_per_second == 2.0e11 and first.source.startswith("measured: ")
    assert fake_calibration == ["fp32"]
    cache = json.loads((tmp_path / "isoflop" / "cpu_peak.json").read_text())
    (entry,) = cache["entries"].values()
    assert entry["cores"] == hardware.cpu_cores() and entry["jax"] == jax.__version__
    device_peak(cpu, "bf16")  # another dtype is another measurement
    assert fake_calibration == ["fp32", "bf16"]


def test_cpu_peak_measured_on_a_busy_machine_is_used_but_not_cached(tmp_path, fake_calibration, monkeypatch,
                                                                    recwarn):
    busy = iter([(100.0, 10.0), (101.6, 10.8)])  # 1.6 s busy in all, 0.8 s of it ours
    monkeypatch.setattr(hardware, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 2)
    cache = tmp_path / "peak.json"
    peak = hardware.cpu_peak("fp32", cache_path=cache)
    assert peak.flops_per_second == 2.0e11 and "not cached" in peak.source and not cache.exists()
    assert any("other processes used" in str(w.message) for w in recwarn)
    assert hardware.cpu_peak("fp32", cache_path=cache) == peak and fake_calibration == ["fp32"]  # once per process


def test_busy_seconds_reads_proc_stat():
    machine, own = hardware._busy_seconds()
    assert machine > 0 and 0 < own <= machine + 1


def test_mfu_above_one_warns_once(recwarn):
    assert mfu(3e11, 1, Peak(2e11, "measured: x")) == pytest.approx(1.5)
    assert mfu(3.2e11, 1, Peak(2e11, "measured: x")) == pytest.approx(1.6)
    assert sum("exceeds 100%" in str(w.message) for w in recwarn) == 1


def test_cpu_peak_is_split_over_fake_devices(tmp_path, fake_calibration, monkeypatch):
    monkeypatch.setattr(hardware, "_local_cpu_device_count", lambda: 8)
    peak = device_peak(jax.devices("cpu")[0], "fp32", cache_path=tmp_path / "peak.json")
    assert peak.flops_per_second == pytest.approx(2.0e11 / 8) and "/ 8 CPU devices" in peak.source


def test_real_calibration_is_plausible():
    flops = hardware.measure_cpu_peak("fp32", sizes=(256,), repeats=2)
    assert 1e9 < flops < 1e13  # 2 cores of a modern CPU: hundreds of GFLOP/s


def test_describe_devices(tmp_path, fake_calibration):
    described = hardware.describe_devices(jax.devices("cpu"), "fp32", cache_path=tmp_path / "peak.json")
    assert described["platform"] == "cpu" and described["count"] == len(jax.devices("cpu"))
    assert described["peak_flops_per_second"] == 2.0e11 and described["peak_flops_source"].startswith("measured")
    assert described["tdp_watts"] > 0 and described["tdp_scope"] == "host" and described["accelerator"] is None
    described = hardware.describe_devices([gpu("NVIDIA H100 PCIe")] * 2, "bf16")
    assert described["accelerator"] == "NVIDIA H100 PCIe" and described["peak_flops_per_second"] == 756.5e12
    assert (described["tdp_watts"], described["tdp_scope"]) == (350.0, "device")
    with pytest.warns(UserWarning, match="mixed device kinds"):
        mixed = hardware.describe_devices([gpu("NVIDIA H100 PCIe"), gpu("NVIDIA H200")], "bf16")
    assert mixed["peak_flops_per_second"] is None and mixed["tdp_watts"] is None


# ----------------------------------------------------------------------------- memory bandwidth


@pytest.mark.parametrize("kind", KNOWN)
def test_every_known_accelerator_has_one_bandwidth(kind):
    bandwidth = hardware.table_bandwidth(kind)
    assert 1e11 <= bandwidth.bytes_per_second <= 1e13 and bandwidth.source.startswith("table: ")


def test_bandwidth_rows_name_table_rows_and_sources():
    names = {row.name for row in TABLE}
    assert {row.accelerator for row in hardware.BANDWIDTH_TABLE} == names  # every accelerator has a figure
    assert all(any(unit in row.source for unit in ("GB/s", "TB/s", "GBps")) for row in hardware.BANDWIDTH_TABLE)
    assert hardware.table_bandwidth("NVIDIA A100-SXM4-40GB").bytes_per_second == 1555e9
    assert hardware.table_bandwidth("NVIDIA A100-SXM4-80GB").bytes_per_second == 2039e9
    assert hardware.table_bandwidth("NVIDIA H200").bytes_per_second == 4800e9
    assert hardware.table_bandwidth("TPU v5 lite").bytes_per_second == 819e9


def test_unknown_or_ambiguous_bandwidth_is_null_with_one_warning(recwarn):
    assert hardware.table_bandwidth("AMD Instinct MI300X").bytes_per_second is None
    assert hardware.table_bandwidth("NVIDIA A100 SXM4").bytes_per_second is None  # 40 or 80 GB: unknowable
    assert hardware.table_bandwidth("AMD Instinct MI300X").bytes_per_second is None
    assert sum("no memory bandwidth" in str(w.message) for w in recwarn) == 2
    assert hardware.device_bandwidth(gpu("NVIDIA H100 PCIe")).bytes_per_second == 2000e9


@pytest.fixture
def fake_bandwidth(monkeypatch):
    calls = []

    def measure(n_bytes=256 << 20, repeats=5):
        calls.append(n_bytes)
        return {"bytes_per_second": 3.0e10, "sum_bytes_per_second": 2.0e10, "gemv_bytes_per_second": 3.0e10,
                "array_bytes": n_bytes}

    monkeypatch.setattr(hardware, "measure_cpu_bandwidth", measure)
    monkeypatch.setattr(hardware, "_busy_seconds", lambda: None)
    return calls


def test_cpu_bandwidth_is_measured_once_cached_and_labelled(tmp_path, fake_bandwidth, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu = jax.devices("cpu")[0]
    first, second = hardware.device_bandwidth(cpu), hardware.device_bandwidth(cpu)
    assert first == second and first.bytes_per_second == 3.0e10 and first.source.startswith("measured: ")
    assert fake_bandwidth == [256 << 20]
    (entry,) = json.loads((tmp_path / "isoflop" / "cpu_bandwidth.json").read_text())["entries"].values()
    assert entry["gemv_bytes_per_second"] == 3.0e10 and entry["cores"] == hardware.cpu_cores()
    hardware.cpu_bandwidth(recalibrate=True)  # re-runnable: measures again and rewrites the cache
    assert len(fake_bandwidth) == 2
    assert not (tmp_path / "isoflop" / "cpu_peak.json").exists()  # the FLOP peak has its own file


def test_cpu_bandwidth_on_a_busy_machine_is_not_cached(tmp_path, fake_bandwidth, monkeypatch, recwarn):
    busy = iter([(100.0, 10.0), (101.6, 10.8)])
    monkeypatch.setattr(hardware, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 2)
    cache = tmp_path / "bandwidth.json"
    bandwidth = hardware.cpu_bandwidth(cache)
    assert bandwidth.bytes_per_second == 3.0e10 and "not cached" in bandwidth.source and not cache.exists()
    assert any("CPU bandwidth: other processes used" in str(w.message) for w in recwarn)
    assert hardware.cpu_bandwidth(cache) == bandwidth and len(fake_bandwidth) == 1  # once per process


def test_cpu_bandwidth_is_split_over_fake_devices(tmp_path, fake_bandwidth, monkeypatch):
    monkeypatch.setattr(hardware, "_local_cpu_device_count", lambda: 4)
    bandwidth = hardware.device_bandwidth(jax.devices("cpu")[0], cache_path=tmp_path / "b.json")
    assert bandwidth.bytes_per_second == pytest.approx(3.0e10 / 4) and "/ 4 CPU devices" in bandwidth.source


def test_real_bandwidth_calibration_is_plausible():
    measured = hardware.measure_cpu_bandwidth(n_bytes=16 << 20, repeats=2)
    assert 1e8 < measured["bytes_per_second"] < 1e13  # a few to hundreds of GB/s
    assert measured["bytes_per_second"] == max(measured["sum_bytes_per_second"], measured["gemv_bytes_per_second"])


def test_a_failed_bandwidth_calibration_is_null_with_one_warning(tmp_path, monkeypatch, recwarn):
    def fail():
        raise MemoryError("no room for the array")

    monkeypatch.setattr(hardware, "measure_cpu_bandwidth", fail)
    monkeypatch.setattr(hardware, "_local_cpu_device_count", lambda: 2)
    bandwidth = hardware.device_bandwidth(jax.devices("cpu")[0], cache_path=tmp_path / "b.json")
    assert bandwidth.bytes_per_second is None and "failed" in bandwidth.source
    assert sum("CPU bandwidth: calibration failed" in str(w.message) for w in recwarn) == 1


# ----------------------------------------------------------------------------- CPU nominal peak

ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
stepping\t: 1
cpu MHz\t\t: 2596.152
siblings\t: 4
cpu cores\t: 2
flags\t\t: fpu sse2 ht fma avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 99
"""
SPR_CPUINFO = ("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum"
               " 8488C\nstepping\t: 8\ncpu MHz\t\t: 2400.000\nflags\t\t: fma avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
HASWELL_CPUINFO = ("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 63\nmodel name\t: Intel(R) Xeon(R) CPU"
                   " E5-2676 v3 @ 2.40GHz\ncpu MHz\t\t: 2400.000\nflags\t\t: fma avx2\n")
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_cpuinfo_is_read_from_the_first_processor_block():
    from common import cpuinfo

    info = cpuinfo.parse(ZEN4_CPUINFO)
    assert (info.vendor, info.family, info.model, info.stepping) == ("AuthenticAMD", 25, 17, 1)
    assert info.mhz == pytest.approx(2596.152) and info.threads_per_core == 2.0
    assert cpuinfo.native_bf16(info) and cpuinfo.simd_flags(info) == ["fma", "avx2", "avx512f", "avx512_bf16"]
    arm = cpuinfo.parse(ARM_CPUINFO)
    assert arm.vendor is None and arm.model is None and cpuinfo.native_bf16(arm) is True
    assert cpuinfo.native_bf16(cpuinfo.parse(HASWELL_CPUINFO)) is False
    assert cpuinfo.native_bf16(cpuinfo.parse("")) is None  # unknown, not "no"


@pytest.mark.parametrize("text,dtype,cores,expected,says", [
    # Zen 4: 2 cores x 2 FMA x 8 fp32 lanes x 2 FLOP x 2.596152 GHz; bf16 twice that (VDPBF16PS)
    (ZEN4_CPUINFO, "fp32", 2, 2 * 2 * 8 * 2 * 2.596152e9, "256-bit"),
    (ZEN4_CPUINFO, "bf16", 2, 2 * 2 * 2 * 8 * 2 * 2.596152e9, "VDPBF16PS"),
    # Sapphire Rapids: 2 x 512-bit FMA; bf16 on AMX tiles at 1,024 FLOP/cycle/core
    (SPR_CPUINFO, "fp32", 4, 4 * 2 * 16 * 2 * 2.4e9, "Sapphire"),
    (SPR_CPUINFO, "bf16", 4, 4 * 1024 * 2.4e9, "AMX"),
    # Haswell: no bf16 instructions, so bf16 has the fp32 figure
    (HASWELL_CPUINFO, "bf16", 2, 2 * 2 * 8 * 2 * 2.4e9, "no native bf16"),
])
def test_nominal_peak_formula(text, dtype, cores, expected, says):
    from common import cpuinfo

    info = cpuinfo.parse(text)
    peak = hardware.nominal_cpu_peak(dtype, info, cores, info.mhz * 1e6, "clock")
    assert peak.flops_per_second == pytest.approx(expected) and says in peak.source
    assert peak.source.startswith("nominal: ")


def test_nominal_peak_is_null_with_a_reason_when_unknown():
    from common import cpuinfo

    alder_lake = cpuinfo.parse(HASWELL_CPUINFO.replace("model\t\t: 63", "model\t\t: 151"))  # hybrid P/E cores
    assert hardware.nominal_cpu_peak("fp32", alder_lake, 2, 3e9, "c") == Peak(
        None, "nominal: no FMA datapath rule for GenuineIntel family 6 model 151 (Intel(R) Xeon(R) CPU E5-2676 v3 @"
              " 2.40GHz) (train/hardware.py CPU_FMA_TABLE)")
    zen4 = cpuinfo.parse(ZEN4_CPUINFO)
    assert hardware.nominal_cpu_peak("fp32", zen4, 2, None, "no clock readable").source == "nominal: no clock readable"
    assert hardware.nominal_cpu_peak("fp8", zen4, 2, 3e9, "c").flops_per_second is None
    skylake_gold_5 = cpuinfo.parse(SPR_CPUINFO.replace("143", "85").replace("Platinum 8488C", "Gold 5118"))
    assert hardware.fma_rule(skylake_gold_5) is None  # 1 or 2 AVX-512 FMA units: SKU-dependent, no guess
    assert hardware.fma_rule(cpuinfo.parse(SPR_CPUINFO.replace("143", "85").replace("8488C", "8175M"))).fma_units == 2


def test_fma_rules_never_overlap():
    from common import cpuinfo

    names = ["intel xeon platinum 8175m", "intel xeon silver 4114", "intel xeon gold 6148", "amd epyc", ""]
    for rule in hardware.CPU_FMA_TABLE:
        for model in range(256):
            for name in names:
                info = cpuinfo.CpuInfo(rule.vendor, name, rule.family, model, 0, frozenset(), None, 1.0)
                matching = [r for r in hardware.CPU_FMA_TABLE if r.vendor == rule.vendor and r.family == rule.family
                            and any(lo <= model <= hi for lo, hi in r.models)
                            and (r.name is None or re.search(r.name, name))]
                assert len(matching) <= 1, (rule.microarchitecture, model, name)
                assert hardware.fma_rule(info) == (matching[0] if matching else None)


def test_cpu_clock_prefers_cpufreq_and_falls_back_to_cpu_mhz(tmp_path):
    from common import cpuinfo

    info = cpuinfo.parse(ZEN4_CPUINFO)
    cpufreq = tmp_path / "cpuinfo_max_freq"
    cpufreq.write_text("3700000\n")
    hz, source = hardware.cpu_clock(info, str(cpufreq))
    assert hz == 3.7e9 and "cpuinfo_max_freq" in source
    hz, source = hardware.cpu_clock(info, str(tmp_path / "absent"))
    assert hz == pytest.approx(2.596152e9) and "'cpu MHz'" in source
    assert hardware.cpu_clock(cpuinfo.parse(ARM_CPUINFO), str(tmp_path / "absent"))[0] is None


def test_nominal_peak_counts_physical_cores_and_is_split_over_fake_devices(monkeypatch):
    from common import cpuinfo

    monkeypatch.setattr(cpuinfo, "host", lambda: cpuinfo.parse(ZEN4_CPUINFO))  # 2 threads per core
    monkeypatch.setattr(hardware, "_usable_cpus", lambda: 4)
    monkeypatch.setattr(hardware, "cpu_clock", lambda info: (2e9, "2 GHz"))
    assert hardware.cpu_nominal_peak("fp32").flops_per_second == pytest.approx(2 * 2 * 8 * 2 * 2e9)
    monkeypatch.setattr(hardware, "_local_cpu_device_count", lambda: 4)
    nominal = hardware.device_nominal_peak(jax.devices("cpu")[0], "fp32")
    assert nominal.flops_per_second == pytest.approx(2 * 2 * 8 * 2 * 2e9 / 4) and "/ 4 CPU devices" in nominal.source
    h100 = hardware.device_nominal_peak(gpu("NVIDIA H100 80GB HBM3"), "bf16")
    assert h100.flops_per_second == 989.5e12 and h100.source.startswith("nominal = the table peak")


def test_a_malformed_cached_peak_is_measured_again(tmp_path, fake_calibration):
    cache = tmp_path / "peak.json"
    hardware.cpu_peak("fp32", cache_path=cache)
    data = json.loads(cache.read_text())
    (entry,) = data["entries"].values()
    entry["flops_per_second"] = "fast"
    cache.write_text(json.dumps(data))
    assert hardware.cpu_peak("fp32", cache_path=cache).flops_per_second == 2.0e11
    assert fake_calibration == ["fp32", "fp32"]
