"""GPU telemetry per rank over the timed training steps, read through NVML (nvidia-ml-py):
energy, power, SM clock, temperature and the reasons the clocks were held down."""
from __future__ import annotations

import contextlib
import logging
import os
import statistics
import threading
import time
from typing import List, NamedTuple, Optional

log = logging.getLogger(__name__)

# NVML clock-event (formerly "throttle") reason bits. Checked against nvidia-ml-py 13.615.71:
# pynvml.nvmlClocksEventReason<Name> and the older nvmlClocksThrottleReason<Name> hold these
# same values (the older set also has BoardLimit 0x200 and Reliability 0x400, left out here).
REASONS = {"GpuIdle": 0x1, "ApplicationsClocksSetting": 0x2, "SwPowerCap": 0x4,
           "HwSlowdown": 0x8, "SyncBoost": 0x10, "SwThermalSlowdown": 0x20,
           "HwThermalSlowdown": 0x40, "HwPowerBrakeSlowdown": 0x80, "DisplayClockSetting": 0x100}
# Power or heat holding the clocks down; the other reasons are idleness or settings.
THROTTLING = frozenset({"SwPowerCap", "HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown",
                        "HwPowerBrakeSlowdown"})
TELEMETRY_KEYS = ("energy_j", "power_mean_w", "sm_clock_mean_mhz", "sm_clock_min_mhz",
                  "temperature_max_c", "throttle_reasons", "throttled")


class Sample(NamedTuple):
    """One periodic reading; a field is None where NVML could not give it."""
    power_mw: Optional[int]
    sm_clock_mhz: Optional[int]
    temperature_c: Optional[int]
    reasons_bitmask: Optional[int]


def energy_delta_j(start_mj: int, end_mj: int) -> float:
    """Joules between two readings of NVML's unsigned 64-bit millijoule counter."""
    if end_mj < start_mj:  # the counter wrapped past 2**64 - 1
        return (2**64 - start_mj + end_mj) / 1000
    return (end_mj - start_mj) / 1000


def throttle_reason_names(bitmask: int) -> List[str]:
    return [name for name, bit in REASONS.items() if bitmask & bit]


def _known(values):
    return [v for v in values if v is not None]


def summarise(samples, energy_j: Optional[float], seconds: float) -> dict:
    """One device's figures from its samples. energy_j stays None when the counter is not
    supported: mean power x `seconds` would be a guess at it, not a measurement, so `seconds`
    (the sampled span) is deliberately not used for that."""
    samples = [Sample(*s) if isinstance(s, tuple) else
               Sample(s.power_mw, s.sm_clock_mhz, s.temperature_c, s.reasons_bitmask)
               for s in samples]
    power = _known(s.power_mw for s in samples)
    clocks = _known(s.sm_clock_mhz for s in samples)
    temps = _known(s.temperature_c for s in samples)
    masks = _known(s.reasons_bitmask for s in samples)
    names = {n for m in masks for n in throttle_reason_names(m)} - {"GpuIdle"}
    return {
        "energy_j": energy_j,
        "power_mean_w": statistics.fmean(power) / 1000 if power else None,
        "sm_clock_mean_mhz": statistics.fmean(clocks) if clocks else None,
        "sm_clock_min_mhz": min(clocks) if clocks else None,
        "temperature_max_c": max(temps) if temps else None,
        "throttle_reasons": sorted(names),
        "throttled": bool(names & THROTTLING) if masks else None,
    }


def combine_ranks(per_rank: List[Optional[dict]]) -> dict:
    """The run's figures from every rank's summary (one device per rank). Energy is a sum, so
    one rank without it makes the total unknown; the per-device figures come from the ranks
    that have them."""
    ranks = [r for r in per_rank if r is not None]
    if not ranks:
        return dict.fromkeys(TELEMETRY_KEYS)

    def over(key, fn):
        values = _known(r.get(key) for r in ranks)
        return fn(values) if values else None

    energies = [r.get("energy_j") if r is not None else None for r in per_rank]
    # True is certain from one rank; False needs every rank to have said so
    flags = [r.get("throttled") if r is not None else None for r in per_rank]
    throttled = True if True in flags else (None if None in flags else False)
    return {
        "energy_j": None if None in energies else sum(energies),
        "power_mean_w": over("power_mean_w", statistics.fmean),
        "sm_clock_mean_mhz": over("sm_clock_mean_mhz", statistics.fmean),
        "sm_clock_min_mhz": over("sm_clock_min_mhz", min),
        "temperature_max_c": over("temperature_max_c", max),
        "throttle_reasons": sorted({n for r in ranks for n in r.get("throttle_reasons") or ()}),
        "throttled": throttled,
    }


