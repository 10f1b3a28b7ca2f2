"""predict_graph: vectorised over conditions, consistent with per-spec prediction, composition, fallback."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latpred import SpecError, UnknownOpError
from latpred.graph.calibrate import calibrate, random_network
from latpred.graph.compose import CLASSES, FEATURES, Composition, class_index, node_class, spilled_outputs
from latpred.graph.predict import composition_features
from latpred.graph.trace import trace
from latpred.predictor import Predictor
from latpred.profiling.devices import FakeDevice
from latpred.selection import select
from tests.helpers_data import synthetic_data
from tests.helpers_graph import Tiny


@pytest.fixture(scope="module")
def predictor():
    pred, _ = select(synthetic_data(), families=["ridge", "knn"], cv=2)
    return pred


@pytest.fixture(scope="module")
def graph():
    return trace(Tiny().eval(), torch.randn(1, 3, 32, 32))


def test_covered_nodes_match_per_spec_prediction_and_the_rest_use_the_fallback(predictor, graph):
    lat = predictor.predict_graph(graph, batch_size=4, utilization=0.5, threads=1)
    assert lat.total_ms.shape == () and lat.total_ms == pytest.approx(lat.node_ms.sum())
    for j, n in enumerate(graph.nodes):
        if n.kind != "compute":
            assert lat.isolated_ms[j] == 0
        elif n.spec is not None and predictor.covers(n.spec.op):
            want = predictor.predict_one(n.spec.with_conditions(batch_size=4, utilization=0.5, threads=1))
            assert lat.isolated_ms[j] == pytest.approx(want, rel=1e-9)
        else:
            assert n.name in lat.fallback_nodes and lat.isolated_ms[j] > 0
    # the synthetic predictor knows conv2d, linear and activation only
    assert set(lat.fallback_nodes) == {n.name for n in graph.compute_nodes
                                       if n.spec is None or n.spec.op not in ("conv2d", "linear", "activation")}


def test_vectorised_conditions_equal_single_calls(predictor, graph):
    b = np.array([1, 2, 8])[:, None]
    u = np.array([0.0, 0.3, 0.5, 0.7])[None, :]
    lat = predictor.predict_graph(graph, batch_size=b, utilization=u, threads=1)
    assert lat.total_ms.shape == (3, 4) and lat.node_ms.shape == (3, 4, len(graph.nodes))
    for i, bb in enumerate([1, 2, 8]):
        for k, uu in enumerate([0.0, 0.3, 0.5, 0.7]):
            one = predictor.predict_graph(graph, batch_size=bb, utilization=uu, threads=1)
            assert lat.total_ms[i, k] == pytest.approx(float(one.total_ms), rel=1e-9)
    # batch re-scaling of the graph gives the same numbers as asking for that batch size
    assert float(predictor.predict_graph(graph.with_batch_size(8), utilization=0.5, threads=1).total_ms) == \
        pytest.approx(lat.total_ms[2, 2], rel=1e-9)


def test_bad_conditions_are_clear_errors(predictor, graph):
    with pytest.raises(SpecError, match="utilization"):
        predictor.predict_graph(graph, utilization=1.0)
    with pytest.raises(SpecError, match="batch_size"):
        predictor.predict_graph(graph, batch_size=0)
    with pytest.raises(SpecError, match="broadcast"):
        predictor.predict_graph(graph, batch_size=[1, 2], utilization=[0.0, 0.1, 0.2])
    with pytest.raises(SpecError, match="extra conditions"):
        predictor.predict_graph(graph, temperature=3.0)


def test_no_generic_fallback_is_a_clear_error(predictor, graph):
    bare = Predictor(predictor.families, predictor.models, extra_names=[], metadata={}, schemas=predictor.schemas)
    with pytest.raises(UnknownOpError, match="no generic fallback"):
        bare.predict_graph(graph)


def _with_later_classes(a: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Rows laid out with the four classes of before (conv, gemm, memory, generic, ...): the dwconv and maxpool
    columns inserted, and the spilled-output column appended (0: no such term then)."""
    a = np.insert(a, CLASSES.index("dwconv"), fill, axis=1)
    a = np.insert(a, CLASSES.index("maxpool"), fill, axis=1)
    return np.column_stack([a, np.zeros(len(a))])


