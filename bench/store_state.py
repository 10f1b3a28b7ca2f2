"""Does this machine read like a store? Re-measure stored specs once and compare, per regime and op.

    python bench/store_state.py --db data/cpu/cpu2_default3x_plus_2026-11-27.sqlite --n 150

Draws ``--n`` stored samples across op types and loaded/unloaded (the state check's stratified draw),
measures each once on this CPU in the store's units (its reference nominal and scheme adopted, the
allocator pinned, loaded specs under the same background load), and prints new / stored latency per
regime (unloaded per thread count, loaded) and per op: the median ratio and the share within ±10%.
Also prints the reference probe's fastest reading against the store's nominal (the raw speed of
this machine against the store's) and both machines' CPU identity. Stores nothing. Writes JSON and
prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from latpred.errors import MeasurementError
from latpred.profiling.devices import make_device
from latpred.profiling.metadata import identity_differences
from latpred.profiling.runner import adopt_store_reference
from latpred.profiling.state_check import _stratified
from latpred.profiling.store import ProfileStore


def _stats(r: list[float]) -> dict[str, float]:
    a = np.asarray(r)
    return {"n": int(len(a)), "median_ratio": float(np.median(a)), "within10": float(np.mean(np.abs(a - 1) <= 0.10))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default="bench/results/store_state.json")
    args = ap.parse_args(argv)

    with ProfileStore(args.db, readonly=True) as store:
        device_id = store.devices()[0]["id"]
        recorded = store.device(device_id)["metadata"]
        dev = make_device("cpu")
        adopt_store_reference(dev, store, device_id)
        picked = sorted(_stratified(store.samples(device_id=device_id), args.n, np.random.default_rng(args.seed)),
                        key=lambda s: s.spec.utilization)
        rows = []
        try:
            for s in picked:
                try:
                    m = dev.measure(s.spec)
                except MeasurementError:
                    continue
                rows.append({"op": s.spec.op, "utilization": s.spec.utilization, "threads": s.spec.threads,
                             "stored_ms": s.latency_ms, "new_ms": m.latency_ms, "ratio": m.latency_ms / s.latency_ms})
        finally:
            dev.set_utilization(0.0)
    here = dev.metadata()
    groups: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        groups["loaded" if r["utilization"] > 0 else f"unloaded, {r['threads']} thread(s)"].append(r["ratio"])
        ops[r["op"]].append(r["ratio"])
    ref = dev.reference
    speed = ({str(t): ref.floor[t] / ref.nominal[t] for t in ref.floor if t in ref.nominal} if ref is not None else {})
    out = {"db": args.db, "n": len(rows), "regimes": {k: _stats(v) for k, v in groups.items()},
           "ops": {k: _stats(v) for k, v in sorted(ops.items())}, "all": _stats([r["ratio"] for r in rows]),
           "reference_floor_over_nominal": speed, "identity_differences": identity_differences(recorded, here),
           "this_machine": {k: here.get(k) for k in ("cpu_model", "cpu_family", "cpu_model_number", "cpu_isa")},
           "rows": rows}
    for k, v in out["regimes"].items():
        print(f"{k:>24}: {v['n']:3d} specs, new/stored median {v['median_ratio']:.3f}, within ±10% {v['within10']:.0%}")
    for k, v in out["ops"].items():
        print(f"{k:>24}: {v['n']:3d} specs, median {v['median_ratio']:.3f}, within ±10% {v['within10']:.0%}")
    print("reference probe, fastest / store nominal: " + ", ".join(f"{t} thread(s) {v:.2f}x" for t, v in speed.items()))
    print("this machine:", out["this_machine"], "| recorded differences:", out["identity_differences"] or "none known")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    a = out["all"]
    print(f"store_state: {a['n']} specs of {args.db}: new/stored median {a['median_ratio']:.3f}, "
          f"within ±10% {a['within10']:.0%} -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
