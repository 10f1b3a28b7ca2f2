"""The examples run end to end in their --quick modes (real model, real measurements, tiny settings)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREDICTOR = ROOT / "data" / "cpu" / "predictor_cpu2_2026-11-26"


def _run(args: list[str], timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_prune_digits_quick():
    out = _run(["examples/prune_digits.py", "--predictor", str(PREDICTOR), "--quick", "--targets", "0.1"])
    assert "unpruned" in out and "target -10%" in out and "Δ pts" in out


def test_prune_digits_rejects_bad_targets():
    proc = subprocess.run([sys.executable, "examples/prune_digits.py", "--predictor", str(PREDICTOR), "--targets", "1.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--targets" in proc.stderr


def test_adaptive_runtime_quick(tmp_path):
    pytest.importorskip("grpc")
    pytest.importorskip("torchvision")
    out = _run(["examples/adaptive_runtime.py", "--predictor", str(PREDICTOR), "--quick", "--scripted", "--phases", "0:10,0.9:1000",
                "--out-dir", str(tmp_path)])
    assert out.count("ratio adaptive/static") == 2 and "re-plan(s)" in out and "link probe(s)" in out
    assert (tmp_path / "decisions.jsonl").is_file() and (tmp_path / "timeline.png").is_file()


def test_edge_cloud_split_measures_in_the_predictors_unit():
    """The split example runs a plan for real (edge and cloud processes over gRPC) and, with a predictor trained on
    reference-normalised profiles, compares the prediction with the run at that predictor's machine speed."""
    pytest.importorskip("grpc")
    pytest.importorskip("torchvision")
    ref_pred = ROOT / "data" / "cpu" / "predictor_cpu2_ref_2026-11-27"
    out = _run(["examples/edge_cloud_split.py", "--predictor", str(ref_pred), "--models", "squeezenet1_1",
                "--bandwidths", "50", "--requests", "2"])
    assert "measured: normalised" in out and "squeezenet1_1" in out and "wall time" in out
