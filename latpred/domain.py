"""The profiled range of each op model, and a guard for specs outside it.

A regression model is only trustworthy where it saw data. The ``default`` space profiles batch
normalisation on maps of 7 x 7 and larger with up to 1,992 channels; the calibration networks end in
2 x 2 maps with up to 3,072. There the Gaussian process chosen for ``batchnorm2d`` predicted 9.0 ms for
a 3,072-channel 2 x 2 normalisation that runs in about 0.02 ms, and such nodes made up 91% of some
networks' predicted time. Over the 5,556 nodes of the 30 calibration networks timed alone
(``data/cpu/node_context_random_v2_cpu2_2026-11-27.json``), the 759 outside their op model's training
range read MAPE 365% (in range: 16%), and the composition fitted on those networks learnt to shrink every
memory-bound node by 4-5x to absorb them (docs/benchmarks.md).

:class:`Domain` is the per-column box ``[lo, hi]`` of an op model's training rows (the columns the
model reads). A row with any column outside the box is *out of domain*; its prediction is clamped into
a trust region of :data:`TRUST_FACTOR` around the predictor's generic model (one gradient-boosted
model over FLOPs, bytes and the runtime conditions of every op type's rows, which extrapolates
conservatively). On those 759 nodes the clamp gave MAPE 29.8% (factor 1.5: 27.1%, 3: 33.9%; replacing
the op model by the generic one: 34.0%), leaving acc10 where it was (37.8%) and in-range rows untouched.
Clipping the features into the box instead was worse (a softmax row read 2.8 million times its time).

**Utilization above the profiled load** is extrapolated instead (:func:`above_profiled_load`): a store profiled
at loads {0, 0.5} knows nothing of 0.9, and the guard's generic model, which splits utilization at one value,
read 0.9 like 0.5 — the quickstart predicted resnet18's 1-thread edge 6% *faster* at load 0.9 than at 0.5.
Such a row's prediction is kept at least on the straight line through its predictions at the lowest and the
highest profiled loads (its other columns as they are, guarded as usual; slope >= 0): latency does not fall
as a background load rises, and it grew faster than that line beyond the profiled load wherever measured
(cpu2-avx2, loads 0.7 and 0.9: 6-32% above it for resnet18, mobilenet_v2 and resnet50 on one thread), so the
line is a floor, not an estimate. The op model's own extrapolation stands where it reads higher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SpecError

__all__ = ["AboveLoad", "Domain", "TRUST_FACTOR", "above_profiled_load", "guard_log", "guard_log_many"]

#: out-of-domain predictions are kept within this factor of the generic model's
TRUST_FACTOR = 2.0


@dataclass(frozen=True)
class Domain:
    """Per-column ``[lo, hi]`` of an op model's training rows (NaN columns never bound anything), and optionally
    the highest utilization profiled per thread count (``loads``: ``((threads, max utilization), ...)``, with
    ``load_columns`` = (utilization column, threads column)): a row whose load exceeds what its thread count was
    profiled at is outside even inside the box (the `default` space profiles loads on one thread only)."""

    lo: np.ndarray
    hi: np.ndarray
    loads: tuple[tuple[float, float], ...] | None = None
    load_columns: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.lo, dtype=float), np.asarray(self.hi, dtype=float)
        if lo.ndim != 1 or lo.shape != hi.shape or np.isnan(lo).any() or np.isnan(hi).any() or np.any(lo > hi):
            raise SpecError(f"a domain needs two equal-length vectors with lo <= hi, got lo={self.lo!r}, hi={self.hi!r}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        if (self.loads is None) != (self.load_columns is None):
            raise SpecError("a domain's per-thread loads need their (utilization, threads) columns, and the reverse")
        if self.load_columns is not None:
            cols = tuple(int(c) for c in self.load_columns)
            if len(cols) != 2 or not all(0 <= c < len(lo) for c in cols) or cols[0] == cols[1]:
                raise SpecError(f"load columns must be two distinct columns of {len(lo)}, got {self.load_columns!r}")
            loads = tuple(sorted((float(t), float(u)) for t, u in self.loads))  # type: ignore[union-attr]
            if not loads or any(not (math.isfinite(t) and math.isfinite(u)) for t, u in loads):
                raise SpecError(f"per-thread loads must be finite (threads, utilization) pairs, got {self.loads!r}")
            object.__setattr__(self, "loads", loads)
            object.__setattr__(self, "load_columns", cols)

    @property
    def lowest_load(self) -> float | None:
        """The lowest of the per-thread highest loads (None without per-thread loads): no row at or below it is
        above the load its thread count was profiled at."""
        return min(u for _, u in self.loads) if self.loads else None

    @property
    def lowest_lined_load(self) -> float | None:
        """The lowest per-thread highest load above the lowest utilization profiled: the least load a row must
        exceed to be extrapolated (None when no thread count was profiled at two loads)."""
        if not self.loads or self.load_columns is None:
            return None
        lined = [u for _, u in self.loads if u > self.lo[self.load_columns[0]]]
        return min(lined) if lined else None

    @classmethod
    def of(cls, X: np.ndarray, load_columns: tuple[int, int] | None = None) -> Domain:
        """The box of training rows ``X`` (rows, columns); a column that is NaN in every row is unbounded. With
        ``load_columns`` (utilization, threads), also the highest utilization seen per thread count."""
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or not len(X):
            raise SpecError(f"a domain needs a non-empty 2-d matrix of training rows, got shape {X.shape}")
        seen = ~np.isnan(X).all(axis=0)
        lo = np.full(X.shape[1], -np.inf)
        hi = np.full(X.shape[1], np.inf)
        lo[seen] = np.nanmin(X[:, seen], axis=0)
        hi[seen] = np.nanmax(X[:, seen], axis=0)
        loads = None
        if load_columns is not None:
            u, t = X[:, load_columns[0]], X[:, load_columns[1]]
            ok = np.isfinite(u) & np.isfinite(t)
            loads = tuple((float(k), float(u[ok][t[ok] == k].max())) for k in np.unique(t[ok])) or None
        return cls(lo, hi, loads, tuple(load_columns) if loads is not None else None)  # type: ignore[arg-type]

    def max_load(self, threads: np.ndarray) -> np.ndarray:
        """The highest utilization profiled at each of ``threads``: the box's bound for thread counts never seen,
        infinite without per-thread loads (the box alone bounds utilization then)."""
        threads = np.asarray(threads, dtype=float)
        if self.loads is None or self.load_columns is None:
            return np.full(threads.shape, np.inf)
        out = np.full(threads.shape, self.hi[self.load_columns[0]])
        for t, u in self.loads:
            out[threads == t] = u
        return out

    @property
    def width(self) -> int:
        return len(self.lo)

    def outside(self, X: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows of ``X`` with a column outside the box (NaN entries are not outside)."""
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.width:
            raise SpecError(f"rows of shape {X.shape} do not match a domain of {self.width} columns")
        with np.errstate(invalid="ignore"):
            out = ((X < self.lo) | (X > self.hi)).any(axis=1)
            if self.load_columns is not None and len(X):
                u, t = self.load_columns
                if X[:, u].max() > self.lowest_load:  # type: ignore[operator]  (else no row can be above)
                    out |= X[:, u] > self.max_load(X[:, t])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (infinite bounds as None)."""
        d: dict[str, Any] = {"lo": [None if math.isinf(v) else float(v) for v in self.lo],
                             "hi": [None if math.isinf(v) else float(v) for v in self.hi]}
        if self.loads is not None:
            d["loads"] = [[t, u] for t, u in self.loads]
            d["load_columns"] = list(self.load_columns)  # type: ignore[arg-type]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Domain:
        try:
            lo = [-np.inf if v is None else float(v) for v in d["lo"]]
            hi = [np.inf if v is None else float(v) for v in d["hi"]]
            loads = None if d.get("loads") is None else tuple((float(t), float(u)) for t, u in d["loads"])
            cols = None if d.get("load_columns") is None else tuple(int(c) for c in d["load_columns"])
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"not a domain (needs 'lo' and 'hi' lists of numbers, optional 'loads' pairs): {e}") from None
        return cls(np.array(lo), np.array(hi), loads, cols)  # type: ignore[arg-type]


def guard_log(y: np.ndarray, X: np.ndarray, domain: Domain | None, generic_log: Callable[[np.ndarray], np.ndarray] | None,
              n_extra: int, factor: float = TRUST_FACTOR) -> np.ndarray:
    """``y`` (log ms of rows ``X``, the op model's columns) with out-of-domain rows clamped to within ``factor``
    of ``generic_log`` (the generic model, called on the op-agnostic tail of those rows: the last 11 columns
    before the ``n_extra`` extra conditions). Returned unchanged without a domain or a generic model."""
    return guard_log_many([y], [X], [domain], generic_log, n_extra, factor)[0]


def guard_log_many(ys: Sequence[np.ndarray], Xs: Sequence[np.ndarray], domains: Sequence[Domain | None],
                   generic_log: Callable[[np.ndarray], np.ndarray] | None, n_extra: int,
                   factor: float = TRUST_FACTOR, outside: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """:func:`guard_log` of several (predictions, rows, domain) groups — op types with their own columns — with one
    call of the generic model for every group's out-of-domain rows (the cost of a graph prediction is calls, not
    rows). Groups with nothing outside their domain come back as the same arrays. ``outside``, when given a list,
    receives each group's out-of-domain row mask (all False without a domain), with or without a generic model."""
    out = list(ys)
    all_masks = [np.zeros(len(X), dtype=bool) if dom is None or not len(X) else dom.outside(X) for X, dom in zip(Xs, domains)]
    if outside is not None:
        outside.extend(all_masks)
    masks = {k: m for k, m in enumerate(all_masks) if m.any()}
    if generic_log is None or not masks:
        return out
    from .features import GENERIC_FEATURES

    width = len(GENERIC_FEATURES)
    tails = [Xs[k][m][:, Xs[k].shape[1] - n_extra - width: Xs[k].shape[1] - n_extra] for k, m in masks.items()]
    g = np.split(generic_log(np.vstack(tails)), np.cumsum([len(t) for t in tails])[:-1])
    half = math.log(factor)
    for (k, m), gk in zip(masks.items(), g):
        y = np.array(ys[k], dtype=float, copy=True)
        y[m] = np.clip(y[m], gk - half, gk + half)
        out[k] = y
    return out


