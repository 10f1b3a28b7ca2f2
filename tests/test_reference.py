"""Reference-kernel normalisation: the probe, the device's normalised windows, the store's nominal and its rescaling."""

import statistics
from pathlib import Path

import pytest

from latpred.errors import SpecError
from latpred.ops import get_op
from latpred.profiling.devices import CpuDevice, FakeDevice, TimingProtocol
from latpred.profiling.reference import ReferenceProbe, adopt_reference, parse_nominal
from latpred.profiling.result import Measurement
from latpred.profiling.runner import profile
from latpred.profiling.space import ParameterSpace
from latpred.profiling.store import ProfileStore
from latpred.selection import load_training_data
from latpred.spec import ModuleSpec

FAST = TimingProtocol(warmup_ms=3, window_ms=3, repeats=4, min_repeats=2, max_sample_ms=200, settle_s=0.2)
RAW = TimingProtocol(warmup_ms=3, window_ms=3, repeats=4, min_repeats=2, max_sample_ms=200, settle_s=0.2,
                     reference_calls=0)
SPACE = {"name": "ref", "seed": 3, "samples": 4, "runtime": {"batch_size": [1], "utilization": [0.0], "threads": [1, 2]},
         "ops": {"linear": {"in_features": {"range": [16, 256]}, "out_features": {"range": [16, 256]}}}}


def test_parse_nominal_accepts_json_keys_and_names_bad_entries():
    assert parse_nominal({"1": 0.35, 2: 0.26}) == {1: 0.35, 2: 0.26}
    assert parse_nominal(None) == {}
    for bad, match in (([0.3], "mapping"), ({"one": 0.3}, "not an integer"), ({"0": 0.3}, "thread count >= 1"),
                       ({"1": -0.3}, "positive"), ({"1": float("nan")}, "positive"), ({"1": True}, "positive")):
        with pytest.raises(SpecError, match=match):
            parse_nominal(bad)


def test_probe_reads_the_machine_and_calibrates_once():
    with pytest.raises(SpecError, match="positive integer"):
        ReferenceProbe(calls=0)
    with pytest.raises(SpecError, match="calibration_s"):
        ReferenceProbe(calibration_s=0)
    ref = ReferenceProbe(calls=3, calibration_s=0.05)
    readings = [ref.probe(1) for _ in range(5)]
    assert all(0.005 < r < 50 for r in readings) and ref.floor[1] == min(readings)
    nominal = ref.nominal_for(1)
    assert nominal >= ref.floor[1] and ref.nominal_for(1) == nominal  # the second call does not recalibrate
    ref.set_nominal({"1": 0.5, "4": 0.2})
    assert ref.nominal == {1: 0.5, 4: 0.2} and ref.settings()["nominal_ms"] == {"1": 0.5, "4": 0.2}


def test_cpu_device_normalises_unloaded_windows_by_the_reference():
    spec = get_op("linear").spec(in_features=256, out_features=256, batch_size=8, threads=1)
    dev = CpuDevice(FAST)
    try:
        m = dev.measure(spec)
    finally:
        dev.close()
    raw, probes, nominal = m.extra["raw_timings_ms"], m.extra["reference_ms"], m.extra["reference_nominal_ms"]
    assert len(raw) == len(probes) == len(m.timings_ms) >= FAST.min_repeats
    assert nominal == dev.reference.nominal[1] and dev.reference.floor[1] <= min(probes)
    assert m.timings_ms == pytest.approx([w * nominal / r for w, r in zip(raw, probes)])
    assert m.latency_ms == pytest.approx(statistics.median(m.timings_ms))  # the normalised statistic
    assert dev.statistic_for_utilization(0.0) == "median" and dev.statistic_for_utilization(0.5) == "median"
    assert dev.reduce(spec, [3.0, 1.0, 2.0]) == 2.0
    raw_dev = CpuDevice(RAW)
    try:
        r = raw_dev.measure(spec)
    finally:
        raw_dev.close()
    assert raw_dev.reference is None and "reference_ms" not in r.extra
    assert r.latency_ms == min(r.timings_ms) and raw_dev.reduce(spec, [3.0, 1.0, 2.0]) == 1.0


def test_whole_model_measurements_are_normalised_too():
    import torch

    dev = CpuDevice(FAST)
    try:
        m = dev.measure_model(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()), (torch.randn(4, 64),),
                              threads=1)
    finally:
        dev.close()
    assert len(m.extra["reference_ms"]) == len(m.timings_ms) and m.extra["reference_nominal_ms"] > 0


def _normalised(latency: float, nominal: float, threads: int = 1, n: int = 3) -> Measurement:
    windows = tuple(latency * (1 + 0.1 * i) for i in range(n))
    return Measurement(latency, windows, 4, extra={"threads": threads, "raw_timings_ms": list(windows),
                                                   "reference_ms": [nominal] * n, "reference_nominal_ms": nominal})


