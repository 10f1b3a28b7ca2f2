"""ModelGraph: a whole model as a DAG of op specs, the input of whole-model prediction and partitioning.

A :class:`ModelGraph` is built by :func:`latpred.trace` (torch.fx) or :func:`latpred.from_onnx`.
Each :class:`GraphNode` is one of:

* ``input``   a model input (fx placeholder / ONNX graph input);
* ``compute`` a node that runs work: ``spec`` is its :class:`~latpred.ModuleSpec` when an op type of
  the registry covers it, else ``None`` and ``costs`` (FLOPs and bytes, always present) feed the
  predictor's generic fallback;
* ``view``    a layout node that moves no data (view, reshape of a contiguous tensor, getitem,
  size, permute, ...): it costs a dispatch, which the composition model charges per node;
* ``constant`` a weight or buffer read by a functional op (fx ``get_attr``);
* ``output``  the model output.

Nodes are kept in topological order. Every activation size is stored per sample plus a fixed part,
so :meth:`ModelGraph.with_batch_size` re-scales a graph without re-tracing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import SpecError
from ..ops.base import Costs
from ..spec import ModuleSpec, dtype_bytes

__all__ = ["GraphNode", "ModelGraph", "Coverage", "NODE_KINDS", "affine_costs", "spec_node", "generic_node", "plain_node",
           "tensor_bytes", "fold_chw"]

NODE_KINDS = ("input", "compute", "view", "constant", "output")


@dataclass(frozen=True)
class GraphNode:
    """One node of a :class:`ModelGraph`.

    Attributes:
        name: unique node name (the fx node name or the ONNX node/tensor name).
        kind: one of :data:`NODE_KINDS`.
        target: readable description of what runs (``"nn.Conv2d"``, ``"operator.add"``, ``"Conv"``).
        spec: op spec at the graph's batch size, or ``None`` (not a compute node, or no op type fits).
        costs: analytic costs at the graph's batch size (compute nodes; for nodes without a spec
            they are estimated from tensor sizes and a FLOP counter).
        costs_per_sample: the batch-proportional part of ``costs`` (so costs(b) = fixed + b * per_sample).
        param_bytes: bytes of weights/buffers this node owns.
        out_bytes: bytes of the node's output tensor(s) at the graph's batch size.
        out_bytes_per_sample: the batch-proportional part of ``out_bytes``.
        out_shapes: shapes of the output tensors at the graph's batch size.
        module: qualified name of the submodule it calls (fx ``call_module``), else ``None``.
        reason: for a compute node without spec, why no op type fits (shown in coverage reports).
    """

    name: str
    kind: str
    target: str
    spec: ModuleSpec | None = None
    costs: Costs | None = None
    costs_per_sample: Costs | None = None
    param_bytes: int = 0
    out_bytes: int = 0
    out_bytes_per_sample: int = 0
    out_shapes: tuple[tuple[int, ...], ...] = ()
    module: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise SpecError(f"node {self.name!r}: kind must be one of {NODE_KINDS}, got {self.kind!r}")
        if self.kind == "compute" and self.costs is None:
            raise SpecError(f"compute node {self.name!r} needs costs")

    @property
    def op(self) -> str | None:
        """The op type of the node's spec (``None`` when it has none)."""
        return self.spec.op if self.spec is not None else None

    @property
    def flops(self) -> float:
        return self.costs.flops if self.costs is not None else 0.0


def affine_costs(at1: Costs, at2: Costs) -> tuple[Costs, Costs]:
    """Split costs measured at batch 1 and 2 into (fixed, per-sample) parts: c(b) = fixed + b * per."""
    def split(a: float | None, b: float | None) -> tuple[float | None, float | None]:
        if a is None or b is None:
            return None, None
        return 2 * a - b, b - a
    parts = {k: split(getattr(at1, k), getattr(at2, k)) for k in ("flops", "weights", "in_elems", "out_elems",
                                                                   "weights_touched")}
    fixed = Costs(**{k: v[0] for k, v in parts.items()})
    per = Costs(**{k: v[1] for k, v in parts.items()})
    return fixed, per


