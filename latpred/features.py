"""featurize(spec): the ONE feature function of the package.

Profiling stores specs, training featurizes stored specs, and prediction featurizes traced specs,
all through :func:`featurize`, so the three can never drift apart. A feature vector is, in order:

1. the op's hyper-parameters, each encoded as its :class:`~latpred.ops.Param` declares
   (``log``: ``log1p(value)``, ``linear``: the value, ``onehot``: one column per choice);
2. derived costs: log1p of FLOPs, bytes moved, weight count, input and output elements, and
   log2 of arithmetic intensity (FLOPs per byte);
3. runtime conditions: log2(batch size), bytes per element, utilization, threads (0 = default);
4. user-defined extra conditions, sorted by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import SpecError
from .ops import get_op
from .ops.base import OpType
from .spec import ModuleSpec, dtype_bytes

__all__ = ["featurize", "featurize_many", "feature_names"]

DERIVED = ("log_flops", "log_bytes", "log_weights", "log_in_elems", "log_out_elems", "log2_intensity")
RUNTIME = ("log2_batch_size", "dtype_bytes", "utilization", "threads")


def _param_names(op: OpType) -> list[str]:
    names: list[str] = []
    for p in op.params:
        if p.feature == "onehot":
            names.extend(f"{p.name}={c}" for c in p.choices)
        elif p.feature != "none":
            names.append(p.name)
    return names


def feature_names(op: str, extra_names: Sequence[str] = ()) -> list[str]:
    """Column names of :func:`featurize` for op type ``op`` (and the given extra conditions)."""
    return [*_param_names(get_op(op)), *DERIVED, *RUNTIME, *(f"extra.{n}" for n in sorted(extra_names))]


def featurize(spec: ModuleSpec, extra_names: Sequence[str] | None = None) -> np.ndarray:
    """Feature vector of ``spec`` (float64), laid out as :func:`feature_names` says.

    ``extra_names`` fixes which extra conditions become columns (default: the spec's own, sorted);
    a named extra missing from the spec, or a non-numeric one, is a :class:`SpecError`.
    """
    op = get_op(spec.op)
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
        else:
            row.append(float(v))
    c = op.costs(spec)
    nbytes = c.bytes_moved(spec.dtype)
    row += [math.log1p(c.flops), math.log1p(nbytes), math.log1p(c.weights), math.log1p(c.in_elems),
            math.log1p(c.out_elems), math.log2((c.flops + 1.0) / (nbytes + 1.0))]
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


def featurize_many(specs: Sequence[ModuleSpec], extra_names: Sequence[str] | None = None) -> np.ndarray:
    """Stack :func:`featurize` rows of specs that share one op type into a 2-D array."""
    if not specs:
        raise SpecError("featurize_many needs at least one spec")
    ops = {s.op for s in specs}
    if len(ops) > 1:
        raise SpecError(f"featurize_many needs one op type, got {sorted(ops)}; group the specs by op first")
    names = extra_names if extra_names is not None else sorted(specs[0].extra)
    return np.vstack([featurize(s, names) for s in specs])
