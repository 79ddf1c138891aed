"""Energy (kWh) and CO2e (kg) of a run, measured where the hardware exposes a counter, else estimated.

Sources, in order of preference, each named in `energy_source`:
  * "nvml"  — NVIDIA's total-energy counter of the run's GPUs (mJ since driver load, Volta and newer);
  * "rapl"  — the CPU packages' RAPL counters under /sys/class/powercap (whole sockets, every process
              on them; DRAM not included), when this user may read them;
  * "estimate: N × W W TDP × PUE p" — N devices (a CPU host counts once) at their table/config power
              for the wall time since the meter started. TDP is a maximum, so this is an upper bound.
PUE multiplies measured device energy too: the facility's cooling and conversion losses are paid on
every joule the chips draw. CO2e = energy × grid intensity (hardware.grid_kg_co2e_per_kwh).
A resumed run passes the kWh saved in its checkpoint as `prior_kwh`; the meter adds to it.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import time

from common.warn import warn_once
from train.config import HardwareConfig
from train.hardware import tdp_watts

log = logging.getLogger(__name__)

RAPL_ROOT = "/sys/class/powercap"
JOULES_PER_KWH = 3.6e6
POLL_SECONDS = 10.0  # RAPL wraps after hundreds of seconds at full power; NVML's counter does not wrap
_LAZY = object()

class NotMeasurable(Exception):
    """This hardware/user cannot read an energy counter (the meter then estimates)."""


# ----------------------------------------------------------------------------- counters


class RaplReader:
    """Joules since construction, summed over top-level RAPL package zones (`intel-rapl:N`; AMD
    exposes the same names). Subzones (core, dram) and psys would double count, so they are
    skipped. Each counter wraps to 0 after max_energy_range_uj; poll it more often than one wrap
    (hundreds of seconds at full power) — the training loop offers a poll every step (`EnergyMeter.tick`)."""

    def __init__(self, root: str | os.PathLike = RAPL_ROOT):
        root = pathlib.Path(root)
        zones = sorted(p for p in root.glob("intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", p.name))
        zones = [z for z in zones if _read_text(z / "name", "package") != "psys"]
        if not zones:
            raise NotMeasurable(f"no RAPL package zones under {root}")
        self._zones = []
        for zone in zones:
            try:
                energy_uj = int((zone / "energy_uj").read_text())
                range_uj = int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError) as err:  # root-only since Linux 5.10 (CVE-2020-8694)
                raise NotMeasurable(f"RAPL {zone} unreadable ({err})") from None
            self._zones.append([zone / "energy_uj", range_uj, energy_uj])
        self._total_uj = 0

    def joules(self) -> float:
        for zone in self._zones:
            path, range_uj, last_uj = zone
            now_uj = int(path.read_text())
            self._total_uj += (now_uj - last_uj) % (range_uj + 1)  # counts 0..range_uj, then wraps to 0
            zone[2] = now_uj
        return self._total_uj / 1e6

    def close(self) -> None:
        pass


class NvmlReader:
    """Joules since construction over the GPUs of `devices`, from nvmlDeviceGetTotalEnergyConsumption."""

    def __init__(self, devices, nvml):
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as err:
            raise NotMeasurable(f"NVML unavailable ({err})") from None
        try:
            self._handles = [_nvml_handle(nvml, d) for d in devices]
            self._start_mj = [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]
        except Exception as err:  # NotSupported before Volta, on MIG slices, some vGPUs
            nvml.nvmlShutdown()
            raise NotMeasurable(f"NVML energy counter unavailable ({err})") from None

    def joules(self) -> float:
        now_mj = [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]
        return sum(n - s for n, s in zip(now_mj, self._start_mj)) / 1e3

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def _nvml_handle(nvml, device):
    """NVML handle of a JAX GPU: its CUDA ordinal, mapped through CUDA_VISIBLE_DEVICES (indices or
    UUIDs). Assumes CUDA's order matches NVML's PCI order, true on homogeneous nodes."""
    ordinal = getattr(device, "local_hardware_id", None)
    ordinal = device.id if ordinal is None else ordinal
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return nvml.nvmlDeviceGetHandleByIndex(ordinal)
    entry = visible[ordinal]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    return nvml.nvmlDeviceGetHandleByUUID(entry)


def _import_nvml():
    try:
        import pynvml  # the `nvidia-ml-py` package
    except ImportError:
        return None
    return pynvml


def _read_text(path: pathlib.Path, default: str) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


# ----------------------------------------------------------------------------- the meter


def _estimate_power(devices, hardware_config) -> tuple[int, float | None, str]:
    """(units, watts per unit, source): a CPU host counts once however many fake devices it has."""
    accelerators = [d for d in devices if d.platform != "cpu"]
    units = accelerators if accelerators else devices[:1]
    powers = [tdp_watts(d, hardware_config) for d in units]
    watts = {w for w, _ in powers}
    if None in watts or len(watts) != 1:
        return len(units), None, "; ".join(sorted({s for _, s in powers}))
    return len(units), watts.pop(), powers[0][1]


class EnergyMeter:
    """Accumulates a run's energy from construction on; call `tick()` every step (it polls at most every
    POLL_SECONDS, far more often than a counter wraps) and `update()`/`snapshot()` where a fresh value is needed.

    `devices` are this process's devices (`jax.local_devices()`): a multi-host run sums its
    processes' kWh. After `close()` the measured part stops growing (the run is over).
    """

    def __init__(self, devices, hardware_config: HardwareConfig | None = None, prior_kwh: float | None = 0.0,
                 prior_source: str | None = None, *, rapl_root=RAPL_ROOT, nvml=_LAZY, clock=time.monotonic):
        devices = list(devices)
        if not devices:
            raise ValueError("EnergyMeter: no devices")
        hw = hardware_config or HardwareConfig()
        self.pue, self.grid_kg_co2e_per_kwh = hw.pue, hw.grid_kg_co2e_per_kwh
        self._prior_kwh, self._prior_source = prior_kwh, prior_source
        self._clock = clock
        units, watts, self.tdp_source = _estimate_power(devices, hw)
        self._estimate_watts = None if watts is None else units * watts
        self._estimate_label = None if watts is None else f"estimate: {units} × {watts:g} W TDP × PUE {self.pue:g}"
        self._reader, self._reader_label = self._open_reader(devices, rapl_root, nvml)
        self._start = clock()
        self._polled_at = self._start
        self._measured_joules = 0.0
        self._failed_at: float | None = None
        self._closed = False
        self._stopped_at = 0.0
        if self._reader is None and watts is None:
            warn_once(f"energy: nothing measurable and no power figure ({self.tdp_source}); energy is null"
                       " (set hardware.tdp_watts to estimate it)")

    @staticmethod
    def _open_reader(devices, rapl_root, nvml):
        platforms = {d.platform for d in devices}
        try:
            if platforms <= {"gpu", "cuda"}:
                module = _import_nvml() if nvml is _LAZY else nvml
                if module is None:
                    raise NotMeasurable("nvidia-ml-py not installed")
                return NvmlReader(devices, module), "nvml"
            if platforms == {"cpu"}:
                return RaplReader(rapl_root), "rapl"
        except NotMeasurable as err:
            log.info("energy: not measured (%s); estimating from TDP", err)
        return None, None

    def tick(self) -> None:
        """Poll if POLL_SECONDS have passed since the last poll: cheap enough to call every step."""
        if self._clock() - self._polled_at >= POLL_SECONDS:
            self.update()

    def update(self) -> None:
        """Poll the counter (catches RAPL wraparound); a failing counter hands over to the estimate."""
        if self._reader is None or self._failed_at is not None or self._closed:
            return
        self._polled_at = self._clock()
        try:
            self._measured_joules = self._reader.joules()
        except Exception as err:
            self._failed_at = self._clock()
            warn_once(f"energy: {self._reader_label} reading failed ({err}); estimating from here on")

    def _session_joules(self) -> float | None:
        now = self._stopped_at if self._closed else self._clock()
        if self._reader is None:
            return None if self._estimate_watts is None else self._estimate_watts * (now - self._start)
        if self._failed_at is None:
            return self._measured_joules
        if self._estimate_watts is None:
            return None
        return self._measured_joules + self._estimate_watts * (now - self._failed_at)

    @property
    def energy_kwh(self) -> float | None:
        joules = self._session_joules()
        if joules is None or self._prior_kwh is None:
            return None
        return self._prior_kwh + joules / JOULES_PER_KWH * self.pue

    @property
    def energy_source(self) -> str | None:
        if self._reader is None:
            current = self._estimate_label
        elif self._failed_at is None:
            current = self._reader_label
        else:
            current = f"{self._reader_label}, then {self._estimate_label}" if self._estimate_label else None
        if current is None:
            return None
        if self._prior_source and self._prior_source != current:
            return f"{self._prior_source}; after resume {current}"
        return current

    @property
    def co2e_kg(self) -> float | None:
        kwh = self.energy_kwh
        return None if kwh is None else kwh * self.grid_kg_co2e_per_kwh

    def snapshot(self) -> dict:
        """Poll, then the three fields metrics.jsonl and summary.json carry."""
        self.update()
        return {"energy_kwh": self.energy_kwh, "energy_source": self.energy_source, "co2e_kg": self.co2e_kg}

    def close(self) -> None:
        self.update()
        if self._reader is not None and not self._closed:
            self._reader.close()
        if not self._closed:
            self._stopped_at = self._clock()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["EnergyMeter", "JOULES_PER_KWH", "NotMeasurable", "NvmlReader", "RaplReader"]
