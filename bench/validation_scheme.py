"""Re-express the measured side of a validation report in another reference normalisation scheme.

    python bench/validation_scheme.py REPORT.json --scheme constant --out REPORT_constant.json

A CPU validation report (``latpred validate --json``, ``bench/whole_model.py``) keeps, for every unloaded case,
the raw windows of each pass, the reference reading after each window, the nominal and the exponent the case
was normalised with (``case["reference"]``). This recomputes ``measured_ms`` (the median of the pooled
normalised windows, as the device reduces them) and ``pass_ms`` with the exponent of ``--scheme``: 1 for
``constant``; for ``working-set-v1`` the exponent the case recorded, which must have been measured in that
scheme (a whole model's exponent comes from its predicted nodes). Loaded cases (not normalised) and cases
without raw windows are copied unchanged. No measurement; prints one summary line. Score a predictor of the
other scheme on the result with ``bench/composition_lomo.py --validation``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from latpred.profiling.reference import CONSTANT_SCHEME, SCHEMES, normalised_windows


def renormalise_case(case: dict, scheme: str) -> bool:
    """Rewrite ``case``'s measured figures in ``scheme`` in place; returns whether it had raw windows to do it from."""
    ref = case.get("reference") or {}
    raw, probes, nominal = ref.get("raw_timings_ms"), ref.get("reference_ms"), ref.get("nominal_ms")
    if not raw or not probes or not nominal or case.get("utilization", 0) > 0:
        return False
    if scheme == CONSTANT_SCHEME:
        beta = 1.0
    elif ref.get("scheme") == scheme:
        beta = float(ref["exponent"])
    else:
        raise SystemExit(f"case {case.get('model')} batch {case.get('batch_size')} was measured in the {ref.get('scheme')} "
                         f"scheme; its {scheme} exponent needs the model's node predictions: validate it again")
    passes = [normalised_windows(ws, rs, nominal, beta) for ws, rs in zip(raw, probes)]
    case["pass_ms"] = [statistics.median(p) for p in passes]
    case["measured_ms"] = statistics.median([w for p in passes for w in p])
    case["rel_error"] = case["predicted_ms"] / case["measured_ms"] - 1
    case["reference"] = {**ref, "scheme": scheme, "exponent": beta}
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--scheme", required=True, choices=SCHEMES)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        doc = json.loads(Path(args.report).read_text())
        cases = doc["cases"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{args.report}: not a validation report ({e})") from None
    before = {i: c.get("measured_ms") for i, c in enumerate(cases)}
    done = [i for i, c in enumerate(cases) if renormalise_case(c, args.scheme)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    ratios = sorted(cases[i]["measured_ms"] / before[i] for i in done if before[i])
    mid = ratios[len(ratios) // 2] if ratios else float("nan")
    print(f"validation_scheme: {len(done)} of {len(cases)} cases re-normalised to {args.scheme} "
          f"(measured new / old: median {mid:.3f}, range {ratios[0] if ratios else float('nan'):.3f}-"
          f"{ratios[-1] if ratios else float('nan'):.3f}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
