"""A node-level composition, scored leave-one-model-out on a node table (no measurement).

    python bench/node_composition.py --nodes data/cpu/node_context_zoo_p8_cpu2_2026-11-27.json \
        [--json bench/results/node_composition.json]

``--nodes`` is a ``bench/node_context.py`` file: every compute node of some models with the predictor's
isolated prediction and its time inside the running model, and each model's plain-call time. For each
model in turn, a gradient-boosted regressor learns log(in-context / predicted) per node from the *other*
models' nodes (features: log predicted ms, log2 batch, output and weight MiB, output above glibc's mmap
threshold, composition class, in place), each node weighted by its share of its model's in-context time
and the interpreter's per-node cost taken off; the held-out model's prediction is the sum of its corrected
nodes times the median plain-call / in-context ratio of the other models at that batch size. Scored against
the plain calls of the same run, next to the plain sum of predictions, the predictor's own composition and
the measured in-context sum (the ceiling of any per-node model). Prints one summary line.
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
        out.append({"model": m["model"], "batch_size": m["batch_size"], "measured_ms": ic["module_ms"],
                    "X": np.array([_features(r, m["batch_size"]) for r in rows]),
                    "pred": np.array([r["predicted_ms"] for r in rows]),
                    "ctx": np.maximum(np.array([r["in_context_ms"] for r in rows]) - ic["overhead_per_node_ms"], 1e-4),
                    "composed_ms": float(m["predicted_total_ms"])})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", required=True, help="bench/node_context.py JSON")
    ap.add_argument("--json", default="bench/results/node_composition.json")
    args = ap.parse_args(argv)
    cases = _cases(json.loads(Path(args.nodes).read_text()))
    models = sorted({c["model"] for c in cases})
    if len(models) < 3:
        raise SystemExit(f"--nodes holds {len(models)} model(s); leave-one-model-out needs at least 3")
    node_level = np.zeros(len(cases))
    for held in models:
        train = [c for c in cases if c["model"] != held]
        X = np.vstack([c["X"] for c in train])
        y = np.clip(np.concatenate([np.log(c["ctx"] / c["pred"]) for c in train]), -3, 3)
        w = np.concatenate([c["ctx"] / c["ctx"].sum() for c in train])  # every case weighs 1
        reg = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40,
                                            random_state=0).fit(X, y, sample_weight=w)
        for i, c in enumerate(cases):
            if c["model"] == held:
                same = [t["measured_ms"] / t["ctx"].sum() for t in train if t["batch_size"] == c["batch_size"]]
                factor = float(np.median(same)) if same else 1.0
                node_level[i] = float((c["pred"] * np.exp(reg.predict(c["X"]))).sum() * factor)
    measured = np.array([c["measured_ms"] for c in cases])
    rows = {"plain_sum": np.array([c["pred"].sum() for c in cases]),
            "predictor_composition": np.array([c["composed_ms"] for c in cases]),
            "node_level_lomo": node_level,
            "in_context_sum_measured": np.array([c["ctx"].sum() for c in cases])}
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