def test_composition_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    F = np.column_stack([rng.uniform(0, 50, 60), rng.uniform(0, 15, 60), rng.uniform(0, 20, 60), rng.uniform(0, 10, 60),
                         rng.uniform(0, 8, 60), np.zeros(60), rng.integers(10, 300, 60), rng.integers(0, 100, 60),
                         rng.uniform(1, 300, 60), rng.uniform(1, 500, 60), rng.uniform(0, 200, 60)])
    u = np.where(np.arange(60) % 2, 0.5, 0.0)
    # columns: conv, dwconv, gemm, memory, maxpool, generic, compute nodes, view nodes (fitted as 0 by design), weight
    # MiB, act MiB, spilled MiB
    true = {0: [1.2, 0.7, 1.1, 1.6, 0.8, 1.0, 0.02, 0.0, 0.1, 0.02, 0.01],
            1: [1.5, 0.9, 1.3, 2.0, 0.7, 1.0, 0.04, 0.0, 0.15, 0.03, 0.02]}
    y = np.array([F[i] @ np.array(true[int(u[i] > 0)]) for i in range(60)])
    comp = Composition.fit(F, y, u, shrink=0.0)  # plain NNLS: exact on exact data
    assert comp.calibrated and comp.info["fit_mape"] < 1e-6
    g = CLASSES.index("generic")
    for r, want in zip(("unloaded", "loaded"), (true[0], true[1])):
        assert comp.coef[r][:g] == pytest.approx(want[:g], rel=1e-6)
        assert comp.coef[r][g + 1:] == pytest.approx(want[g + 1:], rel=1e-6)
        assert comp.coef[r][g] == 1.0  # no generic nodes in the rows: keeps scale 1
    assert comp.coef["single_thread"] == comp.coef["unloaded"]  # no single-thread rows: borrows unloaded's
    back = Composition.from_dict(comp.to_dict())
    assert back.coef == comp.coef
    with pytest.raises(SpecError, match="non-negative"):
        Composition({"unloaded": [1.0] * len(FEATURES), "loaded": [-1.0] * len(FEATURES)})
    # a file written before the single-thread regime loads with unloaded's coefficients for it
    old = comp.to_dict()
    del old["coef"]["single_thread"]
    assert Composition.from_dict(old).coef["single_thread"] == comp.coef["unloaded"]


def test_grouped_convolutions_have_their_own_class_and_old_files_keep_their_predictions():
    assert node_class("conv2d") == node_class("conv2d", 1) == "conv" and node_class("conv2d", 32) == "dwconv"
    assert node_class("linear", 4) == "gemm" and node_class(None) == "generic" and node_class("relu") == "memory"
    assert list(class_index(["conv2d", "conv2d", "linear", None], ["compute", "compute", "compute", "view"], [1, 8, 1, 1])) \
        == [CLASSES.index("conv"), CLASSES.index("dwconv"), CLASSES.index("gemm"), -1]
    # a composition written with the four classes of before loads with dwconv = conv: the same predictions
    v1 = {"classes": ["conv", "gemm", "memory", "generic"],
          "features": ["conv", "gemm", "memory", "generic", "compute_nodes", "view_nodes", "param_mib", "activation_mib"],
          "coef": {r: [1.3, 0.8, 0.3, 1.0, 0.01, 0.0, 0.02, 0.05] for r in ("unloaded", "loaded", "single_thread")},
          "calibrated": True, "weight_cache_mib": 32.0, "info": {}}
    comp = Composition.from_dict(v1)
    assert comp.coef["unloaded"][:len(CLASSES)] == [1.3, 1.3, 0.8, 0.3, 0.3, 1.0] and comp.weight_cache_mib == 32.0
    iso = np.array([[2.0, 3.0]])
    out = comp.apply(iso, np.array([CLASSES.index("conv"), CLASSES.index("dwconv")]), np.array([True, True]),
                     np.zeros(2, dtype=bool), np.zeros(1))
    assert out[0] == pytest.approx([2.0 * 1.3 + 0.01, 3.0 * 1.3 + 0.01])
    with pytest.raises(SpecError, match="recalibrate"):
        Composition.from_dict({**v1, "classes": ["conv", "gemm"]})


