"""The working-set normalisation scheme: beta per call, stores that keep one scheme, renormalisation, whole models."""

import json
import statistics
from contextlib import closing
from pathlib import Path

import pytest
import torch

from latpred import trace
from latpred.errors import SpecError, StoreError
from latpred.graph.measure import ModelJob, measure_in_passes, model_reference_exponent
from latpred.ops import get_op
from latpred.profiling.devices import CpuDevice, FakeDevice, TimingProtocol
from latpred.profiling.reference import (
    CONSTANT_SCHEME,
    EXPONENT_FLOOR,
    EXPONENT_FULL_MIB,
    WORKING_SET_SCHEME,
    adopt_reference,
    reference_exponent,
)
from latpred.profiling.renormalise import renormalise_store
from latpred.profiling.result import Measurement
from latpred.profiling.runner import profile
from latpred.profiling.space import ParameterSpace
from latpred.profiling.store import ProfileStore
from latpred.selection import load_training_data
from latpred.spec import ModuleSpec

FAST = TimingProtocol(warmup_ms=3, window_ms=3, repeats=4, min_repeats=2, max_sample_ms=300, settle_s=0.2)
MIB = 2**20
# a small linear (beta 1) and a 32 MiB activation (beta 0.7) in one tiny space
SPACE = {"name": "scheme", "seed": 1, "samples": 2, "runtime": {"batch_size": [1], "utilization": [0.0], "threads": [1]},
         "ops": {"linear": {"in_features": {"range": [16, 64]}, "out_features": {"range": [16, 64]}},
                 "activation": {"channels": [64], "h": [256], "fn": ["relu"]}}}


def test_reference_exponent_falls_from_one_to_the_floor_with_the_working_set():
    assert reference_exponent(0) == reference_exponent(EXPONENT_FULL_MIB * MIB) == 1.0
    assert reference_exponent(64 * MIB) == pytest.approx(EXPONENT_FLOOR) and reference_exponent(1e12) == pytest.approx(EXPONENT_FLOOR)
    assert reference_exponent(32 * MIB) == pytest.approx(1 - (1 - EXPONENT_FLOOR) * 0.75)  # 3 of the 4 octaves from 4 to 64 MiB
    sizes = [2**k for k in range(18, 32)]
    betas = [reference_exponent(b) for b in sizes]
    assert betas == sorted(betas, reverse=True)
    assert all(reference_exponent(b, CONSTANT_SCHEME) == 1.0 for b in sizes)
    with pytest.raises(SpecError, match="unknown reference normalisation scheme 'v9'"):
        reference_exponent(MIB, "v9")
    with pytest.raises(SpecError, match="finite non-negative"):
        reference_exponent(-1.0)


def _measure(spec: ModuleSpec, scheme: str) -> Measurement:
    """``spec`` measured once on a fresh CPU device whose probe uses ``scheme``."""
    with closing(CpuDevice(FAST)) as dev:
        dev.reference.scheme = scheme
        return dev.measure(spec)


def test_a_large_spec_is_normalised_with_its_exponent_and_records_it():
    spec = get_op("activation").spec(channels=64, h=256, w=256, fn="relu", batch_size=1, threads=1)
    beta = reference_exponent(get_op("activation").costs(spec).bytes_moved("float32"))
    assert 0.6 < beta < 0.8
    m = _measure(spec, WORKING_SET_SCHEME)
    raw, probes, nominal = m.extra["raw_timings_ms"], m.extra["reference_ms"], m.extra["reference_nominal_ms"]
    assert m.extra["reference_scheme"] == WORKING_SET_SCHEME and m.extra["reference_exponent"] == pytest.approx(beta)
    assert m.timings_ms == pytest.approx([w * (nominal / r) ** beta for w, r in zip(raw, probes)])
    m = _measure(spec, CONSTANT_SCHEME)
    assert m.extra["reference_exponent"] == 1.0 and m.extra["reference_scheme"] == CONSTANT_SCHEME


