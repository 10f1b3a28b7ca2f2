"""Whole-model validation on this device: predicted vs measured latency of the torchvision zoo.

    python bench/whole_model.py --predictor latpred-out/predictor
    python bench/whole_model.py --predictor P --models torchvision:resnet18 --batch-sizes 1 --utilization 0
    python bench/whole_model.py --predictor P --threads 2,1 --passes 3   # unloaded on 2 and on 1 thread

Every model × batch size × utilization is predicted (vectorised, one call per model) and measured
with the same protocol and background load as profiling (loaded cases on 1 thread, as the built-in
spaces profile them), in ``--passes`` passes over all cases whose windows are pooled (the minimum
unloaded, the median loaded); the report gives each pass's figure and how often two passes of one
case agree within ±10% — the measurement's own noise floor. Also compares the ONNX import of resnet18 and mobilenet_v2 with the fx path.
Targets (issue 4): acc10 >= 90%, MAPE <= 6%, Spearman >= 0.98, 100% node coverage; ONNX within 5%.
Writes JSON (and a PNG with --plot) and prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latpred.graph.models import TORCHVISION_ZOO, load_model, parse_model_refs
from latpred.graph.onnx import from_onnx
from latpred.graph.trace import trace
from latpred.graph.validate import validate_models
from latpred.predictor import Predictor
from latpred.profiling.devices import TimingProtocol, make_device


def onnx_vs_fx(pred: Predictor, names: list[str], batch_sizes: list[int], utilizations: list[float]) -> list[dict]:
    """Predicted total of the ONNX import vs the fx trace, for exports that keep and fold BatchNorm."""
    out = []
    b = np.array(batch_sizes)[:, None]
    u = np.array(utilizations)[None, :]
    t = np.where(u > 0, 1, pred.default_threads)
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            ref = load_model(f"torchvision:{name}")
            x = ref.example_input(1)
            fx_ms = pred.predict_graph(trace(ref.module, x, name=name), batch_size=b, utilization=u, threads=t).total_ms
            for label, kwargs in (("bn_kept", {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}),
                                  ("bn_folded", {})):
                path = Path(d) / f"{name}_{label}.onnx"
                torch.onnx.export(ref.module, (x,), str(path), dynamo=False, opset_version=17,
                                  input_names=["x"], dynamic_axes={"x": {0: "batch"}}, **kwargs)
                g = from_onnx(path)
                onnx_ms = pred.predict_graph(g, batch_size=b, utilization=u, threads=t).total_ms
                rel = onnx_ms / fx_ms - 1
                out.append({"model": name, "export": label, "onnx_nodes": len(g.nodes),
                            "max_abs_rel_diff": float(np.abs(rel).max()), "rel_diff": rel.tolist(),
                            "coverage": g.coverage(pred.ops).node_share})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--models", default="torchvision:zoo")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--utilization", default="0,0.5")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="bench/results/whole_model.json")
    ap.add_argument("--plot", default="bench/results/whole_model.png")
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--passes", type=int, default=3, help="measurement passes over all cases (default: %(default)s)")
    ap.add_argument("--threads", default="", help="comma-separated threads of unloaded cases (default: the device default)")
    args = ap.parse_args(argv)
    pred = Predictor.load(args.predictor)
    refs = parse_model_refs(args.models)
    bs = [int(x) for x in args.batch_sizes.split(",")]
    us = [float(x) for x in args.utilization.split(",")]
    t0 = time.perf_counter()
    threads = [int(x) for x in args.threads.split(",")] if args.threads else None
    # whole models run 1 ms .. 15 s: slow ones get 2 windows in a single pass, 1 per pass when the passes pool them
    device = make_device(args.device, protocol=TimingProtocol(repeats=5, min_repeats=1 if args.passes > 1 else 2,
                                                              max_sample_ms=3000.0))
    try:
        report = validate_models(pred, device, refs, bs, us, threads=threads, passes=args.passes,
                                 progress=lambda m: print(" ", m, file=sys.stderr, flush=True))
    finally:
        device.close()
    doc = report.to_dict()
    doc["coverage"] = {c.model: c.coverage for c in report.cases}
    if not args.skip_onnx:
        doc["onnx_vs_fx"] = onnx_vs_fx(pred, ["resnet18", "mobilenet_v2"], bs, us)
    doc["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}
    doc["elapsed_s"] = round(time.perf_counter() - t0, 1)
    doc["zoo"] = list(TORCHVISION_ZOO)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    if args.plot and report.measured():
        report.plot(args.plot)
    m = report.metrics()
    cov = min(doc["coverage"].values()) if doc["coverage"] else float("nan")
    onnx = "" if args.skip_onnx else ", ONNX vs fx (BN kept) max diff " + ", ".join(
        f"{r['model']} {100 * r['max_abs_rel_diff']:.1f}%" for r in doc["onnx_vs_fx"] if r["export"] == "bn_kept")
    print(f"whole_model: {m.get('n', 0)} cases, acc10 {100 * m.get('acc10', float('nan')):.1f}%, "
          f"MAPE {m.get('mape', float('nan')):.1f}%, Spearman {m.get('spearman', float('nan')):.3f}, passes agree within "
          f"10% {100 * m.get('pass_within10', float('nan')):.1f}%, min coverage "
          f"{100 * cov:.0f}%{onnx} -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
