"""Where does a whole-model prediction go wrong: the regression models, or the composition?

    python bench/node_context.py --predictor P [--models resnet18,mobilenet_v2] [--batch-sizes 1,8]
        [--threads 2] [--runs 20] [--json bench/results/node_context.json]

For every compute node of each model (unloaded, in one run on this machine) it reads three figures:

* ``predicted``: the predictor's isolated latency (its regression models, before composition);
* ``isolated``: the node's spec measured alone with the profiler's protocol (``device.measure``);
* ``in_context``: the node timed inside the running model (:func:`latpred.graph.node_timing.time_in_context`).

predicted / isolated is the regression models' error, in_context / isolated is what composition must
model, and the sum of in-context node times against the plain model call is the interpreter's cost.
The isolated and in-context figures are raw (not reference-normalised) and measured minutes apart at
most, so their ratio holds the machine state fixed; the predicted / isolated ratio uses the isolated
figure normalised to the predictor's nominal machine speed. Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

# bench/partition.py would shadow the partition package (for --prune) when this script runs from bench/
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from latpred import trace  # noqa: E402
from latpred.graph.calibrate import random_network  # noqa: E402
from latpred.graph.compose import CLASSES, node_classes  # noqa: E402
from latpred.graph.models import load_model  # noqa: E402
from latpred.graph.node_timing import node_ratio_summary, time_in_context  # noqa: E402
from latpred.graph.predict import predict_graph  # noqa: E402
from latpred.predictor import Predictor  # noqa: E402
from latpred.profiling.devices import CpuDevice  # noqa: E402
from latpred.profiling.reference import adopt_reference  # noqa: E402


def _model(name: str, batch: int, prune: float = 0.0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A zoo model by torchvision name, or ``randomK``: the current generator's random network of seed K.

    ``prune`` > 0 prunes every channel group of the model by that ratio (Torch-Pruning, kept channels rounded
    to multiples of 8, as ``bench/pruning.py`` does), to look at pruned variants node by node."""
    if name.startswith("random") and name[6:].isdigit():
        module, shape = random_network(int(name[6:]))
        x = torch.randn(batch, *shape)
    else:
        ref = load_model(f"torchvision:{name}")
        module, x = ref.module, ref.example_input(batch)
    if prune > 0:
        from partition.pruning import analyze_pruning

        analysis = analyze_pruning(module, x[:1], round_to=8)
        module = analysis.prune_(module, np.full(analysis.n_groups, prune))
    return module, x


def _model_rows(pred: Predictor, dev: CpuDevice, name: str, batch: int, threads: int, runs: int,
                prune: float = 0.0) -> dict:
    module, x = _model(name, batch, prune)
    graph = trace(module, (x,)).with_conditions(threads=threads)
    lat = predict_graph(pred, graph, threads=threads)
    ctx = time_in_context(graph.gm, (x,), runs=runs, threads=threads)
    rows = []
    classes = node_classes(graph)
    for j, node in enumerate(graph.nodes):
        if node.kind != "compute":
            continue
        row = {"node": node.name, "op": node.op, "class": classes[j],
               "param_mib": node.param_bytes / 2**20, "out_mib": node.out_bytes / 2**20,
               "predicted_ms": float(lat.isolated_ms[j]), "composed_ms": float(lat.node_ms[j]),
               "in_context_ms": ctx.node_ms.get(node.name)}
        if node.spec is not None:
            row["params"] = dict(node.spec.params)
            m = dev.measure(node.spec)
            raw = m.extra.get("raw_timings_ms") or list(m.timings_ms)
            row["isolated_ms"] = float(m.latency_ms)  # normalised to the predictor's nominal
            row["isolated_raw_ms"] = float(min(raw))
        rows.append(row)
    return {"model": name, "batch_size": batch, "threads": threads, "prune": prune, "nodes": rows,
            "predicted_total_ms": float(lat.total_ms), "isolated_predicted_sum_ms": float(np.sum(lat.isolated_ms)),
            "in_context": ctx.to_dict() | {"runs_ms": None}}