def test_max_pools_have_their_own_class_and_older_files_keep_their_predictions():
    """Max-pooling ReLU outputs composes apart from the memory class (its in-context speed-up is data-dependent); a
    composition written with the five classes of before (no maxpool) loads with maxpool = memory and its flags kept."""
    assert node_class("maxpool2d", clamped_input=True) == "maxpool" and node_class("maxpool2d") == "memory"
    assert node_class("avgpool2d", 1, True) == node_class("adaptive_avgpool2d") == "memory"
    v2 = {"classes": ["conv", "dwconv", "gemm", "memory", "generic"],
          "features": ["conv", "dwconv", "gemm", "memory", "generic", "compute_nodes", "view_nodes", "param_mib",
                       "activation_mib"],
          "coef": {r: [1.3, 0.9, 0.8, 1.1, 1.0, 0.01, 0.0, 0.02, 0.05] for r in ("unloaded", "loaded", "single_thread")},
          "calibrated": True, "weight_cache_mib": 32.0, "activation_cap_mib": 0.5, "inplace_free": True,
          "streamed_weights_free": True, "info": {}}
    comp = Composition.from_dict(v2)
    assert comp.coef["loaded"] == [1.3, 0.9, 0.8, 1.1, 1.1, 1.0, 0.01, 0.0, 0.02, 0.05, 0.0]  # no spilled-output term then
    assert comp.inplace_free and comp.streamed_weights_free and comp.activation_cap_mib == 0.5
    iso = np.array([[2.0, 3.0]])
    out = comp.apply(iso, np.array([CLASSES.index("memory"), CLASSES.index("maxpool")]), np.array([True, True]),
                     np.zeros(2, dtype=bool), np.zeros(1))
    assert out[0] == pytest.approx([2.0 * 1.1 + 0.01, 3.0 * 1.1 + 0.01])
    again = Composition.from_dict(comp.to_dict())  # written back with six classes
    assert again.to_dict()["classes"] == list(CLASSES) and again.coef == comp.coef
    with pytest.raises(SpecError, match="recalibrate"):  # a class this latpred does not know
        Composition.from_dict({**v2, "classes": ["conv", "dwconv", "gemm", "memory", "pool"],
                               "features": ["conv", "dwconv", "gemm", "memory", "pool", *FEATURES[len(CLASSES):]]})


def test_weight_cache_caps_each_nodes_cold_weight_cost():
    """A node's weights count up to weight_cache_mib: larger ones were already cold when profiled alone."""
    iso = np.array([[1.0, 2.0, 0.5]])
    classes, compute, view = np.array([0, 1, 2]), np.array([True, True, True]), np.zeros(3, dtype=bool)
    param, act = np.array([2.0, 100.0, 0.0]), np.zeros((1, 3))
    w = FEATURES.index("param_mib")
    assert Composition.features(iso, classes, compute, view, param, act)[0, w] == pytest.approx(102.0)
    # weights above the cache were streamed alone too: free (new compositions), or capped (written before)
    assert Composition.features(iso, classes, compute, view, param, act, 32.0)[0, w] == pytest.approx(2.0)
    assert Composition.features(iso, classes, compute, view, param, act, 32.0,
                                streamed_weights_free=False)[0, w] == pytest.approx(34.0)
    coef = [1.0] * len(CLASSES) + [0.0, 0.0, 0.1, 0.0]
    free = Composition({r: coef for r in ("unloaded", "loaded")}, True, {}, 32.0)
    assert free.apply(iso, classes, compute, view, np.array([0.0]), param, act)[0] == pytest.approx([1.2, 2.0, 0.5])
    capped = Composition({r: coef for r in ("unloaded", "loaded")}, True, {}, 32.0, streamed_weights_free=False)
    node_ms = capped.apply(iso, classes, compute, view, np.array([0.0]), param, act)
    assert node_ms[0] == pytest.approx([1.0 + 0.2, 2.0 + 3.2, 0.5])  # 0.1 ms/MiB x min(MiB, 32)
    assert Composition.from_dict(capped.to_dict()).weight_cache_mib == 32.0
    assert Composition.from_dict(free.to_dict()).streamed_weights_free is True
    old = capped.to_dict()
    del old["weight_cache_mib"], old["streamed_weights_free"]  # written before the cap: no cap
    assert Composition.from_dict(old).weight_cache_mib is None
    assert Composition.from_dict(old).streamed_weights_free is False  # predicts as it did
    assert "up to 32 MiB" in capped.describe() and "larger ones free" in free.describe()
    with pytest.raises(SpecError, match="streamed_weights_free must be true or false"):
        Composition.from_dict({**free.to_dict(), "streamed_weights_free": "yes"})
    for bad in (0.0, -1.0, float("inf"), "32", True):
        with pytest.raises(SpecError, match="weight_cache_mib"):
            Composition(weight_cache_mib=bad)


