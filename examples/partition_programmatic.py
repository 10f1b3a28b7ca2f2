"""Partition a model programmatically: predictors in, a plan out, the plan split and run in-process.

    python examples/partition_programmatic.py --predictor latpred-out/predictor

The edge is this CPU on 1 thread under a 50% background load, the cloud is the same predictor with all
threads and no load (use a GPU predictor for a real cloud). Prints the plan at several bandwidths, the
Pareto front of latency × edge memory, and checks that the split model computes the same output.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torchvision

from latpred import Predictor, trace
from partition import Link, optimize_partition


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", default="latpred-out/predictor")
    ap.add_argument("--model", default="mobilenet_v2")
    args = ap.parse_args(argv)
    pred = Predictor.load(args.predictor)
    model = getattr(torchvision.models, args.model)().eval()
    x = torch.randn(1, 3, 224, 224)
    graph = trace(model, x)
    edge = {"utilization": 0.5, "threads": 1}
    cloud = {"utilization": 0.0}
    for bw in (1, 10, 100, 1000):
        plan = optimize_partition(graph, devices=[pred, pred], conditions=[edge, cloud], link=Link(bw, rtt_ms=5))
        on_edge = sum(1 for a, n in zip(plan.assignment, graph.nodes) if a == 0 and n.kind == "compute")
        print(f"{bw:5d} Mbps: {plan.latency_ms:8.2f} ms predicted, {on_edge:3d}/{len(graph.compute_nodes)} compute nodes "
              f"on the edge, {plan.objectives['bytes_transferred'] / 1e3:8.1f} kB sent")
    plan = optimize_partition(graph, devices=[pred, pred], conditions=[edge, cloud], link=Link(10, rtt_ms=5),
                              objectives=("latency", "edge_memory"))
    print("Pareto front at 10 Mbps (latency ms, edge memory MiB):",
          ", ".join(f"({o['latency']:.1f}, {o['edge_memory'] / 2**20:.1f})" for _, o in plan.pareto))
    split = plan.split(graph)
    with torch.no_grad():
        same = torch.allclose(split.run(x), model(x), atol=1e-5)
    print(f"split into stages on devices {split.devices}; {len(split.transfers())} tensor(s) cross; output identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
