"""The zoo against the consensus of several measurement runs (no new measurement).

    python bench/zoo_consensus.py --predictor P --runs data/cpu/whole_model_cpu2_avx2_{c,d,e}_2026-12-05.json \
        [--json bench/results/zoo_consensus.json]

On a noisy device one run of ``bench/whole_model.py`` is a noisy reference. This predicts every case
of the runs with the predictor and scores it against each case's median over the runs (the
consensus), against every run alone, and reports two yardsticks read from the measurements only: how
often two runs agree within ±10%, and each run against the median of the others (the ceiling a
predictor that knew every other measurement would reach on it; three runs or more).
Targets (issue 4): acc10 >= 90%, MAPE <= 6%, Spearman >= 0.98. Writes JSON, prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latpred.graph.consensus import consensus_of, read_reports
from latpred.predictor import Predictor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--runs", required=True, nargs="+", help="JSON reports of bench/whole_model.py or latpred validate --json")
    ap.add_argument("--json", default="bench/results/zoo_consensus.json")
    args = ap.parse_args(argv)

    reports = read_reports(args.runs)
    labels = [Path(f).stem for f in args.runs]
    report = consensus_of(reports, labels).predicted_by(Predictor.load(args.predictor))
    m = report.metrics()["vs_consensus"]
    met = m["acc10"] >= 0.90 and m["mape"] <= 6.0 and m["spearman"] >= 0.98
    doc = {"predictor": args.predictor, "runs": args.runs, "targets_met": met, **report.to_dict()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    print(f"zoo_consensus: {report.summary()}; targets {'met' if met else 'not met'} -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
