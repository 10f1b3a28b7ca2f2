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


class _ScriptedDevice:
    """Returns scripted window timings per (job label, pass) and records the order of calls and loads."""

    def __init__(self, script):
        from latpred.profiling.devices import TimingProtocol

        self.protocol = TimingProtocol()
        self.script, self.calls, self.loads, self.count = script, [], [], {}

    def set_utilization(self, u):
        self.loads.append(u)

    def measure_model(self, module, inputs, utilization=0.0, threads=None):
        from latpred.errors import MeasurementError
        from latpred.profiling.result import Measurement

        k = self.count[module] = self.count.get(module, 0) + 1
        self.calls.append((module, k))
        windows = self.script[module][k - 1]
        if windows is None:
            raise MeasurementError("scripted failure")
        return Measurement(min(windows), tuple(windows), 1)


def test_measure_in_passes_is_pass_major_and_pools_windows():
    from latpred.graph.measure import ModelJob, measure_in_passes, pass_agreement

    script = {"a": [[10, 12], [9, 11], [13, 14]], "b": [[20, 30], [40, 50], [25, 26]],
              "c": [[5, 6], None, [5.5, 7]], "d": [None, None, None]}
    jobs = [ModelJob("a", tuple, 0.0, 2), ModelJob("b", tuple, 0.5, 1), ModelJob("c", tuple, 0.0, 2), ModelJob("d", tuple, 0.0)]
    dev = _ScriptedDevice(script)
    out = measure_in_passes(dev, jobs, passes=3)
    # pass-major: every job once per pass; unloaded jobs first, walked backwards in odd passes; the load reset at the end
    assert [m for m, _ in dev.calls] == ["a", "c", "d", "b", "d", "c", "a", "b", "a", "c", "d", "b"]
    assert dev.loads == [0.0]
    assert out[0].latency_ms == 9 and out[0].pass_ms == [10, 9, 13]  # unloaded: the minimum of all windows
    assert out[1].latency_ms == 28.0  # loaded: the median of the pooled windows 20, 30, 40, 50, 25, 26
    assert out[2].latency_ms == 5 and out[2].pass_ms == [5, 5.5] and out[2].errors == ["pass 2: scripted failure"]
    assert out[3].latency_ms is None and len(out[3].errors) == 3
    assert pass_agreement([[10, 10.5], [10, 20]]) == 0.5 and pass_agreement([[1.0]]) is None
    with pytest.raises(SpecError, match="passes must be a positive integer"):
        measure_in_passes(dev, jobs, passes=0)


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
    assert rep["settings"]["passes"] == 3 and len(rep["cases"][0]["pass_ms"]) == 3  # measured like profiling
    # several unloaded thread counts in one run, two passes: each pass's figure kept, the pooled one is their minimum
    assert main(["validate", "--predictor", str(predictor_dir), "--models", "tests.helpers_graph:tiny",
                 "--batch-sizes", "1", "--utilization", "0", "--threads", "2,1", "--passes", "2"]) == 0
    text = capsys.readouterr().out
    assert "noise floor: two measurement passes" in text
    assert main(["validate", "--predictor", str(predictor_dir), "--models", "tests.helpers_graph:tiny",
                 "--batch-sizes", "1", "--utilization", "0", "--threads", "2,1", "--passes", "2", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert [c["threads"] for c in rep["cases"]] == [2, 1] and rep["settings"]["threads"] == [2, 1]
    for c in rep["cases"]:
        assert len(c["pass_ms"]) == 2 and c["measured_ms"] <= min(c["pass_ms"]) + 1e-9
    assert 0 <= rep["metrics"]["pass_within10"] <= 1
    assert main(["validate", "--predictor", str(predictor_dir), "--models", "tests.helpers_graph:tiny",
                 "--passes", "0"]) == 2
    assert "passes must be a positive integer" in capsys.readouterr().err
    assert main(["validate", "--predictor", str(predictor_dir), "--models", "nonsense"]) == 2
    assert "not understood" in capsys.readouterr().err


def test_composition_from_real_model_measurements(predictor_dir, tmp_path, capsys):
    """Validation measurements of real models become calibration cases; leave-one-model-out never lets a
    model's own cases fit the composition that predicts it; the CLI fits from such a report."""
    import numpy as np

    from latpred.graph.calibrate import cases_from_validation, leave_one_model_out
    from latpred.predictor import Predictor

    pred = Predictor.load(predictor_dir)
    dev = FakeDevice(noise=0.0, model_scale=1.25, model_overhead_us=20.0)
    refs = ["tests.helpers_graph:tiny", "tests.helpers_graph:plain_cnn"]
    report = validate_models(pred, dev, refs, batch_sizes=(1, 2, 4, 8), utilizations=(0.0, 0.5))
    doc = report.to_dict()
    assert doc["settings"]["refs"] == {"tiny": refs[0], "plain_cnn": refs[1]}
    cases = cases_from_validation(pred, json.loads(json.dumps(doc)))
    assert len(cases) == 16 and {c.model for c in cases} == set(refs)
    measured = np.array([c.measured_ms for c in cases])
    plain = np.array([sum(c.features[:4]) for c in cases])
    lomo = leave_one_model_out(cases)
    assert np.mean(np.abs(lomo / measured - 1)) < np.mean(np.abs(plain / measured - 1))
    # a composition fitted on one model's cases predicts the other exactly as leave_one_model_out says
    from latpred.graph.calibrate import composition_from_cases

    only_cnn = composition_from_cases([c for c in cases if c.model == refs[1]])
    tiny = [i for i, c in enumerate(cases) if c.model == refs[0]]
    F = np.array([cases[i].features for i in tiny])
    u = np.array([cases[i].utilization for i in tiny])
    assert np.allclose((F * only_cnn.matrix(u)).sum(axis=1), lomo[tiny])
    with pytest.raises(SpecError, match="at least two models"):
        leave_one_model_out([c for c in cases if c.model == refs[0]])

    path = tmp_path / "cal_models.json"
    path.write_text(json.dumps(doc))
    p2 = tmp_path / "p2"
    pred.save(p2)
    assert main(["calibrate", "--predictor", str(p2), "--from-validation", str(path), "--json"]) == 0
    comp = json.loads(capsys.readouterr().out)
    assert comp["calibrated"] and "real models" in comp["info"]["source"] and comp["info"]["rows"] == 16
    assert Predictor.load(p2).composition.calibrated
    (tmp_path / "bad.json").write_text(json.dumps({"nothing": 1}))
    assert main(["calibrate", "--predictor", str(p2), "--from-validation", str(tmp_path / "bad.json")]) == 2
    assert "not a validation report" in capsys.readouterr().err
    # --cache-mib supplies the device's cache where the metadata lacks it: the refit composition stores the cap
    assert main(["calibrate", "--predictor", str(p2), "--from-validation", str(path), "--cache-mib", "0.001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weight_cache_mib"] == 0.001
    assert Predictor.load(p2).composition.weight_cache_mib == 0.001 and Predictor.load(p2).cache_mib == 0.001
    assert main(["calibrate", "--predictor", str(p2), "--from-validation", str(path), "--cache-mib", "-1"]) == 2
    assert "--cache-mib must be a non-negative number" in capsys.readouterr().err
    assert main(["calibrate", "--predictor", str(p2), "--from-validation", str(path), "--activation-cap-mib", "0.25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["activation_cap_mib"] == 0.25
    assert Predictor.load(p2).activation_cap_mib == 0.25
    assert main(["calibrate", "--predictor", str(p2), "--from-validation", str(path), "--activation-cap-mib", "nan"]) == 2
    assert "--activation-cap-mib must be a non-negative number" in capsys.readouterr().err