def _summary(m: dict) -> dict:
    rows = [r for r in m["nodes"] if r.get("isolated_ms") and r.get("in_context_ms")]
    pred = np.array([r["predicted_ms"] for r in rows])
    iso = np.array([r["isolated_ms"] for r in rows])
    iso_raw = np.array([r["isolated_raw_ms"] for r in rows])
    ctx = np.array([r["in_context_ms"] for r in rows])
    per_class = {}
    for c in CLASSES:
        k = np.array([r["class"] == c for r in rows])
        if k.any():
            per_class[c] = {"nodes": int(k.sum()), "iso_raw_ms": float(iso_raw[k].sum()), "ctx_ms": float(ctx[k].sum()),
                            "pred_ms": float(pred[k].sum()), "iso_ms": float(iso[k].sum()),
                            "ctx_over_iso": float(ctx[k].sum() / iso_raw[k].sum()),
                            "pred_over_iso": float(pred[k].sum() / iso[k].sum())}
    ic = m["in_context"]
    return {"model": m["model"], "batch_size": m["batch_size"], "threads": m["threads"], "nodes": len(rows),
            "pred_over_iso_sum": float(pred.sum() / iso.sum()),
            "ctx_over_iso_sum": float(ctx.sum() / iso_raw.sum()),
            "module_over_ctx_sum": float(ic["module_ms"] / ctx.sum()),
            "module_ms": ic["module_ms"], "interpreted_ms": ic["interpreted_ms"],
            "node_pred_over_iso": node_ratio_summary(pred, iso), "node_ctx_over_iso": node_ratio_summary(ctx, iso_raw),
            "per_class": per_class}


def _write(args: argparse.Namespace, t0: float, models: list[dict]) -> None:
    doc = {"predictor": args.predictor, "threads": args.threads, "runs": args.runs, "wall_s": time.time() - t0,
           "date": time.strftime("%Y-%m-%d %H:%M"), "models": models}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1, default=list))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--models", default="resnet18,mobilenet_v2,vgg16,alexnet,efficientnet_b0,vit_b_16",
                    help="torchvision names, or randomK for the calibration generator's network of seed K")
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--prune", type=float, default=0.0,
                    help="prune every channel group by this ratio first (0 = the unpruned model)")
    ap.add_argument("--json", default="bench/results/node_context.json")
    args = ap.parse_args(argv)
    pred = Predictor.load(args.predictor)
    dev = CpuDevice(threads=args.threads)
    print(adopt_reference(dev, pred), file=sys.stderr)
    t0 = time.time()
    models = []
    for name in [s.strip() for s in args.models.split(",") if s.strip()]:
        for b in [int(v) for v in args.batch_sizes.split(",")]:
            m = _model_rows(pred, dev, name, b, args.threads, args.runs, args.prune)
            m["summary"] = _summary(m)
            s = m["summary"]
            label = f"{name} b{b}" + (f" pruned {args.prune:g}" if args.prune else "")
            print(f"{label}: predicted/isolated {s['pred_over_iso_sum']:.3f}, in-context/isolated "
                  f"{s['ctx_over_iso_sum']:.3f}, module/in-context {s['module_over_ctx_sum']:.3f} "
                  f"({s['module_ms']:.2f} ms); " + ", ".join(f"{c} ctx/iso {v['ctx_over_iso']:.2f} pred/iso "
                                                            f"{v['pred_over_iso']:.2f}" for c, v in s["per_class"].items()),
                  file=sys.stderr, flush=True)
            models.append(m)
            _write(args, t0, models)  # after every case: a cut-off run keeps what it measured
    sums = [m["summary"] for m in models]
    print(f"node_context: {len(sums)} cases; predicted/isolated median {np.median([s['pred_over_iso_sum'] for s in sums]):.3f}, "
          f"in-context/isolated median {np.median([s['ctx_over_iso_sum'] for s in sums]):.3f} "
          f"(range {min(s['ctx_over_iso_sum'] for s in sums):.3f}-{max(s['ctx_over_iso_sum'] for s in sums):.3f}) -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
