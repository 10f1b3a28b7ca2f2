"""Benchmark of the adaptive runtime (issue 7); writes bench/results/adaptive.json and prints one summary line.

(a) time from an observed change to a new plan, resnet50 graph (target <= 100 ms);
(b) warm-started re-optimisation vs a cold 100-generation run: evaluations the warm start (previous plan +
    exact seeds) needs to reach the cold run's best latency, as a fraction of the cold run's evaluations
    (target <= 10 %). The cold run knows neither the previous plan nor the exact plans (pymoo from the
    all-edge / all-cloud plans and random ones); the previous plan alone is reported too;
(c) scripted conditions: no re-plan under +-5-point utilization noise; a re-plan within one observation
    interval of a real step;
(d) >= 1,000 requests through a real split (cloud server process) across plan swaps: each answered exactly once.

Usage: ``python bench/adaptive.py --predictor latpred-out/predictor [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from partition import CloudServer, CostModel, EdgeRunner, Link, PartitionPlan  # noqa: E402
from partition.adaptive import AdaptiveController, ChangeDetector, reoptimize  # noqa: E402
from partition.exact import best_single_cut, single_cut_assignments  # noqa: E402
from partition.observers import ScriptedObserver  # noqa: E402
from partition.problems import optimize  # noqa: E402


def tiny_cnn() -> torch.nn.Module:
    """The model of part (d) (importable by the cloud server process as ``bench.adaptive:tiny_cnn``)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10)).eval()


def _load_predictor(path: str):
    from latpred.predictor import Predictor

    p = Path(path)
    if not (p / "predictor.json").is_file() and not p.is_file():
        sys.exit(f"error: no predictor at {path!r} (missing predictor.json); train one with `latpred train` or pass --predictor PATH")
    return Predictor.load(p)


def _controller(graph, pred, cloud_speedup: float, **kw) -> AdaptiveController:
    cloud = np.asarray(pred.predict_graph(graph, utilization=0.0).node_ms) / cloud_speedup
    return AdaptiveController(graph, pred, cloud, Link(20.0, rtt_ms=5.0), **kw)


def part_a(graph, pred, n_changes: int, cloud_speedup: float) -> dict:
    ctl = _controller(graph, pred, cloud_speedup, detector=ChangeDetector(confirm=1, min_interval_s=0.0))
    t = time.perf_counter()
    ctl.precompute()
    precompute_ms = (time.perf_counter() - t) * 1e3
    ctl.step({"utilization": 0.0, "bandwidth_mbps": 20.0}, now_s=0.0)
    rng = random.Random(0)
    times, swaps = [], 0
    for i in range(n_changes):
        obs = {"utilization": rng.choice([0.0, 0.3, 0.5, 0.7, 0.9]), "bandwidth_mbps": rng.choice([2.0, 10.0, 50.0, 200.0])}
        t = time.perf_counter()
        d = ctl.step(obs, now_s=float(i + 1))
        el = (time.perf_counter() - t) * 1e3
        if d is not None:
            times.append(el)
            swaps += d.swapped
    return {"n_nodes": len(graph.nodes), "precompute_ms": precompute_ms, "n_replans": len(times), "n_swaps": swaps,
            "change_to_plan_ms_median": statistics.median(times) if times else None, "change_to_plan_ms_max": max(times, default=None),
            "target_ms": 100.0, "ok": bool(times) and statistics.median(times) <= 100.0}