class GpuTelemetry:
    """Samples one device on a daemon thread between start() and stop(); `nvml` is the
    pynvml module, already initialised (start_telemetry does that); stop() shuts it down."""

    def __init__(self, device_index: int, interval_s: float = 0.1, nvml=None):
        if nvml is None:
            import pynvml as nvml
        self.nvml, self.interval_s = nvml, interval_s
        self.handle = self._find_handle(device_index)
        self.samples: List[Sample] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _find_handle(self, i: int):
        # torch's device i need not be NVML's index i (CUDA_VISIBLE_DEVICES, and CUDA orders
        # fastest-first by default while NVML orders by PCI bus), so match the device itself.
        try:
            import torch
            props = torch.cuda.get_device_properties(i)
        except Exception:
            props = None
        if props is not None and getattr(props, "uuid", None) is not None:
            handle = self._call(self.nvml.nvmlDeviceGetHandleByUUID, "GPU-" + str(props.uuid))
            if handle is not None:
                return handle
        if props is not None and getattr(props, "pci_bus_id", None) is not None:
            bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            handle = self._call(self.nvml.nvmlDeviceGetHandleByPciBusId, bus_id)
            if handle is not None:
                return handle
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
                   if v.strip()]
        entry = visible[i] if i < len(visible) else str(i)
        if entry.isdigit():
            return self.nvml.nvmlDeviceGetHandleByIndex(int(entry))
        return self.nvml.nvmlDeviceGetHandleByUUID(entry)  # a "GPU-..." entry

    def _call(self, fn, *args):
        """fn(*args), or None where NVML cannot give it (not supported, no permission)."""
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return None

    def _energy_mj(self) -> Optional[int]:
        return self._call(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)

    def _sample(self) -> Sample:
        n = self.nvml
        reasons = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) \
            or n.nvmlDeviceGetCurrentClocksThrottleReasons  # the older name
        return Sample(self._call(n.nvmlDeviceGetPowerUsage, self.handle),
                      self._call(n.nvmlDeviceGetClockInfo, self.handle, n.NVML_CLOCK_SM),
                      self._call(n.nvmlDeviceGetTemperature, self.handle, n.NVML_TEMPERATURE_GPU),
                      self._call(reasons, self.handle))

    def _run(self) -> None:
        while True:
            self.samples.append(self._sample())
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> "GpuTelemetry":
        self._t0, self._start_mj = time.perf_counter(), self._energy_mj()
        self._thread = threading.Thread(target=self._run, name="gpu-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        end_mj, seconds = self._energy_mj(), time.perf_counter() - self._t0
        self._call(self.nvml.nvmlShutdown)  # pairs with start_telemetry's nvmlInit
        energy = (None if None in (self._start_mj, end_mj)
                  else energy_delta_j(self._start_mj, end_mj))
        return summarise(self.samples, energy, seconds)


def start_telemetry(accelerator: str, device_index: int,
                    interval_s: float = 0.1) -> Optional[GpuTelemetry]:
    """A GpuTelemetry for the device, not started yet (the caller starts it where the timed
    steps begin), or None where there is no NVML to read (CPU, ROCm, no driver): then the run
    simply has no telemetry."""
    if accelerator != "cuda":
        return None
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError, or ImportError where nvidia-ml-py is not installed
        log.warning("GPU telemetry off: NVML cannot initialise (%s)", e)
        return None
    try:
        return GpuTelemetry(device_index, interval_s, nvml=pynvml)
    except pynvml.NVMLError as e:  # no handle for the device
        log.warning("GPU telemetry off: no NVML handle for device %d (%s)", device_index, e)
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
        return None
