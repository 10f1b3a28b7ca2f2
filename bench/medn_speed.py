"""MEDN size and prediction speed: parameters, bytes, and ms to predict 10,000 mixed-type samples.

    python bench/medn_speed.py --db latpred-out/default.sqlite

Trains MEDN briefly on the store (speed and size do not depend on how long it trains), then
times the Predictor path (featurized rows, grouped by op type, one network call) on 10,000 rows
drawn from every op type. Target (issue 3): <= 100k parameters, <= 10 ms per 10,000 samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from latpred.profiling.store import ProfileStore
from latpred.regressors import MEDNRegressor
from latpred.selection import load_training_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--json", default="bench/results/medn_speed.json")
    args = ap.parse_args(argv)
    with ProfileStore(args.db, readonly=True) as store:
        data = load_training_data(store)
    X = {op: data.X(op) for op in data.ops}
    width = max(x.shape[1] for x in X.values())
    rows, tasks, ys = [], [], []
    for i, op in enumerate(data.ops):
        pad = np.full((len(X[op]), width), np.nan)
        pad[:, :X[op].shape[1]] = X[op]
        rows.append(pad)
        tasks.append(np.full(len(pad), i))
        ys.append(np.log(data.latency_ms[op]))
    Xp, T, Y = np.vstack(rows), np.concatenate(tasks), np.concatenate(ys)
    m = MEDNRegressor(max_epochs=5).fit(Xp, Y, tasks=T)
    idx = np.random.default_rng(0).integers(0, len(Y), args.n)
    Xb, Tb = Xp[idx], T[idx]
    m.predict(Xb, Tb)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        m.predict(Xb, Tb)
        times.append((time.perf_counter() - t) * 1e3)
    config, arrays = m.to_state()
    out = {"n_samples": args.n, "n_ops": len(data.ops), "parameters": m.n_parameters(),
           "bytes": int(sum(a.nbytes for a in arrays.values())), "predict_ms_median": float(np.median(times)),
           "predict_ms_min": float(np.min(times))}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"medn: {out['parameters']:,} parameters, {out['bytes']:,} bytes; {args.n:,} mixed samples over "
          f"{out['n_ops']} op types in {out['predict_ms_median']:.2f} ms (min {out['predict_ms_min']:.2f}) -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
