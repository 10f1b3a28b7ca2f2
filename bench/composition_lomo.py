"""Composition fitted on real models, cross-validated leave-one-model-out (no new measurement).

    python bench/composition_lomo.py --predictor P --validation bench/results/whole_model.json \
        [--calibration-cases calibration.json] [--json bench/results/composition_lomo.json]

Reads the measured cases of a whole-model validation (``bench/whole_model.py`` or
``latpred validate --json``) and scores four ways of composing the predictor's isolated node
latencies into model latency:

* ``plain_sum``: the sum of isolated node predictions;
* ``predictor``: the composition stored in the predictor (e.g. fitted on random networks);
* ``lomo_models``: for each model, a composition fitted on the *other* models' cases only;
* ``lomo_models_random`` (with ``--calibration-cases``): the same plus the random-network cases.

No model is ever scored with a composition fitted on its own measurements. Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from latpred.graph.calibrate import CalibrationCase, cases_from_validation, leave_one_model_out, recompute_features
from latpred.graph.compose import CLASSES
from latpred.metrics import accuracy_report
from latpred.predictor import Predictor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--validation", required=True, action="append",
                    help="JSON of bench/whole_model.py or latpred validate --json (repeat it for several)")
    ap.add_argument("--calibration-cases", help="random-network cases written by latpred calibrate --cases")
    ap.add_argument("--json", default="bench/results/composition_lomo.json")
    args = ap.parse_args(argv)

    pred = Predictor.load(args.predictor)
    cases = [c for path in args.validation for c in cases_from_validation(pred, json.loads(Path(path).read_text()))]
    true = np.array([c.measured_ms for c in cases])
    F = np.array([c.features for c in cases])
    u = np.array([c.utilization for c in cases])
    threads, dt = [c.threads for c in cases], pred.default_threads
    variants = {"plain_sum": F[:, :len(CLASSES)].sum(axis=1),  # every class's isolated ms, the fallback's too
                "predictor": (F * pred.composition.matrix(u, threads, dt)).sum(axis=1),
                "lomo_models": leave_one_model_out(cases, default_threads=dt)}
    if args.calibration_cases:
        extra = recompute_features(pred, [CalibrationCase(**c) for c in json.loads(Path(args.calibration_cases).read_text())])
        variants["lomo_models_random"] = leave_one_model_out(cases, extra, default_threads=dt)
    groups = sorted({c.group for c in cases})
    doc = {"validation": args.validation, "predictor": args.predictor, "n_cases": len(cases), "models": groups,
           "metrics": {k: accuracy_report(v, true) for k, v in variants.items()},
           "per_model": {k: {g: accuracy_report(v[[c.group == g for c in cases]], true[[c.group == g for c in cases]])["mape"]
                             for g in groups} for k, v in variants.items()},
           "cases": [{"model": c.model, "batch_size": c.batch_size, "utilization": c.utilization, "threads": c.threads,
                      "measured_ms": c.measured_ms,
                      **{k: float(v[i]) for k, v in variants.items()}} for i, c in enumerate(cases)]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    print(f"composition_lomo: {len(cases)} cases of {len(groups)} models; " + "; ".join(
        f"{k} acc10 {100 * m['acc10']:.1f}% MAPE {m['mape']:.1f}%" for k, m in doc["metrics"].items()) + f" -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
