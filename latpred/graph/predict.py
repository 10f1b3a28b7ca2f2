"""Vectorised whole-graph prediction: every node of a :class:`ModelGraph` under many conditions at once.

Optimizers ask for the same graph under thousands of (batch size, utilization, threads) conditions.
The condition-independent work (each unique spec's hyper-parameter columns and affine costs) is done
once per graph and cached on it; each call then builds one feature matrix per op type for all
unique specs × all conditions and makes one model call per op type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sklearn

from ..blas import single_threaded_blas
from ..errors import SpecError, UnknownOpError
from ..features import StaticFeatures, cost_features, featurize_conditions_many, prepare_specs
from .compose import class_index, node_groups, zero_clamped_inputs
from .model_graph import ModelGraph

if TYPE_CHECKING:
    from ..predictor import Predictor

__all__ = ["GraphLatency", "predict_graph", "composition_features"]


@dataclass
class GraphLatency:
    """Predicted latency of a graph under one or many conditions.

    ``node_ms`` and ``isolated_ms`` have shape ``conditions_shape + (nodes,)``: the composed per-node
    latency (they sum to ``total_ms``) and the regression models' isolated latency; ``total_ms`` has
    ``conditions_shape`` (``()`` for a single condition). ``fallback_nodes`` are predicted by the generic model
    (no op model covers them); ``out_of_domain_nodes`` by their op model, outside its training range under at
    least one condition, and kept near the generic model there (:mod:`latpred.domain`).
    """

    node_names: list[str]
    node_ms: np.ndarray
    isolated_ms: np.ndarray
    total_ms: np.ndarray
    conditions: dict[str, np.ndarray]
    fallback_nodes: list[str] = field(default_factory=list)
    composition: str = "sum"
    out_of_domain_nodes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.total_ms.shape

    def per_node(self) -> dict[str, float]:
        """Node name -> composed ms (single condition only)."""
        if self.total_ms.ndim:
            raise SpecError("per_node() needs a single condition; index node_ms instead")
        return dict(zip(self.node_names, map(float, self.node_ms)))

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` slowest nodes (single condition)."""
        return sorted(self.per_node().items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict[str, Any]:
        return {"total_ms": self.total_ms.tolist(), "node_names": self.node_names, "node_ms": self.node_ms.tolist(),
                "isolated_ms": self.isolated_ms.tolist(), "conditions": {k: v.tolist() for k, v in self.conditions.items()},
                "fallback_nodes": self.fallback_nodes, "composition": self.composition,
                "out_of_domain_nodes": self.out_of_domain_nodes}


@dataclass
class _Plan:
    """What a graph needs for prediction, computed once per graph."""

    groups: dict[str, tuple[StaticFeatures, np.ndarray, np.ndarray]]  # op -> (static, unique idx per node, node cols)
    generic_costs: list[Any]
    generic_cols: np.ndarray
    ops: list[str | None]
    kinds: list[str]
    view: np.ndarray
    param_mib: np.ndarray  # (nodes,)
    out_mib_fixed: np.ndarray  # (nodes,): output MiB = fixed + batch * per_sample
    out_mib_per_sample: np.ndarray
    inplace: np.ndarray  # (nodes,): writes into its input (no output buffer; see Composition.inplace_free)


def _plan(graph: ModelGraph) -> _Plan:
    cache = graph._cache
    if "plan" in cache:
        return cache["plan"]
    by_op: dict[str, tuple[list[Any], dict[str, int], list[int], list[int]]] = {}
    generic_costs, generic_cols = [], []
    for j, n in enumerate(graph.nodes):
        if n.kind != "compute":
            continue
        if n.spec is None:
            per = n.costs_per_sample
            fixed = n.costs.plus(per, -graph.batch_size)
            generic_costs.append((fixed, per))
            generic_cols.append(j)
            continue
        specs, keys, uidx, cols = by_op.setdefault(n.spec.op, ([], {}, [], []))
        base = n.spec.with_conditions(batch_size=1, utilization=0.0, threads=None)
        k = keys.setdefault(base.key, len(specs))
        if k == len(specs):
            specs.append(base)
        uidx.append(k)
        cols.append(j)
    groups = {op: (prepare_specs(specs), np.array(uidx), np.array(cols)) for op, (specs, _, uidx, cols) in by_op.items()}
    per = np.array([n.out_bytes_per_sample for n in graph.nodes], dtype=float) / 2**20
    fixed = np.array([n.out_bytes for n in graph.nodes], dtype=float) / 2**20 - graph.batch_size * per
    plan = _Plan(groups, generic_costs, np.array(generic_cols, dtype=int), [n.op for n in graph.nodes],
                 [n.kind for n in graph.nodes], np.array([n.kind == "view" for n in graph.nodes]),
                 np.array([n.param_bytes for n in graph.nodes], dtype=float) / 2**20, fixed, per,
                 np.array([bool(n.spec is not None and n.spec.params.get("inplace", False)) for n in graph.nodes]))
    cache["plan"] = plan
    return plan


def _as_conditions(graph: ModelGraph, batch_size: Any, utilization: Any, threads: Any, default_threads: int,
                   extra: dict[str, Any]) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
    b = np.asarray(graph.batch_size if batch_size is None else batch_size)
    u = np.asarray(utilization, dtype=float)
    t = np.asarray(default_threads if threads is None else threads)
    arrays = [b, u, t, *(np.asarray(v, dtype=float) for v in extra.values())]
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise SpecError(f"condition arrays do not broadcast together: shapes {[a.shape for a in arrays]}") from None
    if not np.issubdtype(b.dtype, np.integer) and not (np.issubdtype(b.dtype, np.floating) and np.all(b == np.round(b))):
        raise SpecError(f"batch_size must be integers, got {b!r}")
    if np.any(b < 1):
        raise SpecError(f"batch_size must be >= 1, got {b.min()}")
    if np.any(~np.isfinite(u)) or np.any(u < 0) or np.any(u >= 1):
        raise SpecError(f"utilization must be in [0, 1), got values from {u.min()} to {u.max()}")
    if np.any(t < 0):
        raise SpecError(f"threads must be >= 0 (0: the device default), got {t.min()}")
    cond = {"batch_size": np.broadcast_to(b, shape).reshape(-1), "utilization": np.broadcast_to(u, shape).reshape(-1),
            "threads": np.broadcast_to(t, shape).reshape(-1)}
    cond.update({k: np.broadcast_to(np.asarray(v, dtype=float), shape).reshape(-1) for k, v in extra.items()})
    return shape, cond


def predict_graph(predictor: Predictor, graph: ModelGraph, batch_size: Any = None, utilization: Any = 0.0,
                  threads: Any = None, **extra: Any) -> GraphLatency:
    """Predict every node of ``graph`` under the (broadcast) conditions; see :class:`GraphLatency`.

    ``batch_size``, ``utilization``, ``threads`` and the predictor's extra conditions are scalars or
    arrays broadcast together (``batch_size[:, None], utilization[None, :]`` gives a grid). Changing the
    batch size re-scales the traced specs; nothing is re-traced. ``threads=None`` means the profiled
    device's default thread count.
    """
    missing = [n for n in predictor.extra_names if n not in extra]
    unknown = [n for n in extra if n not in predictor.extra_names]
    if missing or unknown:
        raise SpecError(f"extra conditions: missing {missing}, unknown {unknown}; the predictor was trained with "
                        f"{predictor.extra_names or 'none'}")
    shape, cond = _as_conditions(graph, batch_size, utilization, threads, predictor.default_threads, extra)
    plan = _plan(graph)
    b, u, t = cond["batch_size"], cond["utilization"], cond["threads"]
    C, N = len(b), len(graph.nodes)
    iso = np.zeros((C, N))
    fallback = [graph.nodes[j].name for j in plan.generic_cols]
    extras = {k: cond[k] for k in predictor.extra_names}
    covered: list[tuple[str, StaticFeatures]] = []
    placed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (rows, unique index per node, node columns)
    uncovered: list[tuple[StaticFeatures, np.ndarray, np.ndarray]] = []
    for op, (static, uidx, cols) in plan.groups.items():
        if not predictor.covers(op):
            uncovered.append((static, uidx, cols))
            fallback.extend(graph.nodes[j].name for j in cols)
            continue
        covered.append((op, static))
        placed.append((len(static.params), uidx, cols))
    Xs = featurize_conditions_many([s for _, s in covered], b, u, t, extras, predictor.extra_names)
    groups = [(op, X.reshape(-1, X.shape[-1])) for (op, _), X in zip(covered, Xs)]
    outside: list[int] = []
    masks: list[np.ndarray] = []
    with sklearn.config_context(assume_finite=True), single_threaded_blas():
        for (rows, uidx, cols), y in zip(placed, predictor.predict_log_many(groups, outside=masks)):
            iso[:, cols] = np.exp(y).reshape(rows, C)[uidx].T
        for (rows, uidx, cols), mask in zip(placed, masks):
            outside.extend(int(j) for j in cols[mask.reshape(rows, C).any(axis=1)[uidx]])
        generic_costs = list(plan.generic_costs)
        generic_cols = [plan.generic_cols]
        for static, uidx, cols in uncovered:
            generic_costs.extend(_static_costs(static, int(i)) for i in uidx)
            generic_cols.append(cols)
        gcols = np.concatenate(generic_cols).astype(int)
        if len(gcols):
            if predictor.generic is None:
                raise UnknownOpError(f"graph {graph.name!r} has {len(gcols)} node(s) the predictor's op models do not "
                                     f"cover ({', '.join(fallback[:5])}) and it has no generic fallback; retrain it "
                                     "with `latpred train`")
            X = cost_features(generic_costs, graph.dtype, b, u, t)
            iso[:, gcols] = np.exp(predictor.predict_generic(X.reshape(-1, X.shape[-1]))).reshape(-1, C).T
    comp = predictor.composition
    classes, compute, act_mib = _composition_inputs(predictor, graph, plan, b, comp.inplace_free)
    node_ms = comp.apply(iso, classes, compute, plan.view, u, plan.param_mib, act_mib, t, predictor.default_threads)
    total = node_ms.sum(axis=1)
    return GraphLatency([n.name for n in graph.nodes], node_ms.reshape(*shape, N), iso.reshape(*shape, N),
                        total.reshape(shape), {k: v.reshape(shape) for k, v in cond.items()}, fallback,
                        "calibrated" if comp.calibrated else "sum", [graph.nodes[j].name for j in sorted(outside)])


def _composition_inputs(predictor: Predictor, graph: ModelGraph, plan: _Plan, b: np.ndarray,
                        inplace_free: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composition class per node (cached per predictor op set), compute mask, output MiB per condition (0 for
    in-place nodes when ``inplace_free``)."""
    key = ("classes", tuple(predictor.ops))
    if key not in graph._cache:
        graph._cache[key] = class_index([None if (o is not None and not predictor.covers(o)) else o for o in plan.ops],
                                        plan.kinds, [node_groups(n) for n in graph.nodes], zero_clamped_inputs(graph))
    classes = graph._cache[key]
    act_mib = plan.out_mib_fixed[None, :] + b[:, None] * plan.out_mib_per_sample[None, :]
    if inplace_free:
        act_mib = np.where(plan.inplace[None, :], 0.0, act_mib)
    return classes, classes >= 0, act_mib


def composition_caps(predictor: Predictor) -> dict[str, float | None]:
    """The caches a composition of ``predictor`` is fitted with: node weights capped at ``predictor.cache_mib``,
    outputs at ``predictor.activation_cap_mib`` and spilled between it and ``predictor.cache_mib`` (keyword arguments
    of :meth:`Composition.features`, :meth:`Composition.fit` and
    :func:`~latpred.graph.calibrate.composition_from_cases`)."""
    return {"weight_cache_mib": predictor.cache_mib, "activation_cap_mib": predictor.activation_cap_mib,
            "spill_cap_mib": predictor.cache_mib}


def composition_features(predictor: Predictor, graph: ModelGraph, isolated_ms: np.ndarray, batch_size: int) -> np.ndarray:
    """The :meth:`Composition.features` row of ``graph`` at ``batch_size`` from its isolated node ms (one condition),
    with :func:`composition_caps`, in-place nodes' outputs not counted: fit compositions with
    ``**composition_caps(predictor)`` (and the default ``inplace_free=True``)."""
    from .compose import Composition

    plan = _plan(graph)
    classes, compute, act_mib = _composition_inputs(predictor, graph, plan, np.array([float(batch_size)]), True)
    return Composition.features(np.asarray(isolated_ms)[None, :], classes, compute, plan.view, plan.param_mib, act_mib,
                                **composition_caps(predictor))[0]


def _static_costs(static: StaticFeatures, i: int) -> Any:
    from ..ops.base import Costs

    r = static.costs[i]
    fixed = Costs(flops=r[0], weights=r[8], in_elems=r[2], out_elems=r[4], weights_touched=r[6])
    per = Costs(flops=r[1], weights=0.0, in_elems=r[3], out_elems=r[5], weights_touched=r[7])
    return fixed, per