@dataclass(frozen=True)
class AboveLoad:
    """Rows of one op group whose utilization exceeds the profiled range (see :func:`above_profiled_load`)."""

    above: np.ndarray  # bool mask of those rows
    inverse: np.ndarray  # per such row, its index among the distinct rows predicted at the profiled loads
    utilization: np.ndarray  # their utilization
    lo: float  # lowest profiled utilization
    hi: np.ndarray  # per such row, the highest utilization profiled at its thread count

    def combine(self, y: np.ndarray) -> np.ndarray:
        """The group's log ms from ``y``, the predictions of the rows :func:`above_profiled_load` returned: each
        row's own prediction, for rows above the profiled load at least the line through the profiled loads."""
        n, m = len(self.above), int(self.inverse.max()) + 1
        hi = np.exp(y[n:n + m])[self.inverse]
        lo = np.exp(y[n + m:n + 2 * m])[self.inverse]
        slope = np.maximum(hi - lo, 0.0) / (self.hi - self.lo)
        out = np.array(y[:n], dtype=float, copy=True)
        out[self.above] = np.maximum(out[self.above], np.log(hi + slope * (self.utilization - self.hi)))
        return out

    def mask(self, rows_outside: np.ndarray) -> np.ndarray:
        """The group's out-of-domain mask from that of the returned rows."""
        return rows_outside[:len(self.above)]


