"""Selection (budgets, baselines) and Predictor persistence (round trip, refusal of unsafe files)."""

import hashlib
import json
import pickle

import numpy as np
import pytest

from latpred.errors import SpecError, UnknownOpError
from latpred.ops import get_op
from latpred.predictor import Predictor, PredictorFormatError
from latpred.selection import Candidate, choose, select

from .helpers_data import synthetic_data

TABLE = {"ridge": {"params": {}}, "knn": {"params": {"n_neighbors": 5}}, "gbdt": {"params": {"max_iter": 60}},
         "medn": {"params": {"max_epochs": 80, "patience": 20}}}
DATA = synthetic_data()


@pytest.fixture(scope="module")
def trained():
    return select(DATA, families=["ridge", "knn", "gbdt", "medn"], cv=3, table=TABLE)


def test_selection_report_and_baselines(trained):
    predictor, report = trained
    assert set(report.per_op_choice) == set(DATA.ops)
    for op in DATA.ops:
        cells = [c for c in report.candidates if c.op == op]
        assert len(cells) == 4 and sum(c.selected for c in cells) == 1
        chosen = next(c for c in cells if c.selected)
        assert chosen.metrics["acc10"] >= max(c.metrics["acc10"] for c in cells if c.excluded is None) - 0.01
        assert all(c.size_bytes > 0 and c.predict_us_batch > 0 for c in cells)
    assert {"auto-selection", "ridge-only", "knn-only", "gbdt-only", "medn-only"} <= set(report.overall)
    auto = report.overall["auto-selection"]["acc10"]
    assert auto >= max(v["acc10"] for k, v in report.overall.items() if k != "auto-selection") - 0.01
    assert "auto-selection" in report.table() and json.dumps(report.to_dict())


def test_predict_mixed_ops_matches_truth(trained):
    predictor, _ = trained
    specs = [s for op in DATA.ops for s in DATA.specs[op]]
    truth = np.concatenate([DATA.latency_ms[op] for op in DATA.ops])
    pred = predictor.predict(specs)
    assert pred.shape == truth.shape and np.median(np.abs(pred / truth - 1)) < 0.1
    with pytest.raises(UnknownOpError, match="no model for op type 'softmax'"):
        predictor.predict([get_op("softmax").spec(rows=4, cols=4)])
    ridge = trained[1].family_predictor("ridge", predictor)
    op = DATA.ops[0]
    X = ridge._features(DATA.specs[op][:3])
    with pytest.raises(SpecError, match="do not match the model's"):
        ridge.predict_log(op, X[:, :-1])


def test_budgets_are_honoured():
    _, report = select(DATA, families=["ridge", "gbdt"], cv=3, table=TABLE, max_bytes=100_000)
    assert set(report.per_op_choice.values()) == {"ridge"}
    assert all(c.excluded for c in report.candidates if c.family == "gbdt")
    with pytest.raises(SpecError, match="no candidate meets the budgets"):
        select(DATA, families=["gbdt"], cv=3, table=TABLE, max_bytes=100)
    _, fast = select(DATA, families=["ridge", "knn"], cv=3, table=TABLE, max_predict_us=1e9)
    assert all(c.excluded is None or c.excluded.startswith("unstable") for c in fast.candidates)  # no budget exclusion


def test_choose_prefers_accuracy_then_cost_and_skips_unstable_models():
    def cand(family, acc10, mape, us, size):
        return Candidate("conv2d", family, {"acc10": acc10, "mape": mape}, us, us, size, 0.0)

    # within the tolerance the cheaper wins; a clearly more accurate one wins whatever it costs
    assert choose([cand("a", 0.40, 20, 1.0, 1000), cand("b", 0.405, 21, 50.0, 10**6)]).family == "a"
    assert choose([cand("a", 0.30, 20, 1.0, 1000), cand("b", 0.40, 21, 50.0, 10**6)]).family == "b"
    # the best acc10 with a catastrophic MAPE (rare, huge errors) is excluded, with the reason
    cells = [cand("gp", 0.42, 815.0, 5.0, 10**5), cand("medn", 0.41, 50.8, 1.0, 10**5)]
    assert choose(cells).family == "medn"
    assert cells[0].excluded.startswith("unstable: CV MAPE 815.0%")
    # budgets exclude first
    cells = [cand("a", 0.5, 20, 100.0, 10), cand("b", 0.3, 25, 1.0, 10)]
    assert choose(cells, max_predict_us=10).family == "b" and "max_predict_us" in cells[0].excluded


