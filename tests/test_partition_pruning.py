"""Latency-aware structured pruning (partition.pruning / partition.prune_problem)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from latpred.features import GENERIC_FEATURES, feature_names  # noqa: E402
from latpred.graph.compose import Composition  # noqa: E402
from latpred.graph.trace import trace  # noqa: E402
from latpred.predictor import Predictor  # noqa: E402
from partition.cost import CostModel, Link  # noqa: E402
from partition.prune_problem import JointPruningProblem, joint_metrics, optimize_joint, optimize_pruning  # noqa: E402
from partition.pruning import PruningError, PruningPlan, analyze_pruning, kept_channels  # noqa: E402


class TinyNet(nn.Module):
    """Residual block, a concatenation, a depthwise conv and a classifier: every coupling kind."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c1 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(24)
        self.c2 = nn.Conv2d(24, 16, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.ba = nn.Conv2d(16, 16, 1)
        self.bb = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 40, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        x = torch.cat([self.ba(x), self.bb(x)], dim=1)
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class _Roofline:
    """A cheap, deterministic stand-in regression model: log ms from the log FLOPs and log bytes columns."""

    def __init__(self, names: list[str], scale: float) -> None:
        self.f, self.b, self.scale = names.index("log_flops"), names.index("log_bytes"), scale

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.log(self.scale * (np.exp(X[:, self.f]) / 2e9 + np.exp(X[:, self.b]) / 5e9) + 1e-3)


@pytest.fixture(scope="module")
def predictor():
    ops = {"conv2d": 1.0, "linear": 1.2, "activation": 0.8, "batchnorm2d": 0.9, "elementwise": 0.7}
    comp = Composition({"unloaded": [1.1, 1.05, 1.0, 0.9, 0.85, 1.2, 0.004, 0.001, 0.02, 0.01],
                        "loaded": [1.5, 1.4, 1.3, 1.2, 1.1, 1.6, 0.006, 0.002, 0.03, 0.015]},
                       calibrated=True)
    return Predictor({op: "ridge" for op in ops}, {op: _Roofline(feature_names(op), k) for op, k in ops.items()},
                     generic=_Roofline(list(GENERIC_FEATURES), 1.5), composition=comp)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="module")
def analysis(net, x):
    return analyze_pruning(net, x)


def test_kept_channels_rounding():
    assert kept_channels(64, 0.0, 8) == 64
    assert kept_channels(64, 0.3, None) == 45
    assert kept_channels(64, 0.3, 8) == 48
    assert kept_channels(20, 0.0, 8) == 20
    assert kept_channels(20, 0.9, 8) == 8
    assert kept_channels(5, 0.99) == 1


def test_groups_share_residual_and_skip_classifier(analysis):
    g = analysis.group_of("stem.0")
    assert g is not None and analysis.group_of("c2") is g  # both convs feeding the add: one group
    assert analysis.group_of("c1") is not None and analysis.group_of("c1") is not g
    assert analysis.group_of("fc") is None  # classifier output never pruned
    assert analysis.group_of("dw") is None  # depthwise follows the concatenation's groups
    # a depthwise conv after a concatenation couples both branches into one 32-channel group
    cat_group = analysis.group_of("ba")
    assert cat_group is analysis.group_of("bb") and cat_group.channels == 32
    dw_node = next(n for n in analysis.graph.nodes if n.module == "dw")
    assert analysis.deps(dw_node.name) == (cat_group.name,)


def test_table_equals_explicit_rewrite(analysis, predictor):
    levels = (0.0, 0.25, 0.5, 0.75)
    table = analysis.latency_table(predictor, levels, {"batch_size": 2, "utilization": 0.5})
    rng = np.random.default_rng(0)
    X = rng.integers(0, len(levels), size=(5, analysis.n_groups))
    got = table.latency_ms(X)
    for xi, t in zip(X, got):
        g = analysis.rewrite(np.asarray(levels)[xi])
        want = float(predictor.predict_graph(g, batch_size=2, utilization=0.5).total_ms)
        assert t == pytest.approx(want, rel=1e-6)
    assert got.min() >= table.lower_bound_ms() - 1e-12


