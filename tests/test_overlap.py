"""Host/device overlap composition, stage-time training targets, and the CUDA stage timings."""

import hashlib
import json

import numpy as np
import pytest
import torch

from latpred import SpecError
from latpred.graph.overlap import OverlapPredictor, overlap_ms
from latpred.graph.trace import trace
from latpred.graph.validate import validate_models
from latpred.profiling.devices import FakeDevice
from latpred.profiling.runner import profile
from latpred.profiling.space import ParameterSpace
from latpred.profiling.store import ProfileStore
from latpred.selection import load_training_data, select
from tests.helpers_data import SPACE


def test_overlap_recurrence_by_hand():
    # host 1, 1, 1; GPU 0.5, 3, 0.5: node 2's kernel starts at t_h = 2 and ends at 5, node 3 waits for it
    total, node = overlap_ms([1.0, 1.0, 1.0], [0.5, 3.0, 0.5])
    assert total == pytest.approx(5.5)
    assert node.tolist() == pytest.approx([1.5, 3.5, 0.5]) and node.sum() == pytest.approx(total)
    # host-bound: the GPU finishes each kernel before the next is issued
    total, _ = overlap_ms([2.0, 2.0], [0.1, 0.1])
    assert total == pytest.approx(4.1)
    # GPU-bound: the host only delays the first kernel
    total, _ = overlap_ms([0.1, 0.1], [2.0, 2.0])
    assert total == pytest.approx(4.1)
    # a synchronisation cost is added once per request
    assert overlap_ms([1.0], [1.0], sync_ms=0.25)[0] == pytest.approx(2.25)


def test_the_running_sum_and_the_node_loop_give_the_same_recurrence():
    from latpred.graph import overlap

    rng = np.random.default_rng(3)
    h = rng.exponential(size=(overlap._LOOP_ABOVE + 8, 23))
    g = rng.exponential(size=h.shape) * rng.choice([0.0, 1.0, 4.0], size=h.shape)  # host- and GPU-bound stretches
    for calls in (1, 2, 5):
        looped = overlap_ms(h, g, calls, 0.3)  # more conditions than _LOOP_ABOVE: node by node
        for k in (0, 7, len(h) - 1):
            total, node = overlap_ms(h[k], g[k], calls, 0.3)  # one condition: running sums
            assert total == pytest.approx(looped[0][k], rel=1e-12)
            np.testing.assert_allclose(node, looped[1][k], rtol=1e-12, atol=1e-12)
    assert overlap_ms(np.zeros((2, 0)), np.zeros((2, 0)), 1, 0.5)[0].tolist() == [0.5, 0.5]


def test_overlap_back_to_back_calls_tend_to_the_slower_stage_and_stay_below_the_plain_sum():
    rng = np.random.default_rng(0)
    h, g = rng.uniform(0.01, 0.05, (4, 30)), rng.uniform(0.0, 0.1, (4, 30))
    one, node = overlap_ms(h, g)
    many, _ = overlap_ms(h, g, calls=50)
    steady = np.maximum(h.sum(-1), g.sum(-1))
    assert node.shape == h.shape and np.allclose(node.sum(-1), one) and (node >= -1e-12).all()
    assert np.all(many <= one + 1e-12) and np.all(many >= steady - 1e-12)
    assert np.allclose(many, steady, rtol=0.05)
    assert np.all(one <= np.maximum(h, g).sum(-1) + h.sum(-1))  # never worse than issuing and then running each


def test_overlap_rejects_bad_input():
    with pytest.raises(SpecError, match="same shape"):
        overlap_ms([1.0, 2.0], [1.0])
    with pytest.raises(SpecError, match="calls must be a positive integer"):
        overlap_ms([1.0], [1.0], calls=0)
    with pytest.raises(SpecError, match="finite and non-negative"):
        overlap_ms([1.0], [-1.0])


@pytest.fixture(scope="module")
def stage_store(tmp_path_factory):
    db = tmp_path_factory.mktemp("stages") / "s.sqlite"
    with ProfileStore(db) as store:
        profile(ParameterSpace.from_dict(SPACE), FakeDevice(noise=0.0, components=True), store, passes=1, progress=False)
    return db


