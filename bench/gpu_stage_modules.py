"""GPU module latency on held-out specs: one latency regressor vs the two stage regressors composed.

    python bench/gpu_stage_modules.py --db data/gpu/h200_stages_probe_2026-11-27.sqlite \
        [--families ridge,poly,knn,svr,gp,gbdt] [--holdout 0.2] [--json bench/results/gpu_stage_modules.json]

On a CUDA store whose samples carry their stage times and host probe (``CudaDevice._components``),
the same seeded ``--holdout`` of each op type's specs is held out of three auto-selections trained on
the rest: on the latency itself, on ``host_ms`` (probe-normalised, see ``load_training_data``) and on
``gpu_ms``. Each held-out spec's latency is then predicted two ways and scored against the measured
latency (acc10, MAPE, Spearman, per op and overall):

* ``direct``: the latency regressor;
* ``direct_probe``: a latency regressor trained on latencies scaled to the nominal host speed
  (``latency × nominal / probe``, as if every spec were host-bound), its prediction scaled back by the
  spec's probe — the CPU's reference normalisation applied to the whole latency;
* ``stages``: ``max(host × probe / nominal, gpu)`` — an isolated module's eager latency in a timing
  loop, with the host stage at the host speed the probe read while the spec was measured (a condition
  of the measurement, as utilization is).

Also scored: each stage regressor against its own held-out target. Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from latpred.graph.overlap import OverlapPredictor
from latpred.metrics import accuracy_report
from latpred.profiling.store import ProfileStore
from latpred.selection import TrainingData, load_training_data, select


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--families", default="ridge,poly,knn,svr,gp,gbdt")
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--cv", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench/results/gpu_stage_modules.json")
    args = ap.parse_args(argv)
    fams = [f for f in args.families.split(",") if f]
    with ProfileStore(args.db, readonly=True) as store:
        data = {t: load_training_data(store, target=t) for t in ("latency_ms", "host_ms", "gpu_ms")}
        probe = {op: np.array([s.extra.get("host_probe_ms", np.nan) for s in store.samples(op=op)]) for op in data["latency_ms"].ops}
    ops = data["latency_ms"].ops
    for t, d in data.items():  # the three views must hold the same specs in the same order
        if d.ops != ops or any([s.key for s in d.specs[op]] != [s.key for s in data["latency_ms"].specs[op]] for op in ops):
            raise SystemExit(f"{args.db}: the {t} samples are not the latency samples (a spec lacks a stage time)")
    nominal = data["host_ms"].metadata.get("host_probe_nominal_ms")
    if not nominal:
        raise SystemExit(f"{args.db}: no host probe readings (profile with a CudaDevice that has _host_probe)")
    lat = data["latency_ms"]  # the whole latency brought to the nominal host speed, as if every spec were host-bound
    data["latency_probe"] = TrainingData(lat.specs, {op: lat.latency_ms[op] * nominal / probe[op] for op in ops},
                                         lat.extra_names, lat.metadata)
    held, rest = lat.holdout_indices(args.holdout, args.seed)
    preds = {}
    for t, d in data.items():
        p, _ = select(d.subset(rest), families=fams, cv=args.cv, seed=args.seed)
        preds[t] = p
    over = OverlapPredictor(preds["host_ms"], preds["gpu_ms"])
    rows, per_op = {"direct": ([], []), "direct_probe": ([], []), "stages": ([], []), "host": ([], []), "gpu": ([], [])}, {}
    for op in ops:
        idx = held[op]
        specs = [lat.specs[op][i] for i in idx]
        meas = lat.latency_ms[op][idx]
        scale = probe[op][idx] / nominal  # the host speed while each spec was measured
        direct = preds["latency_ms"].predict(specs)
        direct_probe = preds["latency_probe"].predict(specs) * scale
        stages = over.predict(specs, host_scale=scale)
        for key, p, m in (("direct", direct, meas), ("direct_probe", direct_probe, meas), ("stages", stages, meas),
                          ("host", preds["host_ms"].predict(specs), data["host_ms"].latency_ms[op][idx]),
                          ("gpu", preds["gpu_ms"].predict(specs), data["gpu_ms"].latency_ms[op][idx])):
            rows[key][0].extend(p)
            rows[key][1].extend(m)
        per_op[op] = {"n": len(idx), "direct": accuracy_report(direct, meas), "direct_probe": accuracy_report(direct_probe, meas),
                      "stages": accuracy_report(stages, meas)}
    overall = {k: accuracy_report(np.array(p), np.array(m)) for k, (p, m) in rows.items()}
    doc = {"db": args.db, "families": fams, "holdout": args.holdout, "host_probe_nominal_ms": nominal,
           "overall": overall, "per_op": per_op}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2, default=float))
    for op, r in per_op.items():
        print(f"{op:<20} n={r['n']:>4}  direct {100 * r['direct']['acc10']:5.1f}%  direct+probe {100 * r['direct_probe']['acc10']:5.1f}%"
              f"  stages {100 * r['stages']['acc10']:5.1f}%", file=sys.stderr)
    d, dp, s = overall["direct"], overall["direct_probe"], overall["stages"]
    print(f"gpu_stage_modules: {len(rows['direct'][1])} held-out specs; direct acc10 {100 * d['acc10']:.1f}% MAPE {d['mape']:.1f}% "
          f"Spearman {d['spearman']:.3f}; direct+probe {100 * dp['acc10']:.1f}% / {dp['mape']:.1f}%; "
          f"stages acc10 {100 * s['acc10']:.1f}% MAPE {s['mape']:.1f}% Spearman {s['spearman']:.3f}; "
          f"host stage {100 * overall['host']['acc10']:.1f}%, GPU stage {100 * overall['gpu']['acc10']:.1f}% -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
