"""Training ranges of the op models and the guard for specs outside them (latpred.domain)."""

import json
import math

import numpy as np
import pytest
import torch

from latpred.domain import TRUST_FACTOR, Domain, guard_log, guard_log_many
from latpred.errors import SpecError
from latpred.features import GENERIC_FEATURES
from latpred.graph.trace import trace
from latpred.ops import get_op
from latpred.predictor import Predictor, PredictorFormatError
from latpred.selection import select

from .helpers_data import synthetic_data
from .helpers_graph import Tiny

DATA = synthetic_data()


@pytest.fixture(scope="module")
def predictor():
    pred, _ = select(DATA, families=["ridge", "knn"], cv=2)
    return pred


def test_domain_box_mask_and_json_round_trip():
    X = np.array([[1.0, 5.0, np.nan], [3.0, 2.0, np.nan]])
    d = Domain.of(X)
    assert d.lo.tolist()[:2] == [1.0, 2.0] and d.hi.tolist()[:2] == [3.0, 5.0]
    assert math.isinf(d.lo[2]) and math.isinf(d.hi[2])  # never seen: unbounded
    rows = np.array([[2.0, 3.0, 7.0], [0.5, 3.0, 0.0], [2.0, 5.5, 0.0], [np.nan, 3.0, 0.0]])
    assert d.outside(rows).tolist() == [False, True, True, False]
    back = Domain.from_dict(json.loads(json.dumps(d.to_dict())))
    assert np.array_equal(back.lo, d.lo) and np.array_equal(back.hi, d.hi)
    with pytest.raises(SpecError, match="lo <= hi"):
        Domain(np.array([2.0]), np.array([1.0]))
    with pytest.raises(SpecError, match="do not match a domain of 3 columns"):
        d.outside(rows[:, :2])
    with pytest.raises(SpecError, match="not a domain"):
        Domain.from_dict({"lo": [0.0]})


def test_guard_clamps_only_rows_outside_to_the_trust_region():
    n_extra, width = 0, len(GENERIC_FEATURES)
    X = np.zeros((3, 2 + width))
    X[1, 0] = 10.0  # outside
    X[2, 0] = 10.0  # outside, but already near the generic prediction
    dom = Domain(np.zeros(2 + width), np.ones(2 + width))
    y = np.array([5.0, 5.0, 0.2])
    out = guard_log(y, X, dom, lambda G: np.zeros(len(G)), n_extra)
    assert out[0] == 5.0  # in range: untouched, however far from the generic model
    assert out[1] == pytest.approx(math.log(TRUST_FACTOR)) and out[2] == 0.2
    assert y[1] == 5.0  # the input is not modified
    assert guard_log(y, X, None, lambda G: np.zeros(len(G)), n_extra) is y


def test_trained_predictor_guards_specs_outside_its_range_and_keeps_the_rest(predictor):
    assert set(predictor.domains) == set(DATA.ops)
    unguarded = Predictor(predictor.families, predictor.models, predictor.medn, predictor.medn_tasks,
                          predictor.extra_names, predictor.metadata, predictor.generic, predictor.composition,
                          predictor.schemas, rooflines=predictor.rooflines)
    inside = DATA.specs["conv2d"][:20]
    assert np.array_equal(predictor.predict(inside), unguarded.predict(inside))
    far = get_op("conv2d").spec(in_channels=4096, out_channels=4096, kernel_size=3, h=224, w=224, batch_size=8,
                                threads=1)
    X = predictor._features([far])
    assert predictor.out_of_domain("conv2d", X).tolist() == [True]
    generic = math.exp(predictor.predict_generic(X[:, -len(GENERIC_FEATURES):])[0])
    got = predictor.predict_one(far)
    assert generic / TRUST_FACTOR * (1 - 1e-9) <= got <= generic * TRUST_FACTOR * (1 + 1e-9)


def test_domains_survive_save_and_load_and_damaged_ones_are_refused(predictor, tmp_path):
    d = predictor.save(tmp_path / "p")
    loaded = Predictor.load(d)
    assert set(loaded.domains) == set(predictor.domains)
    far = get_op("linear").spec(in_features=65536, out_features=16, batch_size=8, threads=1)
    assert loaded.predict_one(far) == predictor.predict_one(far)
    doc = json.loads((d / "predictor.json").read_text())
    entry = doc["ops"]["linear"]["domain"]
    (d / "predictor.json").write_text(json.dumps({**doc, "ops": {**doc["ops"], "linear": {
        **doc["ops"]["linear"], "domain": {"lo": entry["lo"][:-1], "hi": entry["hi"][:-1]}}}}))
    with pytest.raises(PredictorFormatError, match="training range of 'linear' has"):
        Predictor.load(d)
    (d / "predictor.json").write_text(json.dumps({**doc, "ops": {**doc["ops"], "linear": {
        **doc["ops"]["linear"], "domain": {"lo": entry["hi"], "hi": entry["lo"]}}}}))
    with pytest.raises(PredictorFormatError, match="training range of 'linear' is damaged"):
        Predictor.load(d)


