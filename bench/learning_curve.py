"""Learning curve: does more profiling data still buy accuracy? (auto-selection on growing training sets)

    python bench/learning_curve.py --db data/cpu/cpu2_default_ref_2026-11-27.sqlite
    python bench/learning_curve.py --db S --fractions 0.25,0.5,1 --families gp,ridge_trees,poly,svr,ridge

Holds out ``--holdout`` of each op type's specs (seeded), then runs the cross-validated auto-selection
on the first 25%, 50%, ... 100% of the rest (nested: every smaller training set is inside the larger
ones) and scores each predictor on the same held-out specs. A curve still rising at 100% says that
profiling more specs of the space (``latpred profile --seed N`` draws another sample of it) pays; a
flat one says that the regressors or the measurements are the limit. Writes JSON and prints one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from latpred.metrics import accuracy_report
from latpred.profiling.store import ProfileStore
from latpred.selection import load_training_data, select


def _fractions(text: str) -> list[float]:
    try:
        out = sorted(float(f) for f in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions must be comma-separated numbers, got {text!r}") from None
    if not out or out[0] <= 0 or out[-1] > 1:
        raise argparse.ArgumentTypeError(f"--fractions must lie in (0, 1], got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--device-id", type=int)
    ap.add_argument("--fractions", type=_fractions, default=[0.25, 0.5, 1.0], help="of the training pool (default: 0.25,0.5,1)")
    ap.add_argument("--families", help="comma-separated (default: all)")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench/results/learning_curve.json")
    args = ap.parse_args(argv)
    if not 0 < args.holdout < 1:
        ap.error(f"--holdout must lie in (0, 1), got {args.holdout}")

    with ProfileStore(args.db, readonly=True) as store:
        data = load_training_data(store, device_id=args.device_id)
    test_idx, pool = data.holdout_indices(args.holdout, args.seed)
    test = data.subset(test_idx)
    families = args.families.split(",") if args.families else None
    points = []
    for frac in args.fractions:
        keep = {op: rows[: max(min(10, len(rows)), int(round(frac * len(rows))))] for op, rows in pool.items()}
        train = data.subset(keep)
        t0 = time.perf_counter()
        pred, report = select(train, families=families, cv=args.cv, seed=args.seed)
        ops = [op for op in test.ops if op in train.ops]
        held = accuracy_report(np.concatenate([pred.predict(test.specs[op]) for op in ops]),
                               np.concatenate([test.latency_ms[op] for op in ops]))
        points.append({"fraction": frac, "n_train": sum(len(rows) for rows in keep.values()),
                       "held_out": held, "cv": report.overall["auto-selection"], "train_s": time.perf_counter() - t0})
        print(f"  {frac:.2f} of the pool ({points[-1]['n_train']} samples): held-out acc10 {100 * held['acc10']:.1f}%, "
              f"MAPE {held['mape']:.1f}%", file=sys.stderr, flush=True)
    doc = {"db": args.db, "holdout": args.holdout, "n_test": sum(len(v) for v in test_idx.values()),
           "families": families or "all", "points": points}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    curve = ", ".join(f"{p['n_train']}: {100 * p['held_out']['acc10']:.1f}%/{p['held_out']['mape']:.1f}%" for p in points)
    print(f"learning curve (training samples: held-out acc10/MAPE on {doc['n_test']} samples): {curve} -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
