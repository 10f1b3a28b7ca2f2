"""Noise floor: measure a random subset of specs twice, as the profiler does, and compare.

Every accuracy figure of a latency predictor is read against this: a model cannot agree with a
measurement better than two measurements of the same spec agree with each other.

    python bench/repeatability.py --space default --n 120 --json bench/results/repeatability.json
    python bench/repeatability.py --window-ms 2 --repeats 7     # compare timing protocols

The profiler measures each spec in ``--passes`` passes spread over the run and reduces the
pooled windows (min when unloaded, median under load). To reproduce that twice, this bench runs
``2 x passes`` passes over the subset, each in a new random order, and builds measurement A from
the even passes and B from the odd ones. It also reports single-pass agreement and every
statistic (median, min, mean, 20%-trimmed mean) computed from the same windows. On a CPU that
normalises unloaded windows by a reference kernel (the default), the same measurements are also
reduced the old way — the minimum of the raw windows — so ``raw_min`` shows, from one run, what the
normalisation buys (``--reference-calls 0`` measures raw only).
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

from latpred.profiling.devices import STATISTICS, TimingProtocol, make_device, robust_stat
from latpred.profiling.space import load_space


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Share of pairs within ±5/10/15% (|a/b - 1|) and the MAPE of pass A against pass B."""
    rel = np.abs(a / b - 1.0)
    return {"within5": float(np.mean(rel <= 0.05)), "within10": float(np.mean(rel <= 0.10)),
            "within15": float(np.mean(rel <= 0.15)), "mape": float(np.mean(rel) * 100), "n": int(len(a))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="quick")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--n", type=int, default=80, help="specs to measure (twice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--utilization", type=float, nargs="*", help="keep only these target utilizations")
    ap.add_argument("--threads", type=int, nargs="*", help="keep only these thread counts")
    ap.add_argument("--window-ms", type=float, default=TimingProtocol.window_ms)
    ap.add_argument("--repeats", type=int, default=TimingProtocol.repeats)
    ap.add_argument("--warmup-ms", type=float, default=TimingProtocol.warmup_ms)
    ap.add_argument("--max-sample-ms", type=float, default=TimingProtocol.max_sample_ms)
    ap.add_argument("--passes", type=int, default=3, help="passes per measurement, as in `latpred profile`")
    ap.add_argument("--reference-calls", type=int, default=TimingProtocol.reference_calls,
                    help="reference calls after each unloaded window (0: raw timings, the minimum)")
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
                              max_sample_ms=args.max_sample_ms, reference_calls=args.reference_calls)
    device = make_device(args.device, protocol=protocol)
    timings: dict[str, list[tuple[float, ...]]] = {s.key: [] for s in specs}
    raw: dict[str, list[tuple[float, ...]]] = {s.key: [] for s in specs}  # un-normalised windows
    t0 = time.perf_counter()
    try:
        for _ in range(2 * args.passes):
            for s in sorted(specs, key=lambda s: (s.utilization, rng.random())):
                m = device.measure(s)
                timings[s.key].append(m.timings_ms)
                raw[s.key].append(tuple(m.extra.get("raw_timings_ms", m.timings_ms)))
    finally:
        device.close()
    wall = time.perf_counter() - t0

    def pooled(s, parity: int, source=timings) -> list[float]:
        return [t for w in source[s.key][parity::2] for t in w]

    def compare(select) -> dict[str, float]:
        a = np.array([select(s, 0) for s in specs])
        b = np.array([select(s, 1) for s in specs])
        out = agreement(a, b)
        for name, keep in (("unloaded", lambda s: s.utilization == 0), ("loaded", lambda s: s.utilization > 0),
                           ("one_thread", lambda s: s.threads == 1), ("multi_thread", lambda s: (s.threads or 0) > 1)):
            idx = [i for i, s in enumerate(specs) if keep(s)]
            if idx:
                out[name] = agreement(a[idx], b[idx])
        return out

    result: dict = {"device": device.metadata(),
                    "space": space.name, "n_specs": len(specs), "passes": args.passes, "protocol": protocol.__dict__,
                    "wall_s": wall, "profiler": compare(lambda s, par: device.reduce(s, pooled(s, par))),
                    "single_pass": compare(lambda s, par: device.reduce(s, timings[s.key][par])),
                    "raw_min": compare(lambda s, par: protocol.reduce(s, pooled(s, par, raw))),  # the raw protocol
                    "statistics": {st: compare(lambda s, par, st=st: robust_stat(pooled(s, par), st))
                                   for st in STATISTICS}, "per_op": {}}
    a = np.array([device.reduce(s, pooled(s, 0)) for s in specs])
    b = np.array([device.reduce(s, pooled(s, 1)) for s in specs])
    for op in sorted({s.op for s in specs}):
        idx = [i for i, s in enumerate(specs) if s.op == op]
        result["per_op"][op] = agreement(a[idx], b[idx])
    result["median_latency_ms"] = float(statistics.median(a))
    result["raw"] = {s.key: [device.reduce(s, w) for w in timings[s.key]] for s in specs}  # per-pass latencies
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    m, one, old = result["profiler"], result["single_pass"], result["raw_min"]
    print(f"repeatability [{args.device}]: {len(specs)} specs, {2 * args.passes} passes in {wall:.0f}s | window {args.window_ms}ms "
          f"x{args.repeats} | {args.passes}-pass measurements: within10 {m['within10']:.1%}, MAPE {m['mape']:.2f}% "
          f"(unloaded {m.get('unloaded', {}).get('within10', float('nan')):.1%}, loaded "
          f"{m.get('loaded', {}).get('within10', float('nan')):.1%}) | single pass within10 {one['within10']:.1%} "
          f"| raw-window minimum within10 {old['within10']:.1%}, MAPE {old['mape']:.2f}% | -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