def test_save_load_roundtrip_is_identical(trained, tmp_path):
    predictor, _ = trained
    specs = [s for op in DATA.ops for s in DATA.specs[op]]
    loaded = Predictor.load(predictor.save(tmp_path / "p"))
    assert loaded.families == predictor.families
    assert np.array_equal(loaded.predict(specs), predictor.predict(specs))


def test_gp_and_two_stage_families_save_and_load(tmp_path):
    # ridge_trees holds our own ResidualRegressor: loading must trust exactly that class, nothing broader
    table = {"gp": {"params": {}}, "ridge_trees": {"params": {"n_estimators": 20}}}
    predictor, report = select(DATA, families=["gp", "ridge_trees"], cv=3, table=table)
    specs = [s for op in DATA.ops for s in DATA.specs[op]]
    for family in ("gp", "ridge_trees"):
        p = report.family_predictor(family, predictor)
        loaded = Predictor.load(p.save(tmp_path / family))
        assert set(loaded.families.values()) == {family}
        assert np.allclose(loaded.predict(specs), p.predict(specs))


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/latpred_pwned_marker",))


def test_malicious_pickle_is_refused_without_executing(trained, tmp_path):
    import os

    import skops.io as sio

    marker = "/tmp/latpred_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    predictor, report = trained
    d = report.family_predictor("gbdt", predictor).save(tmp_path / "p")  # skops files for every op
    doc = json.loads((d / "predictor.json").read_text())
    op = next(op for op, e in doc["ops"].items() if e["family"] != "medn")
    target = d / doc["ops"][op]["file"]
    target.write_bytes(pickle.dumps(_Evil()))  # an attacker who can also rewrite the index's hash
    doc["ops"][op]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (d / "predictor.json").write_text(json.dumps(doc))
    with pytest.raises(PredictorFormatError, match="cannot be read as a skops model|untrusted"):
        Predictor.load(d)
    assert not os.path.exists(marker)

    target.write_bytes(sio.dumps(Gadget()))  # a valid skops file holding a type outside scikit-learn/numpy
    doc["ops"][op]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (d / "predictor.json").write_text(json.dumps(doc))
    with pytest.raises(PredictorFormatError, match="refusing to load untrusted type"):
        Predictor.load(d)


class Gadget:
    def __init__(self):
        self.payload = "anything"


def test_tampered_foreign_and_future_files_fail_clearly(trained, tmp_path):
    predictor, report = trained
    d = report.family_predictor("ridge", predictor).save(tmp_path / "p")
    doc = json.loads((d / "predictor.json").read_text())
    op = next(op for op, e in doc["ops"].items() if e["family"] != "medn")
    f = d / doc["ops"][op]["file"]
    f.write_bytes(f.read_bytes() + b"x")
    with pytest.raises(PredictorFormatError, match="SHA-256 does not match"):
        Predictor.load(d)
    (d / "predictor.json").write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(PredictorFormatError, match="version 99 is not supported"):
        Predictor.load(d)
    (d / "predictor.json").write_text(json.dumps({**doc, "format": "other"}))
    with pytest.raises(PredictorFormatError, match="not a latpred predictor"):
        Predictor.load(d)
    (d / "predictor.json").write_text("{nope")
    with pytest.raises(PredictorFormatError, match="invalid JSON"):
        Predictor.load(d)
    with pytest.raises(PredictorFormatError, match="missing predictor.json"):
        Predictor.load(tmp_path / "nowhere")
    d2 = report.family_predictor("medn", predictor).save(tmp_path / "q")
    m = d2 / "medn.safetensors"
    m.write_bytes(b"\x00" * 16)
    doc2 = json.loads((d2 / "predictor.json").read_text())
    doc2["medn"]["sha256"] = hashlib.sha256(m.read_bytes()).hexdigest()
    (d2 / "predictor.json").write_text(json.dumps(doc2))
    with pytest.raises(PredictorFormatError, match="not a valid MEDN weight file"):
        Predictor.load(d2)


def test_holdout_indices_split_each_op_reproducibly():
    """The benches' held-out split: per op a seeded fraction (at least one row) held out, the rest disjoint and
    complete, in random order so that its prefixes are random subsets; the same seed gives the same split."""
    data = synthetic_data()
    held, rest = data.holdout_indices(0.3, seed=4)
    for op in data.ops:
        n = len(data.specs[op])
        assert len(held[op]) == max(1, round(0.3 * n))
        assert sorted([*held[op], *rest[op]]) == list(range(n))
    assert list(rest[data.ops[0]]) != sorted(rest[data.ops[0]])  # random order, not sorted
    again, _ = data.holdout_indices(0.3, seed=4)
    assert all(list(again[op]) == list(held[op]) for op in data.ops)
    with pytest.raises(SpecError, match="holdout"):
        data.holdout_indices(1.0)

