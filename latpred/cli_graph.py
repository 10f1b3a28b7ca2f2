"""Whole-model commands of the ``latpred`` CLI: trace, predict, calibrate, validate, consensus."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .errors import SpecError

EXAMPLES = {
    "trace": """examples:
  latpred trace torchvision:resnet18
  latpred trace model.onnx --nodes
  latpred trace mypkg.models:build --predictor latpred-out/predictor --json""",
    "predict": """examples:
  latpred predict --predictor latpred-out/predictor --model torchvision:resnet50
  latpred predict --predictor P --model torchvision:vit_b_16 --batch-size 1,8,32 --utilization 0,0.5 --threads 1""",
    "calibrate": """examples:
  latpred calibrate --predictor latpred-out/predictor
  latpred calibrate --predictor P --networks 60 --cases calibration.json
  latpred validate --predictor P --models torchvision:resnet18,torchvision:vgg11 --json cal_models.json
  latpred calibrate --predictor P --from-cases calibration.json --from-validation cal_models.json""",
    "overlap": """examples:
  latpred train --db gpu.sqlite --target host_ms --out pred_host
  latpred train --db gpu.sqlite --target gpu_ms --out pred_gpu
  latpred overlap --host pred_host --gpu pred_gpu --out pred_gpu_overlap --measured calibration_models.json
  latpred validate --predictor pred_gpu_overlap --device cuda --models torchvision:resnet50""",
    "validate": """examples:
  latpred validate --predictor P --models torchvision:resnet18,torchvision:mobilenet_v2 --batch-sizes 1,8
  latpred validate --predictor P --models torchvision:zoo --batch-sizes 1,8,32 --utilization 0,0.5 \\
      --json report.json --plot report.png""",
    "consensus": """examples:
  latpred consensus --predictor P run1.json run2.json run3.json
  latpred consensus --predictor P zoo_*.json --json consensus.json
  latpred consensus run1.json run2.json   # the predictions stored in the last report""",
}


def _say(args: argparse.Namespace) -> Any:
    quiet = getattr(args, "json", None) == "-" or getattr(args, "quiet", False)
    return None if quiet else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))


def _graph(ref_text: str, batch_size: int = 1) -> Any:
    from .graph.models import load_model
    from .graph.trace import trace

    ref = load_model(ref_text)
    if ref.onnx_path is not None:
        from .graph.onnx import from_onnx

        return from_onnx(ref.onnx_path, batch_size=batch_size)
    return trace(ref.module, ref.example_input(batch_size), name=ref.name)


