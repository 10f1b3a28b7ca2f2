"""``latpred quickstart``: the main job end to end on embedded defaults, in one output folder.

1. profile this CPU with the built-in ``quick`` space into ``profiles.sqlite`` (resumes if interrupted);
2. train and auto-select the regression models -> ``predictor/`` (+ ``selection_report.json``, ``fit.png``);
   skipped when the predictor already matches the store;
3. calibrate the composition model on a few generated random networks measured on this CPU;
4. trace a real model (torchvision resnet18, or a built-in CNN without torchvision), predict it per node
   and in total, and measure it once per condition -> ``layers.png``, ``predicted_vs_measured.png``;
5. optimise an edge-cloud split (edge = this CPU on 1 thread under 50% load; cloud = the GPU whose
   predictor the repository ships in ``data/gpu/``, predicted only, or, without one or with
   ``cloud="cpu"``, this CPU on all threads with no load) for latency and edge memory at several
   bandwidths -> ``pareto.png``, ``graph_cut.png``;
6. replay a condition trace (edge load 0 -> 0.5 -> 0.9, bandwidth 10 -> 100 -> 1 Mbps) through the
   adaptive controller of :mod:`partition.adaptive`, which re-plans the split as the conditions change
   (predicted; ``examples/adaptive_runtime.py`` does it for real) -> ``adaptive.png``;
7. write ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["run_quickstart", "builtin_cnn", "shipped_gpu_predictor"]

BANDWIDTHS_MBPS = (1.0, 10.0, 100.0)
RTT_MS = 5.0
#: the adaptive step's scripted trace: (edge utilization, bandwidth Mbit/s) per phase
ADAPTIVE_PHASES = ((0.0, 10.0), (0.5, 10.0), (0.9, 10.0), (0.9, 100.0), (0.0, 1.0))
#: where a source checkout keeps the GPU predictors it ships (absent from a wheel install)
SHIPPED_GPU_DIR = Path(__file__).resolve().parents[1] / "data" / "gpu"


def shipped_gpu_predictor() -> Path | None:
    """The newest GPU predictor shipped in the repository, or ``None``: an overlap predictor
    (``data/gpu/overlap_*``, host/device overlap composition; the more accurate for unloaded GPUs, see
    docs/benchmarks.md) where there is one, else ``data/gpu/predictor_*``."""
    if not SHIPPED_GPU_DIR.is_dir():
        return None
    for pattern, marker in (("overlap_*", "overlap.json"), ("predictor_*", "predictor.json")):
        found = sorted(p for p in SHIPPED_GPU_DIR.glob(pattern) if (p / marker).is_file())
        if found:
            return found[-1]
    return None


def _cloud_predictor(cloud: str | Path) -> tuple[Any, str, Path | None]:
    """(predictor or None for this CPU, label, path) for ``cloud`` = "auto", "cpu" or a predictor directory."""
    from .errors import SpecError
    from .predictor import PredictorFormatError, load_predictor

    path = shipped_gpu_predictor() if cloud == "auto" else None if cloud == "cpu" else Path(cloud)
    if path is None:
        return None, "cloud (this CPU, all threads, no load)", None
    if not path.exists():
        raise SpecError(f"cloud predictor {str(path)!r}: no such directory (expected auto, cpu or a predictor directory)")
    try:
        pred = load_predictor(path)
    except (PredictorFormatError, SpecError, OSError) as e:
        raise SpecError(f"cloud predictor {str(path)!r}: {e}") from None
    dev = pred.metadata.get("device") or {}
    name = dev.get("gpu_name") or dev.get("cpu_model") or "remote device"
    return pred, f"cloud ({name}, no load; predicted, not measured here)", path


def builtin_cnn() -> Any:
    """A small residual CNN (used when torchvision is not installed)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + x)

    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()]
    c = 32
    for _ in range(3):
        layers += [Block(c), nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU()]
        c *= 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)).eval()


def _model(name: str) -> tuple[Any, str]:
    if name == "builtin":
        return builtin_cnn(), "builtin_cnn"
    try:
        from .graph.models import load_model

        ref = load_model(f"torchvision:{name}")
        return ref.module, ref.name
    except Exception:  # torchvision missing or too old: the built-in CNN still shows every step
        return builtin_cnn(), "builtin_cnn"


