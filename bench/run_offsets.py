"""Which groups of a store did one run measure differently from the others? (No measurement.)

    python bench/run_offsets.py --db STORE [--predictor P] [--min-samples 4] [--top 30] [--verify K]
        [--json bench/results/run_offsets.json]

A store is profiled in runs hours apart; a run that met a machine state the others did not leaves a group of
samples (one op, one activation or other choice parameter, one thread count and utilization) that reads
consistently faster or slower than the same kind of spec in every other run. The regression models then
learn the state as if it were a property of the spec. For each op, a gradient-boosted model (sklearn's
HistGradientBoosting on the predictor's features, or the default feature set without ``--predictor``) is
fitted on all runs but one and predicts the held-out run; per group and run, the median log residual is
compared with the group's median over the other runs. Groups whose shift is largest are listed.

A listed group is a suspect, not a verdict: a run that introduced a new kind of spec (say, in-place
activations, drawn in one run only) shows up as well, since the other runs cannot predict it, and groups of a
few samples shift by chance. ``--verify K`` measures (on this machine, in the store's reference units, storing
nothing) up to 8 samples of each of the K largest suspects and 8 of the same group from the other runs: a
suspect is confirmed when its samples now read differently from their stored values by 25% more than the
other runs' samples do. Mend a confirmed group with ``latpred db remeasure STORE --op OP --run N ...`` (its
old values stay in each sample's ``extra["replaced"]``). Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from latpred.features import featurize
from latpred.ops import get_op
from latpred.predictor import Predictor
from latpred.profiling.store import ProfileStore

#: spec parameters that name a kind of spec (a group is one value of each, per op)
CHOICE_PARAMS = ("fn", "inplace", "mode")


def group_of(spec) -> tuple:
    """(op, choice parameters, threads, utilization); a parameter a stored spec predates counts as its default."""
    defaults = {p.name: p.default for p in get_op(spec.op).params}
    return (spec.op, *(f"{k}={spec.params.get(k, defaults[k])}" for k in CHOICE_PARAMS if k in defaults),
            f"threads={spec.threads}", f"util={spec.utilization:g}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--predictor", help="use this predictor's features (default: featurize's)")
    ap.add_argument("--min-samples", type=int, default=4, help="smallest group of one run that is scored")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--verify", type=int, default=0, metavar="K", help="re-measure the K largest suspects (see above)")
    ap.add_argument("--json", default="bench/results/run_offsets.json")
    args = ap.parse_args(argv)

    pred = Predictor.load(args.predictor) if args.predictor else None
    with ProfileStore(args.db, readonly=True) as store:
        samples = [s for s in store.samples() if s.latency_ms and s.latency_ms > 0]
    by_op = defaultdict(list)
    for s in samples:
        if pred is None or pred.covers(s.spec.op):
            by_op[s.spec.op].append(s)
    resid = defaultdict(list)  # (group, run) -> log residuals
    for _op, ss in sorted(by_op.items()):
        X = pred._features([s.spec for s in ss]) if pred is not None else np.array([featurize(s.spec) for s in ss])
        y = np.log([s.latency_ms for s in ss])
        runs = np.array([s.run_id for s in ss])
        for r in np.unique(runs):
            held = runs == r
            if (~held).sum() < 30:
                continue
            model = HistGradientBoostingRegressor(max_iter=300, random_state=0).fit(X[~held], y[~held])
            for s, e in zip((s for s, h in zip(ss, held) if h), y[held] - model.predict(X[held])):
                resid[(group_of(s.spec), int(r))].append(float(e))
    per_group = defaultdict(dict)
    for (g, r), v in resid.items():
        per_group[g][r] = (float(np.median(v)), len(v))
    rows = []
    for g, runs in per_group.items():
        for r, (m, n) in runs.items():
            others = [mm for rr, (mm, _) in runs.items() if rr != r]
            if n >= args.min_samples and others:
                shift = m - float(np.median(others))
                rows.append({"group": list(g), "run": r, "samples": n, "median_log_residual": m,
                             "others_median": float(np.median(others)), "shift": shift, "ratio": float(np.exp(shift))})
    rows.sort(key=lambda d: -abs(d["shift"]))
    if args.verify:
        verify(args.db, rows[:args.verify], samples)
    for d in rows[:args.top]:
        check = "" if "now_over_stored" not in d else (
            f"  now/stored {d['now_over_stored']:.2f} vs other runs {d['others_now_over_stored']:.2f}"
            f" -> {'CONFIRMED' if d['confirmed'] else 'not confirmed'}")
        print(f"{' '.join(d['group']):55s} run {d['run']:3d}  n={d['samples']:3d}  x{d['ratio']:.2f} against the other runs{check}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"db": args.db, "predictor": args.predictor, "groups": rows}, indent=1))
    worst = rows[0] if rows else None
    if args.verify:
        confirmed = [d for d in rows[:args.verify] if d.get("confirmed")]
        print(f"verified {min(args.verify, len(rows))} suspects: {len(confirmed)} confirmed"
              + "".join(f"; {' '.join(d['group'])} run {d['run']}" for d in confirmed))
    print(f"run_offsets: {len(rows)} (group, run) pairs scored; largest shift "
          + (f"x{worst['ratio']:.2f} ({' '.join(worst['group'])}, run {worst['run']})" if worst else "none")
          + f" -> {args.json}")
    return 0


def verify(db: str, suspects: list[dict], samples: list) -> None:
    """Measure each suspect's samples and a control set from the other runs; annotate the rows in place."""
    from latpred.profiling.devices import CpuDevice
    from latpred.profiling.runner import adopt_store_reference

    rng = np.random.default_rng(0)
    device = CpuDevice()
    try:
        with ProfileStore(db, readonly=True) as store:
            fp = device.metadata()["fingerprint"]
            mine = [d["id"] for d in store.devices() if d["fingerprint"] == fp]
            if not mine:
                raise SystemExit(f"{db} holds no sample of this machine (fingerprint {fp}): nothing to verify here")
            adopt_store_reference(device, store, mine[0])
        for d in suspects:
            same = [s for s in samples if list(group_of(s.spec)) == d["group"] and s.device_id == mine[0]]

            def ratios(pool: list) -> list[float]:
                pick = [pool[i] for i in rng.permutation(len(pool))[:8]]
                return [device.measure(s.spec).latency_ms / s.latency_ms for s in pick]

            here = ratios([s for s in same if s.run_id == d["run"]])
            there = ratios([s for s in same if s.run_id != d["run"]])
            d["now_over_stored"], d["others_now_over_stored"] = float(np.median(here)), float(np.median(there))
            d["confirmed"] = bool(abs(np.log(d["now_over_stored"] / d["others_now_over_stored"])) > np.log(1.25))
    finally:
        device.close()


if __name__ == "__main__":
    sys.exit(main())
