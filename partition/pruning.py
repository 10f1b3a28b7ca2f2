"""Latency-aware structured (channel) pruning: dependency analysis, spec rewriting and a fast latency table.

Which channels must be pruned together (convolutions feeding one residual add, the channels of a
concatenation, a depthwise convolution and the layer before it, BatchNorm after a convolution) is
decided by Torch-Pruning's :class:`torch_pruning.DependencyGraph` (Fang et al., "DepGraph: Towards
Any Structural Pruning", CVPR 2023; https://github.com/VainF/Torch-Pruning), a well-kept library for
exactly this; it also physically prunes the model (:meth:`PruningPlan.apply`). latpred adds:

1. :func:`analyze_pruning`: the prunable *groups* (one ratio each) and, for every node of the fx
   :class:`~latpred.graph.model_graph.ModelGraph`, the groups that set the channel dimension of its
   input and of its output (followed through BatchNorm, activations, pooling, residual adds,
   concatenations and flattening). Groups whose channels reach the model output (the classifier) are
   never pruned, nor is the input.
2. :meth:`PruningAnalysis.rewrite`: the graph of a pruned model without building it: each node's spec
   with its channel parameters scaled by ``keep = 1 - ratio`` (``conv2d`` in/out channels and
   ``groups`` of depthwise convolutions, ``linear`` in/out features, ``channels`` of BatchNorm,
   activations, element-wise ops, pooling, concatenation, flatten), optionally rounded to multiples
   of ``round_to`` (unaligned channel counts are a known cause of pruned models running *slower*).
3. :meth:`PruningAnalysis.latency_table`: every node's composed latency for every combination of
   ratio levels of the groups it depends on, from ONE :meth:`~latpred.Predictor.predict_graph` call on
   a graph of all node variants (one vectorised model call per op type; the composition
   ``scale[class] * isolated + overhead`` is applied per node exactly as for a whole graph). The
   latency of a population of plans is then a table lookup and a sum (:meth:`LatencyTable.latency_ms`),
   equal to ``predict_graph(rewrite(ratios))`` (tested).
4. :class:`PruningPlan` (frozen): per-group ratios, predicted latency, accuracy proxy; ``apply(model)``
   returns a physically pruned deep copy.

The accuracy proxy is ``1 - retained importance mass``: per group, Torch-Pruning's group importance
of every channel (L1 magnitude of all weights coupled to the channel by default, ``"l2"`` or
``"taylor"`` optional), summed over the kept (highest-importance) channels, over all groups, divided
by the total. It is a cheap, monotone stand-in for accuracy, not a prediction of it; re-score a
front with a real ``evaluate(model)`` in :func:`~partition.prune_problem.optimize_pruning`.

Limits: grouped (non-depthwise) convolutions, and channels that flow into reshapes other than a
flatten or into attention/layer norm over the channel axis are refused with a clear error (pass
those modules in ``ignored_layers``).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from latpred.graph.model_graph import GraphNode, ModelGraph, spec_node, tensor_bytes
from latpred.graph.trace import trace
from latpred.ops.base import Costs

__all__ = ["PruningError", "PruneGroup", "PruningAnalysis", "LatencyTable", "PruningPlan", "analyze_pruning",
           "kept_channels", "DEFAULT_LEVELS", "IMPORTANCES"]

#: default ratio levels: 0.0, 0.1, ..., 0.8
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(9))
#: accuracy-proxy importance criteria
IMPORTANCES = ("l1", "l2", "taylor")
#: ops whose ``channels`` parameter is the channel dimension of their output
_CHANNEL_OPS = {"batchnorm2d", "activation", "elementwise", "dropout", "maxpool2d", "avgpool2d", "adaptive_avgpool2d",
                "flatten", "cat"}
_MAX_TABLE_ENTRIES = 200_000


class PruningError(ValueError):
    """The model cannot be analysed or pruned as asked (the message says which node or group)."""


def kept_channels(channels: int, ratio: float, round_to: int | None = None) -> int:
    """Channels kept of ``channels`` at pruning ``ratio``: ``round(channels * (1 - ratio))``, at least 1.

    With ``round_to`` the count is rounded to the nearest multiple of ``round_to`` (at least
    ``round_to``, at most ``channels``); ratio 0 always keeps every channel.
    """
    if ratio <= 0:
        return int(channels)
    k = channels * (1.0 - ratio)
    if round_to and round_to > 1:
        k = round_to * round(k / round_to)
        return int(min(channels, max(k, min(round_to, channels))))
    return int(min(channels, max(1, round(k))))


@dataclass(frozen=True)
class PruneGroup:
    """One set of coupled channels pruned with one ratio.

    Attributes:
        index: position of the group's variable in a plan.
        name: the first convolution / linear layer whose output channels the group prunes.
        modules: every conv/linear layer whose output channels are in the group (qualified names).
        channels: channel count of the group (before pruning).
        importance: per-channel importance (in the root layer's channel order).
    """

    index: int
    name: str
    modules: tuple[str, ...]
    channels: int
    importance: np.ndarray = field(repr=False, compare=False)
    priority: np.ndarray | None = field(default=None, repr=False, compare=False)
    min_keep: int = 1

    @property
    def order(self) -> np.ndarray:
        """Channel indices in the order they are kept: most important first, except that the best channel
        of every concatenated part comes first (no part is pruned away entirely)."""
        if self.priority is not None:
            return self.priority
        return np.argsort(-self.importance, kind="stable")

    def cumulative_mass(self) -> np.ndarray:
        """``m[k]``: importance mass of the first ``k`` channels of :attr:`order` (``m[0] = 0``)."""
        return np.concatenate([[0.0], np.cumsum(self.importance[self.order])])

    def kept(self, ratio: float, round_to: int | None = None) -> int:
        """Channels kept at ``ratio``."""
        return max(kept_channels(self.channels, ratio, round_to), min(self.min_keep, self.channels))


#: segments of a channel dimension: (group index or None, segment id, channels, multiplier). A segment id
#: >= 0 names the group's root-channel indices the segment holds (a part of a concatenated group), -1: all.
Label = tuple[tuple[int | None, int, int, int], ...]


def _label_total(label: Label) -> int:
    return int(sum(c * m for _, _, c, m in label))


def _label_groups(label: Label | None) -> list[int]:
    return [g for g, _, _, _ in (label or ()) if g is not None]


@dataclass
class _NodeInfo:
    in_label: Label | None
    out_label: Label | None
    deps: tuple[int, ...]


class PruningAnalysis:
    """Groups, per-node channel labels and importance of one model (see :func:`analyze_pruning`)."""

    def __init__(self, graph: ModelGraph, groups: list[PruneGroup], infos: list[_NodeInfo], example_input: Any,
                 round_to: int | None, ignored_layers: tuple[str, ...], importance: str,
                 segments: Sequence[np.ndarray] = ()) -> None:
        self.graph = graph
        self.segments = list(segments)
        self._rank = [np.argsort(g.order, kind="stable") for g in groups]
        self.groups = groups
        self.infos = infos
        self.example_input = example_input
        self.round_to = round_to
        self.ignored_layers = ignored_layers
        self.importance = importance
        self._variants: dict[tuple[float, ...], _Variants] = {}
        self._spec_cache: dict[Any, GraphNode] = {}

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def deps(self, node: str) -> tuple[str, ...]:
        """Names of the groups that change node ``node``'s input or output channels."""
        return tuple(self.groups[g].name for g in self.infos[self.graph.index(node)].deps)

    def group_of(self, module: str) -> PruneGroup | None:
        """The group that prunes the output channels of conv/linear layer ``module`` (``None``: not pruned)."""
        for g in self.groups:
            if module in g.modules:
                return g
        return None

    def _ratios(self, ratios: Sequence[float] | Mapping[str, float]) -> np.ndarray:
        if isinstance(ratios, Mapping):
            names = {g.name: g.index for g in self.groups}
            unknown = sorted(set(ratios) - set(names))
            if unknown:
                raise PruningError(f"unknown group(s) {unknown}; groups: {list(names)}")
            r = np.zeros(self.n_groups)
            for k, v in ratios.items():
                r[names[k]] = v
        else:
            r = np.asarray(ratios, dtype=float).reshape(-1)
            if r.shape != (self.n_groups,):
                raise PruningError(f"need {self.n_groups} ratios (one per group), got {r.shape[0]}")
        if np.any(~np.isfinite(r)) or np.any(r < 0) or np.any(r >= 1):
            raise PruningError(f"pruning ratios must be in [0, 1), got {r.min()}..{r.max()}")
        return r

    def kept(self, ratios: Sequence[float] | Mapping[str, float]) -> list[int]:
        """Kept channels per group."""
        r = self._ratios(ratios)
        return [g.kept(float(x), self.round_to) for g, x in zip(self.groups, r)]

    # -- rewriting ----------------------------------------------------------------------------
    def rewrite(self, ratios: Sequence[float] | Mapping[str, float]) -> ModelGraph:
        """The graph of the model pruned at ``ratios`` (per group, or ``{group name: ratio}``), specs rewritten."""
        kept = dict(enumerate(self.kept(ratios)))
        g = self.graph
        nodes = [self._node(j, kept) for j in range(len(g.nodes))]
        return ModelGraph(nodes, list(g.edges), g.batch_size, g.dtype, f"{g.name}-pruned", g.source, None,
                          {**g.metadata, "pruning_ratios": [float(x) for x in self._ratios(ratios)]})

    def _node(self, j: int, kept: Mapping[int, int]) -> GraphNode:
        n, info = self.graph.nodes[j], self.infos[j]
        if not info.deps:
            return n
        if n.kind not in ("compute", "view"):
            return n
        cin0 = _label_total(info.in_label) if info.in_label else None
        cin = self._kept_total(info.in_label, kept) if info.in_label else None
        cout0 = _label_total(info.out_label) if info.out_label else None
        cout = self._kept_total(info.out_label, kept) if info.out_label else None
        shapes = tuple(_resize(s, cout0, cout) for s in n.out_shapes) if cout0 is not None else n.out_shapes
        if n.kind == "view":
            out_bytes = sum(tensor_bytes(s, self.graph.dtype) for s in shapes)
            per = out_bytes // self.graph.batch_size if n.out_bytes_per_sample else 0
            return replace(n, out_shapes=shapes, out_bytes=out_bytes, out_bytes_per_sample=per)
        fin = cin / cin0 if cin0 else 1.0
        fout = cout / cout0 if cout0 else 1.0
        if n.spec is None:  # generic fallback node: scale its costs
            return _scaled_generic(n, fin, fout, shapes, self.graph.dtype, self.graph.batch_size)
        params = _pruned_params(n, cin0, cin, cout0, cout)
        key = (n.spec.key, tuple(sorted(params.items())))
        new = self._spec_cache.get(key)
        if new is None:
            try:
                new = spec_node(n.name, n.target, n.spec.op, params, batch_size=n.spec.batch_size, dtype=n.spec.dtype,
                                module=n.module)
            except Exception as e:  # SpecError from the op's checks
                raise PruningError(f"node {n.name!r} ({n.spec.op}): pruned parameters {params} are invalid ({e})") from e
            s0 = n.spec
            if (s0.utilization, s0.threads, dict(s0.extra)) != (new.spec.utilization, new.spec.threads, {}):
                new = replace(new, spec=new.spec.with_conditions(utilization=s0.utilization, threads=s0.threads,
                                                                 extra=dict(s0.extra)))
            self._spec_cache[key] = new
        w0 = n.costs.weights if n.costs is not None else 0.0
        w1 = new.costs.weights if new.costs is not None else 0.0
        pb = int(round(n.param_bytes * (w1 / w0))) if w0 else n.param_bytes
        out_bytes = sum(tensor_bytes(s, self.graph.dtype) for s in shapes)
        per = out_bytes // self.graph.batch_size if n.out_bytes_per_sample else 0
        return replace(n, spec=new.spec, costs=new.costs, costs_per_sample=new.costs_per_sample, param_bytes=pb,
                       out_shapes=shapes, out_bytes=out_bytes, out_bytes_per_sample=per)

    def _kept_total(self, label: Label, kept: Mapping[int, int]) -> int:
        """Channels of a labelled dimension when group ``g`` keeps its ``kept[g]`` most important channels."""
        total = 0
        for g, seg, c, m in label:
            if g is None:
                total += c * m
            elif seg < 0:
                total += kept[g] * m
            else:  # part of a concatenated group: its kept channels among the group's top kept[g]
                total += int((self._rank[g][self.segments[seg]] < kept[g]).sum()) * m
        return total

    # -- tables -------------------------------------------------------------------------------
    def _variants_for(self, levels: Sequence[float]) -> _Variants:
        key = tuple(float(x) for x in levels)
        if key in self._variants:
            return self._variants[key]
        lv = np.asarray(key)
        L = len(lv)
        nodes: list[GraphNode] = []
        offsets, strides = [], np.zeros((self.n_groups, len(self.graph.nodes)), dtype=np.int64)
        kept_by_level = [[g.kept(float(r), self.round_to) for r in lv] for g in self.groups]
        for j, info in enumerate(self.infos):
            offsets.append(len(nodes))
            k = len(info.deps)
            if L ** k > _MAX_TABLE_ENTRIES:
                raise PruningError(f"node {self.graph.nodes[j].name!r} depends on {k} groups: {L}^{k} table entries; "
                                   "use fewer levels or ignore some layers")
            for pos, g in enumerate(info.deps):
                strides[g, j] = L ** (k - 1 - pos)
            cache: dict[tuple[int, ...], GraphNode] = {}
            for combo in itertools.product(range(L), repeat=k):
                kept = {g: kept_by_level[g][c] for g, c in zip(info.deps, combo)}
                ck = tuple(kept[g] for g in info.deps)
                if ck not in cache:
                    cache[ck] = self._node(j, kept)
                nodes.append(replace(cache[ck], name=f"{j}#{len(nodes)}"))
        table_graph = ModelGraph(nodes, [], self.graph.batch_size, self.graph.dtype, f"{self.graph.name}-variants",
                                 self.graph.source, None, {})
        v = _Variants(lv, table_graph, np.asarray(offsets, dtype=np.int64), strides,
                      np.array([float(n.out_bytes) for n in nodes]), np.array([n.flops for n in nodes]),
                      np.array([float(n.param_bytes) for n in nodes]), np.asarray(kept_by_level, dtype=np.int64))
        self._variants[key] = v
        return v

    def latency_table(self, predictor: Any, levels: Sequence[float] = DEFAULT_LEVELS,
                      conditions: Mapping[str, Any] | None = None) -> LatencyTable:
        """Every node's composed latency (ms) per combination of its groups' ratio levels.

        ``conditions``: scalar ``batch_size``, ``utilization``, ``threads`` and the predictor's extra
        conditions, passed to :meth:`~latpred.Predictor.predict_graph` (default: the graph's batch size,
        unloaded, default threads).
        """
        lv = _check_levels(levels)
        v = self._variants_for(lv)
        cond = dict(conditions or {})
        for k, val in cond.items():
            if np.ndim(val):
                raise PruningError(f"condition {k!r} must be a scalar for a latency table, got shape {np.shape(val)}")
        lat = predictor.predict_graph(v.graph, **cond)
        return LatencyTable(self, v, np.asarray(lat.node_ms, dtype=float).reshape(-1), cond)

    def proxy(self, level_idx: np.ndarray, levels: Sequence[float] = DEFAULT_LEVELS) -> np.ndarray:
        """Accuracy proxy ``1 - retained importance mass`` of plans given as level indices ``(pop, n_groups)``."""
        lv = _check_levels(levels)
        v = self._variants_for(lv)
        X = np.atleast_2d(np.asarray(level_idx, dtype=np.int64))
        mass = self._mass_table(v)
        total = sum(float(g.importance.sum()) for g in self.groups)
        if total <= 0:
            return np.zeros(len(X))
        kept = mass[np.arange(self.n_groups)[None, :], X].sum(axis=1)
        return 1.0 - kept / total

    def proxy_of(self, ratios: Sequence[float] | Mapping[str, float]) -> float:
        """Accuracy proxy of one plan given by ratios (any values in [0, 1))."""
        kept = self.kept(ratios)
        total = sum(float(g.importance.sum()) for g in self.groups)
        got = sum(float(g.cumulative_mass()[k]) for g, k in zip(self.groups, kept))
        return 1.0 - got / total if total > 0 else 0.0

    def _mass_table(self, v: _Variants) -> np.ndarray:
        if v.mass is None:
            v.mass = np.array([[g.cumulative_mass()[k] for k in v.kept[i]] for i, g in enumerate(self.groups)])
        return v.mass

    # -- applying -----------------------------------------------------------------------------
    def prune_(self, model: nn.Module, ratios: Sequence[float] | Mapping[str, float]) -> nn.Module:
        """Prune ``model`` in place (Torch-Pruning), keeping each group's most important channels."""
        kept = self.kept(ratios)
        names = {m: n for n, m in model.named_modules()}
        by_name = dict(model.named_modules())
        missing = [n for g in self.groups for n in g.modules if n not in by_name]
        if missing:
            raise PruningError(f"model lacks layer(s) {missing[:5]} of the analysed model")
        dg = _build_dg(model, self.example_input, self.ignored_layers)
        roots: dict[str, tuple[nn.Module, Any, int]] = {}
        for grp in dg.get_all_groups(ignored_layers=[by_name[n] for n in self.ignored_layers],
                                     root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
            root = grp[0].dep
            outs = [names.get(d.target.module) for d, _ in grp
                    if dg.is_out_channel_pruning_fn(d.handler) and isinstance(d.target.module, (nn.modules.conv._ConvNd, nn.Linear))]
            for n in outs:
                if n is not None:
                    roots[n] = (root.target.module, root.handler, len(grp[0].idxs))
        for g, k in zip(self.groups, kept):
            if k >= g.channels:
                continue
            if g.name not in roots:
                raise PruningError(f"group {g.name!r} not found in the model's dependency graph")
            module, handler, channels = roots[g.name]
            if channels != g.channels:
                raise PruningError(f"group {g.name!r} has {channels} channels in this model, {g.channels} when analysed")
            drop = np.sort(g.order[k:]).tolist()
            pg = dg.get_pruning_group(module, handler, idxs=drop)
            if not dg.check_pruning_group(pg):
                raise PruningError(f"Torch-Pruning refuses to prune group {g.name!r} to {k} channels")
            pg.prune()
        return model


@dataclass
class _Variants:
    levels: np.ndarray
    graph: ModelGraph
    offsets: np.ndarray  # (n_nodes,) first entry of each node
    strides: np.ndarray  # (n_groups, n_nodes): entry = offset + levels @ strides
    out_bytes: np.ndarray
    flops: np.ndarray
    param_bytes: np.ndarray
    kept: np.ndarray  # (n_groups, L)
    mass: np.ndarray | None = None

    def index(self, X: np.ndarray) -> np.ndarray:
        """Table entry ``(pop, n_nodes)`` of every node for level indices ``X`` ``(pop, n_groups)``."""
        return self.offsets[None, :] + np.atleast_2d(X).astype(np.int64) @ self.strides


@dataclass
class LatencyTable:
    """Per-node composed latency for every ratio-level combination (see :meth:`PruningAnalysis.latency_table`)."""

    analysis: PruningAnalysis
    variants: _Variants
    entry_ms: np.ndarray
    conditions: dict[str, Any]

    @property
    def levels(self) -> np.ndarray:
        return self.variants.levels

    def node_ms(self, X: np.ndarray) -> np.ndarray:
        """Composed ms ``(pop, n_nodes)`` of plans given as level indices ``X`` ``(pop, n_groups)``."""
        return self.entry_ms[self.variants.index(X)]

    def latency_ms(self, X: np.ndarray) -> np.ndarray:
        """Predicted model latency ``(pop,)`` of plans given as level indices."""
        return self.node_ms(X).sum(axis=1)

    def out_bytes(self, X: np.ndarray) -> np.ndarray:
        """Output tensor bytes ``(pop, n_nodes)`` of every node of the pruned graphs."""
        return self.variants.out_bytes[self.variants.index(X)]

    def flops(self, X: np.ndarray) -> np.ndarray:
        return self.variants.flops[self.variants.index(X)].sum(axis=1)

    def param_bytes(self, X: np.ndarray) -> np.ndarray:
        return self.variants.param_bytes[self.variants.index(X)].sum(axis=1)

    def lower_bound_ms(self) -> float:
        """Sum over nodes of each node's smallest entry (no plan is faster)."""
        v = self.variants
        ends = np.append(v.offsets[1:], len(self.entry_ms))
        return float(sum(self.entry_ms[a:b].min() for a, b in zip(v.offsets, ends)))

    def ratios(self, X: np.ndarray) -> np.ndarray:
        """Ratios ``(pop, n_groups)`` of level indices."""
        return self.levels[np.atleast_2d(X).astype(np.int64)]


@dataclass(frozen=True)
class PruningPlan:
    """A pruning plan: one ratio per group, with its predicted latency and accuracy proxy.

    Attributes:
        ratios: pruning ratio per group (aligned with ``group_names``).
        group_names: the groups (their first conv/linear layer).
        latency_ms: predicted latency of the pruned model (under the search conditions).
        proxy: ``1 - retained importance mass`` (0: nothing pruned).
        flops: FLOPs of the pruned model (multiply-add = 2).
        param_bytes: parameter bytes of the pruned model (estimate from the rewritten specs).
        accuracy: ``evaluate(pruned model)`` when the search was given an ``evaluate`` callable.
    """

    ratios: tuple[float, ...]
    group_names: tuple[str, ...]
    latency_ms: float
    proxy: float
    flops: float = 0.0
    param_bytes: float = 0.0
    accuracy: float | None = None
    analysis: PruningAnalysis | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        """``{group name: ratio}``."""
        return dict(zip(self.group_names, self.ratios))

    def graph(self) -> ModelGraph:
        """The rewritten (pruned) model graph."""
        return self._analysis().rewrite(self.ratios)

    def apply(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` physically pruned by Torch-Pruning (same output shape, fewer channels).

        The channels kept per group are the most important ones as ranked at analysis time.
        """
        m = copy.deepcopy(model).eval()
        return self._analysis().prune_(m, self.ratios)

    def _analysis(self) -> PruningAnalysis:
        if self.analysis is None:
            raise PruningError("this plan carries no analysis; build plans with optimize_pruning()")
        return self.analysis

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": self.as_dict(), "latency_ms": self.latency_ms, "proxy": self.proxy, "flops": self.flops,
                "param_bytes": self.param_bytes, "accuracy": self.accuracy}


# -- analysis ---------------------------------------------------------------------------------------
def _build_dg(model: nn.Module, example_input: Any, ignored: Sequence[str]) -> Any:
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def _importance_fn(kind: str) -> Any:
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum", normalizer=None)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    raise PruningError(f"importance must be one of {IMPORTANCES}, got {kind!r}")


def analyze_pruning(model: nn.Module, example_input: Any, *, importance: str = "l1", round_to: int | None = None,
                    ignored_layers: Sequence[str] = (), graph: ModelGraph | None = None,
                    loss_fn: Callable[[nn.Module], torch.Tensor] | None = None) -> PruningAnalysis:
    """Find the prunable channel groups of ``model`` and how every graph node depends on them.

    Args:
        model: the model (not modified; put in eval mode).
        example_input: a tensor (or tuple of tensors) the model runs on; its batch size is the graph's.
        importance: channel importance of the accuracy proxy: ``"l1"`` (default), ``"l2"`` or
            ``"taylor"`` (|weight × gradient| of ``loss_fn(model)``, default loss: mean squared output).
        round_to: round kept channel counts to multiples of this (e.g. 8); ``None``: no rounding.
        ignored_layers: qualified names of layers whose output channels are never pruned.
        graph: a :class:`ModelGraph` of ``model`` traced on ``example_input`` (traced when ``None``).
        loss_fn: loss for the Taylor importance.

    Raises:
        PruningError: pruned channels would flow through a node whose spec cannot be rewritten.
    """
    if importance not in IMPORTANCES:
        raise PruningError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise PruningError(f"round_to must be a positive integer or None, got {round_to!r}")
    model = model.eval()
    if graph is None:
        graph = trace(model, example_input)
    if graph.gm is None:
        raise PruningError("pruning needs an fx-traced graph (latpred.trace), not an ONNX graph")
    by_name = dict(model.named_modules())
    unknown = [n for n in ignored_layers if n not in by_name]
    if unknown:
        raise PruningError(f"ignored_layers: model has no layer(s) {unknown}")
    names = {m: n for n, m in model.named_modules()}

    dg = _build_dg(model, example_input, ignored_layers)
    imp_fn = _importance_fn(importance)
    if importance == "taylor":
        model.zero_grad()
        inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
        with torch.enable_grad():
            loss = loss_fn(model) if loss_fn is not None else model(*inputs).pow(2).mean()
            loss.backward()
    raw: list[tuple[str, tuple[str, ...], int, np.ndarray]] = []
    out_group: dict[str, tuple[int, int]] = {}
    segments: list[np.ndarray] = []
    for grp in dg.get_all_groups(ignored_layers=[by_name[n] for n in ignored_layers],
                                 root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
        mods = []
        for d, _ in grp:
            m = d.target.module
            if dg.is_out_channel_pruning_fn(d.handler) and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                n = names.get(m)
                if n is not None and n not in mods and not _is_depthwise(m):
                    mods.append(n)
        if not mods:
            continue
        with torch.no_grad() if importance != "taylor" else torch.enable_grad():
            imp = imp_fn(grp)
        if imp is None:
            continue
        imp_np = imp.detach().double().cpu().numpy()
        mods_sorted = tuple(sorted(mods, key=lambda n: graph_order(graph, n)))
        sizes = {n: _out_size(by_name[n]) for n in mods}
        parts = _root_indices(dg, grp, len(imp_np), [by_name[n] for n in mods if sizes[n] != len(imp_np)])
        for n in mods:
            if sizes[n] == len(imp_np):
                out_group[n] = (len(raw), -1)
            else:
                out_group[n] = (len(raw), len(segments))
                segments.append(parts[by_name[n]])
        raw.append((mods_sorted[0], mods_sorted, len(imp_np), imp_np))
    if importance == "taylor":
        model.zero_grad()

    infos = _labels(graph, by_name, out_group)
    # groups whose channels reach the model output (the classifier) are never pruned
    frozen: set[int] = set()
    for n in graph.nodes:
        if n.kind == "output":
            for p in graph.predecessors(n.name):
                frozen.update(_label_groups(infos[graph.index(p)].out_label))
    keep_ids = [i for i in range(len(raw)) if i not in frozen]
    remap = {old: new for new, old in enumerate(keep_ids)}
    groups = []
    for i in keep_ids:
        segs = [segments[s] for n in raw[i][1] for gi, s in [out_group[n]] if gi == i and s >= 0]
        imp_i = raw[i][3]
        by_imp = np.argsort(-imp_i, kind="stable")
        priority = None
        if segs:
            best = [int(seg[np.argmax(imp_i[seg])]) for seg in segs]
            best = sorted(set(best), key=lambda c: -imp_i[c])
            priority = np.asarray(best + [int(c) for c in by_imp if c not in set(best)], dtype=np.int64)
        groups.append(PruneGroup(remap[i], raw[i][0], raw[i][1], raw[i][2], imp_i, priority, max(1, len(segs))))
    final: list[_NodeInfo] = []
    for info in infos:
        il, ol = _relabel(info.in_label, remap), _relabel(info.out_label, remap)
        deps = tuple(sorted(set(_label_groups(il)) | set(_label_groups(ol))))
        final.append(_NodeInfo(il, ol, deps))
    for n, info in zip(graph.nodes, final):
        if info.deps and n.kind == "compute" and n.spec is not None:
            _check_rewritable(n, info)
    return PruningAnalysis(graph, groups, final, example_input, round_to, tuple(ignored_layers), importance, segments)


def _out_size(m: nn.Module) -> int:
    return int(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)


def _root_indices(dg: Any, grp: Any, channels: int, modules: Sequence[nn.Module]) -> dict[nn.Module, np.ndarray]:
    """For layers holding part of a group (concatenations): the group-root channel index of each of their channels.

    Torch-Pruning maps root indices to each layer's own indices; asking for the root indices with bit
    ``b`` set, for every bit, recovers the map with log2(channels) queries.
    """
    if not modules:
        return {}
    root = grp[0].dep
    code = {m: np.zeros(_out_size(m), dtype=np.int64) for m in modules}
    for b in range(max(1, (channels - 1).bit_length())):
        sel = [i for i in range(channels) if (i >> b) & 1]
        if not sel:
            continue
        for d, idxs in dg.get_pruning_group(root.target.module, root.handler, idxs=sel):
            if d.target.module in code and dg.is_out_channel_pruning_fn(d.handler):
                code[d.target.module][np.asarray([int(i) for i in idxs], dtype=np.int64)] |= 1 << b
    return code


def graph_order(graph: ModelGraph, module: str) -> int:
    """Topological position of the first node calling ``module`` (large when none does)."""
    for i, n in enumerate(graph.nodes):
        if n.module == module:
            return i
    return len(graph.nodes)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _relabel(label: Label | None, remap: Mapping[int, int]) -> Label | None:
    if label is None:
        return None
    return tuple((remap.get(g) if g is not None else None, s, c, m) for g, s, c, m in label)


def _shape(n: GraphNode) -> tuple[int, ...] | None:
    return n.out_shapes[0] if len(n.out_shapes) == 1 else None


def _const_label(shape: tuple[int, ...] | None) -> Label | None:
    if shape is None or len(shape) < 2:
        return None
    return ((None, -1, int(shape[1]), 1),)


def _labels(graph: ModelGraph, modules: Mapping[str, nn.Module], out_group: Mapping[str, tuple[int, int]]) -> list[_NodeInfo]:
    """Channel labels of every node's input and output tensors (dimension 1), by forward propagation."""
    labels: dict[str, Label | None] = {}
    infos: list[_NodeInfo] = []
    fx_nodes = {n.name: n for n in graph.gm.graph.nodes}
    for node in graph.nodes:
        fn = fx_nodes.get(node.name)
        ins = [a.name for a in pytree.tree_leaves((fn.args, fn.kwargs)) if isinstance(a, fx.Node)] if fn is not None else []
        ins = [a for a in ins if labels.get(a) is not None or _shape(graph.node(a)) is not None]
        in_label = labels.get(ins[0]) if ins else None
        out = _propagate(node, fn, ins, in_label, labels, graph, modules, out_group)
        labels[node.name] = out
        if node.kind == "compute" and node.spec is not None and node.spec.op == "cat":
            in_label = out
        infos.append(_NodeInfo(in_label, out, ()))
    return infos


def _propagate(node: GraphNode, fn: fx.Node | None, ins: list[str], x: Label | None, labels: Mapping[str, Label | None],
               graph: ModelGraph, modules: Mapping[str, nn.Module], out_group: Mapping[str, tuple[int, int]]) -> Label | None:
    shape = _shape(node)
    if node.kind in ("input", "constant") or fn is None:
        return _const_label(shape) if node.kind == "input" else None
    if node.kind == "output":
        return x
    if shape is None:
        if any(_label_groups(labels.get(a)) for a in ins) and node.kind == "compute":
            raise PruningError(f"node {node.name!r} ({node.target}) returns several tensors from pruned channels; "
                               "add its layer to ignored_layers")
        return None
    mod = modules.get(node.module) if node.module else None
    if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
        if _is_depthwise(mod):
            return x
        c = mod.out_channels if isinstance(mod, nn.modules.conv._ConvNd) else mod.out_features
        if len(shape) not in (2, 4):
            if node.module in out_group:
                raise PruningError(f"node {node.name!r}: pruning the output of {node.module!r} (output rank {len(shape)}) "
                                   "is not supported; add it to ignored_layers")
            return _const_label(shape)
        g, seg = out_group.get(node.module, (None, -1))
        return ((g, seg, int(c), 1),)
    if fn.target in (torch.cat, torch.concat) and fn.op == "call_function":
        dim = fn.kwargs.get("dim", fn.args[1] if len(fn.args) > 1 else 0)
        parts = [labels.get(a) for a in ins]
        if dim in (1, 1 - len(shape)) and all(p is not None for p in parts):
            return tuple(seg for p in parts for seg in p)  # type: ignore[union-attr]
        if all(p == parts[0] for p in parts):
            return parts[0]
        return _opaque(node, parts)
    for a in ins[1:]:  # binary ops: a labelled second operand must agree with the first
        la = labels.get(a)
        if x is not None and _label_groups(la) and _label_groups(x) and la != x and _shape(graph.node(a)) is not None \
                and len(_shape(graph.node(a)) or ()) == len(shape):
            raise PruningError(f"node {node.name!r}: operands carry differently pruned channels {x} vs {la}")
        if x is None or not _label_groups(x):
            x = la if _label_groups(la) else x
    if x is None:
        return _const_label(shape)
    src = _shape(graph.node(ins[0])) if ins else None
    if src is not None and len(src) == len(shape) and len(shape) >= 2 and src[1] == shape[1]:
        return x
    if src is not None and len(src) >= 3 and len(shape) == 2 and shape[1] == math.prod(src[1:]):
        mult = int(math.prod(src[2:]))
        return tuple((g, s, c, m * mult) for g, s, c, m in x)
    if src is not None and len(shape) >= 2 and len(src) >= 2 and shape[1] == src[1] and _label_total(x) == shape[1]:
        return x
    return _opaque(node, [x])


def _opaque(node: GraphNode, parts: Sequence[Label | None]) -> Label | None:
    if any(_label_groups(p) for p in parts):
        raise PruningError(f"cannot follow pruned channels through node {node.name!r} ({node.target}); add the layers "
                           "that produce them to ignored_layers")
    return _const_label(_shape(node))


def _check_rewritable(n: GraphNode, info: _NodeInfo) -> None:
    op = n.spec.op
    if op in ("conv2d", "conv_transpose2d"):
        p = n.spec.params
        if p["groups"] > 1 and not (p["groups"] == p["in_channels"] == p["out_channels"]) and info.in_label \
                and _label_groups(info.in_label):
            raise PruningError(f"node {n.name!r}: pruning the channels of a grouped convolution is not supported; "
                               "add the layers before it to ignored_layers")
        return
    if op == "linear":
        if n.spec.params["tokens"] != 1:
            raise PruningError(f"node {n.name!r}: pruning a linear layer over tokens is not supported")
        return
    if op not in _CHANNEL_OPS:
        raise PruningError(f"node {n.name!r}: op {op!r} has no channel parameter to rewrite; add the layers before it "
                           "to ignored_layers")
    if op != "flatten" and len(n.out_shapes[0]) not in (2, 4):
        raise PruningError(f"node {n.name!r}: channel pruning of a rank-{len(n.out_shapes[0])} tensor is not supported")


def _pruned_params(n: GraphNode, cin0: int | None, cin: int | None, cout0: int | None, cout: int | None) -> dict[str, Any]:
    p = dict(n.spec.params)
    op = n.spec.op
    if op in ("conv2d", "conv_transpose2d"):
        depthwise = p["groups"] > 1 and p["groups"] == p["in_channels"] == p["out_channels"]
        if cin is not None:
            p["in_channels"] = cin
        if cout is not None:
            p["out_channels"] = cout
        if depthwise:
            p["groups"] = p["in_channels"]
    elif op == "linear":
        if cin is not None:
            p["in_features"] = cin
        if cout is not None:
            p["out_features"] = cout
    elif op == "cat":
        if cout is not None:
            p["channels"] = max(1, round(cout / p["n_inputs"]))
    elif op == "flatten":
        if cin is not None and cin0:
            p["channels"] = cin
    elif "channels" in p and cout is not None:
        p["channels"] = cout
    return p


def _resize(shape: tuple[int, ...], old: int, new: int) -> tuple[int, ...]:
    if len(shape) >= 2 and shape[1] == old:
        return (shape[0], new, *shape[2:])
    return shape


def _scaled_generic(n: GraphNode, fin: float, fout: float, shapes: tuple[tuple[int, ...], ...], dtype: str,
                    batch_size: int) -> GraphNode:
    fw = fin * fout if n.param_bytes else 1.0

    def sc(c: Costs | None) -> Costs | None:
        if c is None:
            return None
        return Costs(flops=c.flops * fout * (fin if n.param_bytes else 1.0), weights=c.weights * fw,
                     in_elems=c.in_elems * fin, out_elems=c.out_elems * fout,
                     weights_touched=None if c.weights_touched is None else c.weights_touched * fw)
    out_bytes = sum(tensor_bytes(s, dtype) for s in shapes)
    per = out_bytes // batch_size if n.out_bytes_per_sample else 0
    return replace(n, costs=sc(n.costs), costs_per_sample=sc(n.costs_per_sample), out_shapes=shapes, out_bytes=out_bytes,
                   out_bytes_per_sample=per, param_bytes=int(round(n.param_bytes * fw)))


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    lv = tuple(float(x) for x in levels)
    if not lv or any(not (0 <= x < 1) for x in lv) or list(lv) != sorted(set(lv)):
        raise PruningError(f"levels must be sorted distinct ratios in [0, 1), got {levels!r}")
    if lv[0] != 0.0:
        raise PruningError(f"levels must start at 0.0 (the unpruned level), got {lv[0]}")
    return lv
