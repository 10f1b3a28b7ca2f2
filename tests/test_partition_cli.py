"""The ``partition`` command line: plans, JSON, pictures, and bad input."""

import json

import pytest

from latpred.selection import select
from partition.cli import main
from tests.helpers_data import synthetic_data


@pytest.fixture(scope="module")
def predictor_dir(tmp_path_factory):
    pred, _ = select(synthetic_data(), families=["ridge"], cv=2)
    return str(pred.save(tmp_path_factory.mktemp("pred") / "p"))


def test_split_json_and_front_plot(predictor_dir, tmp_path, capsys):
    png = tmp_path / "plots" / "front.png"  # a folder that does not exist yet
    rc = main(["split", "--model", "tests.helpers_graph:tiny", "--edge", predictor_dir, "--cloud", predictor_dir,
               "--bandwidth-mbps", "50", "--edge-utilization", "0.5", "--edge-threads", "1",
               "--objectives", "latency,edge_memory", "--generations", "10", "--plot", str(png), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    plan = doc["plan"]
    assert len(plan["assignment"]) == len(plan["node_names"]) and plan["pareto"]
    assert doc["compute_nodes"] > 5 and png.stat().st_size > 1000


def test_split_text_and_bad_input(predictor_dir, capsys):
    assert main(["split", "--model", "tests.helpers_graph:tiny", "--edge", predictor_dir, "--cloud", predictor_dir,
                 "--bandwidth-mbps", "5", "--generations", "5"]) == 0
    assert "predicted" in capsys.readouterr().out
    assert main(["split", "--model", "tests.helpers_graph:tiny", "--edge", predictor_dir, "--cloud", predictor_dir,
                 "--bandwidth-mbps", "-1"]) == 2
    assert "bandwidth" in capsys.readouterr().err
    assert main(["split", "--model", "tests.helpers_graph:tiny", "--edge", "/nonexistent", "--cloud", predictor_dir,
                 "--bandwidth-mbps", "5"]) == 2
    assert "no predictor" in capsys.readouterr().err
    assert main(["split", "--model", "tests.helpers_graph:tiny", "--edge", predictor_dir, "--cloud", predictor_dir,
                 "--bandwidth-mbps", "5", "--objectives", "latency,speed"]) == 2
    assert "speed" in capsys.readouterr().err


def test_split_execute_reports_raw_and_normalised(tmp_path, capsys):
    """--execute runs the plan for real; a predictor trained on normalised profiles also gets the run at its nominal speed."""
    pred, _ = select(synthetic_data(), families=["ridge"], cv=2)
    pred.metadata["reference_nominal_ms"] = {"1": 0.2, "2": 0.15}
    d = str(pred.save(tmp_path / "p"))
    args = ["split", "--model", "tests.helpers_graph:tiny", "--edge", d, "--cloud", d, "--bandwidth-mbps", "50",
            "--edge-threads", "1", "--cloud-threads", "1", "--generations", "5", "--execute", "--requests", "2"]
    assert main(args + ["--json"]) == 0
    m = json.loads(capsys.readouterr().out)["measured"]
    assert m["n_requests"] == 2 and m["median_ms"] > 0 and m["normalised_ms"] > 0 and m["edge_slowdown"] > 0
    assert main(args) == 0
    assert "nominal machine speed" in capsys.readouterr().out


def test_prune_front_budget_and_errors(predictor_dir, tmp_path, capsys):
    png = tmp_path / "prune.png"
    assert main(["prune", "--model", "tests.helpers_graph:plain_cnn", "--predictor", predictor_dir, "--generations", "5",
                 "--pop-size", "16", "--plot", str(png), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["front"] and doc["base_latency_ms"] > 0 and png.stat().st_size > 1000
    lat = [r["latency_ms"] for r in doc["front"]]
    assert min(lat) < doc["base_latency_ms"]
    assert main(["prune", "--model", "tests.helpers_graph:plain_cnn", "--predictor", predictor_dir,
                 "--latency-budget-ms", "1e-9", "--generations", "3", "--pop-size", "8"]) == 2
    assert "latency_budget_ms" in capsys.readouterr().err
