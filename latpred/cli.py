"""The ``latpred`` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad input, 130 interrupted."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cli_run import run_command
from .errors import SpecError

DEFAULT_OUT = Path("latpred-out")
DEFAULT_DB = DEFAULT_OUT / "profiles.sqlite"

EXAMPLES = {
    "profile": """examples:
  latpred profile --space quick --db latpred-out/profiles.sqlite
  latpred profile --space default --ops conv2d,linear --batch-sizes 1,8,32 --utilization 0,0.5
  latpred profile --space my_space.toml --device cuda --db gpu.sqlite --limit 200""",
    "ops": "examples:\n  latpred ops\n  latpred ops --json",
    "db": "examples:\n  latpred db info latpred-out/profiles.sqlite\n  latpred db export latpred-out/profiles.sqlite --csv samples.csv"
          "\n  latpred db renormalise latpred-out/profiles.sqlite --scheme working-set-v1"
          "\n  latpred db remeasure latpred-out/profiles.sqlite --op activation --run 7 --threads 1 --where fn=silu",
    "space": "examples:\n  latpred space show quick\n  latpred space show my_space.toml --specs 5",
    "quickstart": "examples:\n  latpred quickstart\n  latpred quickstart --out demo-out",
    "train": """examples:
  latpred train --db latpred-out/profiles.sqlite --out latpred-out/predictor
  latpred train --db cpu.sqlite --out pred --regressors medn,gbdt,rf --cv 5 --max-predict-us 20 --plot fit.png""",
}


def _csv(cast: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [cast(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {e}") from None
    return parse


def _count(text: str) -> int:
    """A non-negative integer argument."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {n}")
    return n


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if getattr(args, "json", False) else text)


# -- commands ---------------------------------------------------------------------------------
def cmd_ops(args: argparse.Namespace) -> int:
    from .features import feature_names
    from .ops import REGISTRY

    data = {name: {"doc": op.doc,
                   "params": [{"name": p.name, "kind": p.kind, "default": p.default, "choices": list(p.choices),
                               "symbols": list(p.symbols), "doc": p.doc} for p in op.params],
                   "features": feature_names(name)} for name, op in REGISTRY.items()}
    lines = []
    for name, op in REGISTRY.items():
        ps = ", ".join(p.name + ("" if p.required else f"={p.default}") for p in op.params)
        lines.append(f"{name:20s} {op.doc}\n{'':20s} params: {ps}")
    _emit(args, data, "\n".join(lines))
    return 0


def _load_space(args: argparse.Namespace) -> Any:
    from .profiling.space import load_space

    space = load_space(args.space)
    return space.restricted(ops=args.ops, batch_sizes=args.batch_sizes, utilization=args.utilization,
                            threads=args.threads, dtypes=args.dtypes, samples=args.samples,
                            seed=getattr(args, "seed", None))


