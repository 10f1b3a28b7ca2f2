"""Noise floor: measure a random subset of specs twice and report how well the passes agree.

Every accuracy figure of a latency predictor is read against this: a model cannot agree with a
measurement better than two measurements of the same spec agree with each other.

    python bench/repeatability.py --space quick --n 80 --utilization 0 --json bench/results/repeatability.json
    python bench/repeatability.py --window-ms 2 --repeats 7     # compare timing protocols

The two passes run the specs in different random orders (so slow drift of the machine shows up
as disagreement, as it would between profiling and validation). All four statistics (median,
min, mean, 20%-trimmed mean) are computed from the same window timings.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from latpred.profiling.devices import STATISTICS, CpuDevice, TimingProtocol, robust_stat
from latpred.profiling.space import load_space


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Share of pairs within ±5/10/15% (|a/b - 1|) and the MAPE of pass A against pass B."""
    rel = np.abs(a / b - 1.0)
    return {"within5": float(np.mean(rel <= 0.05)), "within10": float(np.mean(rel <= 0.10)),
            "within15": float(np.mean(rel <= 0.15)), "mape": float(np.mean(rel) * 100), "n": int(len(a))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="quick")
    ap.add_argument("--n", type=int, default=80, help="specs to measure (twice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--utilization", type=float, nargs="*", help="keep only these target utilizations")
    ap.add_argument("--threads", type=int, nargs="*", help="keep only these thread counts")
    ap.add_argument("--window-ms", type=float, default=TimingProtocol.window_ms)
    ap.add_argument("--repeats", type=int, default=TimingProtocol.repeats)
    ap.add_argument("--warmup-ms", type=float, default=TimingProtocol.warmup_ms)
    ap.add_argument("--max-sample-ms", type=float, default=TimingProtocol.max_sample_ms)
    ap.add_argument("--json", default="bench/results/repeatability.json")
    args = ap.parse_args(argv)

    space = load_space(args.space)
    specs = space.specs()
    if args.utilization is not None:
        specs = [s for s in specs if s.utilization in args.utilization]
    if args.threads is not None:
        specs = [s for s in specs if s.threads in args.threads]
    rng = random.Random(args.seed)
    specs = rng.sample(specs, min(args.n, len(specs)))
    protocol = TimingProtocol(warmup_ms=args.warmup_ms, window_ms=args.window_ms, repeats=args.repeats,
                              max_sample_ms=args.max_sample_ms)
    device = CpuDevice(protocol)
    timings: dict[str, list[tuple[float, ...]]] = {s.key: [] for s in specs}
    t0 = time.perf_counter()
    try:
        for _ in range(2):
            order = sorted(specs, key=lambda s: (s.utilization, rng.random()))
            for s in order:
                timings[s.key].append(device.measure(s).timings_ms)
    finally:
        device.close()
    wall = time.perf_counter() - t0

    result: dict = {"space": space.name, "n_specs": len(specs), "protocol": protocol.__dict__, "wall_s": wall,
                    "statistics": {}, "per_op": {}}
    for stat in STATISTICS:
        a = np.array([robust_stat(timings[s.key][0], stat) for s in specs])
        b = np.array([robust_stat(timings[s.key][1], stat) for s in specs])
        result["statistics"][stat] = agreement(a, b)
        if stat == protocol.statistic:
            for op in sorted({s.op for s in specs}):
                idx = [i for i, s in enumerate(specs) if s.op == op]
                result["per_op"][op] = agreement(a[idx], b[idx])
            by_util = {}
            for u in sorted({s.utilization for s in specs}):
                idx = [i for i, s in enumerate(specs) if s.utilization == u]
                by_util[str(u)] = agreement(a[idx], b[idx])
            result["per_utilization"] = by_util
            result["median_latency_ms"] = float(statistics.median(a))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    m = result["statistics"][protocol.statistic]
    best = max(result["statistics"].items(), key=lambda kv: kv[1]["within10"])
    print(f"repeatability: {len(specs)} specs x2 in {wall:.0f}s | window {args.window_ms}ms x{args.repeats} | "
          f"{protocol.statistic}: within10 {m['within10']:.1%}, MAPE {m['mape']:.2f}% | best statistic {best[0]} "
          f"within10 {best[1]['within10']:.1%} | -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
