"""GPU telemetry's arithmetic against numbers computed by hand (the arithmetic is in the comments).

The NVML reading path itself runs only on a GPU machine: here NVML cannot initialise, which
must simply mean no telemetry. The sampling thread and its fall-back to None for a figure NVML
refuses are checked against a stand-in for the pynvml module."""
import logging
import threading
from dataclasses import dataclass
from types import SimpleNamespace


from suite.workload.telemetry import (REASONS, TELEMETRY_KEYS, THROTTLING, GpuTelemetry,
                                      combine_ranks, energy_delta_j, start_telemetry, summarise,
                                      throttle_reason_names)


def test_energy_delta_in_joules():
    # (1,250,500 - 1,000,000) mJ = 250,500 mJ = 250.5 J
    assert energy_delta_j(1_000_000, 1_250_500) == 250.5
    assert energy_delta_j(7, 8) == 0.001  # one millijoule
    assert energy_delta_j(42, 42) == 0.0


def test_energy_delta_across_a_wrap_of_the_64_bit_counter():
    # 500 mJ up to 2**64, then 1,500 mJ after it: 2,000 mJ = 2 J
    assert energy_delta_j(2**64 - 500, 1_500) == 2.0


def test_throttle_reason_names():
    assert throttle_reason_names(0x0) == []
    assert throttle_reason_names(0x4 | 0x40) == ["SwPowerCap", "HwThermalSlowdown"]
    assert throttle_reason_names(0x1 | 0x100) == ["GpuIdle", "DisplayClockSetting"]
    assert len(throttle_reason_names(0x1FF)) == 9  # every bit this module names
    assert throttle_reason_names(0x200) == []  # a bit it does not name is left out


def test_reason_bits_match_pynvml():
    import pynvml  # nvidia-ml-py, a dependency: imports without a GPU
    for name, bit in REASONS.items():
        assert getattr(pynvml, "nvmlClocksThrottleReason" + name) == bit
        assert getattr(pynvml, "nvmlClocksEventReason" + name, bit) == bit


def test_throttling_is_power_or_heat_only():
    assert THROTTLING == {"SwPowerCap", "HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown",
                          "HwPowerBrakeSlowdown"}
    assert not THROTTLING & {"GpuIdle", "ApplicationsClocksSetting", "SyncBoost",
                             "DisplayClockSetting"}


def test_summarise_a_power_capped_device():
    samples = [(650_000, 1980, 61, 0x0), (700_000, 1755, 63, 0x4)]
    # power (650 + 700) / 2 = 675 W; clock (1980 + 1755) / 2 = 1867.5 MHz
    assert summarise(samples, 1350.0, 2.0) == {
        "energy_j": 1350.0, "power_mean_w": 675.0, "sm_clock_mean_mhz": 1867.5,
        "sm_clock_min_mhz": 1755, "temperature_max_c": 63,
        "throttle_reasons": ["SwPowerCap"], "throttled": True}


def test_idle_and_settings_reasons_are_not_throttling():
    samples = [(60_000, 345, 35, 0x1), (62_000, 345, 36, 0x1 | 0x2)]
    out = summarise(samples, 12.2, 0.2)
    # GpuIdle is left out of the names; ApplicationsClocksSetting is kept but is no throttle
    assert out["throttle_reasons"] == ["ApplicationsClocksSetting"]
    assert out["throttled"] is False
    assert out["power_mean_w"] == 61.0  # (60 + 62) / 2


def test_summarise_never_guesses_energy():
    # no energy counter: mean power x seconds (675 x 2) is not put in its place
    out = summarise([(650_000, 1980, 61, 0x0), (700_000, 1755, 63, 0x4)], None, 2.0)
    assert out["energy_j"] is None and out["power_mean_w"] == 675.0


def test_summarise_without_samples():
    assert summarise([], 12.5, 1.0) == {
        "energy_j": 12.5, "power_mean_w": None, "sm_clock_mean_mhz": None,
        "sm_clock_min_mhz": None, "temperature_max_c": None, "throttle_reasons": [],
        "throttled": None}


def test_summarise_takes_dataclasses_and_missing_figures():
    @dataclass
    class Reading:
        power_mw: int
        sm_clock_mhz: int
        temperature_c: int
        reasons_bitmask: int

    # power and reasons refused by NVML in every sample: those figures are unknown
    out = summarise([Reading(None, 1410, 50, None), Reading(None, 1380, 52, None)], None, 0.2)
    assert out["power_mean_w"] is None and out["throttled"] is None
    assert out["sm_clock_mean_mhz"] == 1395.0 and out["temperature_max_c"] == 52


RANK0 = summarise([(650_000, 1980, 61, 0x0), (700_000, 1755, 63, 0x4)], 1350.0, 2.0)
RANK1 = summarise([(640_000, 1890, 66, 0x0), (650_000, 1910, 65, 0x0)], 1290.0, 2.0)