def run_quickstart(out: Path, progress: bool = True, model: str = "resnet18", networks: int = 8,
                   say: Callable[[str], None] = print, space: Any = "quick", families: Any = None,
                   input_size: int = 224, cloud: str | Path = "auto", calibration_passes: int = 2) -> dict[str, Any]:
    """Run every step; returns the report (also written to ``out/report.json``).

    ``cloud``: ``"auto"`` (the GPU predictor shipped in ``data/gpu/`` when the checkout has one, else
    this CPU), ``"cpu"`` (this CPU on all threads, no load) or a predictor directory of the cloud
    device. ``space`` (a built-in name or a :class:`~latpred.ParameterSpace`) and ``families``
    (regression families to try, default all) exist so tests can run the whole job on a tiny space.
    ``calibration_passes``: measurement passes over the calibration networks (2 keeps the job short;
    ``latpred calibrate`` uses 3, like profiling); the model of step 4 is measured in 3 passes.
    """
    import torch

    from . import plots
    from .errors import MeasurementError
    from .graph.calibrate import DEFAULT_CONDITIONS, calibrate
    from .graph.measure import ModelJob, measure_in_passes
    from .graph.trace import trace
    from .predictor import Predictor, PredictorFormatError
    from .profiling.devices import CpuDevice
    from .profiling.reference import adopt_reference
    from .profiling.runner import profile
    from .profiling.space import ParameterSpace
    from .profiling.store import ProfileStore
    from .selection import load_training_data, select

    cloud_pred, cloud_label, cloud_path = _cloud_predictor(cloud)  # a bad path fails before any measuring
    out.mkdir(parents=True, exist_ok=True)
    db, pred_dir = out / "profiles.sqlite", out / "predictor"
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"out": str(out)}
    device = CpuDevice()
    try:
        # 1 -- profile
        t = time.perf_counter()
        say(f"[1/7] profiling this CPU with the {space if isinstance(space, str) else space.name} space into {db} "
            "(resumes if interrupted)")
        with ProfileStore(db) as store:
            sp = ParameterSpace.builtin(space) if isinstance(space, str) else space
            prof = profile(sp, device, store, progress=progress)
            data = load_training_data(store)
        say(f"      {prof.summary()}")
        report["profile"] = {"planned": prof.planned, "already_done": prof.already_done, "measured": prof.measured,
                             "continued": prof.continued, "measurements": prof.measurements, "failed": prof.failed,
                             "elapsed_s": prof.elapsed_s}
        timings["profile_s"] = time.perf_counter() - t

        # 2 -- train + auto-select (skipped when the saved predictor was trained on exactly this data)
        t = time.perf_counter()
        pred = None
        try:
            old = Predictor.load(pred_dir)
            if old.metadata.get("dataset_fingerprint") == data.fingerprint() and old.generic is not None:
                pred = old
        except PredictorFormatError:
            pass
        if pred is None:
            say(f"[2/7] training regression models per op type and auto-selecting ({sum(len(v) for v in data.specs.values())} samples)")
            pred, sel = select(data, families=families, cv=3, progress=(lambda m: say(f"      fitting {m}")) if progress else None)
            pred.save(pred_dir)
            (pred_dir / "selection_report.json").write_text(json.dumps(sel.to_dict(), indent=2, default=str))
            plots.plot_fit(sel, data, pred, str(out / "fit.png"))
            report["selection"] = {"overall": sel.overall, "choice": sel.per_op_choice, "noise_floor": sel.noise_floor}
        else:
            say(f"[2/7] predictor in {pred_dir} already matches the store: not retrained")
            sel_file = pred_dir / "selection_report.json"
            if sel_file.is_file():
                doc = json.loads(sel_file.read_text())
                report["selection"] = {"overall": doc.get("overall"), "choice": doc.get("per_op_choice"),
                                       "noise_floor": doc.get("noise_floor")}
        timings["train_s"] = time.perf_counter() - t

        # 3 -- composition
        t = time.perf_counter()
        info = pred.composition.info
        if pred.composition.calibrated and info.get("networks") == networks and info.get("passes", 1) == calibration_passes:
            say("[3/7] composition already calibrated on this CPU")
        else:
            say(f"[3/7] calibrating the composition on {networks} random networks measured on this CPU")
            bar = _bar(progress, networks * len(DEFAULT_CONDITIONS) * calibration_passes, "calibrating")
            comp, cases = calibrate(pred, device, n_networks=networks, passes=calibration_passes,
                                    progress=lambda m: bar.update(1) if bar else None)
            if bar:
                bar.close()
            # kept so the composition can be refitted without measuring again (`latpred calibrate --from-cases`)
            (out / "calibration_cases.json").write_text(json.dumps([c.to_dict() for c in cases], indent=2))
            pred.composition = comp
            pred.save_composition(pred_dir)
        say(f"      {pred.composition.describe()}")
        report["composition"] = pred.composition.to_dict()
        timings["calibrate_s"] = time.perf_counter() - t

        # 4 -- whole model: predict per node, measure
        t = time.perf_counter()
        module, name = _model(model)
        x = torch.randn(1, 3, input_size, input_size)
        graph = trace(module, x, name=name)
        cov = graph.coverage(pred.ops)
        say(f"[4/7] {graph.summary()}\n      {cov.summary()}")
        # without a cloud predictor this CPU's row is the cloud itself (cloud_label names it)
        cpu_cloud = cloud_label if cloud_pred is None else "this CPU (all threads, no load)"
        conds = {"edge (1 thread, 50% load)": (0.5, 1), cpu_cloud: (0.0, pred.default_threads)}
        rows, lats = [], {}
        adopt_reference(device, pred)  # measured in the predictor's units
        measured = measure_in_passes(device, [ModelJob(module, lambda: (x,), u, th) for u, th in conds.values()], passes=3)
        for (label, (u, th)), res in zip(conds.items(), measured):
            if res.latency_ms is None:
                raise MeasurementError(f"{name} could not be measured under {label}: {'; '.join(res.errors)}")
            lat = pred.predict_graph(graph, batch_size=1, utilization=u, threads=th)
            meas = res.latency_ms
            lats[label] = lat
            rows.append({"condition": label, "predicted_ms": float(lat.total_ms), "measured_ms": meas,
                         "isolated_sum_ms": float(lat.isolated_ms.sum()), "error": float(lat.total_ms) / meas - 1})
            say(f"      {label:<30} predicted {float(lat.total_ms):8.2f} ms, measured {meas:8.2f} ms "
                f"({100 * (float(lat.total_ms) / meas - 1):+.1f}%)")
        edge_label = next(iter(conds))
        plots.plot_layers(graph, lats[edge_label].node_ms, str(out / "layers.png"),
                          title=f"{name}, batch 1, {edge_label}: predicted latency per layer")
        plots.plot_predicted_vs_measured([(r["condition"].split(" ")[0], r["predicted_ms"], r["measured_ms"]) for r in rows],
                                         str(out / "predicted_vs_measured.png"), title=f"{name}: whole-model latency")
        report["model"] = {"name": name, "summary": graph.summary(), "coverage": cov.to_dict(), "cases": rows,
                           "top_nodes_edge": lats[edge_label].top(10)}
        if cloud_pred is not None:
            lats[cloud_label] = cloud_pred.predict_graph(graph, batch_size=1, utilization=0.0)
            total = float(lats[cloud_label].total_ms)
            say(f"      {cloud_label}: predicted {total:.2f} ms by {cloud_path}")
            report["model"]["cloud"] = {"condition": cloud_label, "predictor": str(cloud_path), "predicted_ms": total,
                                        "coverage": graph.coverage(cloud_pred.ops).to_dict()}
        timings["model_s"] = time.perf_counter() - t

        # 5 -- edge-cloud split
        t = time.perf_counter()
        bws = ", ".join(f"{b:g}" for b in BANDWIDTHS_MBPS)
        say(f"[5/7] optimising the edge-cloud split (NSGA-II: latency x edge memory) at {bws} Mbps; {cloud_label}")
        edge_ms, cloud_ms = lats[edge_label].node_ms, lats[cloud_label].node_ms
        report["partition"] = {**_partition(graph, edge_ms, cloud_ms, out, plots, say),
                               "edge": edge_label, "cloud": cloud_label}
        timings["partition_s"] = time.perf_counter() - t

        # 6 -- adaptive re-planning on a scripted trace
        t = time.perf_counter()
        say("[6/7] adaptive re-planning as the conditions change (scripted trace, predicted)")
        report["adaptive"] = _adaptive(graph, pred, cloud_ms, out, say)
        timings["adaptive_s"] = time.perf_counter() - t
    finally:
        device.close()

    # 7 -- report
    timings["total_s"] = time.perf_counter() - t_all
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(_markdown(report))
    say(f"[7/7] report: {out / 'report.md'} (+ report.json, layers.png, predicted_vs_measured.png, pareto.png, "
        f"graph_cut.png, adaptive.png, fit.png) in {timings['total_s']:.0f} s")
    return report