@dataclass(frozen=True)
class Coverage:
    """Which compute nodes a predictor covers with a trained op model, and what the fallback gets."""

    compute_nodes: int
    covered_nodes: int
    view_nodes: int
    fallback: tuple[tuple[str, str, str], ...]  # (node name, target, reason)
    fallback_flops_share: float

    @property
    def node_share(self) -> float:
        """Share of compute nodes predicted by a trained op model (the rest use the generic fallback)."""
        return self.covered_nodes / self.compute_nodes if self.compute_nodes else 1.0

    def summary(self) -> str:
        s = (f"{self.covered_nodes}/{self.compute_nodes} compute nodes by op models "
             f"({100 * self.node_share:.1f}%), {len(self.fallback)} by the generic fallback "
             f"({100 * self.fallback_flops_share:.2f}% of FLOPs), {self.view_nodes} view nodes")
        return s

    def to_dict(self) -> dict[str, Any]:
        return {"compute_nodes": self.compute_nodes, "covered_nodes": self.covered_nodes,
                "view_nodes": self.view_nodes, "node_share": self.node_share,
                "fallback_flops_share": self.fallback_flops_share,
                "fallback": [{"node": n, "target": t, "reason": r} for n, t, r in self.fallback]}


@dataclass
class ModelGraph:
    """A traced model: nodes in topological order and the tensors between them.

    ``edges`` are (producer, consumer) node-name pairs; the tensor an edge carries is the producer's
    output (``out_bytes``). ``gm`` is the fx ``GraphModule`` when traced with torch.fx (used to split
    the model for real execution); ``None`` for ONNX graphs.
    """

    nodes: list[GraphNode]
    edges: list[tuple[str, str]]
    batch_size: int = 1
    dtype: str = "float32"
    name: str = "model"
    source: str = "fx"
    gm: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise SpecError(f"graph {self.name!r}: duplicate node name(s) {dup[:5]}")
        pos = {n: i for i, n in enumerate(names)}
        for u, v in self.edges:
            if u not in pos or v not in pos:
                raise SpecError(f"graph {self.name!r}: edge ({u!r}, {v!r}) names an unknown node")
            if pos[u] >= pos[v]:
                raise SpecError(f"graph {self.name!r}: nodes are not in topological order at edge ({u!r}, {v!r})")
        self._index = pos
        self._nx = None
        self._cache: dict[str, Any] = {}  # prediction plan (condition-independent, so shared by re-scaled copies)

    # -- access -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> GraphNode:
        try:
            return self.nodes[self._index[name]]
        except KeyError:
            raise SpecError(f"graph {self.name!r} has no node {name!r}") from None

    def index(self, name: str) -> int:
        return self._index[name]

    def of_kind(self, *kinds: str) -> list[GraphNode]:
        return [n for n in self.nodes if n.kind in kinds]

    @property
    def compute_nodes(self) -> list[GraphNode]:
        return self.of_kind("compute")

    @property
    def specs(self) -> list[ModuleSpec]:
        """Specs of the compute nodes that have one (in node order)."""
        return [n.spec for n in self.nodes if n.kind == "compute" and n.spec is not None]

    @property
    def total_flops(self) -> float:
        return float(sum(n.flops for n in self.nodes))

    @property
    def param_bytes(self) -> int:
        return int(sum(n.param_bytes for n in self.nodes))

    def predecessors(self, name: str) -> list[str]:
        return [u for u, v in self.edges if v == name]

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph``: node attributes ``kind, target, spec, op, flops, param_bytes,
        out_bytes``; edge attributes ``bytes`` (the producer's output tensor) and ``tensor`` (its name)."""
        if self._nx is None:
            import networkx as nx

            g = nx.DiGraph(name=self.name, batch_size=self.batch_size, dtype=self.dtype)
            for n in self.nodes:
                g.add_node(n.name, kind=n.kind, target=n.target, spec=n.spec, op=n.op, flops=n.flops,
                           param_bytes=n.param_bytes, out_bytes=n.out_bytes)
            for u, v in self.edges:
                g.add_edge(u, v, bytes=self.node(u).out_bytes, tensor=u)
            self._nx = g
        return self._nx

    @property
    def nx(self) -> Any:
        return self.to_networkx()

    # -- conditions -------------------------------------------------------------------------
    def with_batch_size(self, batch_size: int) -> ModelGraph:
        """The same graph at another batch size: specs, costs and tensor bytes re-scaled, no re-tracing."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}")
        b = int(batch_size)
        if b == self.batch_size:
            return self
        nodes = []
        for n in self.nodes:
            ch: dict[str, Any] = {}
            if n.spec is not None:
                ch["spec"] = n.spec.with_conditions(batch_size=b)
            if n.costs is not None and n.costs_per_sample is not None:
                ch["costs"] = n.costs.plus(n.costs_per_sample, b - self.batch_size)
            fixed_bytes = n.out_bytes - self.batch_size * n.out_bytes_per_sample
            ch["out_bytes"] = int(fixed_bytes + b * n.out_bytes_per_sample)
            ch["out_shapes"] = tuple(_rebatch(s, self.batch_size, b) if n.out_bytes_per_sample else s
                                     for s in n.out_shapes)
            nodes.append(replace(n, **ch))
        g = ModelGraph(nodes, list(self.edges), b, self.dtype, self.name, self.source, self.gm, dict(self.metadata))
        g._cache = self._cache
        return g

    def with_conditions(self, **conditions: Any) -> ModelGraph:
        """The same graph with other spec conditions (``utilization``, ``threads``, ``extra``, ``batch_size``)."""
        g = self.with_batch_size(conditions.pop("batch_size")) if "batch_size" in conditions else self
        if not conditions:
            return g
        nodes = [replace(n, spec=n.spec.with_conditions(**conditions)) if n.spec is not None else n for n in g.nodes]
        out = ModelGraph(nodes, list(g.edges), g.batch_size, g.dtype, g.name, g.source, g.gm, dict(g.metadata))
        out._cache = g._cache
        return out

    # -- reporting --------------------------------------------------------------------------
    def coverage(self, covered_ops: Iterable[str] | None = None) -> Coverage:
        """Which compute nodes have a spec of an op type in ``covered_ops`` (default: any spec at all)."""
        ops = None if covered_ops is None else set(covered_ops)
        compute = self.compute_nodes
        fallback = []
        for n in compute:
            if n.spec is None:
                fallback.append((n.name, n.target, n.reason or "no op type matches"))
            elif ops is not None and n.spec.op not in ops:
                fallback.append((n.name, n.target, f"the predictor has no model for op type {n.spec.op!r}"))
        total = sum(n.flops for n in compute)
        fb_names = {f[0] for f in fallback}
        fb_flops = sum(n.flops for n in compute if n.name in fb_names)
        return Coverage(len(compute), len(compute) - len(fallback), len(self.of_kind("view")), tuple(fallback),
                        fb_flops / total if total > 0 else 0.0)

    def summary(self) -> str:
        kinds = {k: len(self.of_kind(k)) for k in NODE_KINDS}
        return (f"{self.name} ({self.source}, batch {self.batch_size}, {self.dtype}): {len(self.nodes)} nodes "
                f"({kinds['compute']} compute, {kinds['view']} view), {self.total_flops / 1e9:.3f} GFLOPs, "
                f"{self.param_bytes / 2**20:.1f} MiB of parameters")

    def table(self) -> list[dict[str, Any]]:
        """One row per node (for printing or JSON)."""
        return [{"name": n.name, "kind": n.kind, "target": n.target, "op": n.op,
                 "params": dict(n.spec.params) if n.spec is not None else None, "flops": n.flops,
                 "param_bytes": n.param_bytes, "out_bytes": n.out_bytes, "out_shapes": [list(s) for s in n.out_shapes]}
                for n in self.nodes]


def _rebatch(shape: Sequence[int], old: int, new: int) -> tuple[int, ...]:
    if shape and shape[0] == old:
        return (new, *shape[1:])
    return tuple(shape)


def tensor_bytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype`` (a latpred dtype name)."""
    return int(math.prod(shape)) * dtype_bytes(dtype)


def spec_node(name: str, target: str, op: str, params: dict[str, Any], *, batch_size: int, dtype: str = "float32",
              param_bytes: int = 0, out_shapes: Sequence[Sequence[int]] = (), out_bytes_per_sample: int | None = None,
              module: str | None = None) -> GraphNode:
    """A compute node covered by op type ``op``: resolves the spec and derives its (affine) costs.

    Raises :class:`SpecError` when the parameters do not form a valid spec of ``op``.
    """
    from ..ops import get_op

    o = get_op(op)
    spec = o.spec(batch_size=batch_size, dtype=dtype, **params)
    fixed, per = affine_costs(o.costs(spec.with_conditions(batch_size=1)), o.costs(spec.with_conditions(batch_size=2)))
    shapes = tuple(tuple(int(d) for d in s) for s in out_shapes)
    out_bytes = sum(tensor_bytes(s, dtype) for s in shapes)
    if out_bytes_per_sample is None:
        out_bytes_per_sample = out_bytes // batch_size if all(s and s[0] == batch_size for s in shapes) else 0
    return GraphNode(name, "compute", target, spec=spec, costs=fixed.plus(per, batch_size), costs_per_sample=per,
                     param_bytes=int(param_bytes), out_bytes=out_bytes, out_bytes_per_sample=int(out_bytes_per_sample),
                     out_shapes=shapes, module=module)


def generic_node(name: str, target: str, costs: Costs, *, batch_size: int, batch_dependent: bool = True,
                 dtype: str = "float32", param_bytes: int = 0, out_shapes: Sequence[Sequence[int]] = (),
                 module: str | None = None, reason: str = "no op type matches") -> GraphNode:
    """A compute node no op type covers: predicted by the generic fallback from its ``costs``.

    With ``batch_dependent`` the activation parts of the costs (FLOPs, input and output elements)
    scale with the batch size; the weights do not.
    """
    shapes = tuple(tuple(int(d) for d in s) for s in out_shapes)
    out_bytes = sum(tensor_bytes(s, dtype) for s in shapes)
    if batch_dependent:
        per = Costs(flops=costs.flops / batch_size, weights=0.0, in_elems=costs.in_elems / batch_size,
                    out_elems=costs.out_elems / batch_size)
        per_bytes = out_bytes // batch_size
    else:
        per = Costs(flops=0.0, weights=0.0, in_elems=0.0, out_elems=0.0)
        per_bytes = 0
    return GraphNode(name, "compute", target, spec=None, costs=costs, costs_per_sample=per, param_bytes=int(param_bytes),
                     out_bytes=out_bytes, out_bytes_per_sample=per_bytes, out_shapes=shapes, module=module, reason=reason)


def plain_node(name: str, kind: str, target: str, *, batch_size: int, dtype: str = "float32",
               out_shapes: Sequence[Sequence[int]] = (), batch_dependent: bool = True, param_bytes: int = 0) -> GraphNode:
    """An ``input``, ``view``, ``constant`` or ``output`` node (no compute of its own)."""
    shapes = tuple(tuple(int(d) for d in s) for s in out_shapes)
    out_bytes = sum(tensor_bytes(s, dtype) for s in shapes)
    per = out_bytes // batch_size if batch_dependent and all(s and s[0] == batch_size for s in shapes) and shapes else 0
    return GraphNode(name, kind, target, out_bytes=out_bytes, out_bytes_per_sample=per, out_shapes=shapes,
                     param_bytes=int(param_bytes))


def fold_chw(shape: Sequence[int]) -> tuple[int, int, int]:
    """Fold an activation shape (batch first) into the ``(channels, h, w)`` of the CHW-style op types.

    ``(N, C, H, W)`` gives ``(C, H, W)``; ``(N, T, D)`` gives ``(T, D, 1)``; ``(N, D)`` gives
    ``(D, 1, 1)``; ``(N,)`` and scalars give ``(1, 1, 1)``; 5-D and more fold the dimensions between
    ``channels`` (axis 1) and the last one into ``h``, keeping the element count. Shared by the fx
    tracer and the ONNX importer so both map the same tensor to the same spec.
    """
    s = tuple(int(d) for d in shape)
    if len(s) <= 1:
        return 1, 1, 1
    if len(s) == 2:
        return s[1], 1, 1
    if len(s) == 3:
        return s[1], s[2], 1
    return s[1], int(math.prod(s[2:-1])), s[-1]
