"""PartitionPlan, split execution in-process (split_graph_module / SplitModel) and optimize_partition."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from latpred import Predictor
from latpred.graph.models import load_model
from latpred.graph.trace import trace
from partition import (
    CostModel,
    Link,
    PartitionPlan,
    best_single_cut,
    min_cut_partition,
    optimize_partition,
    split_graph_module,
)
from partition.exact import single_cut_assignments


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class Toy(nn.Module):
    """Residual toy net: the input feeds a late node, a shape int crosses stages, two outputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 3, 1)
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        n = x.shape[0]
        h = torch.relu(self.a(x))
        r = h + self.b(h)
        y = self.c(r) * self.scale + x  # the model input is used again late
        z = y.mean(dim=(2, 3)).reshape(n, -1)
        return self.fc(z), r.sum()


def _toy_graph():
    torch.manual_seed(0)
    m = Toy().eval()
    x = torch.randn(2, 3, 8, 8)
    return m, x, trace(m, x)


def _close(a, b):
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_close(u, v) for u, v in zip(a, b))
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def _cost_model(graph, seed=0, k=2):
    rng = np.random.default_rng(seed)
    n = len(graph.nodes)
    node_ms = [rng.random(n) * (0.3 ** d) for d in range(k)]
    return CostModel(graph, node_ms, Link(20.0, rtt_ms=1.0))