def test_training_targets_read_the_stage_times(stage_store):
    with ProfileStore(stage_store, readonly=True) as store:
        lat = load_training_data(store)
        host = load_training_data(store, target="host_ms")
        gpu = load_training_data(store, target="gpu_ms")
        with pytest.raises(SpecError, match="unknown training target 'kernel'"):
            load_training_data(store, target="kernel")
    assert host.metadata["target"] == "host_ms" and lat.metadata["target"] == "latency_ms"
    assert np.allclose(host.latency_ms["conv2d"], 0.005)  # the fake device's fixed overhead
    for op in lat.ops:
        assert np.allclose(host.latency_ms[op] + gpu.latency_ms[op], lat.latency_ms[op])


def test_a_store_without_stage_times_says_so(tmp_path):
    with ProfileStore(tmp_path / "plain.sqlite") as store:
        profile(ParameterSpace.from_dict(SPACE), FakeDevice(noise=0.0), store, passes=1, progress=False, limit=30)
        with pytest.raises(SpecError, match="no sample .* has a positive 'gpu_ms'"):
            load_training_data(store, target="gpu_ms")


class _Chain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(8, 32, 3, padding=1)
        self.a = torch.nn.ReLU()
        self.c2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.fc = torch.nn.Linear(64, 40)

    def forward(self, x):
        return self.fc(self.a(self.c2(self.a(self.c1(x)))).mean((2, 3)))


def test_overlap_predictor_composes_the_stage_predictions(stage_store, tmp_path):
    with ProfileStore(stage_store, readonly=True) as store:
        # smooth families: the fake device's stage times are smooth in the features, while 80 conv specs
        # leave gradient boosting free to split on columns the fake device ignores (channel alignment)
        fams = ["ridge", "poly"]
        host_p, _ = select(load_training_data(store, target="host_ms"), families=fams, cv=2)
        gpu_p, _ = select(load_training_data(store, target="gpu_ms"), families=fams, cv=2)
        lat_p, _ = select(load_training_data(store), families=["ridge"], cv=2)
    with pytest.raises(SpecError, match="trained on 'latency_ms'; it must be trained on 'host_ms'"):
        OverlapPredictor(lat_p, gpu_p)
    op = OverlapPredictor(host_p, gpu_p)
    graph = trace(_Chain(), torch.randn(1, 8, 14, 14))
    b = np.array([1, 2, 4, 8])
    got = op.predict_graph(graph, batch_size=b, calls=1)
    h, g, _ = op.stages(graph, batch_size=b)
    assert got.total_ms.shape == (4,) and got.node_ms.shape == h.shape
    assert np.allclose(got.node_ms.sum(-1), got.total_ms)
    assert np.all(got.total_ms >= np.maximum(h.sum(-1), g.sum(-1)) - 1e-12) and np.all(got.total_ms <= (h + g).sum(-1) + 1e-12)
    # against the fake device's own stage times of the same nodes
    dev = FakeDevice(noise=0.0, components=True)
    for k, bb in enumerate(b):
        stages = [dev.measure(n.spec.with_conditions(batch_size=int(bb), utilization=0.0, threads=1)).extra
                  for n in graph.nodes if n.spec is not None]
        truth, _ = overlap_ms([s["host_ms"] for s in stages], [s["gpu_ms"] for s in stages])
        assert got.total_ms[k] == pytest.approx(float(truth), rel=0.25)
    steady = op.predict_graph(graph, batch_size=b, calls=20)
    assert np.all(steady.total_ms <= got.total_ms + 1e-12) and np.allclose(steady.node_ms.sum(-1), steady.total_ms)
    # the default mirrors the timing protocol: as many calls as fill a 10 ms window, exactly
    window = op.predict_graph(graph, batch_size=b)
    n = np.maximum(1, np.round(10.0 / got.total_ms)).astype(int)
    exact = [overlap_ms(h[k], g[k], int(n[k]))[0] for k in range(len(b))]
    assert np.allclose(window.total_ms, exact, rtol=1e-9) and np.allclose(window.node_ms.sum(-1), window.total_ms)
    assert "window 10 ms" in window.composition
    wide = op.predict_graph(graph, batch_size=b, window_ms=1e-6)  # a window shorter than a call: one call
    assert np.allclose(wide.total_ms, got.total_ms)
    with pytest.raises(SpecError, match="positive integer or 'window'"):
        op.predict_graph(graph, batch_size=1, calls="many")
    with pytest.raises(SpecError, match="window_ms must be positive"):
        op.predict_graph(graph, batch_size=1, window_ms=0.0)
    # persistence
    path = op.save(tmp_path / "ov")
    again = OverlapPredictor.load(path)
    assert np.allclose(again.predict_graph(graph, batch_size=b, calls=1).total_ms, got.total_ms)
    (path / "overlap.json").write_text(json.dumps({"format": "latpred-overlap-predictor", "version": 99}))
    with pytest.raises(SpecError, match="version 99 is not supported"):
        OverlapPredictor.load(path)
    with pytest.raises(SpecError, match="no overlap.json"):
        OverlapPredictor.load(tmp_path)


