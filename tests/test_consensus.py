"""Scoring predictions against several validation runs and their per-case consensus (latpred.graph.consensus)."""

import json

import numpy as np
import pytest

from latpred import SpecError
from latpred.cli import main
from latpred.graph.consensus import consensus_of, predict_cases
from latpred.graph.models import load_model
from latpred.graph.validate import graph_of
from latpred.predictor import Predictor
from latpred.selection import select
from tests.helpers_data import synthetic_data


def _report(measured, predicted=None, refs=None):
    """A validation report of cases (model, batch, util, threads) -> measured ms (None: the case failed)."""
    cases = [{"model": k[0], "batch_size": k[1], "utilization": k[2], "threads": k[3], "measured_ms": v,
              "predicted_ms": (predicted or {}).get(k, 1.0)} for k, v in measured.items()]
    return {"settings": {"refs": refs or {}}, "cases": cases}


A, B, C, D = ("m", 1, 0.0, None), ("m", 8, 0.0, None), ("m", 1, 0.5, 1), ("n", 1, 0.0, None)


def test_consensus_is_the_median_run_and_every_yardstick_is_computed_from_the_runs():
    runs = [_report({A: 10.0, B: 80.0, C: 20.0, D: 5.0}),
            _report({A: 12.0, B: 88.0, C: 30.0, D: 5.2}),
            _report({A: 10.5, B: 70.0, C: 22.0, D: 4.0})]
    pred = {A: 10.4, B: 80.0, C: 21.0, D: 5.6}
    rep = consensus_of(runs, ["r1", "r2", "r3"], pred)
    assert rep.keys == [A, B, C, D]  # by model, utilization, batch size
    np.testing.assert_allclose(rep.consensus_ms, [10.5, 80.0, 22.0, 5.0])
    mt = rep.metrics()
    # vs the consensus: 10.4/10.5, 80/80, 5.6/5.0 (+12%), 21/22 -> 3 of 4 within 10%
    assert mt["vs_consensus"]["acc10"] == pytest.approx(0.75)
    # run 2 alone: 10.4/12 (-13%), 80/88 (-9%), 5.6/5.2 (+8%), 21/30 (-30%) -> 2 of 4
    assert mt["vs_each"]["r2"]["acc10"] == pytest.approx(0.5)
    # r1 vs r2: A -17%, B -9%, D -4%, C -33% -> 0.5; r1 vs r3: A, B(+14%), D(+25%), C -> 0.5;
    # r2 vs r3: A(+14%), B(+26%), D(+30%), C(+36%) -> 0
    assert mt["run_vs_run_acc10"] == {"min": 0.0, "median": 0.5, "max": 0.5}
    # r3 against the median (= mean) of r1 and r2: A 11 vs 10.5, B 84 vs 70 (+20%), D 5.1 vs 4 (+27%), C 25 vs 22 (+14%)
    assert mt["ceiling_acc10"]["r3"] == pytest.approx(0.25)
    assert set(mt["vs_consensus_by_regime"]) == {"unloaded"}  # one loaded case only: too few for a report
    case = {(c["model"], c["batch_size"]): c for c in rep.cases() if c["utilization"] == 0}[("n", 1)]
    assert case["consensus_ms"] == 5.0 and case["rel_error"] == pytest.approx(0.12) and case["run_spread"] == pytest.approx(0.3)
    assert "4 cases x 3 runs: vs consensus acc10 75.0%" in rep.summary() and "ceiling" in rep.summary()
    assert json.loads(json.dumps(rep.to_dict()))["runs"] == ["r1", "r2", "r3"]


def test_cases_missing_or_failed_in_a_run_are_left_out_and_counted():
    runs = [_report({A: 10.0, B: 80.0, C: None}), _report({A: 11.0, B: 82.0, C: 20.0, D: 3.0}, predicted={A: 10.0, B: 90.0})]
    rep = consensus_of(runs)  # no predictor: the last report's predictions
    assert rep.keys == [A, B] and rep.labels == ["run1", "run2"] and rep.dropped == {"run2": 2}
    np.testing.assert_allclose(rep.predicted, [10.0, 90.0])
    assert "ceiling_acc10" not in rep.metrics()  # needs three runs


def test_bad_input_gets_errors_that_name_the_problem():
    good = _report({A: 10.0})
    with pytest.raises(SpecError, match="at least two"):
        consensus_of([good])
    with pytest.raises(SpecError, match="r2 is not a validation report"):
        consensus_of([good, {"rows": []}], ["r1", "r2"])
    with pytest.raises(SpecError, match="r2: case 0 .* measured_ms -3"):
        consensus_of([good, _report({A: -3})], ["r1", "r2"])
    with pytest.raises(SpecError, match="no measured case in common"):
        consensus_of([good, _report({B: 10.0})])
    with pytest.raises(SpecError, match="no prediction for 1 case"):
        consensus_of([good, good], predicted={B: 1.0})
    with pytest.raises(SpecError, match="one distinct label"):
        consensus_of([good, good], ["x", "x"])
    with pytest.raises(SpecError, match="appears twice"):
        consensus_of([good, {"settings": {}, "cases": good["cases"] * 2}])
    with pytest.raises(SpecError, match="r2 builds model 'm' from 'pkg:other'"):
        consensus_of([_report({A: 1.0}, refs={"m": "pkg:m"}), _report({A: 1.0}, refs={"m": "pkg:other"})], ["r1", "r2"])
    with pytest.raises(SpecError, match="holds no measured case"):
        consensus_of([good, _report({A: None})])


@pytest.fixture(scope="module")
def predictor_dir(tmp_path_factory):
    pred, _ = select(synthetic_data(), families=["ridge"], cv=2)
    return pred.save(tmp_path_factory.mktemp("pred") / "p")


def test_a_predictor_rescored_against_earlier_runs_through_the_cli(predictor_dir, tmp_path, capsys):
    refs = {"tiny": "tests.helpers_graph:tiny"}
    keys = [("tiny", 1, 0.0, None), ("tiny", 4, 0.0, None), ("tiny", 2, 0.5, 1)]
    pred = Predictor.load(predictor_dir)
    got = predict_cases(pred, keys, refs)
    g = graph_of(load_model("tests.helpers_graph:tiny"))
    for k in keys:
        want = pred.predict_graph(g, batch_size=[k[1]], utilization=[k[2]], threads=[k[3] or pred.default_threads]).total_ms[0]
        assert got[k] == pytest.approx(float(want))
    files = []
    for i, scale in enumerate((1.0, 1.3, 0.95)):
        f = tmp_path / f"run{i}.json"
        f.write_text(json.dumps(_report({k: got[k] * scale for k in keys}, refs=refs)))
        files.append(str(f))
    out = tmp_path / "cons.json"
    assert main(["consensus", "--predictor", str(predictor_dir), *files, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["runs"] == ["run0.json", "run1.json", "run2.json"] and doc["metrics"]["n_cases"] == 3
    assert doc["metrics"]["vs_consensus"]["acc10"] == 1.0  # the consensus is run0, which the predictor matches
    assert doc["metrics"]["vs_each"]["run1.json"]["acc10"] == 0.0
    assert main(["consensus", *files]) == 0
    assert "3 cases x 3 runs" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["consensus", files[0], str(bad)]) != 0
    assert main(["consensus", files[0], str(tmp_path / "missing.json")]) != 0
    err = capsys.readouterr().err
    assert "bad.json is not JSON" in err and "cannot read validation report" in err
