"""featurize(spec): the ONE feature function of the package.

Profiling stores specs, training featurizes stored specs, and prediction featurizes traced specs,
all through :func:`featurize`, so the three can never drift apart. A feature vector is, in order:

1. the op's hyper-parameters, each encoded as its :class:`~latpred.ops.Param` declares
   (``log``: ``log1p(value)``, ``linear``: the value, ``onehot``: one column per choice,
   ``log_align``: ``log1p(value)`` and a column ``<name>.align``, the value's alignment: how many
   times 2 divides it, at most :data:`MAX_ALIGN_LOG2`). Channel counts carry their alignment because
   kernels vectorise over channels: on the 2-core AVX-512 CPU a depthwise 3x3 convolution runs about
   2x faster per element at a multiple of 16 channels than at 8 more or fewer (1,550-1,860 against
   760-815 elements/us at 56x56, batch 1; docs/benchmarks.md), a step no smooth feature of the
   channel count captures, and real models use aligned counts while a drawn space mixes both;
2. derived costs: log1p of FLOPs, bytes moved, weight count, input and output elements, log2 of
   arithmetic intensity (FLOPs per byte), and whether the output is a *large allocation*
   (>= :data:`LARGE_ALLOC_BYTES`): glibc serves those with a fresh ``mmap`` on every call, so every
   page of the output faults on first touch. On the 2-core CPU an element-wise op is ~8x slower per
   element just above 32 MiB than just below (see docs/benchmarks.md); no smooth feature captures
   that step;
3. runtime conditions: log2(batch size), bytes per element, utilization, threads (0 = default);
4. user-defined extra conditions, sorted by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SpecError
from .ops import get_op
from .ops.base import OpType, Param
from .spec import ModuleSpec, dtype_bytes

__all__ = ["featurize", "featurize_many", "feature_names", "featurize_conditions", "featurize_conditions_many", "cost_features",
           "prepare_specs", "LARGE_ALLOC_BYTES", "MAX_ALIGN_LOG2", "alignment", "optional_columns",
           "StaticFeatures", "GENERIC_FEATURES"]


DERIVED = ("log_flops", "log_bytes", "log_weights", "log_in_elems", "log_out_elems", "log2_intensity", "large_output")
#: output size from which glibc malloc uses mmap whatever its dynamic threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
LARGE_ALLOC_BYTES = 32 * 2**20
RUNTIME = ("log2_batch_size", "dtype_bytes", "utilization", "threads")
#: the ``.align`` column of a ``log_align`` parameter counts factors of 2 up to this (16 = 2**4: one AVX-512
#: vector of float32). A cap of 6 (64) cross-validated conv2d at 56.6% acc10 on the 3-draw store, 4 at 59.9%:
#: counts of 32 or 64 are rare in a drawn space, and splitting on them only fits noise
MAX_ALIGN_LOG2 = 4
#: the op-agnostic columns (derived costs and runtime conditions) the generic fallback model reads
GENERIC_FEATURES = (*DERIVED, *RUNTIME)


def _param_columns(p: Param) -> list[str]:
    """The feature column names that encode hyper-parameter ``p`` (none for ``feature="none"``)."""
    if p.feature == "onehot":
        return [f"{p.name}={c}" for c in p.choices]
    if p.feature == "log_align":
        return [p.name, f"{p.name}.align"]
    return [] if p.feature == "none" else [p.name]


def _param_names(op: OpType) -> list[str]:
    return [name for p in op.params for name in _param_columns(p)]


def optional_columns(op: str) -> list[int]:
    """Indices of :func:`feature_names` columns that encode a hyper-parameter with a default (``bias``,
    ``inplace``, ``broadcast``, ...): options a store may never have varied."""
    out: list[int] = []
    i = 0
    for p in get_op(op).params:
        width = len(_param_columns(p))
        if p.default is not None or p.tie is not None:
            out.extend(range(i, i + width))
        i += width
    return out


def feature_names(op: str, extra_names: Sequence[str] = ()) -> list[str]:
    """Column names of :func:`featurize` for op type ``op`` (and the given extra conditions)."""
    return [*_param_names(get_op(op)), *DERIVED, *RUNTIME, *(f"extra.{n}" for n in sorted(extra_names))]


def featurize(spec: ModuleSpec, extra_names: Sequence[str] | None = None) -> np.ndarray:
    """Feature vector of ``spec`` (float64), laid out as :func:`feature_names` says.

    ``extra_names`` fixes which extra conditions become columns (default: the spec's own, sorted);
    a named extra missing from the spec, or a non-numeric one, is a :class:`SpecError`.
    """
    op = get_op(spec.op)
    spec = op.with_defaults(spec)  # a spec stored before a parameter existed ran with its default
    row: list[float] = []
    for p in op.params:
        if p.feature == "none":
            continue
        try:
            v = spec.params[p.name]
        except KeyError:
            raise SpecError(f"{spec.op}: spec lacks parameter {p.name!r}; resolve it with latpred.ops.resolve_spec") from None
        if p.feature == "onehot":
            row.extend(1.0 if v == c else 0.0 for c in p.choices)
        elif p.feature == "log":
            row.append(math.log1p(float(v)))
        elif p.feature == "log_align":
            row += [math.log1p(float(v)), float(alignment(v))]
        else:
            row.append(float(v))
    c = op.costs(spec)
    nbytes = c.bytes_moved(spec.dtype)
    row += [math.log1p(c.flops), math.log1p(nbytes), math.log1p(c.weights), math.log1p(c.in_elems),
            math.log1p(c.out_elems), math.log2((c.flops + 1.0) / (nbytes + 1.0)),
            float(c.out_elems * dtype_bytes(spec.dtype) >= LARGE_ALLOC_BYTES)]
    row += [math.log2(spec.batch_size), float(dtype_bytes(spec.dtype)), spec.utilization, float(spec.threads or 0)]
    names = sorted(spec.extra) if extra_names is None else sorted(extra_names)
    for n in names:
        if n not in spec.extra:
            raise SpecError(f"spec lacks extra condition {n!r} required by the feature schema")
        v = spec.extra[n]
        if isinstance(v, str):
            raise SpecError(f"extra condition {n!r}={v!r} is not numeric; encode categories as numbers")
        row.append(float(v))
    return np.asarray(row, dtype=np.float64)


def alignment(value: Any) -> int:
    """How many times 2 divides the integer ``value``, at most :data:`MAX_ALIGN_LOG2` (0 for odd or non-positive values)."""
    v = int(value)
    if v <= 0:
        return 0
    return min((v & -v).bit_length() - 1, MAX_ALIGN_LOG2)


def featurize_many(specs: Sequence[ModuleSpec], extra_names: Sequence[str] | None = None) -> np.ndarray:
    """Stack :func:`featurize` rows of specs that share one op type into a 2-D array."""
    if not specs:
        raise SpecError("featurize_many needs at least one spec")
    ops = {s.op for s in specs}
    if len(ops) > 1:
        raise SpecError(f"featurize_many needs one op type, got {sorted(ops)}; group the specs by op first")
    names = extra_names if extra_names is not None else sorted(specs[0].extra)
    return np.vstack([featurize(s, names) for s in specs])


@dataclass(frozen=True)
class StaticFeatures:
    """The condition-independent part of :func:`featurize` for specs of one op type (see :func:`prepare_specs`)."""

    op: str
    params: np.ndarray  # (specs, hyper-parameter columns)
    costs: np.ndarray   # (specs, 9): fixed/per-sample flops, in elems, out elems, touched weights; weights
    dtype_bytes: np.ndarray  # (specs,)


def prepare_specs(specs: Sequence[ModuleSpec]) -> StaticFeatures:
    """Hyper-parameter columns and affine costs (cost(b) = fixed + b * per-sample) of specs sharing one op."""
    if not specs:
        raise SpecError("prepare_specs needs at least one spec")
    ops = {s.op for s in specs}
    if len(ops) > 1:
        raise SpecError(f"prepare_specs needs one op type, got {sorted(ops)}")
    op = get_op(specs[0].op)
    n_param = len(_param_names(op))
    params = np.empty((len(specs), n_param))
    costs = np.empty((len(specs), 9))
    for i, s in enumerate(specs):
        params[i] = featurize(s.with_conditions(batch_size=1, extra={}), ())[:n_param]
        costs[i] = _affine_row(op.costs(s.with_conditions(batch_size=1)), op.costs(s.with_conditions(batch_size=2)))
    return StaticFeatures(op.name, params, costs, np.array([float(dtype_bytes(s.dtype)) for s in specs]))


def _affine_row(c1: Any, c2: Any) -> tuple[float, ...]:
    t1 = c1.weights if c1.weights_touched is None else c1.weights_touched
    t2 = c2.weights if c2.weights_touched is None else c2.weights_touched
    return (2 * c1.flops - c2.flops, c2.flops - c1.flops, 2 * c1.in_elems - c2.in_elems, c2.in_elems - c1.in_elems,
            2 * c1.out_elems - c2.out_elems, c2.out_elems - c1.out_elems, 2 * t1 - t2, t2 - t1, float(c1.weights))


def _condition_columns(costs: np.ndarray, dtype_b: np.ndarray, b: np.ndarray, u: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Derived-cost and runtime columns (nodes, conditions, 11) from affine cost rows."""
    B = b[None, :]
    flops = costs[:, 0:1] + B * costs[:, 1:2]
    in_e = costs[:, 2:3] + B * costs[:, 3:4]
    out_e = costs[:, 4:5] + B * costs[:, 5:6]
    nbytes = (in_e + out_e + costs[:, 6:7] + B * costs[:, 7:8]) * dtype_b[:, None]
    out = np.empty((len(costs), len(b), len(DERIVED) + len(RUNTIME)))
    out[:, :, 0] = np.log1p(flops)
    out[:, :, 1] = np.log1p(nbytes)
    out[:, :, 2] = np.log1p(costs[:, 8:9])
    out[:, :, 3] = np.log1p(in_e)
    out[:, :, 4] = np.log1p(out_e)
    out[:, :, 5] = np.log2((flops + 1.0) / (nbytes + 1.0))
    out[:, :, 6] = out_e * dtype_b[:, None] >= LARGE_ALLOC_BYTES
    out[:, :, 7] = np.log2(B)
    out[:, :, 8] = dtype_b[:, None]
    out[:, :, 9] = u[None, :]
    out[:, :, 10] = t[None, :]
    return out


def _conditions(batch_size: Any, utilization: Any, threads: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = np.asarray(batch_size, dtype=np.float64).reshape(-1)
    u = np.broadcast_to(np.asarray(utilization, dtype=np.float64).reshape(-1), b.shape)
    t = np.broadcast_to(np.asarray(threads, dtype=np.float64).reshape(-1), b.shape)
    return b, u, t


def featurize_conditions(specs: Sequence[ModuleSpec] | StaticFeatures, batch_size: Any, utilization: Any, threads: Any,
                         extra: dict[str, Any] | None = None, extra_names: Sequence[str] = ()) -> np.ndarray:
    """:func:`featurize` of every spec under every condition, vectorised: shape (specs, conditions, features).

    Row ``[i, j]`` equals ``featurize(specs[i].with_conditions(batch_size=batch_size[j],
    utilization=utilization[j], threads=threads[j] or None, extra=...), extra_names)``. The specs
    share one op type; pass :func:`prepare_specs`' result instead of specs to skip the per-spec
    work (hyper-parameter columns and affine costs) when the same specs are featurized again.
    """
    static = specs if isinstance(specs, StaticFeatures) else prepare_specs(specs)
    return featurize_conditions_many([static], batch_size, utilization, threads, extra, extra_names)[0]


def featurize_conditions_many(statics: Sequence[StaticFeatures], batch_size: Any, utilization: Any, threads: Any,
                              extra: dict[str, Any] | None = None, extra_names: Sequence[str] = ()) -> list[np.ndarray]:
    """:func:`featurize_conditions` of several op types' prepared specs at once: the derived-cost and
    runtime columns of all of them are computed in one pass (a graph's prediction needs every op type
    under the same conditions; per-type passes cost more in numpy calls than in arithmetic)."""
    b, u, t = _conditions(batch_size, utilization, threads)
    names = sorted(extra_names)
    extra = extra or {}
    missing = [n for n in names if n not in extra]
    if missing:
        raise SpecError(f"featurize_conditions lacks extra condition(s) {missing} required by the feature schema")
    if not statics:
        return []
    k = len(DERIVED) + len(RUNTIME)
    cond = _condition_columns(np.concatenate([s.costs for s in statics]), np.concatenate([s.dtype_bytes for s in statics]),
                              b, u, t)
    extra_cols = [np.broadcast_to(np.asarray(extra[n], dtype=np.float64).reshape(-1), b.shape)[None, :] for n in names]
    outs, row = [], 0
    for static in statics:
        S, C, P = len(static.params), len(b), static.params.shape[1]
        out = np.empty((S, C, P + k + len(names)))
        out[:, :, :P] = static.params[:, None, :]
        out[:, :, P:P + k] = cond[row:row + S]
        for j, col in enumerate(extra_cols):
            out[:, :, P + k + j] = col
        outs.append(out)
        row += S
    return outs


def cost_features(costs: Sequence[Any], dtype: str, batch_size: Any, utilization: Any, threads: Any) -> np.ndarray:
    """Op-agnostic features (the derived-cost and runtime columns of :func:`featurize`, in
    :data:`GENERIC_FEATURES` order) of nodes given as ``(fixed, per_sample)`` :class:`~latpred.ops.Costs`
    pairs, under every condition: shape (nodes, conditions, 11). The generic fallback model reads these
    for nodes no op type covers.
    """
    rows = np.array([_affine_row(f.plus(p, 1), f.plus(p, 2)) for f, p in costs], dtype=np.float64).reshape(-1, 9)
    b, u, t = _conditions(batch_size, utilization, threads)
    return _condition_columns(rows, np.full(len(rows), float(dtype_bytes(dtype))), b, u, t)
