"""How much of the reference probe's reading should a measurement be divided by? Two stores of the same specs.

    python bench/reference_exponent.py STORE_A STORE_B [--within STORE_C] [--json bench/results/reference_exponent.json]

For every spec both stores measured with reference readings (unloaded specs: their ``extra`` holds
``raw_timings_ms`` and the ``reference_ms`` read after each window), recomputes the latency as the profiler
does from ``raw x (nominal / reference) ** beta`` for beta from 0 (raw: the minimum over the windows) to 1
(the shipped normalisation: their median; every beta > 0 takes the median), with one nominal per thread
count shared by both stores (the median reading), and reports how well the two stores agree: the share
within ±10%, the median ratio B / A, the share within ±10% once that median offset is removed, and the
MAPE. Per class of bytes moved per call it also reports the beta that levels the median ratio (on a grid of
1/8) and the agreement at that beta and at beta = 1: how much of the probe's reading a small and a large spec
follow (the evidence behind the working-set scheme, :mod:`latpred.profiling.reference`). ``--within STORE_C``
keeps only the specs that store also holds (e.g. a re-measured subset). No measurement. Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from latpred.ops import get_op
from latpred.profiling.store import ProfileStore

BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: classes of MiB moved per call, and the grid of beta the levelling one is read from
MIB_EDGES = (0.0, 4.0, 16.0, 64.0, 256.0, float("inf"))
BETA_GRID = tuple(k / 8 for k in range(13))


def _load(path: str) -> dict[str, tuple[int, np.ndarray, np.ndarray, float]]:
    """Unloaded samples with reference readings: key -> (threads, raw windows, readings, MiB moved per call)."""
    if not Path(path).is_file():
        raise SystemExit(f"no store at {path!r}")
    with ProfileStore(path) as store:
        samples = store.samples()
    return {s.spec.key: (int(s.extra.get("threads", s.spec.threads)), np.asarray(s.extra["raw_timings_ms"], float),
                         np.asarray(s.extra["reference_ms"], float),
                         get_op(s.spec.op).costs(s.spec).bytes_moved(s.spec.dtype) / 2**20)
            for s in samples if s.spec.utilization == 0 and s.extra.get("raw_timings_ms") and s.extra.get("reference_ms")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store_a")
    ap.add_argument("store_b")
    ap.add_argument("--within", help="keep only the specs this third store also holds")
    ap.add_argument("--json", default="bench/results/reference_exponent.json")
    args = ap.parse_args(argv)
    a, b = _load(args.store_a), _load(args.store_b)
    common = sorted(set(a) & set(b) & (set(_load(args.within)) if args.within else set(a)))
    if len(common) < 10:
        raise SystemExit(f"the stores share {len(common)} specs with reference readings; need at least 10")
    readings: dict[int, list[float]] = {}
    for store in (a, b):
        for k in common:
            readings.setdefault(store[k][0], []).extend(store[k][2].tolist())
    nominal = {t: float(np.median(v)) for t, v in readings.items()}

    def latency(s: tuple[int, np.ndarray, np.ndarray, float], beta: float) -> float:
        t, raw, ref, _ = s
        v = raw * (nominal[t] / ref) ** beta
        return float(np.median(v) if beta > 0 else np.min(v))  # the profiler's statistics: normalised median, raw minimum

    rows = {}
    for beta in BETAS:
        r = np.array([latency(b[k], beta) / latency(a[k], beta) for k in common])
        off = float(np.median(r))
        rows[beta] = {"within10": float(np.mean(np.abs(r - 1) <= 0.1)), "median_ratio": off,
                      "within10_offset_removed": float(np.mean(np.abs(r / off - 1) <= 0.1)),
                      "mape": float(np.mean(np.abs(r - 1)) * 100)}
    mib = np.array([a[k][3] for k in common])
    grid = np.array([[latency(b[k], beta) / latency(a[k], beta) for beta in BETA_GRID] for k in common])
    by_size = []
    for lo, hi in zip(MIB_EDGES[:-1], MIB_EDGES[1:]):
        m = (mib >= lo) & (mib < hi)
        if not m.any():
            continue
        med = np.median(grid[m], axis=0)
        i, one = int(np.argmin(np.abs(np.log(med)))), BETA_GRID.index(1.0)
        by_size.append({"mib": [lo, hi], "specs": int(m.sum()), "levelling_beta": BETA_GRID[i], "median_at_levelling": float(med[i]),
                        "within10_at_levelling": float(np.mean(np.abs(grid[m, i] - 1) <= 0.1)),
                        "median_at_beta1": float(med[one]), "within10_at_beta1": float(np.mean(np.abs(grid[m, one] - 1) <= 0.1))})
    doc = {"store_a": args.store_a, "store_b": args.store_b, "within": args.within, "specs": len(common), "nominal_ms": nominal,
           "by_beta": {str(k): v for k, v in rows.items()}, "by_size": by_size}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1))
    betas = "; ".join(f"beta {k:g}: within10 {100 * v['within10']:.1f}%, B/A {v['median_ratio']:.3f}, offset removed "
                      f"{100 * v['within10_offset_removed']:.1f}%, MAPE {v['mape']:.1f}%" for k, v in rows.items())
    sizes = ", ".join(f"{r['mib'][0]:g}-{r['mib'][1]:g}: {r['levelling_beta']:g} (n={r['specs']}, median at 1: "
                      f"{r['median_at_beta1']:.3f})" for r in by_size)
    print(f"reference_exponent: {len(common)} specs; {betas}; levelling beta by MiB moved: {sizes} -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