def _random_monotone(cm, seed=0):
    """Repair of a random assignment where only a few nodes ask for the cloud: a DAG-shaped cut mid-graph."""
    rng = np.random.default_rng(seed)
    n = cm.n_nodes
    for _ in range(50):
        a = np.zeros(n, dtype=int)
        a[rng.integers(n // 4, 3 * n // 4, size=2)] = 1
        a = cm.repair(a[None, :])[0]
        if 0 < (a == 1).sum() < n - 2:
            return a
    raise AssertionError("no mid-graph random plan")


# -- torchvision models -------------------------------------------------------------------------
_ZOO = {"resnet18": (3, 64, 64), "mobilenet_v2": (3, 64, 64), "vit_b_16": (3, 224, 224)}


@pytest.fixture(scope="module", params=sorted(_ZOO))
def zoo_model(request):
    torch.manual_seed(0)
    ref = load_model(f"torchvision:{request.param}", _ZOO[request.param])
    x = torch.randn(1, *ref.input_shape)
    graph = trace(ref.module, x)
    with torch.no_grad():
        y = ref.module(x)
    return request.param, ref.module, x, y, graph


def test_zoo_split_plans_match_unsplit(zoo_model):
    name, _, x, y, graph = zoo_model
    cm = _cost_model(graph)
    n = cm.n_nodes
    plans = {"single_cut": best_single_cut(cm).assignment, "min_cut": min_cut_partition(cm).assignment,
             "random": _random_monotone(cm), "mid_cut": single_cut_assignments(cm, [n // 2])[0]}
    for kind, a in plans.items():
        assert cm.is_monotone(a)[0]
        split = split_graph_module(graph.gm, dict(zip(cm.node_names, a)))
        out = split.run(x)
        assert torch.allclose(out, y, atol=1e-5), f"{name} {kind}: max diff {(out - y).abs().max()}"
        if kind in ("random", "mid_cut"):
            assert split.devices == (0, 1), f"{name} {kind}: {split}"
            send, recv = split.boundary(1)
            assert send and recv, f"{name} {kind}: nothing crosses the cut"
            # every transfer goes forward, except the result coming back to the edge
            assert all(src < dst or (dst == 0 and v in split.output_names) for v, src, dst in split.transfers())


def test_zoo_all_edge_and_all_cloud(zoo_model):
    name, _, x, y, graph = zoo_model
    cm = _cost_model(graph)
    edge = cm.repair(np.zeros((1, cm.n_nodes), dtype=int))[0]
    cloud = cm.repair(np.ones((1, cm.n_nodes), dtype=int))[0]
    s_edge = split_graph_module(graph.gm, dict(zip(cm.node_names, edge)))
    assert s_edge.devices == (0,) and s_edge.transfers() == [] and s_edge.boundary(1) == ((), ())
    assert torch.allclose(s_edge.run(x), y, atol=1e-5)
    s_cloud = split_graph_module(graph.gm, dict(zip(cm.node_names, cloud)))
    assert s_cloud.devices == (1,)
    send, recv = s_cloud.boundary(1)
    assert send == ("x",) and len(recv) == 1  # the edge only sends the input and gets the result back
    assert ("x", 0, 1) in s_cloud.transfers()
    assert torch.allclose(s_cloud.run(x), y, atol=1e-5), name


# -- toy residual net ---------------------------------------------------------------------------
def test_toy_input_reused_multiple_outputs_and_shape_values():
    m, x, graph = _toy_graph()
    with torch.no_grad():
        y = m(x)
    names = [nd.name for nd in graph.nodes]
    cut = names.index("add")  # h + b(h): the residual add goes to the cloud, so h and b cross the cut
    a = np.array([0 if i < cut else 1 for i in range(len(names))])
    cm = _cost_model(graph)
    a = cm.repair(a[None, :])[0]
    split = split_graph_module(graph.gm, dict(zip(names, a)))
    assert split.devices == (0, 1)
    st0 = split.stage(0)
    assert len(st0.output_names) >= 2 and st0.tuple_output  # several values leave the edge stage
    send, recv = split.boundary(1)
    assert "x" in send  # the model input is consumed late, so it must be shipped too
    assert ("x", 0, 1) in split.transfers()
    assert len(recv) == 2  # two model outputs come back
    assert _close(split.run(x), y)


def test_toy_all_plans_and_three_devices():
    m, x, graph = _toy_graph()
    with torch.no_grad():
        y = m(x)
    cm3 = _cost_model(graph, k=3)
    n = cm3.n_nodes
    rng = np.random.default_rng(1)
    for a in [np.zeros(n, dtype=int), np.full(n, 2), *rng.integers(0, 3, size=(6, n)), np.where(np.arange(n) < n // 2, 0, 2)]:
        a = cm3.repair(a[None, :])[0]
        split = split_graph_module(graph.gm, dict(zip(cm3.node_names, a)))
        assert list(split.devices) == sorted(set(int(d) for d in a if d in split.devices))
        assert _close(split.run(x), y)
    # an empty middle device is skipped: only devices 0 and 2 have stages
    a = cm3.repair(np.where(np.arange(n) < n // 2, 0, 2)[None, :])[0]
    assert split_graph_module(graph.gm, dict(zip(cm3.node_names, a))).devices == (0, 2)


def test_split_rejects_bad_plans():
    _, _, graph = _toy_graph()
    names = [nd.name for nd in graph.nodes]
    bad = {n: 0 for n in names}
    bad[names[2]] = 1  # a middle node on the cloud, its consumers on the edge
    with pytest.raises(ValueError, match="not monotone"):
        split_graph_module(graph.gm, bad)
    partial = {n: 0 for n in names[:3]}
    with pytest.raises(ValueError, match="no device"):
        split_graph_module(graph.gm, partial)


def test_plan_split_convenience_and_round_trip():
    m, x, graph = _toy_graph()
    cm = _cost_model(graph)
    p = PartitionPlan.from_plan(min_cut_partition(cm), model="toy")
    with torch.no_grad():
        y = m(x)
    assert _close(p.split(graph).run(x), y)
    assert _close(p.split(m).run(x), y)  # traced here with the same tracer: same node names
    assert _close(p.split(m, x).run(x), y)
    assert _close(p.split(graph.gm).run(x), y)

    p2 = PartitionPlan(p.assignment, p.node_names, ("edge", "cloud"), {"latency": 1.5, "latency_ms": 1.5, "x": math.nan},
                       ((p.assignment, {"latency": 1.5, "edge_memory": 10.0}),), "nsga2", "toy")
    d = json.loads(json.dumps(p2.to_dict(), allow_nan=False))  # strict JSON
    back = PartitionPlan.from_dict(d)
    assert back.assignment == p2.assignment and back.node_names == p2.node_names and back.pareto == p2.pareto
    assert back.method == "nsga2" and back.model == "toy" and math.isnan(back.objectives["x"])
    assert back.latency_ms == 1.5
    assert PartitionPlan.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="malformed"):
        PartitionPlan.from_dict({"assignment": [0]})
    with pytest.raises(ValueError, match="device indices"):
        PartitionPlan((0, 3), ("a", "b"))


# -- optimize_partition -------------------------------------------------------------------------
def _chain():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 16), nn.ReLU(),
                      nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    x = torch.randn(1, 64)
    return m, x, trace(m, x)


def test_optimize_partition_with_arrays_matches_single_cut_on_a_chain():
    m, x, graph = _chain()
    n = len(graph.nodes)
    edge = np.array([3.0 if nd.kind == "compute" else 0.0 for nd in graph.nodes])
    cloud = edge * 0.1
    link = Link(1.0, rtt_ms=2.0)
    plan = optimize_partition(m, x, [edge, cloud], link, pop_size=16, n_gen=5)
    ref = best_single_cut(CostModel(graph, [edge, cloud], link))
    assert plan.latency_ms == pytest.approx(ref.latency_ms)
    assert plan.objectives["latency"] == pytest.approx(ref.latency_ms)
    assert 0 < sum(plan.assignment) < n - 1  # a real cut (after the 512 -> 16 bottleneck)
    assert plan.devices == ("edge", "cloud") and plan.method == "ga" and plan.pareto == ()
    with torch.no_grad():
        assert torch.allclose(plan.split(graph).run(x), m(x), atol=1e-5)
    # a ModelGraph works as well, and so does a dict link
    plan2 = optimize_partition(graph, devices=[edge, cloud], link={"bandwidth_mbps": 1.0, "rtt_ms": 2.0}, pop_size=16, n_gen=5)
    assert plan2.latency_ms == pytest.approx(ref.latency_ms)


def test_optimize_partition_multi_objective_keeps_the_front():
    _, _, graph = _chain()
    edge = np.array([3.0 if nd.kind == "compute" else 0.0 for nd in graph.nodes])
    plan = optimize_partition(graph, devices=[edge, edge * 0.5], link=Link(0.1, rtt_ms=2.0),
                              objectives=("latency", "edge_memory"), pop_size=16, n_gen=5)
    assert plan.method == "nsga2" and len(plan.pareto) >= 2
    assert plan.assignment in [a for a, _ in plan.pareto]
    lat = [o["latency"] for _, o in plan.pareto]
    assert lat == sorted(lat) and plan.objectives["latency"] == pytest.approx(lat[0])


class _FakePredictor(Predictor):
    """A Predictor whose graph prediction is 1 ms per compute node divided by the thread count."""

    def predict_graph(self, graph, batch_size=None, utilization=0.0, threads=None, **extra):
        self.calls.append({"batch_size": batch_size, "utilization": utilization, "threads": threads, **extra})
        ms = np.array([1.0 if nd.kind == "compute" else 0.0 for nd in graph.nodes]) / (threads or 1)

        class _Lat:
            node_ms = ms
        return _Lat()


def test_optimize_partition_with_predictors_and_errors():
    _, _, graph = _chain()
    ops = sorted({nd.op for nd in graph.compute_nodes if nd.op})
    edge = _FakePredictor({o: "fake" for o in ops})
    cloud = _FakePredictor({o: "fake" for o in ops})
    edge.calls, cloud.calls = [], []
    plan = optimize_partition(graph, devices=[edge, cloud], link=Link(1000.0), conditions=[{"threads": 1}, {"threads": 8}],
                              device_names=("phone", "server"), pop_size=8, n_gen=2)
    assert edge.calls[0]["threads"] == 1 and cloud.calls[0]["threads"] == 8
    assert plan.devices == ("phone", "server")
    assert plan.objectives["latency_ms"] < sum(nd.kind == "compute" for nd in graph.nodes)  # offloading helps

    n = len(graph.nodes)
    with pytest.raises(ValueError, match="unsupported device entry str"):
        optimize_partition(graph, devices=["gpu", np.ones(n)], link=Link(10.0))
    with pytest.raises(ValueError, match="bandwidth_mbps"):
        optimize_partition(graph, devices=[np.ones(n), np.ones(n)], link={"bandwidth_mbps": 0})
    with pytest.raises(ValueError, match="bandwidth_mbps"):
        optimize_partition(graph, devices=[np.ones(n), np.ones(n)], link=Link(-1.0))
    with pytest.raises(ValueError, match="shape"):
        optimize_partition(graph, devices=[np.ones(n + 1), np.ones(n)], link=Link(10.0))
    lacking = _FakePredictor({"linear": "fake"})
    lacking.calls = []
    with pytest.raises(ValueError, match=r"no model for op types.*activation"):
        optimize_partition(graph, devices=[lacking, cloud], link=Link(10.0))
    with pytest.raises(ValueError, match="at least 2 devices"):
        optimize_partition(graph, devices=[np.ones(n)], link=Link(10.0))
    with pytest.raises(ValueError, match="example_input"):
        optimize_partition(nn.Linear(2, 2), devices=[np.ones(3), np.ones(3)], link=Link(10.0))