def cmd_profile(args: argparse.Namespace) -> int:
    from .profiling.devices import make_device
    from .profiling.runner import profile
    from .profiling.store import ProfileStore

    space = _load_space(args)
    device = make_device(args.device)
    try:
        with ProfileStore(args.db) as store:
            if not args.json:
                print(space.describe())
            report = profile(space, device, store, limit=args.limit, passes=args.passes,
                             progress=not args.no_progress, retry_failed=args.retry_failed,
                             check_state_n=args.check_state,
                             on_state_check=None if args.json else lambda line: print(line, flush=True))
    finally:
        device.close()
    # the state check's line was printed as it came (before the measurements), so not again here
    _emit(args, {**report.__dict__, "samples_per_s": report.samples_per_s, "db": str(args.db)},
          report.summary(state_check=False))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .profiling.store import ProfileStore
    from .selection import load_training_data, select

    with ProfileStore(args.db, readonly=True) as store:
        data = load_training_data(store, device_id=args.device_id, ops=args.ops, target=args.target)
    say = (lambda m: print(f"  fitting {m}", file=sys.stderr, flush=True)) if not args.json else None
    predictor, report = select(data, families=args.regressors, cv=args.cv, tolerance=args.tolerance,
                               max_predict_us=args.max_predict_us, max_bytes=args.max_bytes, seed=args.seed,
                               progress=say)
    out = Path(args.out)
    predictor.save(out)
    (out / "selection_report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    if args.plot:
        from .plots import plot_fit

        plot_fit(report, data, predictor, args.plot)
    _emit(args, {"predictor": str(out), **report.to_dict()},
          report.table() + f"\n\npredictor written to {out} (report: {out / 'selection_report.json'})")
    return 0


def _format_summary(summary: dict[str, Any], devices: list[dict[str, Any]]) -> str:
    from .profiling.state_check import format_state_check

    names = {d["id"]: d.get("metadata", {}) for d in devices}
    lines = []
    for dev in summary.get("devices", []):
        meta = names.get(dev.get("id"), {})
        model = meta.get("gpu_name") or meta.get("cpu_model") or ""
        if meta.get("cpu_family") is not None:  # recorded since 2026-12-05: a VM's model name hides the CPU generation
            model += f" (family {meta['cpu_family']} model {meta.get('cpu_model_number')}, {meta.get('cpu_isa')})"
        lines.append(f"device {dev.get('id')} [{dev.get('kind')}] {model} ({dev.get('fingerprint')}): "
                     f"{dev.get('n_ok', 0)} ok, {dev.get('n_failed', 0)} failed")
        lines.append(f"  {'op':20s} {'ok':>6s} {'failed':>6s} {'median ms':>10s}")
        for op, row in dev.get("ops", {}).items():
            med = row.get("median_latency_ms")
            lines.append(f"  {op:20s} {row.get('ok', 0):6d} {row.get('failed', 0):6d} "
                         f"{'' if med is None else format(med, '10.4f')}")
        lines.append(f"  batch sizes {dev.get('batch_sizes')}, utilizations {dev.get('utilizations')}")
        nominal = dev.get("reference_nominal_ms") or {}
        lines.append("  unloaded latencies " + ("normalised to reference " + ", ".join(
            f"{v:.3f} ms on {t} thread{'s' if t != '1' else ''}" for t, v in nominal.items())
            + f" ({dev.get('reference_scheme')} scheme)" if nominal else "not reference-normalised (raw timings)"))
        for run in dev.get("runs", []):
            rate = run.get("samples_per_s")
            lines.append(f"  run {run.get('id')} {run.get('status')} space={run.get('space_name')} "
                         f"measured={run.get('n_measured')}/{run.get('n_planned')}"
                         + ("" if rate is None else f" {rate:.2f} samples/s"))
            if run.get("state_check"):
                lines += ["    " + ln for ln in format_state_check(run["state_check"]).splitlines()]
    return "\n".join(lines) if lines else "empty store"


def cmd_db_info(args: argparse.Namespace) -> int:
    from .profiling.store import ProfileStore

    with ProfileStore(args.db, readonly=True) as store:
        summary, devices = store.summary(), store.devices()
    _emit(args, {**summary, "device_metadata": devices}, _format_summary(summary, devices))
    return 0


def cmd_db_export(args: argparse.Namespace) -> int:
    from .profiling.store import ProfileStore

    with ProfileStore(args.db, readonly=True) as store:
        n = store.export_csv(args.csv, status=None if args.all else "ok")
    _emit(args, {"rows": n, "csv": str(args.csv)}, f"wrote {n} rows to {args.csv}")
    return 0


def cmd_db_renormalise(args: argparse.Namespace) -> int:
    from .profiling.renormalise import renormalise_store
    from .profiling.store import ProfileStore

    with ProfileStore(args.db) as store:
        done = renormalise_store(store, args.scheme)
    n = sum(done.values())
    _emit(args, {"db": str(args.db), "scheme": args.scheme, "rewritten": {str(k): v for k, v in done.items()}},
          f"{args.db}: {n} normalised sample{'s' if n != 1 else ''} now in the {args.scheme} scheme (raw windows kept)")
    return 0


def _where(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--where takes PARAM=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def cmd_db_remeasure(args: argparse.Namespace) -> int:
    from .profiling.devices import make_device
    from .profiling.remeasure import remeasure, select_samples
    from .profiling.store import ProfileStore

    with ProfileStore(args.db, readonly=args.dry_run) as store:
        chosen = select_samples(store, op=args.op, run=args.run, threads=args.threads, utilization=args.utilization,
                                where=_where(args.where), min_mib=args.min_mib)
        if args.dry_run:
            _emit(args, {"db": str(args.db), "samples": [s.id for s in chosen]},
                  f"{len(chosen)} sample{'s' if len(chosen) != 1 else ''} would be re-measured: "
                  + ", ".join(f"{s.id} ({s.spec.op}, {s.latency_ms:.4g} ms)" for s in chosen[:20])
                  + (" ..." if len(chosen) > 20 else ""))
            return 0
        device = make_device(args.device)
        try:
            report = remeasure(device, store, chosen, passes=args.passes, progress=not args.no_progress)
        finally:
            device.close()
    _emit(args, {**report.__dict__, "median_ratio": report.median_ratio, "db": str(args.db)}, report.summary())
    return 0


def cmd_space_show(args: argparse.Namespace) -> int:
    from .profiling.space import load_space

    space = load_space(args.space)
    specs = space.specs()
    per_op: dict[str, int] = {}
    for s in specs:
        per_op[s.op] = per_op.get(s.op, 0) + 1
    data = {"space": space.to_dict(), "n_specs": len(specs), "per_op": per_op,
            "examples": [s.to_dict() for s in specs[: args.specs]]}
    text = [space.describe(), f"{len(specs)} specs: " + ", ".join(f"{k}={v}" for k, v in per_op.items())]
    text += [repr(s) for s in specs[: args.specs]]
    _emit(args, data, "\n".join(text))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    report = run_quickstart(Path(args.out), progress=not args.no_progress, model=args.model, networks=args.networks,
                            cloud=args.cloud, calibration_passes=args.calibration_passes)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="latpred", description="Profile DNN modules on real devices and predict latency.",
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, fn: Callable[[argparse.Namespace], int], epilog_key: str | None = None,
            parent: Any = sub) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help_, description=help_, epilog=EXAMPLES.get(epilog_key or name),
                               formatter_class=fmt)
        sp.set_defaults(func=fn)
        sp.add_argument("--json", action="store_true", help="machine-readable JSON output")
        return sp

    q = add("quickstart", "the main job on embedded defaults: profile this CPU (quick space), train and auto-select, "
            "calibrate, predict a real model per layer, optimise an edge-cloud split, re-plan it as conditions change, "
            "write a report with pictures",
            cmd_quickstart)
    q.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    q.add_argument("--model", default="resnet18", help="torchvision model to predict and partition (default: %(default)s)")
    q.add_argument("--networks", type=int, default=8,
                   help="random networks measured to calibrate the composition (default: %(default)s)")
    q.add_argument("--calibration-passes", type=int, default=2,
                   help="measurement passes over the calibration networks (default: %(default)s)")
    q.add_argument("--cloud", default="auto",
                   help="cloud device of the split: auto (the GPU predictor shipped in data/gpu/ when the checkout has one — "
                        "the host/device overlap predictor of the H200 — else this CPU), cpu (this CPU, all threads, no load) "
                        "or a predictor directory (default: %(default)s)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")

    pr = add("profile", "measure the specs of a parameter space on a device into a SQLite store", cmd_profile)
    pr.add_argument("--space", default="quick", help="built-in space (quick, default) or a TOML file")
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: %(default)s)")
    pr.add_argument("--db", default=str(DEFAULT_DB), help="SQLite store (default: %(default)s)")
    pr.add_argument("--ops", type=_csv(str), help="comma-separated op types to keep")
    pr.add_argument("--batch-sizes", type=_csv(int), help="override runtime batch sizes, e.g. 1,8,32")
    pr.add_argument("--utilization", type=_csv(float), help="override target utilizations, e.g. 0,0.5")
    pr.add_argument("--threads", type=_csv(int), help="override CPU thread counts, e.g. 1,2")
    pr.add_argument("--dtypes", type=_csv(str), help="override dtypes, e.g. float32,float16")
    pr.add_argument("--samples", type=int, help="override samples per op")
    pr.add_argument("--seed", type=int, help="draw the space with this seed instead of its own (another sample of "
                    "the same space: more data for a store that holds the first draw)")
    pr.add_argument("--limit", type=int, help="measure at most N specs of the space (all ops interleaved)")
    pr.add_argument("--passes", type=int, default=3,
                    help="passes over the specs; each spec is measured once per pass (default: %(default)s)")
    pr.add_argument("--retry-failed", action="store_true", help="measure specs that failed before again")
    pr.add_argument("--check-state", type=_count, default=24, metavar="N",
                    help="when adding to a store that already holds samples, first re-measure N of them once and warn "
                         "if the machine reads differently from when they were profiled (0: skip; default: %(default)s)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")

    add("ops", "list op types, their parameters and features", cmd_ops)

    tr = add("train", "train regression models per op type, auto-select, and save a predictor", cmd_train)
    tr.add_argument("--db", default=str(DEFAULT_DB), help="profile store (default: %(default)s)")
    tr.add_argument("--out", default=str(DEFAULT_OUT / "predictor"), help="predictor directory (default: %(default)s)")
    tr.add_argument("--regressors", type=_csv(str), help="families to try (default: all): "
                    "ridge,poly,knn,svr,rf,gbdt,mlp,gp,ridge_trees,medn")
    tr.add_argument("--ops", type=_csv(str), help="op types to train (default: all in the store)")
    tr.add_argument("--device-id", type=int, help="device in the store (needed when it holds several)")
    tr.add_argument("--target", default="latency_ms", choices=("latency_ms", "host_ms", "gpu_ms"),
                    help="what to learn: the latency, or a CUDA store's host or GPU stage time, for the "
                         "overlap composition (default: %(default)s)")
    tr.add_argument("--cv", type=int, default=5, help="cross-validation folds (default: %(default)s)")
    tr.add_argument("--tolerance", type=float, default=0.01,
                    help="acc10 within this of the best counts as equally accurate (default: %(default)s)")
    tr.add_argument("--max-predict-us", type=float, help="budget: prediction time per sample (batched), µs")
    tr.add_argument("--max-bytes", type=int, help="budget: serialized model size, bytes")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--plot", help="write a predicted-vs-measured PNG per op type")

    db = sub.add_parser("db", help="inspect or export a profile store", epilog=EXAMPLES["db"], formatter_class=fmt)
    dbs = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    info = add("info", "summarise a store", cmd_db_info, "db", dbs)
    info.add_argument("db", help="SQLite store")
    ex = add("export", "export samples to CSV", cmd_db_export, "db", dbs)
    ex.add_argument("db", help="SQLite store")
    ex.add_argument("--csv", required=True, help="output CSV path")
    ex.add_argument("--all", action="store_true", help="include failed samples")
    from .profiling.reference import SCHEMES

    rn = add("renormalise", "re-express a store's normalised samples in another reference scheme, from its raw windows",
             cmd_db_renormalise, "db", dbs)
    rn.add_argument("db", help="SQLite store")
    rn.add_argument("--scheme", required=True, choices=SCHEMES,
                    help="constant: beta = 1 (stores made before the working-set scheme); "
                    "working-set-v1: beta from the bytes a call moves")

    rm = add("remeasure", "measure chosen samples again, replacing them (old values kept in the sample's extra)",
             cmd_db_remeasure, "db", dbs)
    rm.add_argument("db", help="SQLite store")
    rm.add_argument("--op", help="op type of the samples (default: every op)")
    rm.add_argument("--run", type=int, help="only samples of this run (`latpred db info` lists runs)")
    rm.add_argument("--threads", type=int, help="only samples measured on this many threads")
    rm.add_argument("--utilization", type=float, help="only samples at this background utilization")
    rm.add_argument("--where", action="append", default=[], metavar="PARAM=VALUE",
                    help="only samples whose spec parameter (or batch_size) has this value; repeat for several")
    rm.add_argument("--min-mib", type=float, help="only samples whose call moves at least this many MiB (op cost model)")
    rm.add_argument("--passes", type=int, default=3, help="measurement passes per sample (default: 3)")
    rm.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N: the machine that profiled the samples")
    rm.add_argument("--dry-run", action="store_true", help="list the chosen samples, measure nothing")
    rm.add_argument("--no-progress", action="store_true")

    from .cli_graph import register

    register(sub, fmt)

    sp = sub.add_parser("space", help="inspect parameter spaces", epilog=EXAMPLES["space"], formatter_class=fmt)
    sps = sp.add_subparsers(dest="space_command", required=True, metavar="SPACE_COMMAND")
    show = add("show", "validate a space and show what it draws", cmd_space_show, "space", sps)
    show.add_argument("space", help="built-in space name or TOML file")
    show.add_argument("--specs", type=int, default=5, help="example specs to print")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``latpred`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command("latpred", args.func, args, "interrupted; re-run the same command to resume")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
