"""Accuracy metrics of latency predictions (latencies in ms, positive)."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

__all__ = ["accuracy_report", "acc_within"]


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
