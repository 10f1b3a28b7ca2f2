"""Regression-model zoo, MEDN and auto-selection on a profiled store, scored on held-out samples.

    python bench/selection.py --db latpred-out/default.sqlite --json bench/results/selection.json

Splits each op type's samples 80/20 (grouped by spec, seeded), runs the cross-validated
selection on the 80%, then scores on the held-out 20%: the auto-selected predictor and every
single-family baseline (that family for all op types), per op and overall (sample-weighted).
Prints the selection table, the held-out comparison, µs/sample and bytes, and the store's
re-measurement noise floor from bench/results/repeatability*.json when present, and the store's own: how
often two passes of one spec agree (the selection report's ``noise_floor``).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

from latpred.metrics import accuracy_report
from latpred.profiling.store import ProfileStore
from latpred.selection import load_training_data, select


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--device-id", type=int)
    ap.add_argument("--families", help="comma-separated (default: all)")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench/results/selection.json")
    args = ap.parse_args(argv)

    with ProfileStore(args.db, readonly=True) as store:
        data = load_training_data(store, device_id=args.device_id)
    held, rest = data.holdout_indices(args.holdout, args.seed)
    train = data.subset({op: np.sort(rows) for op, rows in rest.items()})
    test = data.subset({op: np.sort(rows) for op, rows in held.items()})
    families = args.families.split(",") if args.families else None
    t0 = time.perf_counter()
    predictor, report = select(train, families=families, cv=args.cv, seed=args.seed,
                               progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    train_s = time.perf_counter() - t0

    def held_out(pred) -> dict:
        per_op = {op: accuracy_report(pred.predict(test.specs[op]), test.latency_ms[op]) for op in test.ops}
        allp = np.concatenate([pred.predict(test.specs[op]) for op in test.ops])
        allt = np.concatenate([test.latency_ms[op] for op in test.ops])
        return {"overall": accuracy_report(allp, allt), "per_op": per_op}

    results = {"auto-selection": held_out(predictor)}
    for fam in report.settings["families"]:
        results[f"{fam}-only"] = held_out(report.family_predictor(fam, predictor))
    noise = {}
    for f in sorted(glob.glob("bench/results/repeatability*.json")):
        r = json.loads(Path(f).read_text())
        if "profiler" in r:
            noise[Path(f).name] = {k: r["profiler"][k] for k in ("within10", "mape")}
    out = {"db": args.db, "n_train": sum(len(v) for v in train.latency_ms.values()),
           "n_test": sum(len(v) for v in test.latency_ms.values()), "selection_s": train_s,
           "selection": report.to_dict(), "held_out": results, "noise_floor": noise}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=str))

    print(report.table())
    print(f"\nheld-out ({out['n_test']} samples; trained on {out['n_train']}):")
    print(f"{'predictor':20s} {'acc10':>6s} {'acc5':>6s} {'MAPE%':>7s} {'R2log':>6s} {'spearman':>8s}")
    for name, r in results.items():
        m = r["overall"]
        print(f"{name:20s} {m['acc10']:6.1%} {m['acc5']:6.1%} {m['mape']:7.2f} {m['r2_log']:6.3f} {m['spearman']:8.4f}")
    for name, m in noise.items():
        print(f"noise floor {name}: within10 {m['within10']:.1%}, MAPE {m['mape']:.2f}%")
    passes = (report.noise_floor or {}).get("overall")
    floor = f"; the store's passes agree within 10% for {passes['within10']:.1%}" if passes else ""
    auto = results["auto-selection"]["overall"]
    best_single = max((r["overall"]["acc10"], n) for n, r in results.items() if n != "auto-selection")
    print(f"selection: held-out acc10 {auto['acc10']:.1%} (MAPE {auto['mape']:.2f}%, R2log {auto['r2_log']:.3f}) vs best "
          f"single family {best_single[1]} {best_single[0]:.1%}{floor}; selection took {train_s:.0f}s -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