def test_validation_keeps_the_devices_stage_timings(tmp_path):
    pred, _ = select(load_training_data_synthetic(), families=["ridge"], cv=2)
    report = validate_models(pred, FakeDevice(noise=0.0, components=True), ["tests.helpers_graph:tiny"], batch_sizes=[1, 2],
                             utilizations=[0.0], passes=2)
    for case in report.cases:
        assert set(case.components) == {"host_ms", "gpu_ms", "single_ms", "host_probe_ms"}
        assert case.predicted_at_probe_ms is None  # a latency predictor has no host stage to scale
        assert case.components["host_ms"] + case.components["gpu_ms"] == pytest.approx(case.measured_ms)
    assert "components" in report.to_dict()["cases"][0]


def load_training_data_synthetic():
    from tests.helpers_data import synthetic_data

    return synthetic_data()


@pytest.mark.cuda
def test_cuda_times_the_host_and_gpu_stages_apart():
    from latpred.ops import get_op
    from latpred.profiling.devices import CudaDevice

    dev = CudaDevice()
    small = dev.measure(get_op("activation").spec(fn="relu", channels=16, h=8, batch_size=1))
    big = dev.measure(get_op("conv2d").spec(in_channels=256, out_channels=256, kernel_size=3, h=56, batch_size=32))
    for m in (small, big):
        assert "gpu_error" not in m.extra, m.extra.get("gpu_error")
        assert m.extra["host_ms"] > 0 and m.extra["gpu_ms"] > 0 and m.extra["single_ms"] > 0
        assert 0 < m.extra["host_probe_ms"] < 1.0  # a tiny module issued without synchronising
    assert small.extra["gpu_ms"] < small.extra["host_ms"]  # a tiny kernel: issuing it costs more than running it
    assert big.extra["gpu_ms"] > big.extra["host_ms"]  # a large convolution: the GPU stage dominates
    assert big.extra["gpu_ms"] == pytest.approx(big.latency_ms, rel=0.3)
    whole = dev.measure_model(_Chain(), (torch.randn(4, 8, 14, 14),))
    assert {"host_ms", "gpu_ms", "single_ms", "host_probe_ms"} <= set(whole.extra)
    dev.close()


class _DriftingHost(FakeDevice):
    """Fake stage timings whose host side runs at one of two speeds, read by a host probe; flatten launches nothing."""

    def measure(self, spec):
        m = super().measure(spec)
        slow = 2.0 if hashlib.sha256(spec.key.encode()).digest()[0] % 2 else 1.0
        extra = {**m.extra, "host_ms": m.extra["host_ms"] * slow, "host_probe_ms": 0.02 * slow}
        if spec.op == "flatten":
            extra["gpu_ms"] = 0.0012
        return type(m)(m.latency_ms, m.timings_ms, m.calls_per_window, m.util_observed, m.system_util, extra)


