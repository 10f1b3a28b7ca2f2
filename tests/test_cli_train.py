"""`latpred train`: store -> selection table, predictor directory, report JSON, plot; bad input -> exit 2."""

import json
from dataclasses import replace

import pytest

from latpred.cli import main
from latpred.predictor import Predictor
from latpred.profiling.devices import FakeDevice
from latpred.profiling.runner import profile
from latpred.profiling.space import ParameterSpace
from latpred.profiling.store import ProfileStore

from .helpers_data import SPACE


class _SecondPassSlower(FakeDevice):
    """Every conv2d spec's second measurement reads 1.25x its first: conv2d's passes disagree by 20-25%."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def measure(self, spec):
        m = super().measure(spec)
        if spec.op != "conv2d" or spec.key not in self.seen:
            self.seen.add(spec.key)
            return m
        return replace(m, latency_ms=m.latency_ms * 1.25, timings_ms=tuple(t * 1.25 for t in m.timings_ms))


def test_train_reports_the_noise_floor_of_the_stores_own_passes(tmp_path, capsys):
    db = tmp_path / "p.sqlite"
    with ProfileStore(db) as store:
        profile(ParameterSpace.from_dict(SPACE), _SecondPassSlower(), store, passes=2, progress=False)
        n = {op: sum(s.spec.op == op for s in store.samples()) for op in ("conv2d", "linear", "activation")}
        by_load = {u: [s.spec.op != "conv2d" for s in store.samples() if s.spec.utilization == u] for u in (0.0, 0.5)}
    out = tmp_path / "pred"
    assert main(["train", "--db", str(db), "--out", str(out), "--regressors", "ridge", "--cv", "3"]) == 0
    text = capsys.readouterr().out
    floor = json.loads((out / "selection_report.json").read_text())["noise_floor"]
    agree = (n["linear"] + n["activation"]) / sum(n.values())  # conv2d's pass pairs never agree within 10%
    assert floor["overall"]["within10"] == pytest.approx(agree) and floor["overall"]["n_specs"] == sum(n.values())
    assert floor["per_op"]["conv2d"]["within10"] == 0.0 and floor["per_op"]["conv2d"]["within15"] == 0.0
    assert floor["per_op"]["conv2d"]["mape"] == pytest.approx(20.0)  # |1 / 1.25 - 1|
    assert floor["per_op"]["linear"]["within5"] == 1.0 and floor["per_op"]["linear"]["n_pairs"] == n["linear"]
    assert f"agree within ±10% for {agree:.1%} of {sum(n.values())} pairs" in text and "conv2d 0%" in text
    assert Predictor.load(out).metadata["noise_floor_within10"] == pytest.approx(agree)
    report = json.loads((out / "selection_report.json").read_text())
    per = report["per_condition"]  # acc10 and the floor side by side, per regime (noise differs by it)
    assert set(per) == {"unloaded, 1 thread", "loaded 0.5, 1 thread"} and set(floor["per_condition"]) == set(per)
    for label, u in (("unloaded, 1 thread", 0.0), ("loaded 0.5, 1 thread", 0.5)):
        assert per[label]["pass_within10"] == pytest.approx(sum(by_load[u]) / len(by_load[u]))
        assert per[label]["n"] == len(by_load[u]) and 0.0 <= per[label]["acc10"] <= 1.0
    assert "loaded 0.5, 1 thread" in text and "passes within 10%" in text
    with ProfileStore(tmp_path / "one.sqlite") as store:  # one pass: no floor to report, said so
        profile(ParameterSpace.from_dict(SPACE), FakeDevice(), store, passes=1, progress=False)
    assert main(["train", "--db", str(tmp_path / "one.sqlite"), "--out", str(tmp_path / "p1"), "--regressors", "ridge",
                 "--cv", "3"]) == 0
    assert "noise floor: unknown (no sample holds two measurement passes)" in capsys.readouterr().out


def test_train_writes_predictor_report_and_plot(tmp_path, capsys):
    db = tmp_path / "p.sqlite"
    with ProfileStore(db) as store:
        profile(ParameterSpace.from_dict(SPACE), FakeDevice(), store, passes=1, progress=False)
    out = tmp_path / "pred"
    png = tmp_path / "not" / "yet" / "fit.png"  # folders are created
    rc = main(["train", "--db", str(db), "--out", str(out), "--regressors", "ridge,knn", "--cv", "3",
               "--plot", str(png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "auto-selection" in text and "ridge-only" in text and "knn-only" in text
    report = json.loads((out / "selection_report.json").read_text())
    assert set(report["per_op_choice"]) == {"conv2d", "linear", "activation"}
    assert png.stat().st_size > 10_000
    assert set(Predictor.load(out).ops) == set(report["per_op_choice"])
    assert main(["train", "--db", str(db), "--out", str(out), "--regressors", "xgboost"]) == 2
    assert "unknown regressor" in capsys.readouterr().err
    assert main(["train", "--db", str(db), "--out", str(out), "--regressors", "gbdt", "--max-bytes", "10"]) == 2
    assert "max_bytes" in capsys.readouterr().err