def test_activation_cap_limits_each_nodes_activation_cost():
    """A node's output counts up to activation_cap_mib (the per-core cache): beyond it the module streams its output
    to memory alone as in a model, so the in-context cost does not grow with the batch."""
    iso = np.array([[1.0, 2.0], [1.0, 2.0]])
    classes, compute, view = np.array([0, 3]), np.array([True, True]), np.zeros(2, dtype=bool)
    param, act = np.zeros(2), np.array([[0.5, 3.0], [16.0, 96.0]])  # batch 1 and a large batch
    a = FEATURES.index("activation_mib")
    assert Composition.features(iso, classes, compute, view, param, act)[:, a] == pytest.approx([3.5, 112.0])
    assert Composition.features(iso, classes, compute, view, param, act, None, 1.0)[:, a] == pytest.approx([1.5, 2.0])
    coef = [1.0] * len(CLASSES) + [0.0, 0.0, 0.0, 0.1]
    capped = Composition({r: coef for r in ("unloaded", "loaded")}, True, {}, None, 1.0)
    node_ms = capped.apply(iso, classes, compute, view, np.zeros(2), param, act)
    assert node_ms == pytest.approx(np.array([[1.05, 2.1], [1.1, 2.1]]))  # 0.1 ms/MiB x min(MiB, 1)
    again = Composition.from_dict(capped.to_dict())
    assert again.activation_cap_mib == 1.0 and again.weight_cache_mib is None
    old = capped.to_dict()
    del old["activation_cap_mib"]  # written before the cap: no cap, the same predictions as then
    assert Composition.from_dict(old).activation_cap_mib is None
    assert "outputs up to 1 MiB" in capped.describe()
    for bad in (0.0, -2.0, float("nan"), "1", False):
        with pytest.raises(SpecError, match="activation_cap_mib"):
            Composition(activation_cap_mib=bad)


def test_spilled_outputs_pay_between_the_core_cache_and_the_last_level_cache():
    """An output's MiB past the per-core cache, up to the last-level cache, pay the spilled-output cost: alone the
    layer reran with them in the LLC; past the LLC it streamed them alone as well. Files written before the term load
    with it at 0 and predict as they did."""
    assert spilled_outputs(np.array([0.25, 1.0, 8.0, 32.0, 200.0]), 0.5, 32.0) == pytest.approx([0.0, 0.5, 7.5, 31.5, 31.5])
    assert not spilled_outputs(np.array([8.0]), None, 32.0).any() and not spilled_outputs(np.array([8.0]), 0.5, None).any()
    iso = np.array([[1.0, 2.0], [1.0, 2.0]])
    classes, compute, view = np.array([0, 3]), np.array([True, True]), np.zeros(2, dtype=bool)
    param, act = np.zeros(2), np.array([[0.25, 3.0], [16.0, 96.0]])
    s, a = FEATURES.index("spilled_mib"), FEATURES.index("activation_mib")
    f = Composition.features(iso, classes, compute, view, param, act, None, 0.5, spill_cap_mib=32.0)
    assert f[:, s] == pytest.approx([2.5, 15.5 + 31.5]) and f[:, a] == pytest.approx([0.75, 1.0])
    assert not Composition.features(iso, classes, compute, view, param, act, None, 0.5).any(axis=0)[s]  # no LLC: no term
    coef = [1.0] * len(CLASSES) + [0.0, 0.0, 0.0, 0.0, 0.01]
    comp = Composition({r: coef for r in ("unloaded", "loaded")}, True, {}, None, 0.5, spill_cap_mib=32.0)
    assert comp.apply(iso, classes, compute, view, np.zeros(2), param, act) == pytest.approx(
        np.array([[1.0, 2.025], [1.155, 2.315]]))
    assert "spilled from 0.5 to 32 MiB" in comp.describe() and "ms/MiB spilled" in comp.describe()
    no_l2 = Composition({r: coef for r in ("unloaded", "loaded")}, True, {}, None, None, spill_cap_mib=32.0)  # e.g. a GPU
    assert "spilled" not in no_l2.describe() and no_l2.apply(iso, classes, compute, view, np.zeros(2), param, act) == \
        pytest.approx(iso)
    assert Composition.from_dict(comp.to_dict()).spill_cap_mib == 32.0
    old = comp.to_dict()
    old["features"] = old["features"][:-1]  # written before the term: ten coefficients, no spill cap
    old["coef"] = {r: c[:-1] for r, c in old["coef"].items()}
    del old["spill_cap_mib"]
    legacy = Composition.from_dict(old)
    assert legacy.spill_cap_mib is None and legacy.coef["loaded"][-1] == 0.0
    assert legacy.apply(iso, classes, compute, view, np.zeros(2), param, act) == pytest.approx(iso)
    with pytest.raises(SpecError, match="spill_cap_mib"):
        Composition(spill_cap_mib=-1.0)