def test_apply_gives_smaller_runnable_model(net, x, analysis, predictor):
    levels = (0.0, 0.25, 0.5)
    table = analysis.latency_table(predictor, levels)
    X = np.full((1, analysis.n_groups), 2)
    pruned = analysis.prune_(__import__("copy").deepcopy(net), table.ratios(X)[0])
    with torch.no_grad():
        assert pruned(x).shape == net(x).shape == (1, 10)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in net.parameters())
    # same specs => same prediction
    # same specs => same prediction; the composition's weight-MiB term sees the real parameter bytes of the
    # pruned model (BN buffers included) where the table uses the rewritten estimate: a ~1e-6 relative gap
    assert float(predictor.predict_graph(trace(pruned, x)).total_ms) == pytest.approx(table.latency_ms(X)[0], rel=1e-4)


def test_proxy_monotone(analysis):
    L = np.arange(9)[:, None].repeat(analysis.n_groups, axis=1)
    p = analysis.proxy(L)
    assert p[0] == 0.0 and np.all(np.diff(p) > 0)
    one = np.zeros((2, analysis.n_groups), dtype=int)
    one[1, 0] = 4
    assert analysis.proxy(one)[1] > 0


def test_optimize_front_budget_and_apply(net, x, predictor, analysis):
    base = optimize_pruning(net, x, predictor, pop_size=16, n_gen=5, analysis=analysis)
    assert base.plans and all(np.diff([p.latency_ms for p in base.plans]) >= 0)
    budget = 0.5 * (base.base_latency_ms + base.plans[0].latency_ms)
    res = optimize_pruning(net, x, predictor, latency_budget_ms=budget, pop_size=16, n_gen=5, analysis=analysis,
                           evaluate=lambda m: float(sum(p.numel() for p in m.parameters())))
    assert all(p.latency_ms <= budget for p in res.plans)
    plan = res.plans[0]
    assert plan.accuracy is not None
    m = plan.apply(net)
    with torch.no_grad():
        assert m(x).shape == (1, 10)
    assert float(predictor.predict_graph(trace(m, x)).total_ms) == pytest.approx(plan.latency_ms, rel=1e-4)
    with pytest.raises(ValueError, match=r"latency_budget_ms=0\.0001 ms is infeasible.*\d+(\.\d+)? ms"):
        optimize_pruning(net, x, predictor, latency_budget_ms=1e-4, pop_size=8, n_gen=2, analysis=analysis)


def test_reference_ms_scales_every_prediction(net, x, predictor, analysis):
    plain = optimize_pruning(net, x, predictor, pop_size=16, n_gen=5, analysis=analysis)
    ref = 3.0 * plain.base_latency_ms  # as if the unpruned model measured 3x its prediction
    res = optimize_pruning(net, x, predictor, pop_size=16, n_gen=5, analysis=analysis, reference_ms=ref)
    assert res.base_latency_ms == pytest.approx(ref) and res.reference_scale == pytest.approx(3.0)
    assert res.table.entry_ms == pytest.approx(3.0 * plain.table.entry_ms)
    X = np.searchsorted(plain.table.levels, [p.ratios for p in res.plans])  # each plan's level indices
    assert [p.latency_ms for p in res.plans] == pytest.approx(3.0 * plain.table.latency_ms(X))
    # the budget is judged on the anchored latencies: a budget only the plain predictions meet is infeasible
    with pytest.raises(ValueError, match="infeasible"):
        optimize_pruning(net, x, predictor, pop_size=8, n_gen=2, analysis=analysis, reference_ms=ref,
                         latency_budget_ms=2.0 * plain.plans[0].latency_ms)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "abc", "12"):
        with pytest.raises(ValueError, match="reference_ms"):
            optimize_pruning(net, x, predictor, pop_size=8, n_gen=2, analysis=analysis, reference_ms=bad)


def test_rounding_to_8_matches_pruned_model(net, x, predictor):
    a = analyze_pruning(net, x, round_to=8)
    ratios = [0.3] * a.n_groups
    assert all(k % 8 == 0 for k in a.kept(ratios))
    m = a.prune_(__import__("copy").deepcopy(net), ratios)
    assert m.c1.out_channels == kept_channels(24, 0.3, 8) == 16
    g = a.rewrite(ratios)
    assert [n.spec for n in trace(m, x).nodes] == [n.spec for n in g.nodes]


