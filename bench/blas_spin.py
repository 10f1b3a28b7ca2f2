"""How much numpy's spinning BLAS threads slow torch work timed right after them, and what one BLAS thread does.

    python bench/blas_spin.py

A 64-channel 3x3 convolution on 56x56 maps (batch 1, torch's default threads) is timed ``--calls`` times
after each of: nothing, a sleep of ``delay`` ms, and one numpy matrix product (400 x 300 x 1,000) followed by
the same sleep, with numpy's BLAS on its default threads and then held on one thread
(:func:`latpred.blas.single_threaded_blas`, which latpred's devices, edge runner and predictor use).
Reports each median in ms and the slowdown after the product against the same sleep alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latpred.blas import single_threaded_blas


def _median_ms(pre, delay_s: float, calls: int, conv, x) -> float:
    ts = []
    for _ in range(calls):
        pre()
        if delay_s:
            time.sleep(delay_s)
        t = time.perf_counter()
        conv(x)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def _pair(delay_s: float, calls: int, conv, x, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(median ms after the sleep alone, median ms after a numpy product and the sleep)."""
    return (_median_ms(lambda: None, delay_s, calls, conv, x),
            _median_ms(lambda: a @ b, delay_s, calls, conv, x))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--delays-ms", default="0,5,20")
    ap.add_argument("--json", default="bench/results/blas_spin.json")
    args = ap.parse_args(argv)
    delays = [float(v) / 1e3 for v in args.delays_ms.split(",")]
    rng = np.random.default_rng(0)
    a, b = rng.random((400, 300)), rng.random((300, 1000))
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(1, 64, 56, 56)
    rows = []
    with torch.inference_mode():
        for _ in range(20):
            conv(x)
        for mode in ("default", "one thread"):
            for d in delays:
                if mode == "default":
                    quiet, after = _pair(d, args.calls, conv, x, a, b)
                else:
                    with single_threaded_blas():
                        time.sleep(0.5)  # threads left spinning by the default-mode runs time out
                        quiet, after = _pair(d, args.calls, conv, x, a, b)
                rows.append({"blas": mode, "delay_ms": d * 1e3, "quiet_ms": quiet, "after_product_ms": after,
                             "slowdown": after / quiet})
    doc = {"calls": args.calls, "torch_threads": torch.get_num_threads(), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    worst = {m: max(r["slowdown"] for r in rows if r["blas"] == m) for m in ("default", "one thread")}
    print(f"blas_spin: conv after a numpy product, worst slowdown over delays {args.delays_ms} ms: "
          f"{worst['default']:.1f}x with numpy's default BLAS threads, {worst['one thread']:.1f}x with one "
          f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