def test_spilled_output_term_in_predictions_matches_its_fitting_feature(predictor):
    """predict_graph charges a traced model's spilled outputs as composition_features counts them for fitting."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1)).eval()
    g = trace(net, torch.randn(1, 3, 64, 64))
    meta = {**predictor.metadata, "cache_mib": 4.0, "activation_cap_mib": 0.25}
    coef = [1.0] * len(CLASSES) + [0.0, 0.0, 0.0, 0.0, 0.2]
    p = Predictor(**{**predictor.__dict__, "metadata": meta,
                     "composition": Composition({r: coef for r in ("unloaded", "loaded")}, True, {}, 4.0, 0.25, spill_cap_mib=4.0)})
    lat = p.predict_graph(g, batch_size=8, utilization=0.0, threads=1)
    spilled = composition_features(p, g, np.asarray(lat.isolated_ms).ravel(), 8)[FEATURES.index("spilled_mib")]
    conv_out = 8 * 32 * 64 * 64 * 4 / 2**20  # 4 MiB per conv output at batch 8, the ReLU's the same, the 1x1's 1 MiB
    assert spilled == pytest.approx(2 * (4.0 - 0.25) + (1.0 - 0.25), rel=1e-6) and conv_out == 4.0
    assert float(lat.total_ms) - float(np.sum(lat.isolated_ms)) == pytest.approx(0.2 * spilled, rel=1e-6)


def test_in_place_nodes_pay_no_activation_cost(predictor):
    """nn.ReLU(inplace=True) allocates no output: the per-MiB activation term skips it (compositions written
    before the rule keep charging it, so old predictors predict as they did)."""
    def net(inplace):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(inplace=inplace)).eval()

    x = torch.randn(1, 3, 32, 32)
    g_in, g_out = trace(net(True), x), trace(net(False), x)
    relu_mib = 8 * 32 * 32 * 4 / 2**20
    coef = [1.0] * len(CLASSES) + [0.0, 0.0, 0.0, 0.5]
    new = Composition({r: coef for r in ("unloaded", "loaded")}, True)
    assert new.inplace_free and "in-place outputs free" in new.describe()
    legacy = Composition.from_dict({k: v for k, v in new.to_dict().items() if k != "inplace_free"})
    assert not legacy.inplace_free and Composition.from_dict(new.to_dict()).inplace_free

    def total(comp, g):
        p = Predictor(**{**predictor.__dict__, "composition": comp})
        return float(p.predict_graph(g, batch_size=2, utilization=0.0, threads=1).total_ms)

    gap = total(new, g_out) - total(new, g_in)  # the same isolated predictions, minus the ReLU's output cost
    iso = predictor.predict_graph(g_out, batch_size=2, utilization=0.0, threads=1).isolated_ms.sum() - \
        predictor.predict_graph(g_in, batch_size=2, utilization=0.0, threads=1).isolated_ms.sum()
    assert gap - iso == pytest.approx(0.5 * 2 * relu_mib, rel=1e-6)
    assert total(legacy, g_in) - total(new, g_in) == pytest.approx(0.5 * 2 * relu_mib, rel=1e-6)
    # the fitting features leave in-place outputs out as well
    a = FEATURES.index("activation_mib")
    f_in = composition_features(predictor, g_in, np.ones(len(g_in.nodes)), 2)[a]
    f_out = composition_features(predictor, g_out, np.ones(len(g_out.nodes)), 2)[a]
    assert f_out - f_in == pytest.approx(2 * relu_mib, rel=1e-6)
    with pytest.raises(SpecError, match="inplace_free"):
        Composition.from_dict({**new.to_dict(), "inplace_free": "yes"})


def test_predictor_activation_cap_comes_from_the_cpus_l2(predictor):
    p = Predictor(**{**predictor.__dict__, "metadata": {"device": {"kind": "cpu", "cpu_l2_cache_bytes": 1 << 20}}})
    assert p.activation_cap_mib == 1.0
    gpu = Predictor(**{**predictor.__dict__, "metadata": {"device": {"kind": "cuda", "cpu_l2_cache_bytes": 1 << 20}}})
    assert gpu.activation_cap_mib is None
    assert Predictor(**{**predictor.__dict__, "metadata": {**p.metadata, "activation_cap_mib": 2}}).activation_cap_mib == 2.0
    assert Predictor(**{**predictor.__dict__, "metadata": {**p.metadata, "activation_cap_mib": 0}}).activation_cap_mib is None
    bare = Predictor(**{**predictor.__dict__, "metadata": {}, "composition": Composition(activation_cap_mib=0.5)})
    assert bare.activation_cap_mib == 0.5


def test_predictor_cache_mib_comes_from_the_device_metadata(predictor):
    p = Predictor(**{**predictor.__dict__, "metadata": {"device": {"kind": "cpu", "cpu_cache_bytes": 32 << 20}}})
    assert p.cache_mib == 32.0
    gpu = Predictor(**{**predictor.__dict__, "metadata": {"device": {"kind": "cuda", "gpu_l2_cache_bytes": 50 << 20,
                                                                                "cpu_cache_bytes": 1 << 20}}})
    assert gpu.cache_mib == 50.0
    assert Predictor(**{**predictor.__dict__, "metadata": {**p.metadata, "cache_mib": 8}}).cache_mib == 8.0
    assert Predictor(**{**predictor.__dict__, "metadata": {**p.metadata, "cache_mib": 0}}).cache_mib is None
    # nothing recorded: the cap the current composition was fitted with
    bare = Predictor(**{**predictor.__dict__, "metadata": {}, "composition": Composition(weight_cache_mib=16.0)})
    assert bare.cache_mib == 16.0


def test_composition_shrink_keeps_a_barely_present_class_near_one():
    """Calibration networks with almost no gemm work: plain NNLS decides the gemm scale by noise (here it
    drops gemm to 0, which a transformer would then pay); the default shrink keeps it near 1, pulls the
    well-determined conv scale towards 1 without crossing it, and fits the rows nearly as well."""
    rng = np.random.default_rng(3)
    n = 16
    F = _with_later_classes(np.column_stack([rng.uniform(5, 50, n), rng.uniform(0.001, 0.02, n), rng.uniform(1, 10, n), np.zeros(n),
                                      rng.integers(10, 100, n), np.zeros(n), rng.uniform(1, 20, n), rng.uniform(1, 20, n)]))
    conv, gemm, memory = CLASSES.index("conv"), CLASSES.index("gemm"), CLASSES.index("memory")
    y = (F[:, conv] * 1.2 + F[:, memory] * 0.9 + F[:, FEATURES.index("compute_nodes")] * 0.01) * rng.uniform(0.93, 1.07, n)
    u = np.zeros(n)
    plain = Composition.fit(F, y, u, shrink=0.0)
    shrunk = Composition.fit(F, y, u)
    assert plain.coef["unloaded"][gemm] < 0.5  # NNLS: gemm decided by noise
    assert shrunk.coef["unloaded"][gemm] == pytest.approx(1.0, abs=0.1) and shrunk.info["shrink"] == 3.0
    assert 1.0 < shrunk.coef["unloaded"][conv] < plain.coef["unloaded"][conv]  # pulled towards 1, not past it
    assert shrunk.info["fit_mape"] < plain.info["fit_mape"] + 3.0
    with pytest.raises(SpecError, match="shrink"):
        Composition.fit(F, y, u, shrink=-1.0)


def test_composition_single_thread_regime():
    """Unloaded cases on 1 thread of a multi-threaded device are their own regime; on a 1-thread device,
    or with the default thread count (None / 0), they are plain unloaded."""
    from latpred.graph.compose import regime

    u = np.array([0.0, 0.0, 0.0, 0.5, 0.0])
    t = [None, 1, 2, 1, 0]
    assert regime(u, t, 2).tolist() == [0, 2, 0, 1, 0]
    assert regime(u, t, 1).tolist() == [0, 0, 0, 1, 0]
    assert regime(u).tolist() == [0, 0, 0, 1, 0]
    rng = np.random.default_rng(1)
    F = _with_later_classes(np.column_stack([rng.uniform(1, 50, 90), rng.uniform(0, 20, 90), rng.uniform(0, 10, 90), np.zeros(90),
                                      rng.integers(10, 300, 90), np.zeros(90), rng.uniform(1, 300, 90), rng.uniform(1, 500, 90)]))
    reg = np.arange(90) % 3  # unloaded, loaded, single-thread rows
    u = np.where(reg == 1, 0.5, 0.0)
    threads = [1 if r == 2 else (1 if r == 1 else None) for r in reg]
    true = _with_later_classes(np.array([[1.2, 1.1, 1.6, 1.0, 0.02, 0.0, 0.1, 0.02], [1.5, 1.3, 2.0, 1.0, 0.04, 0.0, 0.15, 0.03],
                                  [1.9, 1.0, 1.3, 1.0, 0.01, 0.0, 0.2, 0.05]]), fill=1.0)
    y = (F * true[reg]).sum(axis=1)
    comp = Composition.fit(F, y, u, threads=threads, default_threads=2, shrink=0.0)
    assert comp.info["rows_per_regime"] == {"unloaded": 30, "loaded": 30, "single_thread": 30}
    present = [CLASSES.index(k) for k in ("conv", "gemm", "memory")]
    assert np.array(comp.coef["single_thread"])[present] == pytest.approx(true[2][present], rel=1e-6)
    assert (F * comp.matrix(u, threads, 2)).sum(axis=1) == pytest.approx(y, rel=1e-6)
    assert not np.allclose((F * comp.matrix(u)).sum(axis=1), y)  # without threads, single-thread rows read as unloaded


def test_calibration_on_the_fake_device_recovers_its_composition(predictor, tmp_path):
    """The fake device runs a model at 1.25 × the sum of its nodes plus 20 µs per compute node."""
    dev = FakeDevice(noise=0.0, model_scale=1.25, model_overhead_us=20.0)
    exact = Predictor.load(predictor.save(tmp_path / "p"))
    comp, cases = calibrate(exact, dev, n_networks=6, conditions=((1, 0.0, 1), (4, 0.0, 1), (2, 0.5, 1), (8, 0.5, 1)))
    assert len(cases) >= 16
    # the predictor is not exact (ridge/knn on noisy data) so only the structure is checked: the fit beats the plain sum
    iso_sum = np.array([sum(c.features[:len(CLASSES)]) for c in cases])
    measured = np.array([c.measured_ms for c in cases])
    plain_mape = np.mean(np.abs(iso_sum / measured - 1))
    assert comp.info["fit_mape"] / 100 < plain_mape
    # refitting from the stored cases (no measurement) with the same predictor gives the same coefficients
    from latpred.graph.calibrate import CalibrationCase, refit

    again_cases = [CalibrationCase(**c.to_dict()) for c in cases]
    refitted = refit(exact, again_cases)
    assert all(np.allclose(refitted.coef[r], comp.coef[r]) for r in comp.coef)
    exact.composition = comp
    exact.save(tmp_path / "p")
    again = Predictor.load(tmp_path / "p")
    assert again.composition.coef == comp.coef and again.composition.calibrated
    g = trace(*_net(3))
    assert float(again.predict_graph(g).total_ms) == pytest.approx(float(exact.predict_graph(g).total_ms), rel=1e-9)


def _net(seed):
    m, shape = random_network(seed)
    return m, torch.randn(1, *shape)


def test_random_networks_are_deterministic_and_fully_covered():
    for seed in range(8):
        (m1, x1), (m2, _) = _net(seed), _net(seed)
        g1, g2 = trace(m1, x1), trace(m2, x1)
        assert [n.spec for n in g1.nodes] == [n.spec for n in g2.nodes]
        # everything is covered except the manual attention's scale (a multiplication by a Python float),
        # which the generic fallback predicts
        assert all("scalar operand" in f[2] for f in g1.coverage().fallback), g1.coverage().fallback
        assert g1.coverage().node_share > 0.9


def test_random_vits_keep_real_token_counts_and_old_cases_keep_their_generator():
    from latpred.graph.calibrate import RANDOM_NETWORK_VERSION, CalibrationCase

    tokens = {1: [], 2: []}
    for version in (1, 2):
        for seed in range(40):
            m, _ = random_network(seed, version)
            if hasattr(m, "pos"):
                tokens[version].append(m.pos.shape[1])
    assert max(tokens[1]) > 1000  # version 1 drew patches of 4: thousands of tokens
    assert tokens[2] and max(tokens[2]) <= 785 and min(tokens[2]) >= 17
    old = CalibrationCase(**{"network": 3, "batch_size": 1, "utilization": 0.0, "threads": None, "measured_ms": 1.0,
                             "features": [], "gflops": 0.1, "model": ""})
    assert old.generator == 1 and old.group == "random3"
    new = CalibrationCase(3, 1, 0.0, None, 1.0, [], 0.1, generator=RANDOM_NETWORK_VERSION)
    assert new.group == f"random3v{RANDOM_NETWORK_VERSION}" and CalibrationCase(**new.to_dict()) == new
    with pytest.raises(SpecError, match="generator version"):
        random_network(0, RANDOM_NETWORK_VERSION + 1)


def test_version_3_networks_are_version_2_with_in_place_activations():
    from latpred.graph.calibrate import _INPLACE_ACTS

    both = 0
    for seed in range(12):
        (m2, shape), (m3, _) = random_network(seed, 2), random_network(seed, 3)
        x = torch.randn(1, *shape)
        g2, g3 = trace(m2, x), trace(m3, x)
        # the same nodes; only activations' in-place flag may differ
        strip = [n.spec.with_params(inplace=False) if n.spec is not None and "inplace" in n.spec.params else n.spec for n in g3.nodes]
        assert [n.spec for n in g2.nodes] == strip
        flags = [m.inplace for m in m3.modules() if isinstance(m, _INPLACE_ACTS)]
        assert not any(m.inplace for m in m2.modules() if isinstance(m, _INPLACE_ACTS))
        both += bool(flags) and any(flags) and not all(flags)
        traced = {n.spec.params["inplace"] for n in g3.nodes if n.spec is not None and n.spec.op == "activation"
                  and n.spec.params["fn"] != "gelu"}
        assert traced == set(flags) or not flags
        m3.load_state_dict(m2.state_dict())
        with torch.no_grad():  # in place is safe where the generator puts it: same outputs
            torch.testing.assert_close(m3(x), m2(x))
    assert both >= 3  # networks mix in-place and out-of-place activations


def test_version_4_networks_put_max_pools_deep_in_the_network():
    """Version 4 adds inception blocks (stride-1 max-pool branches, stride-2 max-pool transitions) for the maxpool
    composition class; earlier versions never draw them, so stored cases re-trace to the networks they measured."""
    from latpred.graph.calibrate import _Inception

    deep, nets = 0, 0
    for seed in range(16):
        m4, shape = random_network(seed, 4)
        assert not any(isinstance(b, _Inception) for b in random_network(seed, 3)[0].modules())
        blocks = [b for b in m4.modules() if isinstance(b, _Inception)]
        if not blocks:
            continue
        nets += 1
        g = trace(m4, torch.randn(1, *shape))
        pools = [n for n in g.nodes if n.spec is not None and n.spec.op == "maxpool2d"]
        assert sum(n.spec.params["stride"] == 1 for n in pools) >= len(blocks)
        first_conv = min(i for i, n in enumerate(g.nodes) if n.spec is not None and n.spec.op == "conv2d")
        deep += any(g.nodes.index(n) > first_conv + 3 for n in pools)  # past the stem's conv, norm and activation
        assert g.coverage().node_share > 0.9
    assert nets >= 4 and deep == nets


def test_max_pools_of_relu_outputs_are_the_maxpool_class():
    """A max-pool reading ReLU/ReLU6 outputs past the stem, directly or through concatenations, views and max-pools, is
    the maxpool class; one reading SiLU outputs, a sum, the model input or the stem's ReLU composes as memory."""
    from latpred.graph.compose import node_classes, zero_clamped_inputs

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.p = nn.ModuleList([nn.MaxPool2d(3, 1, 1) for _ in range(7)])

        def forward(self, x):
            h = torch.relu(self.stem(x))
            r, s = torch.relu(self.a(h)), F.relu6(self.b(h))
            c = torch.cat([r, s], 1)  # all clamped
            m = torch.cat([r, F.silu(self.b(h))], 1)  # one input not clamped
            return (self.p[0](c), self.p[1](self.p[2](r)), self.p[3](m), self.p[4](r + s), self.p[5](x),
                    self.p[6](h), self.p[0](c.flatten(2).view(c.shape)))

    g = trace(Net(), torch.randn(1, 3, 8, 8))
    classes = node_classes(g)
    pools = [c for n, c in zip(g.nodes, classes) if n.op == "maxpool2d"]  # in graph order: p[2] runs before p[1]
    assert pools == ["maxpool", "maxpool", "maxpool", "memory", "memory", "memory", "memory",  # p[6]: the stem's ReLU
                     "maxpool"]  # last: through flatten and view
    assert len(zero_clamped_inputs(g)) == len(g.nodes) and classes[1] == "conv"