def test_unfollowable_channels_raise():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8 * 14 * 14, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.c(x)  # (N, 8, 14, 14)
            return self.fc(y.transpose(1, 2).flatten(1))

    with pytest.raises(PruningError):
        analyze_pruning(Bad().eval(), torch.randn(1, 3, 16, 16))


def test_joint_mode_shrinks_transfer(net, x, analysis, predictor):
    levels = (0.0, 0.5)
    edge = analysis.latency_table(predictor, levels)
    cloud = analysis.latency_table(predictor, levels, {"utilization": 0.0, "batch_size": 1})
    link = Link(bandwidth_mbps=10.0, rtt_ms=1.0)
    prob = JointPruningProblem(edge, cloud, link)
    names = [n.name for n in analysis.graph.nodes]
    cut = names.index(next(n.name for n in analysis.graph.nodes if n.module == "c1"))  # stem output crosses the link
    stem = analysis.group_of("stem.0").index
    unpruned = np.zeros(analysis.n_groups + 1, dtype=int)
    unpruned[-1] = cut
    pruned = unpruned.copy()
    pruned[stem] = 1
    m = prob.metrics(np.vstack([unpruned, pruned]))
    assert m["bytes_transferred"][1] < m["bytes_transferred"][0]
    assert m["transfer_ms"][1] < m["transfer_ms"][0]
    # the table path equals CostModel on the explicitly rewritten graph
    for row in (unpruned, pruned):
        g = analysis.rewrite(np.asarray(levels)[row[:-1]])
        cm = CostModel(g, [predictor.predict_graph(g).node_ms, predictor.predict_graph(g).node_ms], link)
        _, a = prob.decode(row[None, :])
        want = cm.evaluate(a)
        got = joint_metrics(prob.cost_model, edge.node_ms(row[None, :-1]), cloud.node_ms(row[None, :-1]),
                            edge.out_bytes(row[None, :-1]), a)
        assert got["latency_ms"][0] == pytest.approx(want["latency_ms"][0], rel=1e-9)
        assert got["bytes_transferred"][0] == want["bytes_transferred"][0]
    res = optimize_joint(net, x, predictor, predictor, link, levels=levels, pop_size=12, n_gen=3, analysis=analysis)
    assert res.plans and res.plans[0].latency_ms <= float(m["latency_ms"].min()) + 1e-9


def test_resnet18_residual_groups_and_apply(predictor):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    a = analyze_pruning(net, x, round_to=8)
    g = a.group_of("layer1.0.conv2")
    assert g is a.group_of("layer1.1.conv2") is a.group_of("conv1")  # coupled through both residual adds
    assert a.group_of("layer2.0.downsample.0") is a.group_of("layer2.0.conv2")
    levels = (0.0, 0.3, 0.6)
    table = a.latency_table(predictor, levels)
    X = np.random.default_rng(1).integers(0, 3, size=(1, a.n_groups))
    m = a.prune_(__import__("copy").deepcopy(net), table.ratios(X)[0])
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in net.parameters())
    want = float(predictor.predict_graph(trace(m, x)).total_ms)
    assert table.latency_ms(X)[0] == pytest.approx(want, rel=1e-4)  # weight-MiB term: estimated vs real bytes


def test_bad_plans_get_errors_that_name_the_problem(net, analysis):
    names = [g.name for g in analysis.groups]
    with pytest.raises(PruningError, match=r"unknown group\(s\) \['no_such_layer'\]"):
        analysis.kept({"no_such_layer": 0.5})
    with pytest.raises(PruningError, match=r"must be in \[0, 1\)"):
        analysis.rewrite({names[0]: 1.2})
    with pytest.raises(PruningError, match=r"must be in \[0, 1\)"):
        analysis.prune_(copy.deepcopy(net), [-0.1] * analysis.n_groups)
    with pytest.raises(PruningError, match=f"need {analysis.n_groups} ratios"):
        analysis.kept([0.5] * (analysis.n_groups + 1))
    plan = PruningPlan(tuple([0.5] * analysis.n_groups), tuple(names), 1.0, 0.1)  # built by hand: no analysis
    with pytest.raises(PruningError, match="carries no analysis"):
        plan.apply(net)