def test_save_composition_adds_domains_to_a_predictor_saved_without(predictor, tmp_path):
    bare = Predictor(predictor.families, predictor.models, predictor.medn, predictor.medn_tasks,
                     predictor.extra_names, predictor.metadata, predictor.generic, predictor.composition,
                     predictor.schemas)
    d = bare.save(tmp_path / "old")
    assert Predictor.load(d).domains == {}
    before = {f.name: f.read_bytes() for f in d.glob("*.skops")}
    again = Predictor.load(d)
    again.fit_domains({op: DATA.X(op) for op in DATA.ops})
    again.save_composition(d)
    assert {f.name: f.read_bytes() for f in d.glob("*.skops")} == before  # model files untouched
    assert set(Predictor.load(d).domains) == set(DATA.ops)


def test_graph_prediction_names_the_nodes_outside_the_profiled_range(predictor):
    g = trace(Tiny().eval(), torch.randn(1, 3, 32, 32))
    lat = predictor.predict_graph(g, batch_size=np.array([1, 4]), utilization=0.0, threads=1)
    # conv1 reads 3 input channels on 32 x 32 maps; the synthetic space profiled 8-128 channels on 7-28
    assert "conv1" in lat.out_of_domain_nodes
    assert "out_of_domain_nodes" in lat.to_dict()
    assert all(n in lat.node_names for n in lat.out_of_domain_nodes)


def test_guard_of_several_groups_calls_the_generic_model_once():
    width = len(GENERIC_FEATURES)
    calls = []

    def generic(G):
        calls.append(len(G))
        return G[:, 0] * 0.0 + 1.0

    Xa, Xb, Xc = np.zeros((3, 2 + width)), np.zeros((2, 3 + width)), np.zeros((2, 1 + width))
    Xa[0, 0] = Xb[1, 1] = 9.0  # one row outside in each of the first two groups, none in the third
    doms = [Domain(np.zeros(x.shape[1]), np.ones(x.shape[1])) for x in (Xa, Xb, Xc)]
    ys = [np.full(3, 5.0), np.full(2, -5.0), np.full(2, 7.0)]
    out = guard_log_many(ys, [Xa, Xb, Xc], doms, generic, 0)
    assert calls == [2]  # both groups' outside rows in one call
    for y, X, d, got in zip(ys, [Xa, Xb, Xc], doms, out):
        assert np.array_equal(got, guard_log(y, X, d, generic, 0))  # the same numbers as one group at a time
    assert out[2] is ys[2] and out[0][0] == pytest.approx(1 + math.log(TRUST_FACTOR)) and out[0][1] == 5.0
    assert all(a is b for a, b in zip(guard_log_many(ys, [Xa, Xb, Xc], [None, None, None], generic, 0), ys))
    masks: list = []
    guard_log_many(ys, [Xa, Xb, Xc], [doms[0], None, doms[2]], None, 0, outside=masks)  # masks without a generic model
    assert [m.tolist() for m in masks] == [[True, False, False], [False, False], [False, False]]


def test_predictor_guards_every_op_group_with_one_generic_call(predictor, monkeypatch):
    """Mixed op types (MEDN or not) in one predict: one call of the generic model for all their outside rows."""
    ops = [op for op in DATA.ops if predictor.covers(op)][:3]
    X = {op: DATA.X(op)[:4] * 50.0 for op in ops}  # far outside every op's range
    calls = []
    real = predictor.predict_generic
    monkeypatch.setattr(predictor, "predict_generic", lambda G: calls.append(len(G)) or real(G))
    masks: list = []
    many = predictor.predict_log_many(list(X.items()), outside=masks)
    assert len(calls) == 1 and all(m.all() for m in masks)
    for op, got in zip(ops, many):
        assert np.array_equal(got, predictor.predict_log(op, X[op]))  # one group at a time: the same numbers


def test_blas_runs_on_one_thread_while_predicting_or_measuring_and_is_restored_after(predictor):
    """numpy's BLAS threads spin after each call and slow the torch threads beside them (latpred.blas): the
    predictor's calls and a CPU device's life run numpy's BLAS on one thread; holds nest and overlap."""
    from threadpoolctl import threadpool_info

    from latpred.blas import hold_single_threaded_blas, single_threaded_blas
    from latpred.profiling.devices import CpuDevice

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    assert before  # numpy's BLAS is visible to threadpoolctl here
    seen = []
    real = predictor.predict_generic
    predictor.predict_generic = lambda G: seen.append(blas_threads()) or real(G)
    op = DATA.ops[0]
    predictor.predict_log(op, DATA.X(op)[:3] * 50.0)  # outside the range: the generic model runs
    assert seen and all(n == 1 for n in seen[0])
    with single_threaded_blas():
        release = hold_single_threaded_blas()
    assert all(n == 1 for n in blas_threads())  # the hold outlives the block
    release()
    release()  # a second release does nothing
    assert blas_threads() == before
    dev = CpuDevice()
    try:
        assert all(n == 1 for n in blas_threads())
    finally:
        dev.close()
    assert blas_threads() == before


