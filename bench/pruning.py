"""Latency-aware pruning benchmark: predicted vs measured latency of pruned models, and search time.

    python bench/pruning.py --predictor latpred-out/predictor
    python bench/pruning.py --predictor P --quick          # smoke run: resnet18 at 64x64, batch 1, 3 variants

For resnet18, mobilenet_v2 and vgg16 (224×224) at batch 1 and 8: at least ``--variants`` pruned
variants each (points of the latency / proxy Pareto front, topped up with random plans), each
physically pruned with Torch-Pruning and measured (:meth:`CpuDevice.measure_model`, in ``--passes``
passes over all variants of a model and batch size, pooled as in profiling), against the
latency the search's table predicts (which equals ``predict_graph`` of the rewritten graph). Reports
acc10 (share of variants within ±10 %) and MAPE per model and batch size, plain and anchored (every
prediction scaled by the unpruned model's measured / predicted latency, measured in the same passes: what
``optimize_pruning(reference_ms=...)`` does). Also times a whole
pruning search of resnet50 (analysis + latency table + NSGA-II; target ≤ 5 s).
Writes JSON (default bench/results/pruning.json) and prints one summary line.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

# bench/partition.py would shadow the partition package when this script runs from bench/
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from latpred import trace  # noqa: E402
from latpred.graph.measure import ModelJob, measure_in_passes, model_reference_exponent, pass_agreement  # noqa: E402
from latpred.predictor import Predictor  # noqa: E402
from latpred.profiling.devices import CpuDevice, TimingProtocol  # noqa: E402
from latpred.profiling.reference import adopt_reference  # noqa: E402
from partition.prune_problem import optimize_pruning  # noqa: E402
from partition.pruning import analyze_pruning  # noqa: E402


def _model(name: str) -> torch.nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None).eval()


def _exponent(predictor: Predictor, model: torch.nn.Module, x1: torch.Tensor, batch_size: int) -> float:
    """The model's time-weighted reference exponent at ``batch_size`` (:func:`model_reference_exponent`)."""
    graph = trace(model, x1)
    return model_reference_exponent(graph, predictor.predict_graph(graph, batch_size=batch_size).isolated_ms, batch_size)