def part_b(graph, pred, n_cases: int, cold_gens: int, cloud_speedup: float) -> dict:
    ctl = _controller(graph, pred, cloud_speedup)
    rng = random.Random(1)
    cases = []
    prev_cond = {"utilization": 0.0, "bandwidth_mbps": 20.0, "batch_size": 1}
    cm_prev = ctl.build_cost_model(prev_cond)
    prev = optimize(cm_prev, ("latency",), pop_size=40, n_gen=cold_gens, seed=0)
    for i in range(n_cases):
        cond = {"utilization": rng.choice([0.2, 0.5, 0.8, 0.9]), "bandwidth_mbps": rng.choice([2.0, 5.0, 50.0, 100.0]), "batch_size": 1}
        cm = ctl.build_cost_model(cond)
        t = time.perf_counter()
        # cold: no knowledge of the previous plan and no exact seeds (only the all-edge / all-cloud plans)
        cold = optimize(cm, ("latency",), pop_size=40, n_gen=cold_gens, seed=i, seed_exact=False)
        cold_ms = (time.perf_counter() - t) * 1e3
        target = cold.latency_ms * (1 + 1e-9)
        t = time.perf_counter()
        _, info = reoptimize(cm, ("latency",), seeds=prev.assignments, exact="fast", pop_size=40, n_gen=cold_gens, target=target, seed=i)
        warm_ms = (time.perf_counter() - t) * 1e3
        reached = next((n for n, b in info.trace if b <= target), None)
        # the previous plan alone, without exact seeds: what the warm start is worth by itself
        _, alone = reoptimize(cm, ("latency",), seeds=prev.assignments, exact="none", pop_size=40, n_gen=cold_gens, target=target, seed=i)
        reached_alone = next((n for n, b in alone.trace if b <= target), None)
        exact_ms = float(best_single_cut(cm).metrics["latency_ms"])
        cases.append({"conditions": cond, "cold_best_ms": cold.latency_ms, "cold_evals": cold.n_evals, "cold_time_ms": cold_ms,
                      "best_single_cut_ms": exact_ms,
                      "warm_best_ms": info.trace[-1][1], "warm_evals_to_cold_best": reached, "warm_time_ms": warm_ms,
                      "prev_only_evals_to_cold_best": reached_alone,
                      "ratio_prev_only": None if reached_alone is None else reached_alone / max(1, cold.n_evals),
                      "ratio": None if reached is None else reached / max(1, cold.n_evals),
                      # against the cold run's nominal budget (pop_size x generations); pymoo stops early when
                      # repaired offspring are all duplicates, so cold_evals can be far below it
                      "ratio_nominal": None if reached is None else reached / (40 * cold_gens)})
        prev = cold
    ratios = [c["ratio"] for c in cases if c["ratio"] is not None]
    return {"cold_gens": cold_gens, "cases": cases, "n_reached": len(ratios), "ratio_median": statistics.median(ratios) if ratios else None,
            "ratio_max": max(ratios, default=None), "target_ratio": 0.10,
            "ok": len(ratios) == len(cases) and max(ratios, default=1.0) <= 0.10}


def _front_case(cm, prev_front, cold_gens: int, seed: int) -> tuple[dict, object]:
    """One condition of :func:`part_b_front`: the cold run, the warm run, their hypervolume traces
    (one reference point for both: 1.1 x the worst value of each objective seen by either run or
    by the all-edge / all-cloud plans)."""
    from pymoo.indicators.hv import HV

    objs = ("latency", "edge_memory")
    n = cm.n_nodes
    m = cm.evaluate(np.vstack([np.zeros(n, dtype=int), np.ones(n, dtype=int)]))
    corners = np.column_stack([m["latency_ms"], m["edge_memory_bytes"]])
    cold_gen: list[tuple[int, np.ndarray]] = []
    warm_gen: list[tuple[int, np.ndarray]] = []
    # cold: pymoo from random plans (no exact plans, no previous front), its default re-mating
    cold, _ = reoptimize(cm, objs, seeds=None, exact="none", pop_size=40, n_gen=cold_gens, seed=seed,
                         max_mating_iterations=100, on_generation=lambda e, F: cold_gen.append((e, np.array(F))))
    reoptimize(cm, objs, seeds=prev_front, exact="fast", pop_size=40, n_gen=cold_gens, seed=seed,
               on_generation=lambda e, F: warm_gen.append((e, np.array(F))))
    ref = 1.1 * np.vstack([corners, *[F for _, F in cold_gen + warm_gen if len(F)]]).max(axis=0)
    hv = HV(ref_point=np.ones(2))
    cold_trace = [(e, float(hv(F / ref)) if len(F) else 0.0) for e, F in cold_gen]
    warm_trace = [(e, float(hv(F / ref)) if len(F) else 0.0) for e, F in warm_gen]
    cold_hv, cold_evals = max(v for _, v in cold_trace), cold_trace[-1][0]
    reach = {q: next((e for e, v in warm_trace if v >= q * cold_hv - 1e-12), None) for q in (1.0, 0.99)}
    case = {"cold_hv": cold_hv, "cold_evals": cold_evals, "cold_front": len(cold.assignments),
            "warm_hv_first_generation": warm_trace[0][1], "warm_hv_final": warm_trace[-1][1],
            "warm_evals_to_cold_hv": reach[1.0], "warm_evals_to_99pct_cold_hv": reach[0.99],
            "ratio": None if reach[1.0] is None else reach[1.0] / cold_evals}
    return case, cold


