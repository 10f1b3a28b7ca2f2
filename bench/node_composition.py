"""A node-level composition, scored on a node table (no measurement).

    python bench/node_composition.py --nodes data/cpu/node_context_zoo_p8_cpu2_2026-11-27.json \
        [--train RANDOM_TABLE.json] [--json bench/results/node_composition.json]

``--nodes`` (and ``--train``) are ``bench/node_context.py`` files: every compute node of some models with
the predictor's isolated prediction, the node measured alone and its time inside the running model, and
each model's plain-call time. A gradient-boosted regressor learns log(in-context / isolated) per node — the
composition alone: both were measured within minutes, so the machine state cancels — from features the
predictor knows (log predicted ms, log2 batch, output and weight MiB, output above glibc's mmap threshold,
composition class, in place), each node weighted by its share of its model's in-context time and the
interpreter's per-node cost taken off. A model's prediction is the sum of its nodes' predictions times
that factor, times the median plain-call / in-context ratio of the training models at that batch size.
With ``--train`` the regressor is fitted on that table (e.g. the calibration generator's random networks,
``--models random0,random1,...``) and every model of ``--nodes`` is scored; without it, leave-one-model-out
within ``--nodes``. Scored against each model's plain call brought to the predictor's nominal machine
speed (times the isolated normalised / raw ratio of its nodes), next to the plain sum of predictions and
the predictor's own composition. Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from latpred.graph.compose import CLASSES
from latpred.metrics import accuracy_report

_LARGE_MIB = 32.0  # glibc's largest dynamic mmap threshold


def _features(row: dict, batch: int) -> list[float]:
    return [np.log(max(row["predicted_ms"], 1e-4)), np.log2(batch), np.log1p(row["out_mib"]), np.log1p(row["param_mib"]),
            float(row["out_mib"] >= _LARGE_MIB), *(float(row["class"] == c) for c in CLASSES),
            float(row.get("params", {}).get("inplace") is True)]


def _cases(doc: dict) -> list[dict]:
    out = []
    for m in doc["models"]:
        rows = [r for r in m["nodes"] if r.get("in_context_ms")]
        ic = m["in_context"]
        ctx = np.maximum(np.array([r["in_context_ms"] for r in rows]) - ic["overhead_per_node_ms"], 1e-4)
        iso = np.array([r.get("isolated_ms") or np.nan for r in rows])
        raw = np.array([r.get("isolated_raw_ms") or np.nan for r in rows])
        known = np.isfinite(iso) & np.isfinite(raw)
        to_nominal = float(iso[known].sum() / raw[known].sum())
        out.append({"model": m["model"], "batch_size": m["batch_size"], "module_ms": ic["module_ms"],
                    "measured_ms": ic["module_ms"] * to_nominal, "X": np.array([_features(r, m["batch_size"]) for r in rows]),
                    "pred": np.array([r["predicted_ms"] for r in rows]), "ctx": ctx, "raw": raw, "known": known,
                    "composed_ms": float(m["predicted_total_ms"])})
    return out


def _fit(train: list[dict]) -> HistGradientBoostingRegressor:
    X = np.vstack([c["X"][c["known"]] for c in train])
    y = np.clip(np.concatenate([np.log(c["ctx"][c["known"]] / c["raw"][c["known"]]) for c in train]), -3, 3)
    w = np.concatenate([c["ctx"][c["known"]] / c["ctx"][c["known"]].sum() for c in train])  # every case weighs 1
    return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40,
                                         random_state=0).fit(X, y, sample_weight=w)


def _predict(reg: HistGradientBoostingRegressor, train: list[dict], case: dict) -> float:
    same = [t["module_ms"] / t["ctx"].sum() for t in train if t["batch_size"] == case["batch_size"]]
    factor = float(np.median(same or [t["module_ms"] / t["ctx"].sum() for t in train]))
    return float((case["pred"] * np.exp(reg.predict(case["X"]))).sum() * factor)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", required=True, help="bench/node_context.py JSON")
    ap.add_argument("--train", help="bench/node_context.py JSON to fit on (default: leave-one-model-out within --nodes)")
    ap.add_argument("--json", default="bench/results/node_composition.json")
    args = ap.parse_args(argv)
    cases = _cases(json.loads(Path(args.nodes).read_text()))
    models = sorted({c["model"] for c in cases})
    node_level = np.zeros(len(cases))
    if args.train:
        train = _cases(json.loads(Path(args.train).read_text()))
        reg = _fit(train)
        node_level[:] = [_predict(reg, train, c) for c in cases]
        label = f"node_level_from_{Path(args.train).stem}"
    else:
        if len(models) < 3:
            raise SystemExit(f"--nodes holds {len(models)} model(s); leave-one-model-out needs at least 3")
        for held in models:
            train = [c for c in cases if c["model"] != held]
            reg = _fit(train)
            for i, c in enumerate(cases):
                if c["model"] == held:
                    node_level[i] = _predict(reg, train, c)
        label = "node_level_lomo"
    measured = np.array([c["measured_ms"] for c in cases])
    rows = {"plain_sum": np.array([c["pred"].sum() for c in cases]),
            "predictor_composition": np.array([c["composed_ms"] for c in cases]),
            label: node_level}
    scores = {k: accuracy_report(v, measured) for k, v in rows.items()}
    doc = {"nodes": args.nodes, "scores": scores,
           "cases": [{"model": c["model"], "batch_size": c["batch_size"], "measured_ms": c["measured_ms"],
                      **{k: float(v[i]) for k, v in rows.items()}} for i, c in enumerate(cases)]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1, default=float))
    print(f"node_composition: {len(cases)} cases of {len(models)} models; " + "; ".join(
        f"{k} acc10 {100 * s['acc10']:.1f}% MAPE {s['mape']:.1f}%" for k, s in scores.items()) + f" -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
