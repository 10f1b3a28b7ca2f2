"""The empirical roofline: an op type is never predicted faster than its training samples ever ran (latpred.roofline)."""

import json
import math

import numpy as np
import pytest

from latpred.errors import SpecError
from latpred.features import GENERIC_FEATURES
from latpred.predictor import Predictor, PredictorFormatError
from latpred.roofline import Roofline, generic_tail
from latpred.selection import select

from .helpers_data import synthetic_data

DATA = synthetic_data()
F, B, D, T = (GENERIC_FEATURES.index(c) for c in ("log_flops", "log_bytes", "dtype_bytes", "threads"))


def _tail(flops, nbytes, threads, dtype=4.0):
    t = np.zeros((len(flops), len(GENERIC_FEATURES)))
    t[:, F], t[:, B] = np.log1p(flops), np.log1p(nbytes)
    t[:, T], t[:, D] = threads, dtype
    return t


@pytest.fixture(scope="module")
def predictor():
    pred, _ = select(DATA, families=["ridge", "knn"], cv=2)
    return pred


def test_rates_are_the_best_per_thread_count_and_the_floor_follows_them():
    # 1 thread: 1e6 FLOPs in 1 ms and 4e6 in 2 ms (2e6/ms is the best); bytes 1e3/ms and 4e3/ms
    roof = Roofline.of(_tail([1e6, 4e6, 8e6], [1e3, 8e3, 1e3], [1, 1, 2]), np.array([1.0, 2.0, 2.0]))
    assert roof.keys == ((1.0, 4.0), (2.0, 4.0))
    assert roof.flops_per_ms == pytest.approx((2e6, 4e6)) and roof.bytes_per_ms == pytest.approx((4e3, 500.0))
    floor = np.exp(roof.floor_log(_tail([6e6, 1e3, 6e6, 6e6, 0.0], [0.0, 4e4, 0.0, 0.0, 0.0], [1, 1, 2, 4, 1])))
    # compute-bound 3 ms; byte-bound 10 ms; 2 threads 1.5 ms; 4 threads never profiled; no work: no floor
    assert floor[:3] == pytest.approx([3.0, 10.0, 1.5]) and floor[3] == 0.0 and floor[4] == 0.0
    # another element size is not bounded by float32's rates
    assert np.isneginf(roof.floor_log(_tail([6e6], [0.0], [1], dtype=2.0)))[0]
    back = Roofline.from_dict(json.loads(json.dumps(roof.to_dict())))
    assert back == roof
    bare = Roofline.of(_tail([1e6], [1e3], [np.nan]), np.array([1.0]))  # no row with a thread count: no key, no floor
    assert bare.keys == () and np.isneginf(bare.floor_log(_tail([6e6], [0.0], [1]))).all()


def test_bad_roofline_input_is_refused_with_the_reason():
    with pytest.raises(SpecError, match="matching non-empty rows"):
        Roofline.of(_tail([1.0], [1.0], [1]), np.array([1.0, 2.0]))
    with pytest.raises(SpecError, match="positive, finite latencies"):
        Roofline.of(_tail([1.0], [1.0], [1]), np.array([0.0]))
    with pytest.raises(SpecError, match="one rate pair per key"):
        Roofline(((1.0, 4.0),), (1.0,), ())
    with pytest.raises(SpecError, match="finite and non-negative"):
        Roofline(((1.0, 4.0),), (-1.0,), (1.0,))
    with pytest.raises(SpecError, match="not a roofline"):
        Roofline.from_dict({"keys": [[1, 4]]})
    with pytest.raises(SpecError, match="op-agnostic columns"):
        generic_tail(np.zeros((2, 3)), 0)


def test_no_training_sample_lies_below_its_op_floor(predictor):
    assert set(predictor.rooflines) == set(DATA.ops)
    for op in DATA.ops:
        X = predictor._columns(op, DATA.X(op))
        floor = predictor.rooflines[op].floor_log(generic_tail(X, 0))
        assert np.all(floor <= np.log(DATA.latency_ms[op]) + 1e-9)
        assert np.isclose(floor, np.log(DATA.latency_ms[op])).any()  # the best sample sits on it