def part_b_front(graph, pred, n_cases: int, cold_gens: int, cloud_speedup: float) -> dict:
    """(b) on the latency x edge-memory front, where the optimum is a set of real cuts: evaluations the
    warm start (previous front + fast exact seeds) needs to reach the hypervolume of a cold NSGA-II run
    (no exact plans, no previous front) of ``cold_gens`` generations, as a share of the cold run's."""
    ctl = _controller(graph, pred, cloud_speedup)
    rng = random.Random(2)
    prev = optimize(ctl.build_cost_model({"utilization": 0.0, "bandwidth_mbps": 20.0, "batch_size": 1}),
                    ("latency", "edge_memory"), pop_size=40, n_gen=cold_gens, seed=0)
    cases = []
    for i in range(n_cases):
        cond = {"utilization": rng.choice([0.2, 0.5, 0.8]), "bandwidth_mbps": rng.choice([5.0, 20.0, 50.0, 100.0]), "batch_size": 1}
        case, prev = _front_case(ctl.build_cost_model(cond), prev.assignments, cold_gens, i)
        cases.append({"conditions": cond, **case})
    ratios = [c["ratio"] for c in cases if c["ratio"] is not None]
    return {"objectives": ["latency", "edge_memory"], "cold_gens": cold_gens, "cases": cases, "n_reached": len(ratios),
            "ratio_median": statistics.median(ratios) if ratios else None, "ratio_max": max(ratios, default=None),
            "target_ratio": 0.10, "ok": len(ratios) == len(cases) and max(ratios, default=1.0) <= 0.10}


def part_c(graph, pred, n_noise: int, cloud_speedup: float) -> dict:
    rng = random.Random(2)
    interval_s = 1.0
    trace = [(i * interval_s, {"utilization": 0.3 + rng.uniform(-0.05, 0.05), "bandwidth_mbps": 20.0 * rng.uniform(0.9, 1.1)})
             for i in range(n_noise)]
    step_t = n_noise * interval_s - 0.5  # the step happens half an interval before an observation
    trace += [(step_t + i * interval_s, {"utilization": 0.8 + rng.uniform(-0.05, 0.05), "bandwidth_mbps": 20.0}) for i in range(5)]
    obs = ScriptedObserver(trace, step_s=interval_s)
    ctl = _controller(graph, pred, cloud_speedup, detector=ChangeDetector(confirm=2, min_interval_s=2.0, fast_factor=2.0),
                      observer=obs)
    ctl.initialize({"utilization": 0.3, "bandwidth_mbps": 20.0})
    replans = []
    for _ in range(n_noise + 4):
        t = obs.now()
        d = ctl.step(obs.observe(), now_s=t)
        if d is not None:
            replans.append(t)
    during_noise = [t for t in replans if t < step_t]
    after = [t for t in replans if t >= step_t]
    delay = None if not after else after[0] - step_t
    return {"n_noise_observations": n_noise, "replans_during_noise": len(during_noise), "step_at_s": step_t,
            "first_replan_after_step_s": after[0] if after else None, "delay_s": delay, "interval_s": interval_s,
            "ok": not during_noise and delay is not None and delay <= interval_s}