def test_a_model_that_reads_faster_above_the_profiled_load_is_held_on_the_line(predictor, monkeypatch):
    op = DATA.ops[0]
    uc = predictor._runtime_column(op, "utilization")
    # an op model whose extrapolation falls: 1 ms at load 0, 1.5 ms at 0.5, 0.1 ms above
    monkeypatch.setattr(predictor, "_raw_log", lambda o, X: np.where(X[:, uc] > 0.5, np.log(0.1), np.log1p(X[:, uc])))
    monkeypatch.setattr(predictor, "generic", None)  # no guard: the op model's numbers as they are
    from latpred.features import feature_names

    X = DATA.X(op)[:2].copy()
    X[:, feature_names(op, predictor.extra_names).index("utilization")] = [0.5, 0.9]
    np.testing.assert_allclose(np.exp(predictor.predict_log(op, X)), [1.5, 1.5 + 0.4 * (1.5 - 1.0) / 0.5], rtol=1e-12)


def test_utilization_above_the_profiled_load_never_reads_below_the_line_through_the_profiled_loads(predictor, monkeypatch):
    """The store profiled loads {0, 0.5}: a row at 0.9 is predicted by its op model but never below the line through
    its predictions at 0 and 0.5 (other columns as they are), nor below the 0.5 prediction."""
    import latpred.predictor as P
    from latpred.features import feature_names

    op = DATA.ops[0]
    u = feature_names(op, predictor.extra_names).index("utilization")  # in the full schema predict_log reads
    X = DATA.X(op)[:6].copy()
    at = {}
    for v in (0.0, 0.5, 0.9):
        Xv = X.copy()
        Xv[:, u] = v
        at[v] = Xv
    lo, hi = (np.exp(predictor.predict_log(op, at[v])) for v in (0.0, 0.5))
    line = hi + np.maximum(hi - lo, 0.0) / 0.5 * 0.4
    masks: list = []
    got = np.exp(predictor.predict_log_many([(op, at[0.9])], outside=masks)[0])
    with monkeypatch.context() as mp:
        mp.setattr(P, "above_profiled_load", lambda *a: None)  # the op model alone
        own = np.exp(predictor.predict_log(op, at[0.9]))
    np.testing.assert_allclose(got, np.maximum(own, line), rtol=1e-9)
    assert np.all(got >= hi * (1 - 1e-12)) and masks[0].all()  # outside the profiled load, and said so
    mixed = np.vstack([at[0.5][:3], at[0.9][3:]])  # rows within the range are predicted as they are
    np.testing.assert_allclose(np.exp(predictor.predict_log(op, mixed)), np.concatenate([hi[:3], got[3:]]), rtol=1e-9)


def test_loads_are_bounded_per_thread_count():
    """The default space profiles loads on one thread: a loaded row on two threads is outside although every
    column lies inside the box; the bound survives JSON, and bad bounds are refused."""
    from latpred.domain import above_profiled_load

    X = np.array([[1.0, 0.0, 1.0], [2.0, 0.5, 1.0], [3.0, 0.0, 2.0]])  # (feature, utilization, threads)
    d = Domain.of(X, load_columns=(1, 2))
    assert d.loads == ((1.0, 0.5), (2.0, 0.0))
    rows = np.array([[2.0, 0.5, 1.0], [2.0, 0.5, 2.0], [2.0, 0.0, 2.0], [2.0, 0.9, 1.0]])
    assert d.outside(rows).tolist() == [False, True, False, True]
    assert Domain.of(X).outside(rows).tolist() == [False, False, False, True]  # the box alone
    again = Domain.from_dict(json.loads(json.dumps(d.to_dict())))
    assert again.loads == d.loads and again.load_columns == (1, 2)
    assert again.outside(rows).tolist() == [False, True, False, True]
    got = above_profiled_load(rows, d, 1)
    assert got is not None
    extra, plan = got
    # only the one-thread row at 0.9 has a line to follow (one thread was profiled at 0 and 0.5); the loaded
    # two-thread row is outside and guarded, not extrapolated
    assert plan.above.tolist() == [False, False, False, True] and plan.hi.tolist() == [0.5]
    assert extra.shape == (4 + 2, 3) and extra[4].tolist() == [2.0, 0.5, 1.0] and extra[5].tolist() == [2.0, 0.0, 1.0]
    with pytest.raises(SpecError, match="per-thread loads"):
        Domain(d.lo, d.hi, ((1.0, 0.5),), None)
    with pytest.raises(SpecError, match="load columns"):
        Domain(d.lo, d.hi, ((1.0, 0.5),), (1, 1))
    with pytest.raises(SpecError, match="finite"):
        Domain(d.lo, d.hi, ((1.0, float("nan")),), (1, 2))


def test_predictor_records_the_load_profiled_per_thread_count(predictor):
    """The synthetic store profiled loads {0, 0.5} on one thread."""
    dom = predictor.domains[DATA.ops[0]]
    assert dom.loads == ((1.0, 0.5),)
    names = predictor.feature_names(DATA.ops[0])
    assert dom.load_columns == (names.index("utilization"), names.index("threads"))