def test_store_rescales_normalised_samples_exactly_and_keeps_raw_ones(tmp_path: Path):
    with ProfileStore(tmp_path / "s.sqlite") as store:
        d = store.register_device({"fingerprint": "cpu-x", "kind": "cpu"})
        run = store.start_run(d, "t", "{}", {}, 3)
        one = ModuleSpec("linear", {"in_features": 8, "out_features": 8})
        two = ModuleSpec("linear", {"in_features": 16, "out_features": 8}, threads=2)
        raw = ModuleSpec("linear", {"in_features": 32, "out_features": 8})
        store.add_sample(run, d, one, _normalised(2.0, 0.5))
        store.add_sample(run, d, two, _normalised(4.0, 0.4, threads=2))
        store.add_sample(run, d, raw, Measurement(1.0, (1.0, 1.1), 4, extra={"threads": 1}))
        assert store.reference_nominal(d) == {} and store.raw_unloaded_samples(d) == 1
        # a second pass normalised with another nominal is brought to the stored one before pooling
        assert store.add_pass(d, one, _normalised(1.0, 0.25), lambda t: statistics.median(t), expected_passes=1)
        s1 = next(s for s in store.samples() if s.spec.key == one.key)
        assert s1.timings_ms == pytest.approx((2.0, 2.2, 2.4, 2.0, 2.2, 2.4)) and s1.pass_latency_ms == pytest.approx((2.0, 2.0))
        assert s1.latency_ms == pytest.approx(2.2)  # the median of the pooled windows
        assert len(s1.extra["reference_ms"]) == 6 and len(s1.extra["raw_timings_ms"]) == 6
        assert store.set_reference_nominal(d, {1: 0.4}) == 1  # only the 1-thread normalised sample moves
        assert store.reference_nominal(d) == {1: 0.4}
        by_key = {s.spec.key: s for s in store.samples()}
        s1 = by_key[one.key]
        assert s1.latency_ms == pytest.approx(2.2 * 0.8) and s1.timings_ms[0] == pytest.approx(1.6)
        assert s1.extra["reference_nominal_ms"] == 0.4 and s1.extra["raw_timings_ms"][0] == 2.0
        assert by_key[two.key].latency_ms == 4.0 and by_key[raw.key].latency_ms == 1.0
        assert store.set_reference_nominal(d, {"2": 0.2}) == 1 and store.reference_nominal(d) == {1: 0.4, 2: 0.2}
        assert store.set_reference_nominal(d, {1: 0.4}) == 0  # idempotent
        with pytest.raises(SpecError, match="positive"):
            store.set_reference_nominal(d, {1: 0})


def test_profile_keeps_one_nominal_per_store_and_resumes_in_its_units(tmp_path: Path):
    space = ParameterSpace.from_dict(SPACE)
    with ProfileStore(tmp_path / "p.sqlite") as store:
        dev = CpuDevice(FAST)
        try:
            profile(space, dev, store, passes=1, progress=False)
            d = store.devices()[0]["id"]
            nominal = store.reference_nominal(d)
            assert set(nominal) == {1, 2} and nominal == dev.reference.floor  # the fastest reading of the run
            assert all(s.extra["reference_nominal_ms"] == nominal[s.extra["threads"]] for s in store.samples())
        finally:
            dev.close()
        again = CpuDevice(FAST)  # a new process: its own calibration, but it adopts the store's nominal
        try:
            profile(space, again, store, passes=2, progress=False)
        finally:
            again.close()
        after = store.reference_nominal(d)
        assert all(after[t] <= nominal[t] for t in nominal)
        for s in store.samples():
            assert s.passes == 2 and s.extra["reference_nominal_ms"] == after[s.extra["threads"]]
            assert s.latency_ms == pytest.approx(statistics.median(s.timings_ms))
        data = load_training_data(store, min_samples=1)
        assert parse_nominal(data.metadata["reference_nominal_ms"]) == after


def test_a_store_profiled_raw_stays_raw(tmp_path: Path):
    space = ParameterSpace.from_dict(SPACE)
    with ProfileStore(tmp_path / "p.sqlite") as store:
        profile(space, CpuDevice(RAW), store, passes=1, progress=False)
        dev = CpuDevice(FAST)
        profile(space, dev, store, passes=2, progress=False)
        assert dev.reference is None and store.reference_nominal(1) == {}
        assert all("reference_ms" not in s.extra and s.latency_ms == min(s.timings_ms) for s in store.samples())
        assert "reference_nominal_ms" not in load_training_data(store, min_samples=1).metadata


def test_adopt_reference_follows_the_predictor():
    class P:
        def __init__(self, meta):
            self.metadata = meta

    dev = CpuDevice(FAST)
    assert "0.300 ms" in adopt_reference(dev, P({"reference_nominal_ms": {"1": 0.3}})) and dev.reference.nominal[1] == 0.3
    assert "without reference" in adopt_reference(dev, P({})) and dev.reference is None
    assert "no reference" in adopt_reference(FakeDevice(), P({"reference_nominal_ms": {"1": 0.3}}))
    with pytest.raises(SpecError, match="reference_nominal_ms"):
        adopt_reference(CpuDevice(FAST), P({"reference_nominal_ms": {"1": "fast"}}))


def test_adopt_reference_warns_when_the_predictor_was_trained_on_another_machine():
    class P:
        def __init__(self, meta):
            self.metadata = meta

    dev = CpuDevice(FAST)
    here = dev.metadata()
    nominal = {"reference_nominal_ms": {"1": 0.3}}
    assert "WARNING" not in adopt_reference(dev, P({**nominal, "device": here}))
    elsewhere = {**here, "cpu_isa": "AVX512" if here["cpu_isa"] != "AVX512" else "AVX2", "cpu_count_logical": 64}
    msg = adopt_reference(dev, P({**nominal, "device": elsewhere}))
    assert msg.startswith("WARNING: the predictor was trained on another machine") and "cpu_count_logical: 64 ->" in msg
    assert "0.300 ms" in msg and dev.reference.nominal[1] == 0.3  # it still adopts the predictor's units