def _partition(graph: Any, edge: Any, cloud: Any, out: Path, plots: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Edge-cloud plans from the per-node ms already predicted for the edge and cloud conditions."""
    from partition import Link, optimize_partition
    results = []
    shown = None
    for bw in BANDWIDTHS_MBPS:
        plan = optimize_partition(graph, devices=[edge, cloud], link=Link(bw, rtt_ms=RTT_MS),
                                  objectives=("latency", "edge_memory"), pop_size=40, n_gen=40, seed=0)
        on_edge = sum(1 for a, n in zip(plan.assignment, graph.nodes) if a == 0 and n.kind == "compute")
        results.append({"bandwidth_mbps": bw, "latency_ms": plan.objectives["latency_ms"],
                        "edge_memory_mib": plan.objectives["edge_memory_bytes"] / 2**20,
                        "bytes_transferred": plan.objectives["bytes_transferred"], "compute_nodes_on_edge": on_edge,
                        "all_edge_ms": float(edge.sum()), "all_cloud_ms": None, "front_size": len(plan.pareto)})
        say(f"      {bw:6g} Mbps: {plan.objectives['latency_ms']:8.2f} ms, {on_edge} compute nodes on the edge, "
            f"{plan.objectives['bytes_transferred'] / 1e3:.0f} kB sent, edge memory "
            f"{plan.objectives['edge_memory_bytes'] / 2**20:.1f} MiB ({len(plan.pareto)} plans on the front)")
        if shown is None or 0 < on_edge < len(graph.compute_nodes):
            shown = (bw, plan)
    bw, plan = shown
    pts = [(o["latency"], o["edge_memory"] / 2**20) for _, o in plan.pareto]
    plots.plot_pareto(pts, (plan.objectives["latency"], plan.objectives["edge_memory"] / 2**20), str(out / "pareto.png"),
                      title=f"{graph.name}: edge-cloud plans at {bw:g} Mbps")
    plots.plot_graph_cut(graph, plan.assignment, str(out / "graph_cut.png"),
                         title=f"{graph.name} at {bw:g} Mbps: {plan.objectives['latency_ms']:.1f} ms predicted")
    return {"rtt_ms": RTT_MS, "per_bandwidth": results, "pictured_bandwidth_mbps": bw}


def _adaptive(graph: Any, pred: Any, cloud_ms: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Replay :data:`ADAPTIVE_PHASES` through an :class:`~partition.adaptive.AdaptiveController` (three
    observations per phase, confirm=2) on a simulated clock; the edge is ``pred`` at 1 thread."""
    import numpy as np

    from partition import Link
    from partition.adaptive import AdaptiveController, ChangeDetector, plot_timeline

    now = [0.0]
    ctl = AdaptiveController(graph, pred, np.asarray(cloud_ms, dtype=float), Link(ADAPTIVE_PHASES[0][1], rtt_ms=RTT_MS),
                             detector=ChangeDetector(confirm=2, min_interval_s=0.0), edge_threads=1, feedback_min=0,
                             clock=lambda: now[0])
    phases, predicted = [], []
    for u, bw in ADAPTIVE_PHASES:
        n0 = len(ctl.decisions)
        for _ in range(3):
            ctl.step({"utilization": u, "bandwidth_mbps": bw, "rtt_ms": RTT_MS})
            predicted.append((now[0], float("nan"), ctl.predicted_ms()))  # nothing measured: the plan's prediction only
            now[0] += 1.0
        new = ctl.decisions[n0:]
        plan = ctl.decisions[-1].new_plan
        # edge nodes outside their op model's training range (shapes, or a load above the profiled ones): extrapolated,
        # kept near the generic model, and said so
        outside = len(pred.predict_graph(graph, utilization=u, threads=1).out_of_domain_nodes)
        row = {"utilization": u, "bandwidth_mbps": bw, "compute_nodes_per_device": plan["compute_nodes_per_device"],
               "predicted_ms": ctl.predicted_ms(), "re_plans": len(new), "swaps": sum(d.swapped for d in new),
               "decision_ms": max((d.decision_ms for d in new), default=0.0), "edge_nodes_out_of_range": outside}
        phases.append(row)
        say(f"      load {u:.1f}, {bw:5g} Mbps: {row['compute_nodes_per_device'][0]} compute nodes on the edge, "
            f"{row['compute_nodes_per_device'][1]} on the cloud, {row['predicted_ms']:8.2f} ms predicted"
            + (f" (initial plan, {row['decision_ms']:.0f} ms)" if n0 == 0 else
               f" ({'swapped' if row['swaps'] else 'kept'} after {row['re_plans']} re-plan(s), {row['decision_ms']:.0f} ms)"
               if new else "")
            + (f"; {outside} edge node(s) outside their op model's profiled range (shapes or conditions)" if outside else ""))
    plot_timeline(out / "adaptive.png", ctl.history, ctl.decisions, predicted, title=f"{graph.name}: adaptive re-planning (predicted)")
    return {"rtt_ms": RTT_MS, "phases": phases, "swaps": sum(d.swapped for d in ctl.decisions[1:])}


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="case", leave=False)


