"""Run-to-run drift of a whole-model measurement, and how much a reference kernel explains.

    python bench/drift.py [SECONDS] [--json bench/results/drift.json]

Alternates, for SECONDS (default 150): resnet18 at batch 1 on 2 threads (min of 3 calls) and a
reference workload (a 64-channel 3x3 conv at 56x56, a 256x256 matmul, an element-wise op; min of
10 calls). Reports the spread (standard deviation of the log) of the model's latency, its
correlation with the reference, and the spread left after dividing by the reference (raw, and by
a 5-point rolling median of it). Needs torchvision; random weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from _timing import min_ms  # bench/_timing.py


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", nargs="?", type=float, default=150.0)
    ap.add_argument("--json", default="bench/results/drift.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224)
    conv, xc = torch.nn.Conv2d(64, 64, 3, padding=1).eval(), torch.randn(1, 64, 56, 56)
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def reference() -> None:
        conv(xc)
        torch.mm(a, b)
        (xc * 2 + 1).relu()

    rows = []
    t0 = time.time()
    with torch.inference_mode():
        for _ in range(5):
            model(x)
            reference()
        while time.time() - t0 < args.seconds:
            rows.append((time.time() - t0, min_ms(lambda: model(x), 3), min_ms(reference, 10)))
    r = np.array(rows)
    lm, lr = np.log(r[:, 1]), np.log(r[:, 2])
    padded = np.pad(lr, 2, mode="edge")
    smooth = np.median(np.lib.stride_tricks.sliding_window_view(padded, 5), axis=1)
    doc = {"samples": len(r), "seconds": args.seconds, "model_ms": {"median": float(np.median(r[:, 1])),
                                                                      "min": float(r[:, 1].min()), "max": float(r[:, 1].max())},
           "reference_ms_median": float(np.median(r[:, 2])), "corr_log": float(np.corrcoef(lm, lr)[0, 1]),
           "std_log_model": float(lm.std()), "std_log_model_over_reference": float((lm - lr).std()),
           "std_log_model_over_smoothed_reference": float((lm - smooth).std()), "rows": r.tolist()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc))
    print(f"drift: resnet18 b1 {len(r)} runs, median {doc['model_ms']['median']:.1f} ms "
          f"({doc['model_ms']['min']:.1f}..{doc['model_ms']['max']:.1f}), std(log) {doc['std_log_model']:.3f}; "
          f"corr with reference {doc['corr_log']:.2f}; normalised std(log) {doc['std_log_model_over_reference']:.3f} "
          f"(smoothed {doc['std_log_model_over_smoothed_reference']:.3f}) -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
