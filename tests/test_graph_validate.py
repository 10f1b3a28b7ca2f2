"""Validation harness, model references, whole-model measurement and the whole-model CLI commands."""

import json

import pytest
import torch

from latpred import SpecError
from latpred.cli import main
from latpred.graph.models import TORCHVISION_ZOO, load_model, parse_model_refs
from latpred.graph.validate import validate_models
from latpred.profiling.devices import CpuDevice, FakeDevice
from latpred.selection import select
from tests.helpers_data import synthetic_data


@pytest.fixture(scope="module")
def predictor_dir(tmp_path_factory):
    pred, _ = select(synthetic_data(), families=["ridge"], cv=2)
    return pred.save(tmp_path_factory.mktemp("pred") / "p")


def test_model_references():
    ref = load_model("tests.helpers_graph:tiny")
    assert ref.name == "tiny" and ref.input_shape == (3, 32, 32) and isinstance(ref.module, torch.nn.Module)
    assert len(parse_model_refs("torchvision:zoo")) == len(TORCHVISION_ZOO) == 14
    with pytest.raises(SpecError, match="not understood"):
        load_model("resnet18")
    with pytest.raises(SpecError, match="cannot import"):
        load_model("no_such_pkg.models:build")
    with pytest.raises(SpecError, match="does not exist"):
        load_model("missing.onnx")
    pytest.importorskip("torchvision")
    with pytest.raises(SpecError, match="has no model 'resnet17'"):
        load_model("torchvision:resnet17")


def test_cpu_measures_a_whole_model_under_load_on_one_thread():
    m, x = load_model("tests.helpers_graph:tiny").module, torch.randn(2, 3, 32, 32)
    dev = CpuDevice()
    try:
        free = dev.measure_model(m, (x,))
        loaded = dev.measure_model(m, (x,), utilization=0.5, threads=1)
    finally:
        dev.close()
    assert free.latency_ms > 0 and len(free.timings_ms) >= 3
    # the load's share depends on what else runs on this machine; that it ran and was observed is what matters here
    assert loaded.extra["threads"] == 1 and loaded.util_observed is not None and loaded.util_observed > 0


def test_validate_on_the_fake_device(predictor_dir):
    from latpred.predictor import Predictor

    pred = Predictor.load(predictor_dir)
    report = validate_models(pred, FakeDevice(noise=0.0), ["tests.helpers_graph:tiny"], batch_sizes=(1, 4),
                             utilizations=(0.0, 0.5))
    assert len(report.cases) == 4 and all(c.measured_ms > 0 for c in report.cases)
    m = report.metrics()
    assert m["n"] == 4 and 0 <= m["acc10"] <= 1 and m["mape"] >= 0
    assert {c.threads for c in report.cases if c.utilization > 0} == {1}
    assert report.per_model()["tiny"]["n"] == 4
    with pytest.raises(SpecError, match="utilizations"):
        validate_models(pred, FakeDevice(), ["tests.helpers_graph:tiny"], utilizations=(1.5,))


def test_cli_trace_predict_validate(predictor_dir, tmp_path, capsys):
    assert main(["trace", "tests.helpers_graph:tiny", "--predictor", str(predictor_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["coverage"]["compute_nodes"] > 5 and doc["coverage"]["fallback"]  # maxpool & co. use the fallback
    assert main(["predict", "--predictor", str(predictor_dir), "--model", "tests.helpers_graph:tiny",
                 "--batch-size", "1,4", "--utilization", "0,0.5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["predictions"]) == 4 and all(r["total_ms"] > 0 for r in doc["predictions"])
    out = tmp_path / "v.json"
    assert main(["validate", "--predictor", str(predictor_dir), "--models", "tests.helpers_graph:tiny",
                 "--batch-sizes", "1", "--utilization", "0", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["metrics"]["n"] == 1 and rep["cases"][0]["measured_ms"] > 0
    assert main(["validate", "--predictor", str(predictor_dir), "--models", "nonsense"]) == 2
    assert "not understood" in capsys.readouterr().err
