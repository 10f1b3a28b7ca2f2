"""Empirical roofline: an op type never predicted faster than it ever ran.

A regression model over log latency can predict a layer faster than the machine can run it. On the dev VM
(cpu2-avx2) the SVR chosen for ``linear`` predicted vit_b_16's 3,072 -> 768 MLP layer at batch 32 (6,304 rows,
29.7 GFLOPs) at 101 ms on two threads — 294 GFLOP/s, where the store's best linear layer ran at 204 GFLOP/s and
the layer itself measured 143 ms alone, as its 768 -> 3,072 twin of the same FLOPs did (predicted 150 ms). The
twelve such layers put the whole model 15-17% under its measurement at batch 32 (docs/benchmarks.md).

:class:`Roofline` keeps, per thread count and element size, the highest FLOPs per ms and bytes per ms that an op
type's training samples reached, whatever the background load (noise and load only add time to a measurement, so
the best rate is the trustworthy end; a loaded row is bounded by it too, more loosely). A prediction is then at
least ``max(flops / best_flops_rate, bytes / best_bytes_rate)``: no training sample lies below that floor by
construction, so it leaves every prediction the model got right where it was and only lifts the ones faster than
anything the op type did on this device. The :class:`~latpred.Predictor` applies it to rows inside the op model's
training range (:class:`~latpred.domain.Domain`); rows outside are the generic guard's, and an op larger than any
profiled may rightly run faster per FLOP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SpecError
from .features import GENERIC_FEATURES

__all__ = ["Roofline", "RooflineTable", "generic_tail", "table_of"]

_FLOPS, _BYTES = GENERIC_FEATURES.index("log_flops"), GENERIC_FEATURES.index("log_bytes")
_DTYPE, _THREADS = GENERIC_FEATURES.index("dtype_bytes"), GENERIC_FEATURES.index("threads")


def generic_tail(X: np.ndarray, n_extra: int) -> np.ndarray:
    """The :data:`~latpred.features.GENERIC_FEATURES` columns of feature rows ``X`` (they close every op's schema,
    before its ``n_extra`` extra conditions)."""
    w = len(GENERIC_FEATURES)
    if X.ndim != 2 or X.shape[1] < w + n_extra:
        raise SpecError(f"feature rows of shape {X.shape} hold no {w} op-agnostic columns before {n_extra} extra ones")
    return X[:, X.shape[1] - n_extra - w: X.shape[1] - n_extra]


@dataclass(frozen=True)
class Roofline:
    """Best FLOPs/ms and bytes/ms of an op type's training samples per (threads, dtype bytes) key; 0 = no bound."""

    keys: tuple[tuple[float, float], ...]
    flops_per_ms: tuple[float, ...]
    bytes_per_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.keys) == len(self.flops_per_ms) == len(self.bytes_per_ms)):
            raise SpecError(f"a roofline needs one rate pair per key, got {len(self.keys)} keys, "
                            f"{len(self.flops_per_ms)} FLOP rates and {len(self.bytes_per_ms)} byte rates")
        rates = (*self.flops_per_ms, *self.bytes_per_ms)
        if any(not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0) for r in rates):
            raise SpecError(f"roofline rates must be finite and non-negative, got {rates}")

    @classmethod
    def of(cls, tail: np.ndarray, latency_ms: np.ndarray) -> Roofline:
        """The best rates of training rows whose op-agnostic columns are ``tail`` (rows, 11) and latencies ``latency_ms``."""
        tail = np.asarray(tail, dtype=float)
        y = np.asarray(latency_ms, dtype=float)
        if tail.ndim != 2 or tail.shape[1] != len(GENERIC_FEATURES) or len(tail) != len(y) or not len(y):
            raise SpecError(f"a roofline needs matching non-empty rows and latencies, got {tail.shape} and {y.shape}")
        if not np.all(np.isfinite(y) & (y > 0)):
            raise SpecError("a roofline needs positive, finite latencies")
        flops, nbytes = np.expm1(tail[:, _FLOPS]), np.expm1(tail[:, _BYTES])
        key = tail[:, [_THREADS, _DTYPE]]
        ok = np.isfinite(key).all(axis=1)
        keys, fr, br = [], [], []
        for k in np.unique(key[ok], axis=0):
            m = ok & (key == k).all(axis=1)
            keys.append((float(k[0]), float(k[1])))
            fr.append(float((flops[m] / y[m]).max()))
            br.append(float((nbytes[m] / y[m]).max()))
        return cls(tuple(keys), tuple(fr), tuple(br))

    def floor_log(self, tail: np.ndarray) -> np.ndarray:
        """log(ms) below which rows with op-agnostic columns ``tail`` are not predicted (-inf where unbounded: a
        thread count or element size never profiled, or an op that moved no FLOPs or bytes)."""
        tail = np.asarray(tail, dtype=float)
        return RooflineTable.of({"op": self}).floor_log(np.zeros(len(tail), dtype=np.int64), tail)

    def to_dict(self) -> dict[str, Any]:
        return {"keys": [list(k) for k in self.keys], "flops_per_ms": list(self.flops_per_ms),
                "bytes_per_ms": list(self.bytes_per_ms)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Roofline:
        try:
            keys = tuple((float(t), float(b)) for t, b in d["keys"])
            return cls(keys, tuple(float(v) for v in d["flops_per_ms"]), tuple(float(v) for v in d["bytes_per_ms"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"not a roofline (needs 'keys' pairs and 'flops_per_ms', 'bytes_per_ms' lists): {e!r}") from None


@dataclass(frozen=True)
class RooflineTable:
    """The rooflines of several op types as arrays, so that one call floors the rows of every op of a graph (a graph
    prediction's cost is numpy calls, not rows): ``keys`` (K, 2) of (threads, dtype bytes), ``flops_per_ms`` and
    ``bytes_per_ms`` (ops, K) with 0 where an op has no rate for a key."""

    ops: tuple[str, ...]
    keys: np.ndarray
    flops_per_ms: np.ndarray
    bytes_per_ms: np.ndarray

    @classmethod
    def of(cls, rooflines: Mapping[str, Roofline]) -> RooflineTable:
        ops = tuple(rooflines)
        keys = sorted({k for r in rooflines.values() for k in r.keys})
        fr, br = np.zeros((len(ops), len(keys))), np.zeros((len(ops), len(keys)))
        for i, r in enumerate(rooflines.values()):
            for k, f, b in zip(r.keys, r.flops_per_ms, r.bytes_per_ms):
                fr[i, keys.index(k)], br[i, keys.index(k)] = f, b
        return cls(ops, np.array(keys, dtype=float).reshape(-1, 2), fr, br)

    def floor_log(self, op_index: np.ndarray, tail: np.ndarray) -> np.ndarray:
        """:meth:`Roofline.floor_log` of rows ``tail`` whose op is ``self.ops[op_index[row]]``."""
        if not len(self.keys):  # no training row had a thread count (e.g. a CUDA store): nothing is bounded
            return np.full(len(tail), -np.inf)
        key = np.full(len(tail), -1, dtype=np.int64)
        for j, (kt, kd) in enumerate(self.keys):
            key[(tail[:, _THREADS] == kt) & (tail[:, _DTYPE] == kd)] = j
        known = key >= 0
        fr = np.where(known, self.flops_per_ms[op_index, key], 0.0)  # key -1 reads the last column: masked here
        br = np.where(known, self.bytes_per_ms[op_index, key], 0.0)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            # absurd rows (far outside any domain) read an infinite floor, not a warning; a rate of 0 bounds nothing
            ms = np.maximum(np.where(fr > 0, np.expm1(tail[:, _FLOPS]) / fr, 0.0),
                            np.where(br > 0, np.expm1(tail[:, _BYTES]) / br, 0.0))
            return np.log(ms)


#: tables by the identity of their op names and (frozen) rooflines, holding those objects so that no id is reused while
#: cached: a graph prediction looks its table up on every call
_TABLES: dict[tuple[int, ...], tuple[tuple[Any, ...], RooflineTable]] = {}


def table_of(rooflines: Mapping[str, Roofline]) -> RooflineTable:
    """:meth:`RooflineTable.of`, cached while the same roofline objects are asked for again."""
    held = (*rooflines, *rooflines.values())
    key = tuple(map(id, held))
    hit = _TABLES.get(key)
    if hit is None:
        if len(_TABLES) >= 64:
            _TABLES.clear()
        hit = _TABLES[key] = (held, RooflineTable.of(rooflines))
    return hit[1]
