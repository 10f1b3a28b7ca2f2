"""Composition: isolated node latencies -> whole-model latency.

Profiling times each module alone, with its inputs and weights hot in cache and nothing queued
around it; a model runs nodes back to back. On the 2-core CPU the plain sum of isolated latencies
is 0.71-0.89x of the model's latency (DESIGN.md), on an eager GPU 1.07-1.94x. The composition model
is linear and per node, so node latencies stay additive (the partitioner sums them per device):

    node_ms = scale[class(node)] * isolated_ms(node) + overhead_ms[kind(node)]
    model_ms = sum(node_ms)

with classes ``conv`` (convolutions), ``gemm`` (linear, matmul, attention, embedding), ``memory``
(element-wise, normalisation, pooling, concatenation, layout copies) and ``generic`` (fallback
nodes), and a fixed overhead per compute node and per view node (dispatch, allocation). Scales
capture cache effects between neighbours (a cold weight read, an activation that left the cache);
overheads capture dispatch. Coefficients are fitted by non-negative least squares on *relative*
error over whole-network measurements, separately for unloaded (utilization 0) and loaded
conditions when both are present. They are fitted on generated random networks
(:mod:`latpred.graph.calibrate`), never on the models the validation reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpecError

__all__ = ["Composition", "CLASSES", "node_class", "REGIMES"]

CLASSES = ("conv", "gemm", "memory", "generic")
_CLASS_OF = {"conv2d": "conv", "conv_transpose2d": "conv", "linear": "gemm", "matmul": "gemm", "sdpa": "gemm",
             "mha": "gemm", "embedding": "gemm"}
#: conditions the composition is fitted for separately
REGIMES = ("unloaded", "loaded")
_N_FEATURES = len(CLASSES) + 2


def node_class(op: str | None) -> str:
    """Composition class of an op type (``None``: a fallback node)."""
    if op is None:
        return "generic"
    return _CLASS_OF.get(op, "memory")


def regime(utilization: np.ndarray) -> np.ndarray:
    """0 (unloaded) or 1 (loaded) per condition."""
    return (np.asarray(utilization) > 0).astype(int)


@dataclass
class Composition:
    """Per-regime coefficients: ``coef[regime]`` = scales of :data:`CLASSES`, then the compute-node and
    view-node overheads (ms). ``calibrated`` is False for the identity (plain sum)."""

    coef: dict[str, list[float]] = field(default_factory=lambda: {r: [1.0] * len(CLASSES) + [0.0, 0.0] for r in REGIMES})
    calibrated: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for r in REGIMES:
            c = self.coef.get(r)
            if c is None or len(c) != _N_FEATURES or not all(np.isfinite(c)) or min(c) < 0:
                raise SpecError(f"composition coefficients for {r!r} must be {_N_FEATURES} non-negative numbers, got {c!r}")

    # -- applying ---------------------------------------------------------------------------
    def matrix(self, utilization: np.ndarray) -> np.ndarray:
        """Coefficient rows (conditions, features) for the regime of each condition."""
        table = np.array([self.coef[r] for r in REGIMES])
        return table[regime(utilization)]

    def apply(self, isolated_ms: np.ndarray, classes: np.ndarray, compute: np.ndarray, view: np.ndarray,
              utilization: np.ndarray) -> np.ndarray:
        """Composed per-node ms (conditions, nodes) from isolated ms (conditions, nodes).

        ``classes`` is each node's index in :data:`CLASSES` (-1 for nodes with no compute), ``compute``
        and ``view`` are boolean masks of the compute and view nodes.
        """
        coef = self.matrix(utilization)  # (C, F)
        scale = np.where(classes[None, :] >= 0, coef[:, np.maximum(classes, 0)], 0.0)
        return scale * isolated_ms + coef[:, -2:-1] * compute[None, :] + coef[:, -1:] * view[None, :]

    # -- fitting ----------------------------------------------------------------------------
    @staticmethod
    def features(isolated_ms: np.ndarray, classes: np.ndarray, compute: np.ndarray, view: np.ndarray) -> np.ndarray:
        """Per-condition regression features: summed isolated ms per class, compute and view node counts."""
        iso = np.atleast_2d(isolated_ms)
        out = np.empty((len(iso), _N_FEATURES))
        for k in range(len(CLASSES)):
            out[:, k] = iso[:, classes == k].sum(axis=1)
        out[:, -2] = compute.sum()
        out[:, -1] = view.sum()
        return out

    @classmethod
    def fit(cls, features: np.ndarray, measured_ms: np.ndarray, utilization: np.ndarray,
            info: dict[str, Any] | None = None, min_rows: int = 8) -> Composition:
        """Fit coefficients (NNLS on relative error) from rows of :meth:`features` and measured model ms.

        A regime with fewer than ``min_rows`` measurements shares the coefficients fitted on all rows.
        Classes absent from the calibration set keep scale 1.
        """
        from scipy.optimize import nnls

        F = np.asarray(features, dtype=float)
        y = np.asarray(measured_ms, dtype=float)
        if F.ndim != 2 or F.shape[1] != _N_FEATURES or len(F) != len(y):
            raise SpecError(f"composition features must be (rows, {_N_FEATURES}) matching the measurements")
        if len(y) < min_rows or not np.all(y > 0):
            raise SpecError(f"composition fit needs at least {min_rows} positive measurements, got {len(y)}")
        reg = regime(utilization)

        def solve(mask: np.ndarray) -> list[float]:
            A, b = F[mask] / y[mask, None], np.ones(mask.sum())
            present = np.abs(A).sum(axis=0) > 0
            coef = np.ones(_N_FEATURES)
            coef[-2:] = 0.0
            sol, _ = nnls(A[:, present], b)
            coef[present] = sol
            return [float(v) for v in coef]

        everything = solve(np.ones(len(y), dtype=bool))
        coef = {r: solve(reg == i) if (reg == i).sum() >= min_rows else everything for i, r in enumerate(REGIMES)}
        comp = cls(coef, True, dict(info or {}))
        pred = (F * comp.matrix(utilization)).sum(axis=1)
        rel = pred / y - 1
        comp.info.update({"rows": int(len(y)), "rows_per_regime": {r: int((reg == i).sum()) for i, r in enumerate(REGIMES)},
                          "fit_mape": float(np.mean(np.abs(rel)) * 100), "fit_acc10": float(np.mean(np.abs(rel) <= 0.10)),
                          "sum_ratio_median": float(np.median(F[:, :len(CLASSES)].sum(axis=1) / y))})
        return comp

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(CLASSES), "features": [*CLASSES, "compute_overhead_ms", "view_overhead_ms"],
                "coef": self.coef, "calibrated": self.calibrated, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Composition:
        if list(d.get("classes", [])) != list(CLASSES):
            raise SpecError(f"composition classes {d.get('classes')} differ from this latpred's {list(CLASSES)}")
        return cls({r: list(map(float, d["coef"][r])) for r in REGIMES}, bool(d.get("calibrated")), dict(d.get("info", {})))

    def describe(self) -> str:
        if not self.calibrated:
            return "composition: plain sum of isolated node latencies (not calibrated)"
        parts = []
        for r in REGIMES:
            c = self.coef[r]
            scales = ", ".join(f"{k}×{v:.2f}" for k, v in zip(CLASSES, c))
            parts.append(f"{r}: {scales}, +{c[-2] * 1e3:.1f} µs/compute node, +{c[-1] * 1e3:.1f} µs/view node")
        return "composition (calibrated): " + "; ".join(parts)


def class_index(ops: Sequence[str | None], kinds: Sequence[str]) -> np.ndarray:
    """:data:`CLASSES` index per node (-1 for nodes that are not compute nodes)."""
    return np.array([CLASSES.index(node_class(op)) if k == "compute" else -1 for op, k in zip(ops, kinds)], dtype=int)
