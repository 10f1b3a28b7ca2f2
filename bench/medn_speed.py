"""MEDN size and prediction speed: parameters, bytes, and ms to predict 10,000 mixed-type samples.

    python bench/medn_speed.py --db latpred-out/default.sqlite

Trains MEDN briefly on the store (speed and size do not depend on how long it trains), then
times one network call on 10,000 featurized rows drawn from every op type: grouped by op type (as
``Predictor.predict_log_many`` sends them) and interleaved (sorted inside ``predict``).
Target (issue 3): <= 100k parameters, <= 10 ms per 10,000 samples.
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
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per layout and round (5 rounds)")
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
    grouped = idx[np.argsort(T[idx], kind="stable")]  # the Predictor's layout: each op type's rows together

    def timed(rows: np.ndarray) -> list[float]:
        m.predict(Xp[rows], T[rows])
        times = []
        for _ in range(args.repeats):
            Xb, Tb = Xp[rows], T[rows]
            t = time.perf_counter()
            m.predict(Xb, Tb)
            times.append((time.perf_counter() - t) * 1e3)
        return times

    # alternate the two layouts so that a slow episode of the machine hits both alike
    t_grouped, t_mixed = [], []
    for _ in range(5):
        t_grouped += timed(grouped)
        t_mixed += timed(idx)
    config, arrays = m.to_state()
    out = {"n_samples": args.n, "n_ops": len(data.ops), "parameters": m.n_parameters(),
           "bytes": int(sum(a.nbytes for a in arrays.values())), "predict_ms_median": float(np.median(t_grouped)),
           "predict_ms_min": float(np.min(t_grouped)), "interleaved_ms_median": float(np.median(t_mixed)),
           "interleaved_ms_min": float(np.min(t_mixed))}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"medn: {out['parameters']:,} parameters, {out['bytes']:,} bytes; {args.n:,} mixed samples over "
          f"{out['n_ops']} op types in {out['predict_ms_median']:.2f} ms median (min {out['predict_ms_min']:.2f}) grouped by "
          f"op type as the Predictor sends them, {out['interleaved_ms_median']:.2f} ms (min {out['interleaved_ms_min']:.2f}) "
          f"interleaved -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