def cmd_trace(args: argparse.Namespace) -> int:
    g = _graph(args.model, args.batch_size)
    covered = None
    if args.predictor:
        from .predictor import Predictor

        covered = Predictor.load(args.predictor).ops
    cov = g.coverage(covered)
    data = {"summary": g.summary(), "coverage": cov.to_dict(), "leaves": g.metadata.get("leaves", []),
            **({"nodes": g.table()} if args.nodes else {})}
    lines = [g.summary(), cov.summary()]
    for name, target, reason in cov.fallback[:20]:
        lines.append(f"  fallback: {name} ({target}): {reason}")
    if args.nodes:
        for r in g.table():
            lines.append(f"  {r['name']:<28} {r['kind']:<8} {r['op'] or r['target']:<22} {r['flops'] / 1e6:10.2f} MFLOPs "
                         f"{r['params'] or ''}")
    print(json.dumps(data, indent=2, default=str) if args.json else "\n".join(lines))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from .domain import TRUST_FACTOR
    from .predictor import load_predictor

    pred = load_predictor(args.predictor)
    g = _graph(args.model)
    b = np.array(args.batch_size)[:, None, None]
    u = np.array(args.utilization)[None, :, None]
    t = np.array(args.threads if args.threads else [pred.default_threads])[None, None, :]
    lat = pred.predict_graph(g, batch_size=b, utilization=u, threads=t)
    rows = []
    for i, bb in enumerate(args.batch_size):
        for j, uu in enumerate(args.utilization):
            for k, tt in enumerate(args.threads or [pred.default_threads]):
                order = np.argsort(-lat.node_ms[i, j, k])[:args.top]
                rows.append({"batch_size": bb, "utilization": uu, "threads": tt, "total_ms": float(lat.total_ms[i, j, k]),
                             "isolated_sum_ms": float(lat.isolated_ms[i, j, k].sum()),
                             "top_nodes": [(lat.node_names[n], float(lat.node_ms[i, j, k, n])) for n in order]})
    cov = g.coverage(pred.ops)
    lines = [g.summary(), cov.summary(), pred.composition.describe()]
    if lat.out_of_domain_nodes:
        lines.append(f"{len(lat.out_of_domain_nodes)} node(s) outside their op model's profiled range, kept within "
                     f"{TRUST_FACTOR:g}x of the generic model: {', '.join(lat.out_of_domain_nodes[:8])}"
                     + (" ..." if len(lat.out_of_domain_nodes) > 8 else ""))
    for r in rows:
        lines.append(f"batch {r['batch_size']:>3}, utilization {r['utilization']:.2f}, threads {r['threads']}: "
                     f"{r['total_ms']:.2f} ms (isolated sum {r['isolated_sum_ms']:.2f} ms)")
    if rows:
        lines.append(f"slowest nodes at batch {rows[0]['batch_size']}, utilization {rows[0]['utilization']:.2f}:")
        lines += [f"  {n:<32} {ms:8.3f} ms" for n, ms in rows[0]["top_nodes"]]
    print(json.dumps({"model": g.name, "coverage": cov.to_dict(), "out_of_domain_nodes": lat.out_of_domain_nodes,
                      "predictions": rows}, indent=2) if args.json
          else "\n".join(lines))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .graph.calibrate import calibrate, conditions_for
    from .predictor import Predictor
    from .profiling.devices import make_device

    pred = Predictor.load(args.predictor)
    if args.cache_mib is not None:
        if not (args.cache_mib >= 0 and math.isfinite(args.cache_mib)):
            raise SpecError(f"--cache-mib must be a non-negative number of MiB, got {args.cache_mib!r}")
        pred.metadata["cache_mib"] = args.cache_mib
    if args.activation_cap_mib is not None:
        if not (args.activation_cap_mib >= 0 and math.isfinite(args.activation_cap_mib)):
            raise SpecError(f"--activation-cap-mib must be a non-negative number of MiB, got {args.activation_cap_mib!r}")
        pred.metadata["activation_cap_mib"] = args.activation_cap_mib
    if args.rooflines_from:
        from .profiling.store import ProfileStore

        if not Path(args.rooflines_from).is_file():
            raise SpecError(f"--rooflines-from {args.rooflines_from}: no profile store there")
        with ProfileStore(args.rooflines_from) as store:
            n = pred.fit_rooflines_from_store(store)
        say = _say(args)
        if say:
            say(f"rooflines of {len(pred.rooflines)} op types from {n} samples of {args.rooflines_from}")
    if args.from_cases or args.from_validation:
        from .graph.calibrate import CalibrationCase, cases_from_validation, composition_from_cases, recompute_features
        from .graph.predict import composition_caps

        cases = []
        if args.from_cases:
            try:
                raw = json.loads(Path(args.from_cases).read_text())
                cases = [CalibrationCase(**c) for c in raw]
            except (OSError, ValueError, TypeError) as e:
                raise SpecError(f"--from-cases {args.from_cases}: not a calibration case file ({e})") from None
            cases = recompute_features(pred, cases, seed=args.seed)
        for path in args.from_validation or ():
            try:
                report = json.loads(Path(path).read_text())
            except (OSError, ValueError) as e:
                raise SpecError(f"--from-validation {path}: cannot read a JSON report ({e})") from None
            cases += cases_from_validation(pred, report)
        old = pred.composition.info
        keep = ("networks", "seed", "conditions", "source", "calibration_s") if args.from_cases and not args.from_validation else ()
        info = {k: old[k] for k in keep if k in old}
        if args.from_validation:
            info["source"] = ("real models measured by `latpred validate`: " + ", ".join(sorted({c.model for c in cases if c.model}))
                              + (" + random networks" if args.from_cases else ""))
        comp = composition_from_cases(cases, {**info, "refit_from_cases": len(cases)}, default_threads=pred.default_threads,
                                      **composition_caps(pred))
        comp.info.setdefault("networks", len({c.group for c in cases}))
        comp.info.setdefault("calibration_s", 0.0)
    else:
        device = make_device(args.device)
        try:
            comp, cases = calibrate(pred, device, n_networks=args.networks, seed=args.seed, passes=args.passes,
                                    conditions=conditions_for(args.batch_sizes), progress=_say(args))
        finally:
            device.close()
    pred.composition = comp
    pred.save_composition(args.predictor)
    if args.cases:
        Path(args.cases).write_text(json.dumps([c.to_dict() for c in cases], indent=2))
    info = comp.info
    text = (f"{comp.describe()}\nfitted on {info['rows']} cases of {info['networks']} networks in "
            f"{info['calibration_s']:.0f} s: fit MAPE {info['fit_mape']:.1f}%, acc10 {100 * info['fit_acc10']:.0f}% "
            f"(plain sum: median ratio {info['sum_ratio_median']:.2f}); saved to {args.predictor}")
    print(json.dumps(comp.to_dict(), indent=2) if args.json else text)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .graph.models import parse_model_refs
    from .graph.validate import validate_models
    from .predictor import load_predictor
    from .profiling.devices import make_device

    pred = load_predictor(args.predictor)
    refs = parse_model_refs(args.models)
    device = make_device(args.device) if not args.no_measure else None
    try:
        threads = args.threads if args.threads is None or len(args.threads) > 1 else args.threads[0]
        report = validate_models(pred, device, refs, args.batch_sizes, args.utilization, threads=threads,
                                 loaded_threads=args.loaded_threads, measure=not args.no_measure, passes=args.passes,
                                 progress=_say(args))
    finally:
        if device is not None:
            device.close()
    doc = report.to_dict()
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    if args.plot and report.measured():
        report.plot(args.plot)
    if args.json == "-":
        print(json.dumps(doc, indent=2, default=str))
        return 0
    m = report.metrics()
    lines = [report.table(), ""]
    for name, mm in report.per_model().items():
        if mm.get("n"):
            lines.append(f"{name:<20} acc10 {100 * mm['acc10']:5.1f}%  MAPE {mm['mape']:5.1f}%  (n={mm['n']})")
    if m.get("n"):
        lines.append(f"overall: acc10 {100 * m['acc10']:.1f}%, MAPE {m['mape']:.1f}%, Spearman {m['spearman']:.3f} "
                     f"over {m['n']} cases; plain sum of isolated nodes: acc10 {100 * m['sum_acc10']:.1f}%, "
                     f"median ratio {m['sum_ratio_median']:.2f}")
        if "probe_acc10" in m:
            lines.append(f"at the host speed the probe read during each measurement: acc10 {100 * m['probe_acc10']:.1f}%, "
                         f"MAPE {m['probe_mape']:.1f}% over {m['probe_n']} cases")
        if "pass_within10" in m:
            lines.append(f"noise floor: two measurement passes of one case agree within ±10% for "
                         f"{100 * m['pass_within10']:.1f}% of pass pairs")
    print("\n".join(lines))
    return 0