def part_d(n_requests: int, n_swaps: int, n_clients: int = 4) -> dict:
    from latpred.graph.trace import trace

    shape, seed, ref = (3, 32, 32), 0, "bench.adaptive:tiny_cnn"
    torch.manual_seed(seed)
    graph = trace(tiny_cnn(), torch.randn(1, *shape))
    n = len(graph.nodes)
    cm = CostModel(graph, [np.ones(n), np.ones(n)], Link(1000.0))
    compute = [i for i, nd in enumerate(graph.nodes) if nd.kind == "compute"]
    cuts = single_cut_assignments(cm, [compute[1] + 1, compute[2] + 1, compute[4] + 1])
    plans = [PartitionPlan.from_plan(cm.plan(a, f"cut{j}")) for j, a in enumerate(cuts)]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict[str, list] = {}
    lock = threading.Lock()
    errors: list[str] = []
    counter = iter(range(n_requests))
    t0 = time.perf_counter()
    with CloudServer(ref, plans[0], seed=seed, input_shape=shape, threads=1, cache_size=4096, cwd=str(ROOT)) as srv, \
            EdgeRunner(ref, plans[0], srv.address, seed=seed, input_shape=shape, timeout_s=30.0) as edge:
        x = edge.example_input()
        with torch.no_grad():
            y = edge.module(x)
        before = edge.ping()["n_computed"]
        done = threading.Semaphore(0)

        def client() -> None:
            try:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    out, tm = edge.infer(x, request_id=f"req-{i}")
                    with lock:
                        results.setdefault(tm["request_id"], []).append((bool(torch.allclose(out, y, atol=1e-5)), tm))
                    done.release()
            except Exception as e:  # noqa: BLE001 - reported in the result
                errors.append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(n_clients)]
        for t in threads:
            t.start()
        every = max(1, n_requests // (n_swaps + 1))
        for s in range(n_swaps):
            for _ in range(every):
                done.acquire(timeout=60)
            edge.set_plan(plans[(s + 1) % len(plans)])
        for t in threads:
            t.join(300)
        stats = edge.ping()
        swaps = edge.n_swaps
    torch.set_num_threads(old_threads)
    wall_s = time.perf_counter() - t0
    answered_once = sum(len(v) == 1 for v in results.values())
    tms = [v[0][1] for v in results.values()]
    computed = stats["n_computed"] - before
    ok = (not errors and answered_once == n_requests == len(results) and all(v[0][0] for v in results.values())
          and not any(t["fallback"] or t["duplicate"] for t in tms) and computed == n_requests)
    return {"n_requests": n_requests, "n_clients": n_clients, "n_swaps": swaps, "answered_exactly_once": answered_once,
            "correct_outputs": sum(v[0][0] for v in results.values()), "fallbacks": sum(t["fallback"] for t in tms),
            "cloud_computed": computed, "plans_used": len({t["fingerprint"] for t in tms}), "errors": errors[:3], "wall_s": wall_s,
            "ok": bool(ok)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default="latpred-out/predictor", help="latpred predictor directory (the edge device's)")
    ap.add_argument("--cloud-speedup", type=float, default=8.0, help="cloud node times = edge predictions at 0 load / this")
    ap.add_argument("--quick", action="store_true", help="a few seconds: fewer changes, a 20-generation cold run, 200 requests")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "adaptive.json"))
    args = ap.parse_args(argv)
    pred = _load_predictor(args.predictor)
    from latpred.graph.models import load_model
    from latpred.graph.trace import trace

    torch.set_num_threads(1)
    ref = load_model("torchvision:resnet50")
    graph = trace(ref.module, ref.example_input())
    q = args.quick
    res = {"predictor": str(args.predictor), "quick": q, "torch_threads": 1,
           "a_change_to_plan": part_a(graph, pred, 4 if q else 30, args.cloud_speedup),
           "b_warm_vs_cold": part_b(graph, pred, 2 if q else 5, 20 if q else 100, args.cloud_speedup),
           "b_front_hypervolume": part_b_front(graph, pred, 2 if q else 5, 20 if q else 100, args.cloud_speedup),
           "c_scripted_detection": part_c(graph, pred, 20 if q else 120, args.cloud_speedup),
           "d_exactly_once": part_d(200 if q else 1000, 3 if q else 5)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=float))
    a, b, c, d = (res[k] for k in ("a_change_to_plan", "b_warm_vs_cold", "c_scripted_detection", "d_exactly_once"))
    print(f"adaptive: change->plan median {a['change_to_plan_ms_median']:.1f} ms (max {a['change_to_plan_ms_max']:.1f}, "
          f"{'ok' if a['ok'] else 'MISS'}); warm/cold evals {b['ratio_max']} ({'ok' if b['ok'] else 'MISS'}), front "
          f"hypervolume {res['b_front_hypervolume']['ratio_max']} ({'ok' if res['b_front_hypervolume']['ok'] else 'MISS'}); "
          f"noise re-plans {c['replans_during_noise']}, step delay {c['delay_s']} s ({'ok' if c['ok'] else 'MISS'}); "
          f"{d['answered_exactly_once']}/{d['n_requests']} answered once over {d['n_swaps']} swaps ({'ok' if d['ok'] else 'MISS'}) "
          f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
