"""Devices and the timing protocol, on the real CPU (and a real GPU where one exists)."""

import time

import pytest
import torch

from latpred.errors import DeviceError, MeasurementError, SpecError
from latpred.ops import get_op
from latpred.profiling.devices import CpuDevice, CudaDevice, FakeDevice, TimingProtocol, make_device, robust_stat
from latpred.spec import ModuleSpec

FAST = TimingProtocol(warmup_ms=5, window_ms=5, repeats=5, max_sample_ms=300, settle_s=0.3)
conv = get_op("conv2d")


def test_robust_statistics():
    v = [1.0, 2.0, 3.0, 4.0, 100.0]
    assert robust_stat(v) == 3.0 and robust_stat(v, "min") == 1.0 and robust_stat(v, "mean") == 22.0
    assert robust_stat(v, "trimmed") == 3.0
    with pytest.raises(SpecError):
        robust_stat(v, "mode")
    with pytest.raises(MeasurementError):
        robust_stat([])


def test_protocol_windows_fill_the_window_and_cap_slow_calls():
    timings, n = TimingProtocol(warmup_ms=2, window_ms=10, repeats=4).time(lambda: time.sleep(0.001))
    assert len(timings) == 4 and 4 <= n <= 10 and all(1.0 <= t < 5.0 for t in timings)
    slow, n = TimingProtocol(warmup_ms=1, window_ms=1, repeats=50, min_repeats=2, max_sample_ms=60).time(
        lambda: time.sleep(0.02))
    assert n == 1 and 2 <= len(slow) <= 3
    # a slow spec's last warm-up call is its first window: 2 warm-up calls + 3 windows = 4 calls, not 5
    calls = []
    slow, n = TimingProtocol(warmup_ms=1, window_ms=5, repeats=3, min_repeats=3).time(
        lambda: (calls.append(1), time.sleep(0.012)))
    assert n == 1 and len(slow) == 3 and len(calls) == 4 and all(t >= 12.0 for t in slow)


def test_warm_up_goes_on_while_calls_page_fault(monkeypatch):
    """A call that still page-faults is not steady (its heap is growing): it is warm-up, not a window."""
    import latpred.profiling.devices as devices

    faults = {"total": 0}
    monkeypatch.setattr(devices, "_page_faults", lambda: faults["total"])
    calls = []

    def call(fault_calls: int) -> None:
        calls.append(1)
        if len(calls) <= fault_calls:
            faults["total"] += 100_000  # ~400 MiB of fresh pages
        time.sleep(0.012)

    protocol = TimingProtocol(warmup_ms=1, window_ms=5, repeats=3, min_repeats=3)
    slow, n = protocol.time(lambda: call(4))
    # 4 faulting calls + 1 steady warm-up call (kept as the first window) + 2 windows
    assert n == 1 and len(slow) == 3 and len(calls) == 7
    calls.clear()
    slow, n = protocol.time(lambda: call(10 ** 6))  # never steady: warm-up stops at max_warmup_calls
    assert len(calls) == protocol.max_warmup_calls + 2
    calls.clear()
    slow, n = TimingProtocol(warmup_ms=1, window_ms=5, repeats=3, min_repeats=3, steady_faults=10 ** 6).time(
        lambda: call(4))  # a tolerance above the faults: the old two-call warm-up
    assert len(calls) == 4


@pytest.mark.parametrize("bad", [dict(window_ms=0), dict(repeats=2, min_repeats=3), dict(statistic="x"),
                                 dict(settle_s=-1), dict(steady_faults=-1), dict(max_warmup_calls=1)])
def test_protocol_validation(bad):
    with pytest.raises(SpecError):
        TimingProtocol(**bad)


