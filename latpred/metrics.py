"""Accuracy metrics of latency predictions (latencies in ms, positive)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr

__all__ = ["accuracy_report", "acc_within", "pass_agreement", "pass_noise_floor"]


def acc_within(pred: np.ndarray, true: np.ndarray, tol: float) -> float:
    """Share of predictions within ``±tol`` relative error (nn-Meter's acc10 for tol=0.10)."""
    return float(np.mean(np.abs(pred / true - 1.0) <= tol))


def accuracy_report(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """acc5/acc10/acc15, MAPE and RMSPE (%), R² of log latency, Spearman rank correlation."""
    pred = np.asarray(pred, dtype=float)
    true = np.asarray(true, dtype=float)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(f"need two equal, non-empty arrays; got {pred.shape} and {true.shape}")
    rel = pred / true - 1.0
    lp, lt = np.log(pred), np.log(true)
    ss_tot = float(np.sum((lt - lt.mean()) ** 2))
    r2 = 1.0 - float(np.sum((lp - lt) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    rho = float("nan")
    if pred.size > 2 and np.ptp(pred) > 0 and np.ptp(true) > 0:  # a constant side has no rank correlation
        rho = float(spearmanr(pred, true).statistic)
    return {"n": int(pred.size), "acc5": acc_within(pred, true, 0.05), "acc10": acc_within(pred, true, 0.10),
            "acc15": acc_within(pred, true, 0.15), "mape": float(np.mean(np.abs(rel)) * 100),
            "rmspe": float(np.sqrt(np.mean(rel ** 2)) * 100), "r2_log": r2, "spearman": rho}


def _pass_pair_errors(pass_ms: Sequence[Sequence[float]]) -> np.ndarray:
    """``|a / b - 1|`` for every pair of passes (a before b) of each item; items with one pass give none."""
    out = [abs(ms[a] / ms[b] - 1.0) for ms in pass_ms for a in range(len(ms)) for b in range(a + 1, len(ms))]
    return np.asarray(out, dtype=float)


def pass_agreement(pass_ms: Sequence[Sequence[float]], tolerance: float = 0.10) -> float | None:
    """Share of pairs of passes of the same item that agree within ``tolerance`` (the measurement's own
    repeatability: the noise floor a perfect predictor is scored against); None without two passes."""
    rel = _pass_pair_errors(pass_ms)
    return float(np.mean(rel <= tolerance)) if rel.size else None


def pass_noise_floor(pass_ms: Mapping[str, Sequence[Sequence[float]]]) -> dict[str, Any] | None:
    """The noise floor of a store from its own passes: per group (op type) and overall, the share of pairs of
    passes of one spec within ±5/10/15% of each other (``within5``/``within10``/``within15``), their mean
    relative difference (``mape``, %), and how many specs (``n_specs``, those with two passes or more) and
    pairs (``n_pairs``) it rests on. A pass is one third of what the profiler pools into a stored latency,
    so two stored latencies typically agree better than two passes do: read it as the ceiling's lower bound.
    None when no spec holds two passes."""

    def floor(items: Sequence[Sequence[float]]) -> dict[str, Any] | None:
        rel = _pass_pair_errors(items)
        if not rel.size:
            return None
        return {"within5": float(np.mean(rel <= 0.05)), "within10": float(np.mean(rel <= 0.10)),
                "within15": float(np.mean(rel <= 0.15)), "mape": float(np.mean(rel) * 100),
                "n_specs": int(sum(len(ms) >= 2 for ms in items)), "n_pairs": int(rel.size)}

    per_group = {k: f for k, v in pass_ms.items() if (f := floor(v)) is not None}
    overall = floor([ms for v in pass_ms.values() for ms in v])
    return None if overall is None else {"overall": overall, "per_op": per_group}
