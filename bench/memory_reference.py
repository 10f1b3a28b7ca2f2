"""Does the reference kernel follow memory-bound ops? A compute and a memory reading side by side.

    python bench/memory_reference.py [SECONDS] [--threads 2] [--json bench/results/memory_reference.json]

Alternates, for SECONDS (default 150), on ``--threads`` intra-op threads: a memory-bound layer (VGG16's
25088->4096 classifier at batch 1: 392 MiB of weights streamed per call), a compute-bound layer (a
64-channel 3x3 convolution on 8x64x56x56), the profiler's reference probe
(:class:`latpred.profiling.reference.ReferenceProbe`: small, cache-resident) and a memory stream (a copy
of a 256 MiB tensor). Each reading is the minimum of a few calls. Reports, for both layers, the spread
(standard deviation of the log) raw, divided by the reference probe and divided by the stream, and
the log correlation with each. Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _timing import min_ms  # bench/_timing.py

from latpred.profiling.reference import ReferenceProbe


def _stats(layer: np.ndarray, ref: np.ndarray, stream: np.ndarray) -> dict[str, float]:
    ll, lr, ls = np.log(layer), np.log(ref), np.log(stream)
    return {"median_ms": float(np.median(layer)), "std_log": float(ll.std()),
            "std_log_over_reference": float((ll - lr).std()), "std_log_over_stream": float((ll - ls).std()),
            "corr_reference": float(np.corrcoef(ll, lr)[0, 1]), "corr_stream": float(np.corrcoef(ll, ls)[0, 1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", nargs="?", type=float, default=150.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="bench/results/memory_reference.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fc, xf = torch.nn.Linear(25088, 4096).eval(), torch.randn(1, 25088)
    conv, xc = torch.nn.Conv2d(64, 64, 3, padding=1).eval(), torch.randn(8, 64, 56, 56)
    src, dst = torch.randn(64 * 2**20), torch.empty(64 * 2**20)  # 256 MiB each
    probe = ReferenceProbe()
    rows = []
    t0 = time.time()
    with torch.inference_mode():
        fc(xf), conv(xc), dst.copy_(src), probe.probe(args.threads)
        while time.time() - t0 < args.seconds:
            rows.append((time.time() - t0, min_ms(lambda: fc(xf), 3), min_ms(lambda: conv(xc), 3),
                         probe.probe(args.threads), min_ms(lambda: dst.copy_(src), 2)))
    r = np.array(rows)
    doc = {"samples": len(r), "seconds": args.seconds, "threads": args.threads,
           "reference_ms_median": float(np.median(r[:, 3])), "stream_ms_median": float(np.median(r[:, 4])),
           "memory_bound_linear": _stats(r[:, 1], r[:, 3], r[:, 4]), "compute_bound_conv": _stats(r[:, 2], r[:, 3], r[:, 4]),
           "corr_reference_stream": float(np.corrcoef(np.log(r[:, 3]), np.log(r[:, 4]))[0, 1]), "rows": r.tolist()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc))
    m, c = doc["memory_bound_linear"], doc["compute_bound_conv"]
    print(f"memory_reference: {len(r)} readings; linear std(log) {m['std_log']:.3f}, /reference {m['std_log_over_reference']:.3f}, "
          f"/stream {m['std_log_over_stream']:.3f} (corr {m['corr_reference']:.2f} / {m['corr_stream']:.2f}); conv std(log) "
          f"{c['std_log']:.3f}, /reference {c['std_log_over_reference']:.3f}, /stream {c['std_log_over_stream']:.3f} "
          f"(corr {c['corr_reference']:.2f} / {c['corr_stream']:.2f}) -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
