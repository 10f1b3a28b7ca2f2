"""The main job end to end on a tiny space: every step runs, the outputs exist, a re-run resumes."""

import json
from pathlib import Path

import pytest

from latpred.errors import SpecError
from latpred.profiling.space import ParameterSpace
from latpred.quickstart import _cloud_predictor, run_quickstart, shipped_gpu_predictor

TINY = {
    "name": "tiny", "seed": 0,
    "runtime": {"batch_size": [1, 2], "utilization": 0.0, "threads": [1, "all"],
                "variants": {"unloaded": {"weight": 2}, "loaded": {"weight": 1, "utilization": 0.5, "threads": 1}}},
    "ops": {
        "conv2d": {"samples": 14, "in_channels": [8, 16, 32], "out_channels": [8, 16, 32], "kernel_size": [1, 3],
                   "stride": [1, 2], "h": [8, 16]},
        "batchnorm2d": {"samples": 10, "channels": [8, 16, 32], "h": [4, 8, 16]},
        "activation": {"samples": 10, "fn": ["relu"], "channels": [8, 16, 32], "h": [4, 8, 16]},
        "elementwise": {"samples": 10, "fn": ["add"], "channels": [8, 16, 32], "h": [4, 8, 16]},
        "linear": {"samples": 10, "in_features": [16, 32, 64], "out_features": [10, 100]},
    },
}


def test_quickstart_runs_every_step_and_resumes(tmp_path):
    space = ParameterSpace.from_dict(TINY)
    out = tmp_path / "qs"
    out.mkdir()
    # an earlier run interrupted after the first pass (as Ctrl-C would leave it): committed samples stay
    from latpred.profiling.devices import CpuDevice
    from latpred.profiling.runner import profile
    from latpred.profiling.store import ProfileStore

    dev = CpuDevice()
    try:
        with ProfileStore(out / "profiles.sqlite") as store:
            profile(space, dev, store, passes=1, progress=False)
    finally:
        dev.close()
    lines: list[str] = []
    kw = dict(progress=False, model="builtin", networks=2, space=space, families=["ridge", "knn"], input_size=32,
              say=lines.append)
    cloud = Path(__file__).resolve().parents[1] / "data" / "cpu" / "predictor_cpu2_2026-11-26"  # any other device's predictor
    report = run_quickstart(out, cloud=cloud, **kw)
    for name in ("profiles.sqlite", "predictor/predictor.json", "predictor/selection_report.json", "report.json",
                 "report.md", "fit.png", "layers.png", "predicted_vs_measured.png", "pareto.png", "graph_cut.png",
                 "adaptive.png", "calibration_cases.json"):
        assert (out / name).is_file(), name
    n = len(space.specs())
    assert report["profile"]["continued"] == n and report["profile"]["measurements"] == 2 * n  # resumed, not restarted
    assert report["model"]["name"] == "builtin_cnn" and len(report["model"]["cases"]) == 2
    assert all(c["measured_ms"] > 0 and c["predicted_ms"] > 0 for c in report["model"]["cases"])
    assert len(report["partition"]["per_bandwidth"]) == 3
    # the cloud of the split is the other device's predictor (predicted only, never measured here)
    assert report["model"]["cloud"]["predicted_ms"] > 0 and report["model"]["cloud"]["predictor"] == str(cloud)
    assert report["partition"]["cloud"] == report["model"]["cloud"]["condition"] and "AMD EPYC" in report["partition"]["cloud"]
    assert "predicted, not measured" in (out / "report.md").read_text()
    assert report["composition"]["calibrated"] is True
    # the store's own noise floor: every spec holds 3 passes (one from the interrupted run), real CPU timings
    floor = report["selection"]["noise_floor"]["overall"]
    assert floor["n_specs"] == n and floor["n_pairs"] == 3 * n and 0.0 <= floor["within10"] <= 1.0
    assert "Noise floor: two passes of one spec agree" in (out / "report.md").read_text()
    # the adaptive step re-planned through every phase of its trace
    phases = report["adaptive"]["phases"]
    assert [(p["utilization"], p["bandwidth_mbps"]) for p in phases] == [(0.0, 10.0), (0.5, 10.0), (0.9, 10.0), (0.9, 100.0), (0.0, 1.0)]
    assert all(p["re_plans"] >= 1 and p["predicted_ms"] > 0 for p in phases)
    # load 0.9 lies above every profiled load (0, 0.5): the edge nodes there are reported as extrapolated
    assert phases[2]["edge_nodes_out_of_range"] > phases[1]["edge_nodes_out_of_range"] >= 0
    assert "edge node(s) outside their op model's profiled range" in "\n".join(lines)
    assert "Adaptive re-planning" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["model"]["summary"].startswith("builtin_cnn")
    # a second run finds everything in the store and the predictor up to date
    again = run_quickstart(out, cloud="cpu", **kw)
    assert "cloud" not in again["model"] and again["partition"]["cloud"] == "cloud (this CPU, all threads, no load)"
    assert again["profile"]["measured"] == 0 and again["profile"]["already_done"] == len(space.specs())
    assert any("not retrained" in line for line in lines)
    assert again["selection"]["noise_floor"] == report["selection"]["noise_floor"]  # read back from the report file


def test_quickstart_rejects_a_bad_cloud_predictor_before_measuring(tmp_path):
    with pytest.raises(SpecError, match="cloud predictor"):
        run_quickstart(tmp_path / "qs", cloud=tmp_path / "no-such-predictor", progress=False, say=lambda _m: None)
    assert not (tmp_path / "qs").exists()


def test_auto_cloud_is_the_shipped_gpu_predictor():
    shipped = shipped_gpu_predictor()
    assert shipped is not None and shipped.parent.name == "gpu"  # this checkout ships one (data/gpu/)
    assert (shipped / "overlap.json").is_file()  # the overlap predictor is preferred to the older predictor_* one
    pred, label, path = _cloud_predictor("auto")
    assert path == shipped and "H200" in label and pred.ops
    assert "host/device overlap" in pred.composition.describe()
    assert _cloud_predictor("cpu") == (None, "cloud (this CPU, all threads, no load)", None)