def test_host_times_are_brought_to_one_host_speed_and_the_replay_overhead_is_kept(tmp_path):
    space = {**SPACE, "ops": {**SPACE["ops"], "flatten": {"samples": 12, "channels": {"log_range": [8, 64]}, "h": [7, 14]}}}
    with ProfileStore(tmp_path / "drift.sqlite") as store:
        profile(ParameterSpace.from_dict(space), _DriftingHost(noise=0.0, components=True), store, passes=1, progress=False)
        host = load_training_data(store, target="host_ms")
        gpu = load_training_data(store, target="gpu_ms")
        raw = [s.extra["host_ms"] for s in store.samples(op="conv2d")]
    assert len(set(np.round(raw, 6))) == 2  # two host speeds in the store...
    nominal = host.metadata["host_probe_nominal_ms"]
    assert nominal in (0.02, 0.04, 0.03) and host.metadata["host_normalised_samples"] == sum(len(v) for v in host.latency_ms.values())
    assert np.allclose(host.latency_ms["conv2d"], 0.005 * nominal / 0.02)  # ...one after normalisation
    assert gpu.metadata["gpu_replay_overhead_ms"] == pytest.approx(0.0012)
    assert "host_probe_nominal_ms" not in gpu.metadata


def test_overlap_predictor_scales_the_host_subtracts_the_replay_overhead_and_fits_the_host_factor(stage_store):
    with ProfileStore(stage_store, readonly=True) as store:
        host_p, _ = select(load_training_data(store, target="host_ms"), families=["ridge"], cv=2)
        gpu_p, _ = select(load_training_data(store, target="gpu_ms"), families=["ridge"], cv=2)
    graph = trace(_Chain(), torch.randn(1, 8, 14, 14))
    plain = OverlapPredictor(host_p, gpu_p)
    assert plain.gpu_overhead_ms == 0.0 and plain.host_factor == 1.0 and plain.host_nominal_ms is None
    h0, g0, _ = plain.stages(graph, batch_size=np.array([1, 8]))
    h2, _, _ = plain.stages(graph, batch_size=np.array([1, 8]), host_scale=np.array([2.0, 0.5]))
    assert np.allclose(h2, h0 * np.array([[2.0], [0.5]]))
    _, g1, _ = OverlapPredictor(host_p, gpu_p, gpu_overhead_ms=0.001).stages(graph, batch_size=np.array([1, 8]))
    assert np.allclose(g1, np.maximum(g0 - 0.001, 0.0))
    with pytest.raises(SpecError, match="no nominal"):
        plain.host_scale_for(0.03)
    with pytest.raises(SpecError, match="host_scale must be positive"):
        plain.stages(graph, batch_size=1, host_scale=0.0)
    with pytest.raises(SpecError, match="host_factor must be finite"):
        OverlapPredictor(host_p, gpu_p, host_factor=-1.0)
    # the factor that brings predicted host sums to measured ones, whatever the batch size
    cases = []
    for b in (1, 4):
        h = host_p.predict_graph(graph, b).isolated_ms.sum()
        cases.append({"model": "chain", "batch_size": b, "utilization": 0.0, "host_ms": 1.3 * h})
    fitted = OverlapPredictor(host_p, gpu_p)
    assert fitted.fit_host_factor({"chain": graph}, cases) == pytest.approx(1.3)
    hf, _, _ = fitted.stages(graph, batch_size=np.array([1, 8]))
    assert np.allclose(hf, 1.3 * h0)
    # isolated modules: the slower stage, the host at the given speed
    specs = [n.spec.with_conditions(batch_size=4, utilization=0.0, threads=1) for n in graph.nodes
             if n.spec is not None and fitted.covers(n.spec.op)]
    assert len(specs) == 5  # two convolutions, two activations, the linear layer (the mean is not covered)
    hs, gs = host_p.predict(specs), gpu_p.predict(specs)
    assert np.allclose(fitted.predict(specs), np.maximum(hs, gs))
    assert np.allclose(fitted.predict(specs, host_scale=3.0), np.maximum(3.0 * hs, gs))
    with pytest.raises(SpecError, match="host_scale must be positive"):
        fitted.predict(specs, host_scale=-1.0)
    with pytest.raises(SpecError, match="needs cases with a measured host_ms"):
        fitted.fit_host_factor({"chain": graph}, [{"model": "chain", "batch_size": 1}])