def cmd_consensus(args: argparse.Namespace) -> int:
    from .graph.consensus import consensus_of, read_reports

    reports = read_reports(args.reports)
    labels = [Path(f).name for f in args.reports]
    if len(set(labels)) != len(labels):
        labels = list(args.reports)
    report = consensus_of(reports, labels)
    if args.predictor:
        from .predictor import load_predictor

        report = report.predicted_by(load_predictor(args.predictor))
    doc = {"predictor": args.predictor, **report.to_dict()}
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(doc, indent=2))
    if args.json == "-":
        print(json.dumps(doc, indent=2))
        return 0
    lines = [f"{'model':<20} {'batch':>5} {'util':>5} {'thr':>4} {'predicted':>11} {'consensus':>11} {'error':>8} {'spread':>7}"]
    for c in report.cases():
        lines.append(f"{c['model']:<20} {c['batch_size']:>5} {c['utilization']:>5.2f} {c['threads'] or '-':>4} "
                     f"{c['predicted_ms']:9.2f}ms {c['consensus_ms']:9.2f}ms {100 * c['rel_error']:+7.1f}% "
                     f"{100 * c['run_spread']:6.1f}%")
    print("\n".join(lines + ["", report.summary()]))
    return 0


def cmd_overlap(args: argparse.Namespace) -> int:
    from .graph.models import load_model
    from .graph.overlap import OverlapPredictor
    from .graph.trace import trace
    from .predictor import Predictor

    over = OverlapPredictor(Predictor.load(args.host), Predictor.load(args.gpu), sync_ms=args.sync_ms,
                            gpu_overhead_ms=args.gpu_overhead_ms, host_factor=args.host_factor)
    fitted = None
    if args.measured:
        cases = []
        for f in args.measured:
            try:
                doc = json.loads(Path(f).read_text())
                raw = doc["cases"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise SpecError(f"--measured {f}: not a measured-cases file ({type(e).__name__}: {e})") from None
            refs = (doc.get("settings") or {}).get("refs") or {}
            for c in raw:
                comp = c.get("components") or {}
                if c.get("measured_ms") and comp.get("host_ms"):
                    cases.append({"ref": refs.get(c["model"], f"torchvision:{c['model']}"), "model": c["model"],
                                  "batch_size": int(c["batch_size"]), "utilization": float(c.get("utilization", 0.0)), **comp})
        if not cases:
            raise SpecError("--measured: no case with the whole model's host_ms (measure on a CUDA device: "
                            "latpred validate --device cuda, or bench/measure_zoo.py)")
        graphs = {}
        for c in cases:
            if c["model"] not in graphs:
                ref = load_model(c["ref"])
                graphs[c["model"]] = trace(ref.module, ref.example_input(1), name=ref.name)
        fitted = over.fit_host_factor(graphs, cases)
    out = over.save(args.out)
    info = {"out": str(out), "ops": over.ops, "host_factor": over.host_factor, "fitted_on_cases": len(cases) if fitted is not None else 0,
            "gpu_overhead_ms": over.gpu_overhead_ms, "host_probe_nominal_ms": over.host_nominal_ms}
    text = (f"overlap predictor written to {out}: {len(over.ops)} op types, host factor {over.host_factor:.3f}"
            f"{f' (fitted on {len(cases)} measured cases of {len(graphs)} models)' if fitted is not None else ''}, GPU replay overhead "
            f"{1e3 * over.gpu_overhead_ms:.2f} us per node, host nominal "
            f"{'none (host times not probe-normalised)' if over.host_nominal_ms is None else f'{1e3 * over.host_nominal_ms:.1f} us'}")
    print(json.dumps(info, indent=2) if args.json else text)
    return 0


def register(sub: Any, fmt: Any) -> None:
    """Add the whole-model commands to the ``latpred`` parser."""
    from .cli import _csv

    def add(name: str, help_: str, fn: Any, json_file: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES[name], formatter_class=fmt)
        sp.set_defaults(func=fn)
        if json_file:
            sp.add_argument("--json", nargs="?", const="-", metavar="FILE",
                            help="write the JSON report to FILE (no FILE: print JSON instead of the table)")
        else:
            sp.add_argument("--json", action="store_true", help="machine-readable JSON output")
        return sp

    t = add("trace", "trace a model (torch.fx or ONNX) and show its graph and op coverage", cmd_trace)
    t.add_argument("model", help="torchvision:NAME, a .onnx file, or package.module:factory")
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--predictor", help="report coverage against this predictor's op types")
    t.add_argument("--nodes", action="store_true", help="list every node")

    p = add("predict", "predict a whole model's latency (per node and total) under one or many conditions", cmd_predict)
    p.add_argument("--predictor", required=True, help="predictor directory")
    p.add_argument("--model", required=True, help="torchvision:NAME, a .onnx file, or package.module:factory")
    p.add_argument("--batch-size", type=_csv(int), default=[1], help="comma-separated batch sizes (default: 1)")
    p.add_argument("--utilization", type=_csv(float), default=[0.0], help="comma-separated utilizations (default: 0)")
    p.add_argument("--threads", type=_csv(int), help="comma-separated thread counts (default: the device default)")
    p.add_argument("--top", type=int, default=10, help="slowest nodes to list (default: %(default)s)")

    c = add("calibrate", "fit the composition model on random networks measured on a device; updates the predictor",
            cmd_calibrate)
    c.add_argument("--predictor", required=True, help="predictor directory (updated in place)")
    c.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: %(default)s)")
    c.add_argument("--networks", type=int, default=30, help="random networks to measure (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-sizes", type=_csv(int), default=[1, 8, 32],
                   help="batch sizes measured, each unloaded, loaded and on one thread (a case above 30 GFLOPs per call is "
                   "skipped); include the batches you will predict: the composition extrapolates poorly in batch (default: 1,8,32)")
    c.add_argument("--cases", help="also write the measured cases to this JSON file")
    c.add_argument("--passes", type=int, default=3,
                   help="measurement passes over all cases, pooled as in profiling (default: %(default)s)")
    c.add_argument("--from-cases", help="refit from cases written earlier with --cases (no measurement): after retraining")
    c.add_argument("--from-validation", action="append", metavar="REPORT",
                   help="fit on the measured cases of a `latpred validate --json` report (real models; no measurement), "
                   "alone or with --from-cases; repeat it for several reports. Keep the models you evaluate out of it")
    c.add_argument("--rooflines-from", metavar="STORE",
                   help="first record each op model's best FLOP and byte rates from the profile store it was trained on: "
                   "predictions inside the training range are never faster (predictors trained before 2026-12-05 lack them; "
                   "`latpred train` records them)")
    c.add_argument("--cache-mib", type=float, metavar="MIB",
                   help="the device's last-level cache in MiB, where the predictor's metadata lacks it (e.g. from lscpu); "
                   "each node's cold-weight cost is capped at it, and its spilled-output cost ends there; 0 = no cap and no spilled-output "
                   "term (default: the profiled device's, if recorded)")
    c.add_argument("--activation-cap-mib", type=float, metavar="MIB",
                   help="the CPU's private per-core (L2) cache in MiB, where the predictor's metadata lacks it (e.g. from "
                   "lscpu: L2 size / instances); each node's activation cost is capped at it; 0 = no cap (default: the "
                   "profiled CPU's L2, if recorded)")

    o = add("overlap", "combine a host-stage and a GPU-stage predictor into a GPU whole-model predictor (host/device "
            "overlap composition)", cmd_overlap)
    o.add_argument("--host", required=True, help="predictor trained with --target host_ms")
    o.add_argument("--gpu", required=True, help="predictor trained with --target gpu_ms (same GPU)")
    o.add_argument("--out", required=True, help="directory to write (host/, gpu/, overlap.json)")
    o.add_argument("--measured", action="append", metavar="FILE",
                   help="fit the in-model host factor on whole models measured with their stage times (a `latpred validate "
                   "--device cuda --json` report or bench/measure_zoo.py output; repeat for several). Keep the models you "
                   "evaluate out of it")
    o.add_argument("--host-factor", type=float, default=1.0, help="in-model / isolated host time without --measured "
                   "(default: %(default)s)")
    o.add_argument("--gpu-overhead-ms", type=float,
                   help="GPU-stage overhead per node to subtract (default: the GPU predictor's measured replay overhead)")
    o.add_argument("--sync-ms", type=float, default=0.0, help="fixed cost of the final synchronisation (default: 0)")

    v = add("validate", "measure whole models and compare with predictions under the same conditions", cmd_validate,
            json_file=True)
    v.add_argument("--predictor", required=True, help="predictor directory")
    v.add_argument("--models", required=True,
                   help="comma-separated: torchvision:NAME (torchvision:zoo = the 14-model zoo), .onnx, package.module:factory")
    v.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: %(default)s)")
    v.add_argument("--batch-sizes", type=_csv(int), default=[1, 8, 32], help="default: 1,8,32")
    v.add_argument("--utilization", type=_csv(float), default=[0.0, 0.5], help="default: 0,0.5")
    v.add_argument("--threads", type=_csv(int),
                   help="threads of unloaded cases, comma-separated to measure several (default: the device default)")
    v.add_argument("--passes", type=int, default=3,
                   help="measurement passes over all cases, pooled as in profiling (default: %(default)s)")
    v.add_argument("--loaded-threads", type=int, default=1, help="threads of loaded cases (default: %(default)s)")
    v.add_argument("--no-measure", action="store_true", help="predict only")
    v.add_argument("--plot", help="predicted-vs-measured PNG")

    c = add("consensus", "score predictions against several earlier validation runs and their per-case median",
            cmd_consensus, json_file=True)
    c.add_argument("reports", nargs="+", help="validation reports (latpred validate --json, bench/whole_model.py), two or more")
    c.add_argument("--predictor", help="predict the cases with this predictor (default: the last report's predictions)")


