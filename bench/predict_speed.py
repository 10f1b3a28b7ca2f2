"""Speed of whole-graph prediction: one condition, and 1,000 conditions in one call, for resnet50.

    python bench/predict_speed.py --predictor latpred-out/predictor

The graph is traced once. "first call" includes building the graph's prediction plan (unique specs,
hyper-parameter columns, affine costs), "steady" is every later call. The 1,000 conditions draw batch 1-64,
utilization 0-0.9 and 1 or 2 threads (most rows outside what the `default` space profiles, so guarded and
extrapolated); a second draw stays inside it (batch 1-32, loads 0-0.5 on one thread, unloaded on one or two). Also reported as a ratio to
one real measurement of the model on this CPU (batch 1, all threads). Targets (issue 4): one call
<= 2 ms; 1,000 (batch, utilization) conditions <= 100 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latpred.graph.models import load_model
from latpred.graph.trace import trace
from latpred.predictor import load_predictor
from latpred.profiling.devices import CpuDevice


def _best(fn, repeats: int) -> tuple[float, float]:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return float(min(ts)), float(np.median(ts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--model", default="torchvision:resnet50")
    ap.add_argument("--conditions", type=int, default=1000)
    ap.add_argument("--json", default="bench/results/predict_speed.json")
    args = ap.parse_args(argv)
    pred = load_predictor(args.predictor)  # a Predictor or an overlap predictor directory
    ref = load_model(args.model)
    g = trace(ref.module, ref.example_input(1), name=ref.name)
    t = time.perf_counter()
    pred.predict_graph(g)
    first_ms = (time.perf_counter() - t) * 1e3
    one_min, one_med = _best(lambda: pred.predict_graph(g), 50)
    rng = np.random.default_rng(0)
    b = rng.choice([1, 2, 4, 8, 16, 32, 64], args.conditions)
    u = rng.uniform(0.0, 0.9, args.conditions)
    th = rng.choice([1, 2], args.conditions)
    many_min, many_med = _best(lambda: pred.predict_graph(g, batch_size=b, utilization=u, threads=th), 5)
    # the same count of conditions inside what the `default` space profiles (batch 1-32; loads 0-0.5 on one thread,
    # unloaded on one or all threads): what an optimizer asks within the predictor's range
    b_in = rng.choice([1, 2, 4, 8, 16, 32], args.conditions)
    loaded = rng.random(args.conditions) < 0.5
    u_in = np.where(loaded, rng.uniform(0.0, 0.5, args.conditions), 0.0)
    th_in = np.where(loaded, 1, rng.choice([1, 2], args.conditions))
    in_min, in_med = _best(lambda: pred.predict_graph(g, batch_size=b_in, utilization=u_in, threads=th_in), 5)
    dev = CpuDevice()
    try:
        with torch.inference_mode():
            real_ms = dev.measure_model(ref.module, (ref.example_input(1),)).latency_ms
    finally:
        dev.close()
    doc = {"model": ref.name, "nodes": len(g.nodes), "unique_specs": sum(len(v[0].params) for v in g._cache["plan"].groups.values()),
           "first_call_ms": first_ms, "one_condition_ms": {"min": one_min, "median": one_med},
           "conditions": args.conditions, "many_conditions_ms": {"min": many_min, "median": many_med},
           "many_conditions_in_range_ms": {"min": in_min, "median": in_med},
           "real_measurement_ms": real_ms, "one_condition_vs_real": one_med / real_ms,
           "many_conditions_vs_real": many_med / real_ms,
           "families": pred.families if hasattr(pred, "families") else {"host": pred.host.families, "gpu": pred.gpu.families}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    print(f"predict_speed: {ref.name} one condition {one_med:.2f} ms (first call {first_ms:.1f} ms), "
          f"{args.conditions} conditions {many_med:.1f} ms ({in_med:.1f} ms inside the profiled ranges); one real run {real_ms:.1f} ms "
          f"(prediction = {one_med / real_ms:.2f}x of a measurement) -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