def test_a_model_predicting_faster_than_the_roofline_is_lifted_inside_its_domain_only(predictor, monkeypatch):
    op = "conv2d"
    X = DATA.X(op)[:6]
    honest = predictor.predict_log(op, X)
    floor = predictor.rooflines[op].floor_log(generic_tail(predictor._columns(op, X), 0))
    monkeypatch.setattr(predictor, "_raw_log", lambda o, Xo: np.full(len(Xo), math.log(1e-9)))
    monkeypatch.setattr(predictor, "generic", None)  # no guard: only the floor acts
    np.testing.assert_allclose(predictor.predict_log(op, X), floor)
    assert np.all(floor <= honest + 1e-9)  # the honest model already read at or above it
    far = X[:1].copy()
    far[0, predictor.feature_names(op).index("in_channels")] = 1e6  # outside the training box: the guard's, not the floor's
    assert predictor.predict_log(op, far)[0] == pytest.approx(math.log(1e-9))


def test_rooflines_survive_save_and_load_and_save_composition_adds_them(predictor, tmp_path):
    bare = Predictor(predictor.families, predictor.models, predictor.medn, predictor.medn_tasks, predictor.extra_names,
                     predictor.metadata, predictor.generic, predictor.composition, predictor.schemas, predictor.domains)
    d = bare.save(tmp_path / "old")
    old = Predictor.load(d)
    assert old.rooflines == {}  # a predictor written before rooflines: no floor, predictions as they were
    before = {f.name: f.read_bytes() for f in d.glob("*.skops")}
    old.fit_rooflines({op: DATA.X(op) for op in DATA.ops}, DATA.latency_ms)
    old.save_composition(d)
    assert {f.name: f.read_bytes() for f in d.glob("*.skops")} == before  # model files untouched
    loaded = Predictor.load(d)
    assert loaded.rooflines == predictor.rooflines
    specs = DATA.specs["linear"][:10]
    np.testing.assert_array_equal(loaded.predict(specs), predictor.predict(specs))
    doc = json.loads((d / "predictor.json").read_text())
    doc["ops"]["linear"]["roofline"] = {"keys": [[1, 4]], "flops_per_ms": [float("nan")], "bytes_per_ms": [1.0]}
    (d / "predictor.json").write_text(json.dumps(doc))
    with pytest.raises(PredictorFormatError, match="roofline of 'linear' is damaged"):
        Predictor.load(d)


def test_rooflines_of_an_older_predictor_come_from_the_store_it_was_trained_on(tmp_path, capsys):
    from latpred.cli import main
    from latpred.profiling.devices import FakeDevice
    from latpred.profiling.runner import profile
    from latpred.profiling.space import ParameterSpace
    from latpred.profiling.store import ProfileStore

    from .helpers_data import SPACE

    db, out = tmp_path / "p.sqlite", tmp_path / "pred"
    with ProfileStore(db) as store:
        profile(ParameterSpace.from_dict(SPACE), FakeDevice(), store, passes=1, progress=False)
    assert main(["train", "--db", str(db), "--out", str(out), "--regressors", "ridge", "--cv", "3"]) == 0
    trained = Predictor.load(out)
    assert set(trained.rooflines) == set(trained.ops)  # `latpred train` records them
    old = Predictor.load(out)
    old.rooflines = {}
    with ProfileStore(db) as store:
        assert old.fit_rooflines_from_store(store) == sum(trained.metadata["n_samples"].values())
    assert old.rooflines == trained.rooflines
    with ProfileStore(tmp_path / "other.sqlite") as store:  # another device's rates must not bound this one
        profile(ParameterSpace.from_dict(SPACE), FakeDevice(name="other-board"), store, passes=1, progress=False)
        with pytest.raises(SpecError, match="no device"):
            old.fit_rooflines_from_store(store)
    capsys.readouterr()
    assert main(["calibrate", "--predictor", str(out), "--rooflines-from", str(tmp_path / "missing.sqlite"),
                 "--from-cases", "x.json"]) == 2
    assert "--rooflines-from" in capsys.readouterr().err and not (tmp_path / "missing.sqlite").exists()


def test_extra_conditions_do_not_shift_the_columns_the_roofline_reads():
    from latpred.selection import TrainingData

    specs = {op: [s.with_conditions(extra={"clock_ghz": 2.0 + (i % 2)}) for i, s in enumerate(DATA.specs[op])]
             for op in DATA.ops}
    data = TrainingData(specs, DATA.latency_ms, ["clock_ghz"], {"device": "fake"})
    pred, _ = select(data, families=["ridge"], cv=2)
    for op in data.ops:
        X = pred._columns(op, data.X(op))
        floor = pred.rooflines[op].floor_log(generic_tail(X, 1))
        assert np.all(floor <= np.log(data.latency_ms[op]) + 1e-9) and np.isclose(floor, np.log(data.latency_ms[op])).any()
        assert np.all(pred.predict(specs[op][:5]) >= np.exp(floor[:5]) * (1 - 1e-9))