def above_profiled_load(X: np.ndarray, domain: Domain | None, u_col: int | None) -> tuple[np.ndarray, AboveLoad] | None:
    """Rows to predict in place of ``X`` (one op's feature rows; utilization in column ``u_col``) when some rows'
    utilization exceeds what ``domain`` profiled (at their thread count, where it records loads per thread count):
    ``X`` itself, then its distinct above-rows at the highest profiled utilization, then the same at the lowest.
    :meth:`AboveLoad.combine` turns their predictions into the group's. None when no row is above a profiled
    range that has a line to follow (a thread count profiled at a single load has none: those rows are only
    outside the domain)."""
    if domain is None or u_col is None or not len(X) or domain.width != X.shape[1]:
        return None
    lo = float(domain.lo[u_col])
    if not math.isfinite(lo):
        return None
    if domain.load_columns is not None and domain.load_columns[0] == u_col:
        lined = domain.lowest_lined_load
        if lined is None or not X[:, u_col].max() > lined:  # nothing above a load with a line to follow
            return None
        hi_rows = domain.max_load(X[:, domain.load_columns[1]])
    else:
        hi_rows = np.full(len(X), float(domain.hi[u_col]))
    with np.errstate(invalid="ignore"):
        above = (X[:, u_col] > hi_rows) & (hi_rows > lo) & np.isfinite(hi_rows)
    if not above.any():
        return None
    from .regressors.fast import distinct_rows

    A = np.array(X[above], dtype=float)
    u = A[:, u_col].copy()
    hi = hi_rows[above]
    A[:, u_col] = hi
    first, inverse = distinct_rows(np.nan_to_num(A, nan=-np.inf))  # NaN padding compared as a value
    at_hi = A[first]
    at_lo = at_hi.copy()
    at_lo[:, u_col] = lo
    return np.vstack([X, at_hi, at_lo]), AboveLoad(above, inverse, u, lo, hi)