def _sample(latency: float, nominal: float, beta: float) -> Measurement:
    windows = (latency, latency * 1.1)
    return Measurement(latency, windows, 4, extra={"threads": 1, "raw_timings_ms": list(windows), "reference_ms": [nominal] * 2,
                                                   "reference_nominal_ms": nominal, "reference_exponent": beta,
                                                   "reference_scheme": WORKING_SET_SCHEME})


def test_the_store_rescales_a_sample_by_the_nominal_ratio_to_its_exponent(tmp_path: Path):
    with ProfileStore(tmp_path / "s.sqlite") as store:
        d = store.register_device({"fingerprint": "cpu-x", "kind": "cpu"})
        run = store.start_run(d, "t", "{}", {}, 2)
        small = ModuleSpec("linear", {"in_features": 8, "out_features": 8})
        big = ModuleSpec("linear", {"in_features": 9, "out_features": 8})
        store.add_sample(run, d, small, _sample(2.0, 0.5, 1.0))
        store.add_sample(run, d, big, _sample(2.0, 0.5, 0.5))
        assert store.reference_scheme(d) == WORKING_SET_SCHEME
        assert store.set_reference_nominal(d, {1: 0.125}) == 2  # nominal / 4
        got = {s.spec.key: s.latency_ms for s in store.samples()}
        assert got[small.key] == pytest.approx(0.5) and got[big.key] == pytest.approx(1.0)  # x 1/4 and x (1/4) ** 0.5


def test_renormalise_converts_a_store_exactly_and_back(tmp_path: Path):
    space = ParameterSpace.from_dict(SPACE)
    with ProfileStore(tmp_path / "p.sqlite") as store:
        dev = CpuDevice(FAST)
        try:
            profile(space, dev, store, passes=2, progress=False)
        finally:
            dev.close()
        d = store.devices()[0]["id"]
        assert store.reference_scheme(d) == WORKING_SET_SCHEME and store.summary()["devices"][0]["reference_scheme"] == WORKING_SET_SCHEME
        before = {s.spec.key: (s.latency_ms, s.extra["reference_exponent"]) for s in store.samples()}
        assert min(b for _, b in before.values()) < 0.8 and max(b for _, b in before.values()) == 1.0
        assert renormalise_store(store, CONSTANT_SCHEME) == {d: len(before)}
        const = {s.spec.key: s for s in store.samples()}
        assert store.reference_scheme(d) == CONSTANT_SCHEME
        for key, s in const.items():
            assert s.extra["reference_exponent"] == 1.0 and len(s.pass_latency_ms) == 2
            nominal = s.extra["reference_nominal_ms"]
            assert s.timings_ms == pytest.approx([w * nominal / r for w, r in zip(s.extra["raw_timings_ms"], s.extra["reference_ms"])])
            assert s.latency_ms == pytest.approx(statistics.median(s.timings_ms))
            if before[key][1] == 1.0:
                assert s.latency_ms == pytest.approx(before[key][0])
        assert load_training_data(store, min_samples=1).metadata["reference_scheme"] == CONSTANT_SCHEME
        renormalise_store(store, WORKING_SET_SCHEME)
        assert {s.spec.key: s.latency_ms for s in store.samples()} == pytest.approx({k: v[0] for k, v in before.items()})
        with pytest.raises(SpecError, match="unknown reference normalisation scheme"):
            renormalise_store(store, "v9")


