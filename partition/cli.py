"""The ``partition`` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad input, 130 interrupted."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

EXAMPLES = {
    "prune": """examples:
  partition prune --model torchvision:resnet18 --predictor latpred-out/predictor --latency-budget-ms 25
  partition prune --model torchvision:mobilenet_v2 --predictor P --batch-size 8 --round-to 8 --plot front.png --json""",
    "split": """examples:
  partition split --model torchvision:resnet50 --edge latpred-out/predictor --cloud latpred-out/predictor \\
      --bandwidth-mbps 20 --edge-utilization 0.5 --edge-threads 1
  partition split --model torchvision:vit_b_16 --edge P --cloud P --bandwidth-mbps 100 \\
      --objectives latency,edge_memory --plot front.png --execute --requests 20""",
}


def _objectives(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_split(args: argparse.Namespace) -> int:
    from latpred.graph.models import load_model
    from latpred.graph.trace import trace
    from latpred.predictor import load_predictor

    from .cost import Link
    from .plan import optimize_partition

    if not args.bandwidth_mbps > 0:
        raise ValueError(f"--bandwidth-mbps must be positive, got {args.bandwidth_mbps}")
    ref = load_model(args.model)
    if ref.module is None:
        raise ValueError("partition split needs a PyTorch model (torchvision:NAME or package.module:factory), not an ONNX file")
    edge, cloud = load_predictor(args.edge), load_predictor(args.cloud)
    graph = trace(ref.module, ref.example_input(1), name=ref.name)
    conds = [{"batch_size": args.batch_size, "utilization": args.edge_utilization,
              **({"threads": args.edge_threads} if args.edge_threads else {})},
             {"batch_size": args.batch_size, "utilization": args.cloud_utilization,
              **({"threads": args.cloud_threads} if args.cloud_threads else {})}]
    constraints = {"max_edge_memory_bytes": args.max_edge_memory_mb * 2**20} if args.max_edge_memory_mb else None
    objectives = _objectives(args.objectives)
    plan = optimize_partition(graph, devices=[edge, cloud], link=Link(args.bandwidth_mbps, rtt_ms=args.rtt_ms),
                              objectives=objectives, constraints=constraints, conditions=conds,
                              pop_size=args.pop_size, n_gen=args.generations, seed=args.seed)
    g = graph.with_batch_size(args.batch_size)
    on_edge = [n.name for n, a in zip(g.nodes, plan.assignment) if a == 0 and n.kind == "compute"]
    o = plan.objectives
    doc: dict[str, Any] = {"model": ref.name, "plan": plan.to_dict(), "compute_nodes_on_edge": len(on_edge),
                           "compute_nodes": len(g.compute_nodes)}
    lines = [g.summary(),
             f"plan ({plan.method}): predicted {o['latency_ms']:.2f} ms end to end "
             f"(edge {o['device_ms'][0]:.2f} ms, cloud {o['device_ms'][1]:.2f} ms, transfers {o['transfer_ms']:.2f} ms), "
             f"{o['bytes_transferred'] / 1e3:.1f} kB sent, edge memory {o['edge_memory_bytes'] / 2**20:.1f} MiB; "
             f"{len(on_edge)}/{len(g.compute_nodes)} compute nodes on the edge"
             + (f" (last: {on_edge[-1]})" if on_edge else "")]
    if plan.pareto:
        lines.append(f"Pareto front ({len(plan.pareto)} plans): " + "; ".join(
            ", ".join(f"{k} {v:.3g}" for k, v in obj.items()) for _, obj in plan.pareto[:8]))
    if args.plot and plan.pareto and len(objectives) >= 2:
        from latpred.plots import plot_pareto

        scale = [2**20 if o_ == "edge_memory" else 1.0 for o_ in objectives[:2]]
        pts = [(obj[objectives[0]] / scale[0], obj[objectives[1]] / scale[1]) for _, obj in plan.pareto]
        plot_pareto(pts, pts[0], args.plot, xlabel=objectives[0], ylabel=objectives[1] + (" (MiB)" if scale[1] > 1 else ""),
                    title=f"{ref.name} at {args.bandwidth_mbps:g} Mbps")
    elif args.plot:
        from latpred.plots import plot_graph_cut

        plot_graph_cut(g, plan.assignment, args.plot, title=f"{ref.name}: {o['latency_ms']:.1f} ms predicted")
    if args.execute:
        from .runtime import measure_split

        # predictors trained on reference-normalised profiles: also express the run at their machine speed
        nominal = (edge.metadata.get("reference_nominal_ms"), cloud.metadata.get("reference_nominal_ms"))
        nominal = None if not any(nominal) else nominal

        m = measure_split(args.model, plan, bandwidth_mbps=args.bandwidth_mbps, rtt_ms=args.rtt_ms, n_requests=args.requests,
                          edge_threads=args.edge_threads, cloud_threads=args.cloud_threads, batch_size=args.batch_size,
                          nominal_ms=nominal)
        doc["measured"] = {"median_ms": m.median_ms, "edge_ms": m.edge_ms, "transfer_ms": m.transfer_ms,
                           "cloud_ms": m.cloud_ms, "n_requests": m.n_requests, "n_fallback": m.n_fallback,
                           "normalised_ms": m.normalised_ms, "edge_slowdown": m.edge_slowdown, "cloud_slowdown": m.cloud_slowdown}
        lines.append(f"executed for real over gRPC ({m.n_requests} requests, {m.n_fallback} fell back to the edge): "
                     f"median {m.median_ms:.2f} ms ({100 * (o['latency_ms'] / m.median_ms - 1):+.1f}% predicted vs measured)")
        if m.normalised_ms is not None:
            slow = ", ".join(f"{side} read {v:.2f}x its nominal" for side, v in (("edge", m.edge_slowdown), ("cloud", m.cloud_slowdown))
                             if v is not None)
            lines.append(f"at the predictors' nominal machine speed: {m.normalised_ms:.2f} ms "
                         f"({100 * (o['latency_ms'] / m.normalised_ms - 1):+.1f}% predicted vs measured; {slow})")
    print(json.dumps(doc, indent=2, default=str) if args.json else "\n".join(lines))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from latpred.graph.models import load_model
    from latpred.predictor import Predictor

    from .prune_problem import optimize_pruning

    ref = load_model(args.model)
    if ref.module is None:
        raise ValueError("partition prune needs a PyTorch model (torchvision:NAME or package.module:factory), not an ONNX file")
    pred = Predictor.load(args.predictor)
    conds = {"batch_size": args.batch_size, "utilization": args.utilization,
             **({"threads": args.threads} if args.threads else {})}
    res = optimize_pruning(ref.module, ref.example_input(args.batch_size), pred, conditions=conds,
                           latency_budget_ms=args.latency_budget_ms, round_to=args.round_to, pop_size=args.pop_size,
                           n_gen=args.generations, seed=args.seed, reference_ms=args.reference_ms)
    best = res.best(args.latency_budget_ms) if args.latency_budget_ms else res.plans[0]
    rows = [{"latency_ms": p.latency_ms, "proxy": p.proxy, "flops": p.flops, "param_bytes": p.param_bytes,
             "ratios": dict(zip(p.group_names, p.ratios))} for p in res.plans]
    if args.plot:
        from latpred.plots import plot_pareto

        plot_pareto([(p.latency_ms, p.proxy) for p in res.plans], (best.latency_ms, best.proxy), args.plot,
                    ylabel="importance mass pruned (1 - retained)", title=f"{ref.name}: pruning front")
    doc = {"model": ref.name, "base_latency_ms": res.base_latency_ms, "reference_scale": res.reference_scale,
           "search_s": res.search_s, "front": rows,
           "chosen": rows[res.plans.index(best)]}
    basis = (f"measured (predictions x {res.reference_scale:.3f})" if args.reference_ms else "predicted")
    lines = [f"{ref.name}: unpruned {res.base_latency_ms:.2f} ms {basis}; {len(res.plans)} plans on the front "
             f"(search {res.search_s:.1f} s, {res.n_evals} evaluations)",
             f"chosen: {best.latency_ms:.2f} ms ({100 * (1 - best.latency_ms / res.base_latency_ms):.0f}% faster), "
             f"importance pruned {100 * best.proxy:.1f}%, {best.param_bytes / 2**20:.1f} MiB of parameters"]
    lines += [f"  {r['latency_ms']:8.2f} ms  proxy {r['proxy']:.3f}" for r in rows[:10]]
    print(json.dumps(doc, indent=2, default=str) if args.json else "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="partition", description="Partition and prune models with latency predictions.",
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("split", help="optimise an edge-cloud split of a model", description="optimise an edge-cloud split "
                       "of a model with predicted node latencies (pymoo, seeded with exact plans)", epilog=EXAMPLES["split"],
                       formatter_class=fmt)
    s.set_defaults(func=cmd_split)
    s.add_argument("--model", required=True, help="torchvision:NAME or package.module:factory")
    s.add_argument("--edge", required=True, help="predictor directory of the edge device")
    s.add_argument("--cloud", required=True, help="predictor directory of the cloud device")
    s.add_argument("--bandwidth-mbps", type=float, required=True)
    s.add_argument("--rtt-ms", type=float, default=0.0)
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--edge-utilization", type=float, default=0.0)
    s.add_argument("--cloud-utilization", type=float, default=0.0)
    s.add_argument("--edge-threads", type=int, help="edge threads (default: the edge predictor's device default)")
    s.add_argument("--cloud-threads", type=int, help="cloud threads (default: the cloud predictor's device default)")
    s.add_argument("--objectives", default="latency", help="comma-separated: latency, edge_memory, bytes, energy")
    s.add_argument("--max-edge-memory-mb", type=float, help="constraint: edge memory budget (MiB)")
    s.add_argument("--pop-size", type=int, default=50)
    s.add_argument("--generations", type=int, default=60)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--plot", help="PNG: the Pareto front (several objectives) or the graph with the cut")
    s.add_argument("--execute", action="store_true", help="also run the plan for real (edge and cloud processes, gRPC)")
    s.add_argument("--requests", type=int, default=20, help="requests measured with --execute (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="machine-readable JSON output")

    r = sub.add_parser("prune", help="choose per-layer channel-pruning ratios with predicted latency",
                       description="latency-aware structured pruning: NSGA-II over per-group ratios, predicted latency "
                       "x retained importance, optional latency budget", epilog=EXAMPLES["prune"], formatter_class=fmt)
    r.set_defaults(func=cmd_prune)
    r.add_argument("--model", required=True, help="torchvision:NAME or package.module:factory")
    r.add_argument("--predictor", required=True, help="predictor directory of the target device")
    r.add_argument("--latency-budget-ms", type=float, help="constraint: predicted latency of the pruned model")
    r.add_argument("--reference-ms", type=float, help="the unpruned model's measured latency on the target device: "
                   "predictions are scaled to it (removes the whole-model offset; see docs/partition.md)")
    r.add_argument("--batch-size", type=int, default=1)
    r.add_argument("--utilization", type=float, default=0.0)
    r.add_argument("--threads", type=int)
    r.add_argument("--round-to", type=int, help="round kept channels to multiples of this (e.g. 8)")
    r.add_argument("--pop-size", type=int, default=64)
    r.add_argument("--generations", type=int, default=60)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--plot", help="PNG of the Pareto front")
    r.add_argument("--json", action="store_true", help="machine-readable JSON output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``partition`` console script."""
    from latpred.cli_run import run_command

    args = build_parser().parse_args(argv)
    return run_command("partition", args.func, args)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
