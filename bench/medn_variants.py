"""MEDN variants, cross-validated on a profiled store with the selection's own folds.

    python bench/medn_variants.py --db data/cpu/cpu2_default3x_plus_2026-11-27.sqlite \\
        --variant shipped: --variant log:loss_space=log --variant skip:linear_skip=true,loss_space=log

Each ``--variant NAME:KEY=VALUE,...`` overrides MEDN's hyper-parameters of the shipped candidate table
(values are parsed as TOML: ``true``, ``0.1``, ``"log"``; ``none`` is None); ``NAME:`` alone is the shipped table. For every
variant, MEDN (one multi-task network over all op types) is cross-validated exactly as ``latpred train``
does (same grouped folds, same varied-column schemas), and the report gives its overall and per-op acc10,
MAPE and R² (log), its parameter count and training time, next to the other families' figures when
``--with`` names them. Writes JSON and prints one summary line.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from latpred.profiling.store import ProfileStore
from latpred.regressors import candidate_table
from latpred.selection import load_training_data, select


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:KEY=VALUE,...`` -> (name, params); values are TOML literals."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE,... (NAME: alone for the shipped table)")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: {item!r} has no '='")
        if value.strip().lower() == "none":  # TOML has no null: switches an option off
            params[key.strip()] = None
            continue
        try:
            params[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            params[key.strip()] = value.strip()  # a bare word: a string
    return name, params


def _write(path: str, results: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (repeatable)")
    ap.add_argument("--with", dest="others", default="", help="other families to cross-validate once, for comparison")
    ap.add_argument("--ops", default="", help="comma-separated op types (default: all)")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench/results/medn_variants.json")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or ["shipped:"])]

    with ProfileStore(args.db, readonly=True) as store:
        data = load_training_data(store, ops=[o for o in args.ops.split(",") if o] or None)
    base = candidate_table()
    results: dict[str, Any] = {"db": args.db, "cv": args.cv, "seed": args.seed, "variants": {}}
    for name, params in variants:
        table = copy.deepcopy(base)
        table.setdefault("medn", {}).setdefault("params", {}).update(params)
        t0 = time.perf_counter()
        pred, report = select(data, families=["medn"], cv=args.cv, seed=args.seed, table=table)
        overall = report.overall["medn-only"]
        per_op = {c.op: c.metrics for c in report.candidates if c.family == "medn"}
        results["variants"][name] = {"params": params, "overall": overall, "per_op": per_op,
                                     "n_parameters": report.medn.n_parameters(), "epochs": report.medn.n_epochs_,
                                     "wall_s": time.perf_counter() - t0}
        print(f"{name:>16}: acc10 {overall['acc10']:.1%}  MAPE {overall['mape']:.2f}%  R2(log) {overall['r2_log']:.4f}  "
              f"params {report.medn.n_parameters()}  {time.perf_counter() - t0:.0f} s", flush=True)
        _write(args.json, results)  # after every variant: a run cut off keeps the variants it finished
    others = [f for f in args.others.split(",") if f]
    if others:
        _, report = select(data, families=others, cv=args.cv, seed=args.seed)
        results["others"] = {k: v for k, v in report.overall.items()}
        for k, v in report.overall.items():
            print(f"{k:>16}: acc10 {v['acc10']:.1%}  MAPE {v['mape']:.2f}%  R2(log) {v['r2_log']:.4f}")
    _write(args.json, results)
    best = max(results["variants"].items(), key=lambda kv: kv[1]["overall"]["acc10"])
    print(f"medn_variants: {len(variants)} variants on {sum(len(v) for v in data.latency_ms.values())} samples; "
          f"best {best[0]} acc10 {best[1]['overall']['acc10']:.1%} MAPE {best[1]['overall']['mape']:.2f}% -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