def test_a_store_keeps_its_scheme_and_a_mixed_or_windowless_one_fails_clearly(tmp_path: Path):
    space = ParameterSpace.from_dict(SPACE)
    with ProfileStore(tmp_path / "p.sqlite") as store:
        profile(space, CpuDevice(FAST), store, passes=1, progress=False, limit=2)
        renormalise_store(store, CONSTANT_SCHEME)
        dev = CpuDevice(FAST)  # the working-set scheme by default, but the store is constant
        profile(space, dev, store, passes=2, progress=False)
        assert dev.reference.scheme == CONSTANT_SCHEME and store.reference_scheme(1) == CONSTANT_SCHEME
        assert all(s.extra["reference_exponent"] == 1.0 for s in store.samples())
        # a sample of the other scheme makes the store mixed: named, not pooled silently
        one = store.samples()[0]
        with store._write() as conn:
            conn.execute("UPDATE samples SET extra_json = ? WHERE spec_key = ?",
                         (json.dumps({**one.extra, "reference_scheme": WORKING_SET_SCHEME}), one.spec.key))
        with pytest.raises(StoreError, match="mixes reference normalisation schemes"):
            store.reference_scheme(1)
        assert store.summary()["devices"][0]["reference_scheme"] == "mixed"
        latencies = {s.spec.key: s.latency_ms for s in store.samples()}
        with store._write() as conn:  # a sample without its raw windows cannot be renormalised: nothing changes
            conn.execute("UPDATE samples SET extra_json = ? WHERE spec_key = ?",
                         (json.dumps({k: v for k, v in one.extra.items() if k != "raw_timings_ms"}), one.spec.key))
        with pytest.raises(StoreError, match="no raw windows"):
            renormalise_store(store, WORKING_SET_SCHEME)
        assert {s.spec.key: s.latency_ms for s in store.samples()} == latencies


def test_adopt_reference_takes_the_predictors_scheme():
    class P:
        def __init__(self, meta):
            self.metadata = meta

    dev = CpuDevice(FAST)
    assert "constant scheme" in adopt_reference(dev, P({"reference_nominal_ms": {"1": 0.3}}))
    assert dev.reference.scheme == CONSTANT_SCHEME  # a predictor from before the scheme existed
    adopt_reference(dev, P({"reference_nominal_ms": {"1": 0.3}, "reference_scheme": WORKING_SET_SCHEME}))
    assert dev.reference.scheme == WORKING_SET_SCHEME
    with pytest.raises(SpecError, match="unknown reference normalisation scheme"):
        adopt_reference(dev, P({"reference_nominal_ms": {"1": 0.3}, "reference_scheme": "v9"}))


def test_a_whole_model_is_normalised_with_its_time_weighted_exponent():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4096), torch.nn.ReLU()).eval()
    graph = trace(model, torch.randn(1, 64))
    compute = [i for i, n in enumerate(graph.nodes) if n.kind == "compute"]
    ms = [0.0] * len(graph.nodes)
    for i in compute:
        ms[i] = 1.0
    assert model_reference_exponent(graph, ms, 1) == 1.0  # tiny at batch 1
    at_4096 = model_reference_exponent(graph, ms, 4096)
    assert EXPONENT_FLOOR <= at_4096 < 1.0  # 4096 x 4096 outputs: 64 MiB
    ms[compute[0]] = 1e6  # nearly all the time in the small first linear
    assert model_reference_exponent(graph, ms, 4096) > at_4096
    with pytest.raises(SpecError, match="one value per graph node"):
        model_reference_exponent(graph, [1.0], 1)

    dev = CpuDevice(FAST)
    try:
        pooled = measure_in_passes(dev, [ModelJob(model, lambda: (torch.randn(8, 64),), 0.0, 1, 0.5)], passes=1)
        assert pooled[0].pass_extra[0]["reference_exponent"] == 0.5
        with pytest.raises(SpecError, match="reference_exponent must be in"):
            dev.measure_model(model, (torch.randn(8, 64),), threads=1, reference_exponent=1.5)
        dev.reference.scheme = CONSTANT_SCHEME  # a constant-scheme device ignores the model's exponent
        assert dev.measure_model(model, (torch.randn(8, 64),), threads=1, reference_exponent=0.5).extra["reference_exponent"] == 1.0
    finally:
        dev.close()
    # a device without a reference probe is never handed an exponent
    assert measure_in_passes(FakeDevice(), [ModelJob(model, lambda: (torch.randn(2, 64),), 0.0, None, 0.5)], passes=1)[0].latency_ms
