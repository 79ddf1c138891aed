"""Energy meter: RAPL (fake sysfs tree, wraparound), NVML (fake module), TDP estimate, resume."""

import types
import warnings

import pytest

from common import warn
from train.config import HardwareConfig
from train.energy import JOULES_PER_KWH, EnergyMeter, NotMeasurable, RaplReader

HW = HardwareConfig(pue=1.1, grid_kg_co2e_per_kwh=0.5)


def cpu_devices(n=1):
    return [types.SimpleNamespace(platform="cpu", device_kind="cpu", id=i) for i in range(n)]


def gpu_devices(kind, n):
    return [types.SimpleNamespace(platform="gpu", device_kind=kind, id=i, local_hardware_id=i) for i in range(n)]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def write_zone(root, name, kind, energy_uj, range_uj=10_000):
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text(kind + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return zone


@pytest.fixture
def rapl_root(tmp_path):
    write_zone(tmp_path, "intel-rapl:0", "package-0", 1_000)
    write_zone(tmp_path, "intel-rapl:1", "package-1", 2_000)
    write_zone(tmp_path, "intel-rapl:0:0", "core", 500)  # subzone: inside package-0, must not count
    write_zone(tmp_path, "intel-rapl:2", "psys", 0)  # platform zone overlaps the packages
    return tmp_path


@pytest.fixture(autouse=True)
def fresh_warnings():
    warn.reset()


def test_rapl_sums_packages_and_handles_wraparound(rapl_root):
    reader = RaplReader(rapl_root)
    write_zone(rapl_root, "intel-rapl:0", "package-0", 4_000)  # +3000 uJ
    write_zone(rapl_root, "intel-rapl:1", "package-1", 2_500)  # +500 uJ
    write_zone(rapl_root, "intel-rapl:0:0", "core", 9_999)
    write_zone(rapl_root, "intel-rapl:2", "psys", 9_999)
    assert reader.joules() == pytest.approx(3_500e-6)
    write_zone(rapl_root, "intel-rapl:0", "package-0", 9_000)  # +5000
    assert reader.joules() == pytest.approx(8_500e-6)
    write_zone(rapl_root, "intel-rapl:0", "package-0", 499)  # wrapped: 9000 -> 10000 -> 0 -> 499 = +1500
    assert reader.joules() == pytest.approx(10_000e-6)


def test_rapl_without_zones_is_not_measurable(tmp_path):
    with pytest.raises(NotMeasurable):
        RaplReader(tmp_path / "missing")


def test_meter_measures_with_rapl(rapl_root):
    meter = EnergyMeter(cpu_devices(8), HW, rapl_root=rapl_root)
    write_zone(rapl_root, "intel-rapl:0", "package-0", 1_000 + 7_200)  # 7.2 mJ
    snap = meter.snapshot()
    kwh = 7.2e-3 / JOULES_PER_KWH * 1.1
    assert snap == {"energy_kwh": pytest.approx(kwh), "energy_source": "rapl", "co2e_kg": pytest.approx(kwh * 0.5)}


def test_tick_polls_at_most_every_poll_seconds(rapl_root):
    from train.energy import POLL_SECONDS

    clock = Clock()
    meter = EnergyMeter(cpu_devices(1), HW, rapl_root=rapl_root, clock=clock)
    write_zone(rapl_root, "intel-rapl:0", "package-0", 1_000 + 3_600)
    meter.tick()  # too soon: not read
    assert meter.energy_kwh == 0.0
    clock.now += POLL_SECONDS
    meter.tick()
    assert meter.energy_kwh == pytest.approx(3.6e-3 / JOULES_PER_KWH * 1.1)
    write_zone(rapl_root, "intel-rapl:0", "package-0", 1_000 + 7_200)
    meter.close()  # a final poll
    assert meter.energy_kwh == pytest.approx(7.2e-3 / JOULES_PER_KWH * 1.1)


def test_meter_estimates_cpu_host_once_however_many_devices(tmp_path):
    clock = Clock()
    hw = HardwareConfig(pue=1.1, grid_kg_co2e_per_kwh=0.5, tdp_watts=100.0)
    meter = EnergyMeter(cpu_devices(8), hw, rapl_root=tmp_path, clock=clock)
    clock.now += 36.0
    snap = meter.snapshot()
    assert snap["energy_source"] == "estimate: 1 × 100 W TDP × PUE 1.1"
    assert snap["energy_kwh"] == pytest.approx(100 * 36 / 3.6e6 * 1.1)
    assert snap["co2e_kg"] == pytest.approx(snap["energy_kwh"] * 0.5)
    meter.close()
    clock.now += 1000.0  # a closed meter stops counting
    assert meter.energy_kwh == pytest.approx(snap["energy_kwh"])


def test_gpu_estimate_uses_table_tdp_when_nvml_is_absent():
    clock = Clock()
    meter = EnergyMeter(gpu_devices("NVIDIA H200", 2), HW, nvml=None, clock=clock)
    clock.now += 3600.0
    assert meter.energy_source == "estimate: 2 × 700 W TDP × PUE 1.1"
    assert meter.energy_kwh == pytest.approx(2 * 0.7 * 1.1)


class FakeNvml:
    """The pynvml calls the meter makes; counters in mJ, one per physical GPU index."""

    class NVMLError(Exception):
        pass

    def __init__(self, counters_mj, fail_after=None):
        self.counters_mj, self.fail_after, self.reads = counters_mj, fail_after, 0
        self.initialised = False

    def nvmlInit(self):
        self.initialised = True

    def nvmlShutdown(self):
        self.initialised = False

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return int(uuid.rsplit("-", 1)[-1])

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise self.NVMLError("GPU is lost")
        return self.counters_mj[handle]


def test_meter_measures_with_nvml_through_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-uuid-1")
    nvml = FakeNvml({0: 0, 1: 1_000, 2: 0, 3: 5_000})
    meter = EnergyMeter(gpu_devices("NVIDIA H100 80GB HBM3", 2), HW, nvml=nvml)
    nvml.counters_mj.update({0: 9e9, 1: 1_000 + 360_000, 2: 9e9, 3: 5_000 + 3_240_000})  # 360 J + 3240 J
    snap = meter.snapshot()
    assert snap["energy_source"] == "nvml"
    assert snap["energy_kwh"] == pytest.approx(3600 / JOULES_PER_KWH * 1.1)
    meter.close()
    assert not nvml.initialised


def test_failing_counter_hands_over_to_estimate():
    clock = Clock()
    nvml = FakeNvml({0: 0}, fail_after=2)  # start read + one good poll
    meter = EnergyMeter(gpu_devices("NVIDIA H100 PCIe", 1), HW, nvml=nvml, clock=clock)
    nvml.counters_mj[0] = 720_000  # 720 J
    meter.update()
    clock.now += 10.0
    meter.update()  # fails here
    clock.now += 100.0
    assert meter.energy_source == "nvml, then estimate: 1 × 350 W TDP × PUE 1.1"
    assert meter.energy_kwh == pytest.approx((720 + 350 * 100) / JOULES_PER_KWH * 1.1)


def test_resume_adds_prior_energy_and_names_both_sources():
    clock = Clock()
    meter = EnergyMeter(gpu_devices("NVIDIA H200", 1), HW, prior_kwh=0.25, prior_source="nvml", nvml=None,
                        clock=clock)
    clock.now += 3600.0
    assert meter.energy_kwh == pytest.approx(0.25 + 0.7 * 1.1)
    assert meter.energy_source == "nvml; after resume estimate: 1 × 700 W TDP × PUE 1.1"
    same = EnergyMeter(gpu_devices("NVIDIA H200", 1), HW, prior_kwh=0.25,
                       prior_source="estimate: 1 × 700 W TDP × PUE 1.1", nvml=None, clock=clock)
    assert same.energy_source == "estimate: 1 × 700 W TDP × PUE 1.1"
    unknown_before = EnergyMeter(gpu_devices("NVIDIA H200", 1), HW, prior_kwh=None, nvml=None, clock=clock)
    assert unknown_before.energy_kwh is None and unknown_before.co2e_kg is None


def test_unknown_power_and_nothing_measurable_is_null_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            meter = EnergyMeter(gpu_devices("NVIDIA H800", 4), HW, nvml=None)
            assert meter.snapshot() == {"energy_kwh": None, "energy_source": None, "co2e_kg": None}
    assert len(caught) == 1 and "hardware.tdp_watts" in str(caught[0].message)