def test_overlap_cli_builds_a_predictor_that_predict_validate_and_partition_accept(stage_store, tmp_path, capsys):
    from latpred.cli import main
    from latpred.predictor import load_predictor
    from partition import Link, optimize_partition

    host_dir, gpu_dir = tmp_path / "host", tmp_path / "gpu"
    assert main(["train", "--db", str(stage_store), "--target", "host_ms", "--regressors", "ridge", "--cv", "2",
                 "--out", str(host_dir), "--json"]) == 0
    assert main(["train", "--db", str(stage_store), "--target", "gpu_ms", "--regressors", "ridge", "--cv", "2",
                 "--out", str(gpu_dir), "--json"]) == 0
    capsys.readouterr()
    # whole models measured with their stage times (the fake device's host time is 1.0x its nodes')
    report = validate_models(load_predictor(host_dir), FakeDevice(noise=0.0, components=True), ["tests.helpers_graph:tiny"],
                             batch_sizes=[1, 2], utilizations=[0.0], passes=1)
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps(report.to_dict(), default=str))
    out = tmp_path / "overlap"
    assert main(["overlap", "--host", str(host_dir), "--gpu", str(gpu_dir), "--out", str(out), "--measured", str(measured),
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fitted_on_cases"] == 2 and 0.3 < info["host_factor"] < 3.0
    over = load_predictor(out)
    assert isinstance(over, OverlapPredictor) and over.host_factor == pytest.approx(info["host_factor"])
    assert "host/device overlap" in over.composition.describe()
    assert main(["predict", "--predictor", str(out), "--model", "tests.helpers_graph:tiny", "--batch-size", "1,4", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["predictions"]
    assert len(pred) == 2 and 0 < pred[0]["total_ms"] < pred[1]["total_ms"]
    assert main(["validate", "--predictor", str(out), "--models", "tests.helpers_graph:tiny", "--no-measure",
                 "--batch-sizes", "1", "--utilization", "0", "--json"]) == 0
    # a partition with the overlap predictor as the cloud
    graph = trace(_Chain(), torch.randn(1, 8, 14, 14))
    plan = optimize_partition(graph, devices=[load_predictor(host_dir), over], link=Link(100.0, rtt_ms=1.0))
    assert plan.objectives["latency_ms"] > 0
    from partition.cli import main as partition_main

    capsys.readouterr()
    assert partition_main(["split", "--model", "tests.helpers_graph:tiny", "--edge", str(host_dir), "--cloud", str(out),
                           "--bandwidth-mbps", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["objectives"]["latency_ms"] > 0
    # bad input names the problem
    with pytest.raises(SystemExit):
        main(["overlap", "--host", str(host_dir), "--out", str(out)])
    bad = tmp_path / "nohost.json"
    bad.write_text(json.dumps({"cases": [{"model": "tiny", "batch_size": 1, "measured_ms": 1.0}]}))
    assert main(["overlap", "--host", str(host_dir), "--gpu", str(gpu_dir), "--out", str(out), "--measured", str(bad)]) == 2
    assert "no case with the whole model's host_ms" in capsys.readouterr().err


def test_validation_predicts_at_the_host_speed_the_probe_read(tmp_path):
    with ProfileStore(tmp_path / "drift.sqlite") as store:
        profile(ParameterSpace.from_dict(SPACE), _DriftingHost(noise=0.0, components=True), store, passes=1, progress=False)
        host_p, _ = select(load_training_data(store, target="host_ms"), families=["ridge"], cv=2)
        gpu_p, _ = select(load_training_data(store, target="gpu_ms"), families=["ridge"], cv=2)
    over = OverlapPredictor(host_p, gpu_p)
    nominal = over.host_nominal_ms
    assert nominal is not None
    report = validate_models(over, FakeDevice(noise=0.0, components=True), ["tests.helpers_graph:tiny"], batch_sizes=[1, 2],
                             utilizations=[0.0], passes=1)
    graph = trace(load_model_module(), torch.randn(1, 3, 32, 32))
    for case in report.cases:
        want = over.predict_graph(graph, batch_size=[case.batch_size], utilization=[0.0],
                                  host_scale=0.05 / nominal).total_ms[0]  # the fake device's probe reads 0.05 ms
        assert case.predicted_at_probe_ms == pytest.approx(want)
        assert case.predicted_at_probe_ms != pytest.approx(case.predicted_ms)
    m = report.metrics()
    assert m["probe_n"] == 2 and 0 <= m["probe_acc10"] <= 1 and m["probe_mape"] >= 0


def load_model_module():
    from latpred.graph.models import load_model

    return load_model("tests.helpers_graph:tiny").module
