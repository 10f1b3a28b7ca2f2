"""Score predictions against several measurements of the same cases, and against their consensus.

On a noisy device one validation run is a noisy reference: two complete runs of the same zoo agree
within ±10% only so often, so a single run's acc10 says as much about that run as about the
predictor. :func:`consensus_of` lines up the measured cases of several validation reports
(``latpred validate --json`` or ``bench/whole_model.py``), takes each case's median over the runs
as the consensus measurement, and :class:`ConsensusReport` scores predictions against it, against
every run alone, and gives two yardsticks from the measurements themselves:

* ``run_vs_run``: how often two runs agree within ±10% (pairwise acc10 of one run "predicting" another);
* ``ceiling``: each run scored against the median of the *other* runs (at least three runs): what a
  predictor that knew every other measurement would score on that run.

:func:`predict_cases` predicts the cases with any predictor, without measuring, so a new predictor
can be scored against measurements taken earlier.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError
from ..metrics import acc_within, accuracy_report

__all__ = ["CaseKey", "ConsensusReport", "consensus_of", "predict_cases", "read_reports"]

#: a case: (model name, batch size, utilization, threads or None for the device default)
CaseKey = tuple[str, int, float, "int | None"]


def _key(row: Mapping[str, Any]) -> CaseKey:
    t = row.get("threads")
    return (str(row["model"]), int(row["batch_size"]), float(row["utilization"]), None if t is None else int(t))


def _measured(report: Mapping[str, Any], label: str) -> tuple[dict[CaseKey, float], dict[str, str]]:
    try:
        rows = list(report["cases"])
        refs = dict((report.get("settings") or {}).get("refs") or {})
    except (KeyError, TypeError, AttributeError) as e:
        raise SpecError(f"{label} is not a validation report (needs 'cases' and 'settings'): {e}") from None
    out: dict[CaseKey, float] = {}
    for i, r in enumerate(rows):
        try:
            ms = r.get("measured_ms")
            key = _key(r)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SpecError(f"{label}: case {i} lacks model, batch_size, utilization or threads: {e}") from None
        if ms is None:
            continue  # a failed case: left out of this run
        if not isinstance(ms, (int, float)) or not ms > 0:
            raise SpecError(f"{label}: case {i} ({key[0]} batch {key[1]}) has measured_ms {ms!r}; expected a positive number")
        if key in out:
            raise SpecError(f"{label}: case {key} appears twice")
        out[key] = float(ms)
    return out, refs


@dataclass
class ConsensusReport:
    """Measured cases of several runs (``measured[i, j]``: case ``keys[i]`` in run ``labels[j]``) and predictions."""

    keys: list[CaseKey]
    labels: list[str]
    measured: np.ndarray
    predicted: np.ndarray
    #: model name -> model reference (``torchvision:NAME``, an ``.onnx`` path, ``package.module:factory``)
    refs: dict[str, str] = field(default_factory=dict)
    #: cases measured in some runs but not all, per run label (left out of every figure)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def consensus_ms(self) -> np.ndarray:
        """Each case's median over the runs."""
        return np.median(self.measured, axis=1)

    def metrics(self) -> dict[str, Any]:
        """Predictions against the consensus and against each run; run-to-run agreement; the ceiling."""
        m, p, n = self.measured, self.predicted, len(self.labels)
        pairs = [acc_within(m[:, i], m[:, j], 0.10) for i, j in itertools.combinations(range(n), 2)]
        out: dict[str, Any] = {
            "n_cases": len(self.keys), "n_runs": n,
            "vs_consensus": accuracy_report(p, self.consensus_ms),
            "vs_each": {lab: accuracy_report(p, m[:, j]) for j, lab in enumerate(self.labels)},
            "run_vs_run_acc10": {"min": min(pairs), "median": float(np.median(pairs)), "max": max(pairs)},
        }
        if n >= 3:
            out["ceiling_acc10"] = {lab: acc_within(np.median(np.delete(m, j, axis=1), axis=1), m[:, j], 0.10)
                                    for j, lab in enumerate(self.labels)}
        regimes = {"unloaded": np.array([k[2] == 0 for k in self.keys])}
        regimes["loaded"] = ~regimes["unloaded"]
        out["vs_consensus_by_regime"] = {r: accuracy_report(p[s], self.consensus_ms[s]) for r, s in regimes.items() if s.sum() > 2}
        return out

    def predicted_by(self, predictor: Any) -> ConsensusReport:
        """The same runs with every case predicted by ``predictor`` (:func:`predict_cases`)."""
        got = predict_cases(predictor, self.keys, self.refs)
        return replace(self, predicted=np.array([got[k] for k in self.keys], dtype=float))

    def cases(self) -> list[dict[str, Any]]:
        cons = self.consensus_ms
        return [{"model": k[0], "batch_size": k[1], "utilization": k[2], "threads": k[3],
                 "predicted_ms": float(self.predicted[i]), "consensus_ms": float(cons[i]),
                 "rel_error": float(self.predicted[i] / cons[i] - 1),
                 "measured_ms": {lab: float(self.measured[i, j]) for j, lab in enumerate(self.labels)},
                 "run_spread": float(self.measured[i].max() / self.measured[i].min() - 1)}
                for i, k in enumerate(self.keys)]

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.labels, "refs": self.refs, "dropped": self.dropped, "metrics": self.metrics(),
                "cases": self.cases()}

    def summary(self) -> str:
        """One line: acc10 / MAPE / Spearman against the consensus, the range over single runs, the yardsticks."""
        mt = self.metrics()
        c, each = mt["vs_consensus"], [v["acc10"] for v in mt["vs_each"].values()]
        line = (f"{mt['n_cases']} cases x {mt['n_runs']} runs: vs consensus acc10 {100 * c['acc10']:.1f}% "
                f"MAPE {c['mape']:.2f}% Spearman {c['spearman']:.3f}; vs single runs acc10 "
                f"{100 * min(each):.1f}-{100 * max(each):.1f}%; run vs run {100 * mt['run_vs_run_acc10']['median']:.1f}% (median)")
        if "ceiling_acc10" in mt:
            ceil = list(mt["ceiling_acc10"].values())
            line += f"; ceiling {100 * min(ceil):.1f}-{100 * max(ceil):.1f}%"
        return line


