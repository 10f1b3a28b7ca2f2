"""Measure whole models on a device, with no predictor (a measurement-only run for a device session).

    python bench/measure_zoo.py --device cuda --models torchvision:zoo --batch-sizes 1,8,32 \
        --utilization 0,0.5 --passes 2 --json bench/results/zoo_cuda.json

Every case is measured in passes (:func:`latpred.graph.measure.measure_in_passes`, as ``latpred
validate`` measures them) and written in the validation report's case format — ``model``,
``batch_size``, ``utilization``, ``threads``, ``measured_ms``, ``pass_ms`` and the device's stage
``components`` (CUDA: ``host_ms``, ``gpu_ms``, ``single_ms``) — so ``bench/gpu_overlap.py`` can score
predictions made later, elsewhere, against them. Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latpred.graph.measure import ModelJob, measure_in_passes, pass_agreement
from latpred.graph.models import load_model, parse_model_refs
from latpred.graph.validate import COMPONENTS
from latpred.profiling.devices import make_device


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="torchvision:zoo", help="model references, comma-separated (torchvision:zoo = all 14)")
    ap.add_argument("--batch-sizes", type=_csv(int), default=[1, 8, 32])
    ap.add_argument("--utilization", type=_csv(float), default=[0.0, 0.5])
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--json", default="bench/results/zoo_measured.json")
    args = ap.parse_args(argv)
    refs = [load_model(r) for r in parse_model_refs(args.models)]
    device = make_device(args.device)
    cases, jobs = [], []
    for ref in refs:
        for u in args.utilization:
            for b in args.batch_sizes:
                cases.append({"model": ref.name, "batch_size": b, "utilization": u, "threads": None})
                jobs.append(ModelJob(ref.module, lambda r=ref, n=b: (r.example_input(n),), u, None))
    t0 = time.perf_counter()

    def say(p: int, i: int, job: ModelJob, ms: float | None) -> None:
        c = cases[i]
        print(f"pass {p + 1}: {c['model']} batch {c['batch_size']} util {c['utilization']:g}: "
              f"{'failed' if ms is None else f'{ms:.3f} ms'}", file=sys.stderr, flush=True)

    try:
        with torch.inference_mode():
            pooled = measure_in_passes(device, jobs, args.passes, say)
    finally:
        device.close()
    for c, res in zip(cases, pooled):
        c.update(measured_ms=res.latency_ms, pass_ms=res.pass_ms, error="; ".join(res.errors),
                 components={k: v for k in COMPONENTS if (v := res.component(k)) is not None},
                 pass_components=[{k: e[k] for k in COMPONENTS if isinstance(e.get(k), (int, float))} for e in res.pass_extra])
    ok = [c for c in cases if c["measured_ms"]]
    agree = pass_agreement([c["pass_ms"] for c in ok])
    doc = {"settings": {"device": args.device, "device_metadata": device.metadata(), "models": [r.name for r in refs],
                        "batch_sizes": args.batch_sizes, "utilizations": args.utilization, "passes": args.passes,
                        "elapsed_s": round(time.perf_counter() - t0, 1), "device_settings": device.settings()},
           "metrics": {"n": len(ok), "failed": len(cases) - len(ok), "pass_within10": agree},
           "cases": cases}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"measure_zoo: {len(ok)}/{len(cases)} cases measured on {args.device} in {doc['settings']['elapsed_s']} s, "
          f"passes agree within ±10% for {100 * (agree or 0):.1f}% of pairs -> {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