def test_calibration_conditions_cover_each_batch_size_in_every_regime():
    from latpred.graph.calibrate import DEFAULT_CONDITIONS, conditions_for

    assert conditions_for((1, 8)) == ((1, 0.0, None), (8, 0.0, None), (1, 0.5, 1), (8, 0.5, 1), (1, 0.0, 1), (8, 0.0, 1))
    assert {b for b, _, _ in DEFAULT_CONDITIONS} == {1, 8, 32} and len(DEFAULT_CONDITIONS) == 9
    assert conditions_for([8, 8]) == conditions_for([8])
    for bad in ([], [0], [2.5], [True]):
        with pytest.raises(SpecError, match="batch sizes"):
            conditions_for(bad)


def test_save_composition_rewrites_only_the_index(predictor, tmp_path):
    """A recalibration rewrites predictor.json alone: every model file stays byte for byte."""
    from latpred.predictor import PredictorFormatError

    d = predictor.save(tmp_path / "p")
    before = {f.name: f.read_bytes() for f in d.iterdir() if f.name != "predictor.json"}
    p = Predictor.load(d)
    k = len(CLASSES)
    p.composition = Composition({"unloaded": [1.5] * k + [0.01] * 4, "loaded": [2.0] * k + [0.02] * 4}, calibrated=True)
    p.save_composition(d)
    assert {f.name: f.read_bytes() for f in d.iterdir() if f.name != "predictor.json"} == before
    assert Predictor.load(d).composition.coef == p.composition.coef
    with pytest.raises(PredictorFormatError, match="not there"):
        p.save_composition(tmp_path / "nothing")