def test_combine_ranks():
    # energy 1350 + 1290 = 2640 J; power (675 + 645) / 2 = 660 W per device;
    # clock mean (1867.5 + 1900) / 2 = 1883.75; min(1755, 1890); max(63, 66)
    assert combine_ranks([RANK0, RANK1]) == {
        "energy_j": 2640.0, "power_mean_w": 660.0, "sm_clock_mean_mhz": 1883.75,
        "sm_clock_min_mhz": 1755, "temperature_max_c": 66,
        "throttle_reasons": ["SwPowerCap"], "throttled": True}


def test_combine_ranks_propagates_unknowns():
    # one rank without telemetry: the energy total is unknown, per-device figures stay
    out = combine_ranks([RANK0, None])
    assert out["energy_j"] is None and out["power_mean_w"] == 675.0
    assert out["throttled"] is True  # one throttled rank is enough
    assert combine_ranks([RANK1, None])["throttled"] is None  # the missing rank might be
    assert combine_ranks([RANK1, {**RANK0, "energy_j": None}])["energy_j"] is None
    assert combine_ranks([RANK1, RANK1])["throttled"] is False


def test_combine_ranks_all_none():
    for per_rank in ([None, None], []):
        out = combine_ranks(per_rank)
        assert tuple(out) == TELEMETRY_KEYS and set(out.values()) == {None}


def test_start_telemetry_off_the_gpu():
    assert start_telemetry("cpu", 0) is None


def test_start_telemetry_without_nvml(caplog):
    # this machine has no NVIDIA driver: NVML cannot initialise, which is not an error
    with caplog.at_level(logging.WARNING):
        assert start_telemetry("cuda", 0) is None
    assert "NVML cannot initialise" in caplog.text


class _Refused(Exception):
    pass


def test_sampling_thread_with_a_stand_in_nvml(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    energy = iter([2**64 - 1000, 3000])  # wraps: 4,000 mJ = 4 J
    sampled = threading.Event()

    def power(handle):
        sampled.set()
        return 300_000

    def refuse(*args):
        raise _Refused()

    nvml = SimpleNamespace(
        NVMLError=_Refused, NVML_CLOCK_SM=1, NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetHandleByUUID=refuse, nvmlDeviceGetHandleByPciBusId=refuse,
        nvmlDeviceGetHandleByIndex=lambda i: f"nvml{i}",
        nvmlDeviceGetTotalEnergyConsumption=lambda h: next(energy),
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetClockInfo=lambda h, clock: 1500,
        nvmlDeviceGetTemperature=refuse,  # e.g. no permission: that figure is None
        nvmlDeviceGetCurrentClocksThrottleReasons=lambda h: 0x20,  # an older pynvml
        nvmlShutdown=lambda: None)
    tele = GpuTelemetry(1, interval_s=0.01, nvml=nvml)
    assert tele.handle == "nvml5"  # torch device 1 is the second visible GPU, NVML's 5
    tele.start()
    assert sampled.wait(5)
    out = tele.stop()
    assert out["energy_j"] == 4.0 and out["power_mean_w"] == 300.0
    assert out["sm_clock_min_mhz"] == 1500 and out["temperature_max_c"] is None
    assert out["throttle_reasons"] == ["SwThermalSlowdown"] and out["throttled"] is True


def test_telemetry_covers_the_timed_steps_only(monkeypatch):
    """start_telemetry hands back a sensor not yet started; the timed loop starts it once, just
    before the first timed step (warm-up steps, compilation among them, are not measured)."""
    import sys

    import torch

    from suite.workload.train import timed_loop

    nvml = SimpleNamespace(
        NVMLError=_Refused, NVML_CLOCK_SM=1, NVML_TEMPERATURE_GPU=0, nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda u: "h", nvmlDeviceGetHandleByPciBusId=lambda b: "h",
        nvmlDeviceGetHandleByIndex=lambda i: "h", nvmlDeviceGetTotalEnergyConsumption=lambda h: 0,
        nvmlDeviceGetPowerUsage=lambda h: 1, nvmlDeviceGetClockInfo=lambda h, c: 1,
        nvmlDeviceGetTemperature=lambda h, t: 1, nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0,
        nvmlShutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sensor = start_telemetry("cuda", 0)
    assert sensor is not None and sensor._thread is None  # not started: warm-up is not measured
    steps_run, started_after = [], []
    times, losses = timed_loop(lambda step: steps_run.append(step) or torch.tensor(float(step)),
                               warmup=3, timed=2, on_timed_start=lambda: started_after.append(len(steps_run)))
    assert started_after == [3] and len(times) == 2 and len(losses) == 5
