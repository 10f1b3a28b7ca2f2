"""`latpred train`: store -> selection table, predictor directory, report JSON, plot; bad input -> exit 2."""

import json

from latpred.cli import main
from latpred.predictor import Predictor
from latpred.profiling.devices import FakeDevice
from latpred.profiling.runner import profile
from latpred.profiling.space import ParameterSpace
from latpred.profiling.store import ProfileStore

from .helpers_data import SPACE


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