def test_cpu_measures_real_ops_and_bigger_is_slower():
    dev = CpuDevice(FAST)
    try:
        small = dev.measure(conv.spec(in_channels=16, out_channels=16, kernel_size=3, h=14, threads=1))
        big = dev.measure(conv.spec(in_channels=64, out_channels=64, kernel_size=3, h=56, threads=1))
    finally:
        dev.close()
    assert 0 < small.latency_ms < big.latency_ms
    assert big.latency_ms / small.latency_ms > 5  # 64x the FLOPs
    assert len(big.timings_ms) >= FAST.min_repeats and big.util_observed == 0.0
    assert small.extra["threads"] == 1 and torch.get_num_threads() >= 1


def test_cpu_failure_is_a_measurement_error():
    # a spec that bypassed resolve(): torch itself refuses to build it
    raw = ModuleSpec("conv2d", {"in_channels": 6, "out_channels": 8, "kernel_size": 3, "stride": 1, "padding": 1,
                                "dilation": 1, "groups": 4, "bias": False, "h": 8, "w": 8})
    with pytest.raises(MeasurementError, match="divisible by groups"):
        CpuDevice(FAST).measure(raw)


def test_modules_are_built_directly_on_the_target_device():
    module, inputs = get_op("linear").instantiate(get_op("linear").spec(in_features=1_000_000, out_features=1_000_000),
                                                  "meta")  # 4 TB of weights: only possible without a host copy
    assert next(module.parameters()).device.type == "meta" and inputs[0].device.type == "meta"


def test_cpu_utilization_is_held_observed_and_slows_the_op():
    # windows long enough to span several load periods; the mean counts every preemption
    dev = CpuDevice(TimingProtocol(warmup_ms=5, window_ms=20, repeats=12, max_sample_ms=1000, settle_s=0.5,
                                   loaded_statistic="mean"))
    spec = conv.spec(in_channels=64, out_channels=64, kernel_size=3, h=28, threads=2)
    try:
        idle = dev.measure(spec)
        loaded = dev.measure(spec.with_conditions(utilization=0.5))
    finally:
        dev.close()
    # the load's own share while a 2-thread op competes for the 2 cores: once read 0.23 on a slow phase
    # of the VM; the +-15-point accuracy of the load alone is tests/test_load.py's job
    assert 0.15 <= loaded.util_observed <= 0.65
    assert loaded.latency_ms > 1.1 * idle.latency_ms
    assert dev._load is None  # close() stopped the background load


def test_make_device_and_errors():
    assert isinstance(make_device("fake"), FakeDevice)
    with pytest.raises(DeviceError, match="unknown device"):
        make_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            make_device("cuda")


def test_fake_device_is_deterministic_and_scales_with_utilization():
    d = FakeDevice()
    s = conv.spec(in_channels=8, out_channels=8, kernel_size=3, h=8)
    assert d.measure(s) == d.measure(s)
    assert d.true_latency_ms(s.with_conditions(utilization=0.5)) == pytest.approx(1.5 * d.true_latency_ms(s))


@pytest.mark.cuda
def test_cuda_device_measures_host_latency_and_kernel_time():
    dev = CudaDevice(protocol=FAST, clock_warmup_s=0.5)
    try:
        meta = dev.metadata()
        assert meta["kind"] == "cuda" and meta["gpu_name"]
        small = dev.measure(conv.spec(in_channels=32, out_channels=32, kernel_size=3, h=14, batch_size=1))
        big = dev.measure(conv.spec(in_channels=256, out_channels=256, kernel_size=3, h=56, batch_size=32))
        assert 0 < small.latency_ms < big.latency_ms
        assert 0 < big.extra["kernel_ms"] <= big.latency_ms * 1.5
        loaded = dev.measure(conv.spec(in_channels=256, out_channels=256, kernel_size=3, h=56, batch_size=32,
                                       utilization=0.5))
        assert loaded.util_observed is not None and loaded.util_observed == pytest.approx(0.5, abs=0.2)
        with pytest.raises(MeasurementError, match="OutOfMemory|memory"):
            dev.measure(get_op("linear").spec(in_features=1_000_000, out_features=1_000_000))
    finally:
        dev.close()
