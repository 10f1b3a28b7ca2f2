"""Score another predictor on the pruned variants a ``bench/pruning.py`` run measured (no new measurement).

    python bench/pruning_rescore.py RUN.json OTHER_PREDICTOR [--json bench/results/pruning_rescore.json]

The run's search is replayed with its own predictor (deterministic: same seed, population and generations), so the
same variants are rebuilt; each is predicted by OTHER_PREDICTOR as well, and both are scored against the run's
measurements, unanchored and anchored to the measured unpruned model. Two predictors are then compared on one
machine state instead of on two runs minutes apart. Prints one line per case and a summary line.
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

sys.path[:] = [p for p in sys.path if not p.endswith('/bench')]  # bench/partition.py shadows the package
from latpred.predictor import Predictor  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("run", help="a bench/pruning.py --out JSON")
ap.add_argument("other", help="the predictor to score on the run's variants")
ap.add_argument("--json", default="bench/results/pruning_rescore.json")
args = ap.parse_args()
spec = importlib.util.spec_from_file_location("prb", Path(__file__).with_name("pruning.py"))
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
run = json.loads(Path(args.run).read_text())
primary, other = Predictor.load(run["predictor"]), Predictor.load(args.other)
captured = []
real = m.optimize_pruning


def opt(model, x1, predictor, **kw):
    res, res_o = real(model, x1, predictor, **kw), real(model, x1, other, **kw)
    f = res.table.latency_ms

    def lat(X):
        captured.append((res_o.table.latency_ms(X), res_o.base_latency_ms))
        return f(X)
    res.table.latency_ms = lat
    return res


class Fake:
    latency_ms = 1.0
    pass_ms = [1.0]


m.optimize_pruning = opt
m.measure_in_passes = lambda dev, jobs, passes, *a, **k: [Fake() for _ in jobs]
m._exponent = lambda *a: 1.0
rows = []
for name in dict.fromkeys(r["model"] for r in run["rows"]):
    bs = [r["batch_size"] for r in run["rows"] if r["model"] == name]
    pop, gens = run["search"]["pop_size"], run["search"]["n_gen"]  # the run's own (its variants' search used them too)
    rows += m.bench_model(name, primary, None, bs, run["rows"][0]["input_px"], run["rows"][0]["variants"], pop, gens,
                          run.get("seed", 0), 1)
allp, allo, alla_p, alla_o, cases = [], [], [], [], []
for r, fake_row, (pred_o, base_o) in zip(run["rows"], rows, captured):
    meas, pp, po = np.array(r["meas_ms"]), np.array(r["pred_ms"]), np.array(pred_o)
    assert np.allclose(pp, fake_row["pred_ms"]), "variants differ from the run's"
    rp, ro = pp / meas - 1, po / meas - 1
    ra_p = pp * (r["base_meas_ms"] / r["base_pred_ms"]) / meas - 1
    ra_o = po * (r["base_meas_ms"] / base_o) / meas - 1
    allp, allo, alla_p, alla_o = allp + list(rp), allo + list(ro), alla_p + list(ra_p), alla_o + list(ra_o)
    cases.append({"model": r["model"], "batch_size": r["batch_size"], "meas_ms": r["meas_ms"], "pred_ms": r["pred_ms"],
                  "other_pred_ms": [float(v) for v in po], "other_base_pred_ms": float(base_o)})
    print(f"{r['model']} b{r['batch_size']}: run's predictor acc10 {np.mean(abs(rp) <= .1):.2f}, other {np.mean(abs(ro) <= .1):.2f};"
          f" unpruned pred/meas {r['base_pred_ms']/r['base_meas_ms']:.2f} vs {base_o/r['base_meas_ms']:.2f}")


def score(v: list) -> tuple[float, float]:
    return float(np.mean(np.abs(v) <= 0.1) * 100), float(np.mean(np.abs(v)) * 100)


(a, b), (c, d) = score(allp), score(allo)
summary = {"run": args.run, "run_predictor": run["predictor"], "other": args.other, "variants": len(allp),
           "acc10": a, "mape": b, "other_acc10": c, "other_mape": d, "acc10_anchored": score(alla_p)[0],
           "other_acc10_anchored": score(alla_o)[0]}
Path(args.json).parent.mkdir(parents=True, exist_ok=True)
Path(args.json).write_text(json.dumps({"summary": summary, "cases": cases}, indent=1))
print(f"pruning_rescore: {len(allp)} variants; run's predictor acc10 {a:.0f}% / MAPE {b:.1f}%, {args.other} {c:.0f}% / "
      f"{d:.1f}%; anchored {score(alla_p)[0]:.0f}% vs {score(alla_o)[0]:.0f}% -> {args.json}")