def read_reports(paths: Sequence[str | Path]) -> list[Any]:
    """The JSON validation reports at ``paths``; a file that cannot be read or is not JSON raises :class:`SpecError`
    naming it (whether each is a report, :func:`consensus_of` checks)."""
    reports = []
    for f in paths:
        try:
            reports.append(json.loads(Path(f).read_text()))
        except OSError as e:
            raise SpecError(f"cannot read validation report {f}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise SpecError(f"validation report {f} is not JSON: {e}") from None
    return reports


def consensus_of(reports: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None,
                 predicted: Mapping[CaseKey, float] | None = None) -> ConsensusReport:
    """Line up the measured cases of ``reports`` (at least two validation reports of the same cases).

    Cases measured in every report are kept; the others are counted in ``dropped``. ``predicted``
    maps case keys to predicted ms (e.g. :func:`predict_cases`); without it the last report's own
    ``predicted_ms`` are used (the predictor that report was written with). To score another predictor,
    call :meth:`ConsensusReport.predicted_by` on the result.
    """
    labels = list(labels) if labels is not None else [f"run{i + 1}" for i in range(len(reports))]
    if len(reports) < 2:
        raise SpecError(f"a consensus needs at least two validation reports, got {len(reports)}")
    if len(labels) != len(reports) or len(set(labels)) != len(labels):
        raise SpecError(f"need one distinct label per report, got {labels!r} for {len(reports)} reports")
    runs, refs = [], {}
    for rep, lab in zip(reports, labels):
        got, r = _measured(rep, lab)
        if not got:
            raise SpecError(f"{lab} holds no measured case")
        runs.append(got)
        for name, ref in r.items():
            if refs.setdefault(name, ref) != ref:
                raise SpecError(f"{lab} builds model {name!r} from {ref!r}, an earlier report from {refs[name]!r}: not the same cases")
    common = set.intersection(*(set(r) for r in runs))
    if not common:
        raise SpecError(f"the reports {labels} have no measured case in common (model, batch size, utilization, threads)")
    keys = sorted(common, key=lambda k: (k[0], k[2], k[1], -1 if k[3] is None else k[3]))
    dropped = {lab: len(r) - len(common) for lab, r in zip(labels, runs) if len(r) > len(common)}
    if predicted is None:
        last = {_key(row): row.get("predicted_ms") for row in reports[-1]["cases"]}
        pred = np.array([v if isinstance(v := last[k], (int, float)) else np.nan for k in keys], dtype=float)
    else:
        missing = [k for k in keys if k not in predicted]
        if missing:
            raise SpecError(f"no prediction for {len(missing)} case(s), e.g. {missing[0]}")
        pred = np.array([predicted[k] for k in keys], dtype=float)
    if not np.all(np.isfinite(pred) & (pred > 0)):
        raise SpecError(f"predictions must be positive and finite ({'given' if predicted is not None else labels[-1] + ' predicted_ms'})")
    return ConsensusReport(keys, labels, np.array([[r[k] for r in runs] for k in keys]), pred,
                           {k[0]: refs.get(k[0], f"torchvision:{k[0]}") for k in keys}, dropped)


def predict_cases(predictor: Any, keys: Sequence[CaseKey], refs: Mapping[str, str] | None = None) -> dict[CaseKey, float]:
    """Predicted ms of each case with ``predictor`` (one traced graph and one vectorised call per model).

    ``refs`` maps model names to references; a name without one is read as ``torchvision:NAME``.
    """
    from .models import load_model
    from .validate import graph_of

    refs = dict(refs or {})
    out: dict[CaseKey, float] = {}
    for name in dict.fromkeys(k[0] for k in keys):
        mine = [k for k in keys if k[0] == name]
        graph = graph_of(load_model(refs.get(name, f"torchvision:{name}")))
        t = np.array([predictor.default_threads if k[3] is None else k[3] for k in mine])
        lat = predictor.predict_graph(graph, batch_size=np.array([k[1] for k in mine]),
                                      utilization=np.array([k[2] for k in mine]), threads=t)
        out.update({k: float(v) for k, v in zip(mine, lat.total_ms)})
    return out
