"""Edge-cloud split executed for real: an edge process and a cloud process talking gRPC over an emulated link.

    python examples/edge_cloud_split.py --predictor latpred-out/predictor
    python examples/edge_cloud_split.py --predictor P --models resnet18 --bandwidths 10 --requests 10

For each model and bandwidth the optimizer picks a plan from predicted latencies (edge: 1 thread;
cloud: all threads), then the plan runs for real (edge in this process with 1 thread, cloud in a
second process) and the measured end-to-end latency is printed next to the prediction.
"""

from __future__ import annotations

import argparse
import sys

from latpred import Predictor, trace
from latpred.graph.models import load_model
from partition import Link, measure_split, optimize_partition


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", default="latpred-out/predictor")
    ap.add_argument("--models", default="resnet18,mobilenet_v2,vit_b_16")
    ap.add_argument("--bandwidths", default="5,50,500")
    ap.add_argument("--rtt-ms", type=float, default=5.0)
    ap.add_argument("--requests", type=int, default=10)
    args = ap.parse_args(argv)
    pred = Predictor.load(args.predictor)
    # a predictor trained on reference-normalised profiles predicts the machine at its fastest: measure in that unit
    nominal = pred.metadata.get("reference_nominal_ms")
    nominal_ms = (nominal, nominal) if nominal else None
    unit = "normalised" if nominal_ms else "wall time"
    print(f"{'model':<14} {'Mbps':>6} {'edge nodes':>10} {'predicted':>10} {'measured':>10} {'error':>7}  (measured: {unit})")
    for name in args.models.split(","):
        ref = load_model(f"torchvision:{name}")
        graph = trace(ref.module, ref.example_input(1), name=name)
        for bw in (float(b) for b in args.bandwidths.split(",")):
            plan = optimize_partition(graph, devices=[pred, pred], link=Link(bw, rtt_ms=args.rtt_ms),
                                      conditions=[{"threads": 1}, {"threads": pred.default_threads}])
            m = measure_split(f"torchvision:{name}", plan, bandwidth_mbps=bw, rtt_ms=args.rtt_ms, n_requests=args.requests,
                              edge_threads=1, cloud_threads=pred.default_threads, nominal_ms=nominal_ms)
            on_edge = sum(1 for a, n in zip(plan.assignment, graph.nodes) if a == 0 and n.kind == "compute")
            print(f"{name:<14} {bw:6g} {on_edge:10d} {plan.latency_ms:9.2f}ms {m.latency_ms:9.2f}ms "
                  f"{100 * (plan.latency_ms / m.latency_ms - 1):+6.1f}%"
                  + (f"  (wall time {m.median_ms:.2f}ms)" if m.normalised_ms is not None else "")
                  + (f"  ({m.n_fallback} fell back)" if m.n_fallback else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