def _markdown(r: dict[str, Any]) -> str:
    lines = ["# latpred quickstart report", ""]
    m = r.get("model", {})
    if m:
        lines += [f"**Model:** {m['summary']}", "", "| condition | predicted ms | measured ms | error |", "|---|---|---|---|"]
        lines += [f"| {c['condition']} | {c['predicted_ms']:.2f} | {c['measured_ms']:.2f} | {100 * c['error']:+.1f}% |"
                  for c in m["cases"]]
        if m.get("cloud"):
            lines += [f"| {m['cloud']['condition']} | {m['cloud']['predicted_ms']:.2f} | — | — |"]
        lines += ["", "![per-layer latency](layers.png)", "", "![predicted vs measured](predicted_vs_measured.png)", ""]
    p = r.get("partition", {})
    if p:
        lines += ["## Edge-cloud split", "", f"Edge: {p.get('edge')}; {p.get('cloud')}; RTT {p.get('rtt_ms')} ms.", "",
                  "| bandwidth (Mbps) | latency ms | compute nodes on edge | kB sent | edge MiB |",
                  "|---|---|---|---|---|"]
        lines += [f"| {x['bandwidth_mbps']:g} | {x['latency_ms']:.2f} | {x['compute_nodes_on_edge']} | "
                  f"{x['bytes_transferred'] / 1e3:.0f} | {x['edge_memory_mib']:.1f} |" for x in p["per_bandwidth"]]
        lines += ["", "![Pareto front](pareto.png)", "", "![graph with the cut](graph_cut.png)", ""]
    a = r.get("adaptive", {})
    if a:
        lines += ["## Adaptive re-planning (scripted conditions, predicted)", "",
                  "| edge load | Mbps | compute nodes edge / cloud | predicted ms | re-plans | swaps | edge nodes out of range |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {x['utilization']:.1f} | {x['bandwidth_mbps']:g} | {x['compute_nodes_per_device'][0]} / "
                  f"{x['compute_nodes_per_device'][1]} | {x['predicted_ms']:.2f} | {x['re_plans']} | {x['swaps']} | "
                  f"{x.get('edge_nodes_out_of_range', '—')} |" for x in a["phases"]]
        lines += ["", "![adaptive timeline](adaptive.png)", ""]
    sel = r.get("selection") or {}
    if sel.get("overall"):
        lines += ["## Regression models (cross-validated)", "", "| models | acc10 | MAPE |", "|---|---|---|"]
        lines += [f"| {k} | {100 * v['acc10']:.1f}% | {v['mape']:.1f}% |" for k, v in sel["overall"].items()]
        floor = (sel.get("noise_floor") or {}).get("overall")
        if floor:
            lines += ["", f"Noise floor: two passes of one spec agree within ±10% for {100 * floor['within10']:.1f}% "
                          f"of {floor['n_pairs']} pairs (MAPE {floor['mape']:.1f}%)."]
        lines += ["", "![fit per op type](fit.png)", ""]
    lines += [f"Timings (s): {r.get('timings_s')}", ""]
    return "\n".join(lines)


