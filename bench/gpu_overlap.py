"""Whole models on a GPU: plain sum of isolated latencies vs the host/device overlap composition.

    python bench/gpu_overlap.py --zoo data/gpu/zoo_stages_probe_h200_2026-11-27.json \
        --host P_HOST --gpu P_GPU [--latency P_LAT] [--lomo | --host-factor X] [--json bench/results/gpu_overlap.json]

``--zoo`` is a ``bench/measure_zoo.py`` file (whole models measured on the GPU with their stage
times); ``--host`` / ``--gpu`` are predictors trained on a CUDA store's ``host_ms`` / ``gpu_ms``
(``latpred train --target ...``), ``--latency`` one trained on the latency itself. No measurement
here. The one whole-model number, the host factor, is given (``--host-factor``) or, with ``--lomo``,
fitted for each model on the *other* models' measured host times; nothing is fitted on the model
scored. Scored per case (acc10, MAPE, Spearman):

* ``plain_sum`` (with ``--latency``): the sum of isolated node latencies vs the measured latency;
* ``overlap_window``: :class:`~latpred.graph.overlap.OverlapPredictor` at its default, the per-call time of
  as many back-to-back calls as the timing protocol puts in one window, vs the measured latency;
* ``overlap_single``: one request (``calls=1``) vs the measured single synchronised call;
* ``host_sum`` / ``gpu_sum``: the predicted stage sums vs the whole model's measured stage times;
* ``pass_*`` (a zoo file with per-pass stage times): every pass scored on its own latency, and with
  ``pass_overlap_window_probe`` the host stage scaled by that pass's host-speed probe
  (:meth:`~latpred.graph.overlap.OverlapPredictor.host_scale_for`; needs a host predictor trained on probed host times);
* ``stages_measured``: ``max(host, gpu)`` of the model's *measured* stage times vs its measured
  latency — how well the two-stage picture itself holds, whatever the node predictions.

Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from latpred.graph.models import load_model
from latpred.graph.overlap import OverlapPredictor
from latpred.graph.trace import trace
from latpred.metrics import accuracy_report
from latpred.predictor import Predictor


def _score(pred: list[float], meas: list[float]) -> dict[str, float]:
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    ok = np.isfinite(p) & np.isfinite(m) & (m > 0)
    return accuracy_report(p[ok], m[ok]) if ok.sum() > 2 else {"n": int(ok.sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True, help="bench/measure_zoo.py JSON")
    ap.add_argument("--host", required=True, help="predictor trained with --target host_ms")
    ap.add_argument("--gpu", required=True, help="predictor trained with --target gpu_ms")
    ap.add_argument("--latency", help="predictor trained on the latency (for the plain-sum baseline)")
    ap.add_argument("--host-factor", type=float, default=1.0, help="in-model / isolated host time (default: %(default)s)")
    ap.add_argument("--lomo", action="store_true",
                    help="fit the host factor leave-one-model-out: each model with the factor of the other models' measured host times")
    ap.add_argument("--json", default="bench/results/gpu_overlap.json")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.zoo).read_text())
    cases = [c for c in doc["cases"] if c.get("measured_ms")]
    base_over = OverlapPredictor(Predictor.load(args.host), Predictor.load(args.gpu), host_factor=args.host_factor)
    lat = Predictor.load(args.latency) if args.latency else None
    rows = []
    names = list(dict.fromkeys(c["model"] for c in cases))
    graphs = {}
    for name in names:
        ref = load_model(f"torchvision:{name}")
        graphs[name] = trace(ref.module, ref.example_input(1), name=name)
    calib = [{"model": c["model"], "batch_size": c["batch_size"], "utilization": c["utilization"], **c.get("components", {})}
             for c in cases]
    factors = {}
    for name in names:
        mine = [c for c in cases if c["model"] == name]
        graph = graphs[name]
        if args.lomo:  # the host factor fitted on the other models only
            over = replace(base_over)
            factors[name] = over.fit_host_factor(graphs, [c for c in calib if c["model"] != name])
        else:
            over = base_over
        b = np.array([c["batch_size"] for c in mine])
        u = np.array([c["utilization"] for c in mine], dtype=float)
        h, g, _ = over.stages(graph, batch_size=b, utilization=u)
        single = over.predict_graph(graph, batch_size=b, utilization=u, calls=1).total_ms
        window = over.predict_graph(graph, batch_size=b, utilization=u).total_ms  # the timing protocol's window
        plain = lat.predict_graph(graph, batch_size=b, utilization=u).isolated_ms.sum(-1) if lat is not None else None
        for i, c in enumerate(mine):
            comp = c.get("components", {})
            per_pass = []
            for k, pc in enumerate(c.get("pass_components", [])):
                if k >= len(c.get("pass_ms", [])):
                    break
                entry = {"measured_ms": c["pass_ms"][k], "host_probe_ms": pc.get("host_probe_ms")}
                if pc.get("host_probe_ms") and over.host_nominal_ms:
                    entry["overlap_window_probe_ms"] = float(over.predict_graph(
                        graph, batch_size=b[i:i + 1], utilization=u[i:i + 1],
                        host_scale=over.host_scale_for(pc["host_probe_ms"])).total_ms[0])
                per_pass.append(entry)
            rows.append({"model": name, "batch_size": int(b[i]), "utilization": float(u[i]), "measured_ms": c["measured_ms"],
                         "pass_ms": c.get("pass_ms", []), "measured": comp,
                         "overlap_single_ms": float(single[i]), "overlap_window_ms": float(window[i]),
                         "host_sum_ms": float(h[i].sum()), "gpu_sum_ms": float(g[i].sum()),
                         "plain_sum_ms": None if plain is None else float(plain[i]), "passes": per_pass})
    meas = [r["measured_ms"] for r in rows]
    nan = float("nan")
    scores = {
        "overlap_window": _score([r["overlap_window_ms"] for r in rows], meas),
        "overlap_single": _score([r["overlap_single_ms"] for r in rows], [r["measured"].get("single_ms", nan) for r in rows]),
        "host_sum": _score([r["host_sum_ms"] for r in rows], [r["measured"].get("host_ms", nan) for r in rows]),
        "gpu_sum": _score([r["gpu_sum_ms"] for r in rows], [r["measured"].get("gpu_ms", nan) for r in rows]),
        "stages_measured": _score([max(r["measured"].get("host_ms", nan), r["measured"].get("gpu_ms", nan)) for r in rows], meas),
    }
    if lat is not None:
        scores["plain_sum"] = _score([r["plain_sum_ms"] for r in rows], meas)
    passes = [(r, p) for r in rows for p in r["passes"]]
    if passes:  # every pass scored on its own figure: without and with the host-speed probe of that pass
        scores["pass_overlap_window"] = _score([r["overlap_window_ms"] for r, _ in passes], [p["measured_ms"] for _, p in passes])
        if lat is not None:
            scores["pass_plain_sum"] = _score([r["plain_sum_ms"] for r, _ in passes], [p["measured_ms"] for _, p in passes])
        probed = [(r, p) for r, p in passes if "overlap_window_probe_ms" in p]
        if probed:
            scores["pass_overlap_window_probe"] = _score([p["overlap_window_probe_ms"] for _, p in probed],
                                                         [p["measured_ms"] for _, p in probed])
    agree = [abs(p[0] / p[1] - 1) <= 0.10 for r in rows if len(p := r["pass_ms"]) == 2]
    for u in sorted({r["utilization"] for r in rows}):
        sub = [r for r in rows if r["utilization"] == u]
        scores[f"overlap_window_util{u:g}"] = _score([r["overlap_window_ms"] for r in sub], [r["measured_ms"] for r in sub])
        probed = [p for r in sub for p in r["passes"] if "overlap_window_probe_ms" in p]
        if probed:
            scores[f"pass_overlap_window_probe_util{u:g}"] = _score([p["overlap_window_probe_ms"] for p in probed],
                                                                    [p["measured_ms"] for p in probed])
        if lat is not None:
            scores[f"plain_sum_util{u:g}"] = _score([r["plain_sum_ms"] for r in sub], [r["measured_ms"] for r in sub])
    out = {"zoo": args.zoo, "predictors": {"host": args.host, "gpu": args.gpu, "latency": args.latency},
           "host_factor": factors if args.lomo else args.host_factor,
           "pass_within10": float(np.mean(agree)) if agree else None, "scores": scores, "cases": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"{'score':<16} {'n':>3} {'acc10':>6} {'acc15':>6} {'MAPE%':>6} {'Spearman':>8}", file=sys.stderr)
    for k, s in scores.items():
        if "acc10" in s:
            print(f"{k:<16} {s['n']:>3} {100 * s['acc10']:6.1f} {100 * s['acc15']:6.1f} {s['mape']:6.1f} {s['spearman']:8.3f}",
                  file=sys.stderr)
    w = scores["overlap_window"]
    base = f", plain sum {100 * scores['plain_sum']['acc10']:.1f}% / {scores['plain_sum']['mape']:.1f}%" if lat else ""
    print(f"gpu_overlap: {len(rows)} cases, overlap acc10 {100 * w['acc10']:.1f}%, MAPE {w['mape']:.1f}%, "
          f"Spearman {w['spearman']:.3f}{base}; passes agree {100 * (out['pass_within10'] or 0):.1f}% -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