def bench_model(name: str, predictor: Predictor, device: CpuDevice, batch_sizes: list[int], size_px: int, n_variants: int,
                pop_size: int, n_gen: int, seed: int, passes: int = 3) -> list[dict]:
    torch.manual_seed(seed)
    model = _model(name)
    x1 = torch.randn(1, 3, size_px, size_px)
    analysis = analyze_pruning(model, x1, round_to=8)
    rows = []
    rng = np.random.default_rng(seed)
    for b in batch_sizes:
        res = optimize_pruning(model, x1, predictor, conditions={"batch_size": b}, pop_size=pop_size, n_gen=n_gen,
                               seed=seed, analysis=analysis)
        L = len(res.table.levels)
        front = [np.searchsorted(res.table.levels, p.ratios) for p in res.plans]
        pick = [front[int(i)] for i in np.unique(np.linspace(0, len(front) - 1, min(n_variants, len(front))).round())]
        while len(pick) < n_variants:
            pick.append(rng.integers(0, L, size=analysis.n_groups))
        X = np.array(pick)
        pred = res.table.latency_ms(X)
        x = torch.randn(b, 3, size_px, size_px)
        # the unpruned model is measured in the same passes: the anchor of optimize_pruning(reference_ms=...)
        models = [model] + [analysis.prune_(copy.deepcopy(model), res.table.ratios(xi[None])[0]) for xi in X]
        # each model normalised with its own reference exponent (working-set scheme; ignored by a constant-scheme device)
        jobs = [ModelJob(m, lambda x=x: (x,), 0.0, None, _exponent(predictor, m, x1, b)) for m in models]
        with torch.inference_mode():
            pooled = measure_in_passes(device, jobs, passes)
        base_meas = pooled[0].latency_ms
        pooled = pooled[1:]
        meas = np.array([m.latency_ms if m.latency_ms is not None else np.nan for m in pooled])
        rel = pred / meas - 1
        # anchored: every prediction x (measured / predicted unpruned), as optimize_pruning(reference_ms=measured) does
        rel_a = pred * (base_meas / res.base_latency_ms) / meas - 1 if base_meas else np.full_like(rel, np.nan)
        row = {"model": name, "batch_size": b, "input_px": size_px, "variants": len(X), "groups": analysis.n_groups,
               "acc10": float(np.mean(np.abs(rel) <= 0.10)), "mape": float(np.mean(np.abs(rel)) * 100),
               "acc10_anchored": float(np.mean(np.abs(rel_a) <= 0.10)), "mape_anchored": float(np.mean(np.abs(rel_a)) * 100),
               "base_pred_ms": res.base_latency_ms, "base_meas_ms": base_meas, "pred_ms": pred.tolist(),
               "meas_ms": meas.tolist(), "ratios_mean": res.table.ratios(X).mean(axis=1).tolist(), "passes": passes,
               "pass_ms": [m.pass_ms for m in pooled], "pass_within10": pass_agreement([m.pass_ms for m in pooled])}
        rows.append(row)
        agree = row["pass_within10"]
        print(f"  {name} b={b}: acc10 {row['acc10']:.2f}, MAPE {row['mape']:.1f}% over {len(X)} variants; anchored to the "
              f"measured unpruned model: acc10 {row['acc10_anchored']:.2f}, MAPE {row['mape_anchored']:.1f}%"
              + (f" (passes agree within 10%: {agree:.2f})" if agree is not None else ""), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", default="latpred-out/predictor", help="trained predictor directory")
    ap.add_argument("--quick", action="store_true", help="smoke run (resnet18 at 64x64, batch 1, 3 variants)")
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "vgg16"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--variants", type=int, default=10)
    ap.add_argument("--search-model", default="resnet50")
    ap.add_argument("--out", default="bench/results/pruning.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=3, help="measurement passes over a model's variants (default: %(default)s)")
    args = ap.parse_args(argv)
    if not (Path(args.predictor) / "predictor.json").is_file():
        print(f"error: no trained predictor at {args.predictor!r} (pass --predictor PATH)", file=sys.stderr)
        return 2
    predictor = Predictor.load(args.predictor)
    size, pop, gens = 224, 64, 60
    protocol = None
    if args.quick:
        args.models, args.batch_sizes, args.variants, args.search_model, args.passes = ["resnet18"], [1], 3, "resnet18", 2
        size, pop, gens = 64, 12, 3
        protocol = TimingProtocol(warmup_ms=5.0, window_ms=10.0, repeats=3, min_repeats=3, settle_s=0.1)
    device = CpuDevice(protocol)
    print(adopt_reference(device, predictor))

    rows = []
    for name in args.models:
        rows.extend(bench_model(name, predictor, device, args.batch_sizes, size, args.variants, pop, gens, args.seed, args.passes))

    model = _model(args.search_model)
    t = time.perf_counter()
    res = optimize_pruning(model, torch.randn(1, 3, size, size), predictor, round_to=8, pop_size=pop, n_gen=gens,
                           seed=args.seed)
    search_s = time.perf_counter() - t
    search = {"model": args.search_model, "input_px": size, "search_s": search_s, "timings_s": res.timings_s,
              "groups": res.analysis.n_groups, "table_entries": int(len(res.table.entry_ms)), "n_evals": res.n_evals,
              "front": len(res.plans), "pop_size": pop, "n_gen": gens, "target_s": 5.0}

    acc10 = float(np.mean([r["acc10"] for r in rows])) if rows else float("nan")
    mape = float(np.mean([r["mape"] for r in rows])) if rows else float("nan")
    acc10_a = float(np.mean([r["acc10_anchored"] for r in rows])) if rows else float("nan")
    mape_a = float(np.mean([r["mape_anchored"] for r in rows])) if rows else float("nan")
    doc = {"quick": args.quick, "seed": args.seed, "predictor": args.predictor, "machine": platform.platform(), "torch": torch.__version__,
           "rows": rows, "search": search, "summary": {"acc10_mean": acc10, "mape_mean": mape, "acc10_anchored_mean": acc10_a,
                                                         "mape_anchored_mean": mape_a, "search_s": search_s}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"pruning: {sum(r['variants'] for r in rows)} pruned variants, acc10 {acc10:.2f}, MAPE {mape:.1f}% "
          f"(anchored to the measured unpruned model: acc10 {acc10_a:.2f}, MAPE {mape_a:.1f}%); "
          f"{args.search_model} search {search_s:.2f} s (target <= 5 s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
