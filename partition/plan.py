"""Deployable partition plans: :class:`PartitionPlan`, :func:`optimize_partition` and real split execution.

* :func:`optimize_partition` turns a model (or a traced :class:`~latpred.graph.model_graph.ModelGraph`),
  per-device latency predictors (or per-node ms arrays) and a :class:`~partition.cost.Link` into a
  :class:`PartitionPlan` (the best plan, plus the Pareto front for several objectives).
* :func:`split_graph_module` cuts the traced ``torch.fx.GraphModule`` along a plan with
  ``torch.fx.passes.split_module.split_module`` into one :class:`Stage` per used device, in device
  order (plans are monotone: device indices never decrease along an edge, so stage ``i`` only reads
  model inputs, constants and values of earlier stages). :meth:`SplitModel.run` executes the stages
  one by one in-process and equals the original model.

Values between stages are passed *by name*: the name of the fx node of the original graph that
produced them (model inputs: their placeholder names). Constants (fx ``get_attr`` of parameters or
buffers) are read locally by every stage that needs them and never count as transfers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from latpred.graph.model_graph import ModelGraph

from .cost import CostModel, Link, Plan
from .problems import optimize

__all__ = ["PartitionPlan", "Stage", "SplitModel", "split_graph_module", "optimize_partition", "placement_of"]


# -- the plan ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionPlan:
    """A partition plan ready to deploy.

    Attributes:
        assignment: device index of every graph node (aligned with ``node_names``; ``0`` = edge, the
            last device = cloud; monotone along the graph's edges).
        node_names: graph node names (fx node names for traced models).
        devices: device names, edge first (``("edge", "cloud")``).
        objectives: predicted values of the plan: the optimized objectives under their
            :data:`~partition.problems.OBJECTIVES` names (``latency``, ``edge_memory``, ...) and
            every :meth:`~partition.cost.CostModel.evaluate` metric under its own key
            (``latency_ms``, ``edge_memory_bytes``, ``bytes_transferred``, ...; ``device_ms`` is a
            list of ms per device).
        pareto: for several objectives, the Pareto front: ``(assignment, objectives)`` pairs
            (objective name → value), sorted by the first objective; empty for one objective.
        method: what produced the plan (``"ga"``, ``"nsga2"``, ``"single_cut"``, ...).
        model: the model / graph name.
    """

    assignment: tuple[int, ...]
    node_names: tuple[str, ...]
    devices: tuple[str, ...] = ("edge", "cloud")
    objectives: dict[str, float] = field(default_factory=dict)
    pareto: tuple[tuple[tuple[int, ...], dict[str, float]], ...] = ()
    method: str = ""
    model: str = ""

    def __post_init__(self) -> None:
        a = tuple(int(d) for d in self.assignment)
        names = tuple(str(n) for n in self.node_names)
        object.__setattr__(self, "assignment", a)
        object.__setattr__(self, "node_names", names)
        object.__setattr__(self, "devices", tuple(str(d) for d in self.devices))
        object.__setattr__(self, "pareto", tuple((tuple(int(d) for d in pa), dict(po)) for pa, po in self.pareto))
        if len(a) != len(names):
            raise ValueError(f"PartitionPlan: {len(a)} device indices for {len(names)} node names")
        if len(set(names)) != len(names):
            raise ValueError("PartitionPlan: duplicate node names")
        if len(self.devices) < 1:
            raise ValueError("PartitionPlan: needs at least one device name")
        if a and (min(a) < 0 or max(a) >= len(self.devices)):
            raise ValueError(f"PartitionPlan: device indices must lie in [0, {len(self.devices) - 1}]")
        for pa, _ in self.pareto:
            if len(pa) != len(names):
                raise ValueError("PartitionPlan: a Pareto assignment does not match node_names")

    @classmethod
    def from_plan(cls, plan: Plan, devices: Sequence[str] = ("edge", "cloud"), model: str = "") -> PartitionPlan:
        """A :class:`PartitionPlan` of a :class:`~partition.cost.Plan` (its scalar metrics become objectives)."""
        return cls(tuple(int(d) for d in plan.assignment), tuple(plan.node_names), tuple(devices),
                   _scalar_metrics(plan.metrics), (), plan.method, model)

    @property
    def latency_ms(self) -> float:
        """Predicted end-to-end latency in ms (``nan`` when unknown)."""
        return float(self.objectives.get("latency_ms", math.nan))

    def placement(self) -> dict[str, int]:
        """``{node name: device index}``."""
        return dict(zip(self.node_names, self.assignment))

    def used_devices(self) -> tuple[int, ...]:
        """Device indices that run at least one node."""
        return tuple(sorted(set(self.assignment)))

    def split(self, model_or_gm: Any, example_input: Any = None) -> SplitModel:
        """Split a model along this plan (see :func:`split_graph_module`).

        ``model_or_gm`` is a :class:`~latpred.graph.model_graph.ModelGraph` (its ``gm``), an fx
        ``GraphModule`` traced by latpred, or a ``torch.nn.Module`` (traced here: with
        :func:`latpred.graph.trace.trace` on ``example_input`` when given, else symbolically with the
        same tracer, which gives the same node names).
        """
        return split_graph_module(_graph_module(model_or_gm, example_input), self.placement())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (see :meth:`from_dict`)."""
        return {"format": "latpred.partition_plan/1", "model": self.model, "method": self.method,
                "devices": list(self.devices), "node_names": list(self.node_names), "assignment": list(self.assignment),
                "objectives": {k: _json_float(v) for k, v in self.objectives.items()},
                "pareto": [{"assignment": list(pa), "objectives": {k: _json_float(v) for k, v in po.items()}}
                           for pa, po in self.pareto]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PartitionPlan:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on a malformed dict."""
        try:
            return cls(tuple(d["assignment"]), tuple(d["node_names"]), tuple(d.get("devices", ("edge", "cloud"))),
                       {k: _from_json_float(v) for k, v in dict(d.get("objectives", {})).items()},
                       tuple((tuple(p["assignment"]), {k: _from_json_float(v) for k, v in p["objectives"].items()})
                             for p in d.get("pareto", ())),
                       str(d.get("method", "")), str(d.get("model", "")))
        except (KeyError, TypeError) as e:
            raise ValueError(f"PartitionPlan.from_dict: malformed plan dict ({type(e).__name__}: {e})") from None


def _json_float(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_json_float(x) for x in np.asarray(v).tolist()]
    f = float(v)
    return f if math.isfinite(f) else str(f)  # "nan" / "inf" keep strict JSON


def _from_json_float(v: Any) -> Any:
    if isinstance(v, list):
        return [_from_json_float(x) for x in v]
    return float(v)


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        arr = np.asarray(v)
        out[k] = float(arr) if arr.ndim == 0 else [float(x) for x in arr.ravel()]
    return out


def placement_of(plan: Any) -> dict[str, int]:
    """``{node name: device}`` of a :class:`PartitionPlan`, a :class:`~partition.cost.Plan` or a mapping."""
    if isinstance(plan, PartitionPlan):
        return plan.placement()
    if isinstance(plan, Plan):
        if not plan.node_names:
            raise ValueError("the Plan has no node_names; build it with CostModel.plan")
        return plan.placement()
    if isinstance(plan, Mapping):
        return {str(k): int(v) for k, v in plan.items()}
    raise ValueError(f"a plan must be a PartitionPlan, a Plan or a {{node name: device}} mapping, got {type(plan).__name__}")


# -- splitting --------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One contiguous part of a split model, run on one device.

    Attributes:
        device: device index (0 = edge).
        name: the submodule name in the split parent (``submod_<device>``).
        module: the stage's ``fx.GraphModule``.
        input_names: names of the values it consumes, in call order (model inputs, constants, or
            values produced by earlier stages).
        output_names: names of the values it produces for later stages or the model output.
        tuple_output: the module returns a tuple (``output_names`` in order) rather than one value.
    """

    device: int
    name: str
    module: fx.GraphModule
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    tuple_output: bool

    def run(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Run the stage on ``values`` (name → value); returns its outputs (name → value)."""
        missing = [n for n in self.input_names if n not in values]
        if missing:
            raise KeyError(f"stage {self.name} (device {self.device}) is missing input value(s) {missing}")
        out = self.module(*[values[n] for n in self.input_names])
        if self.tuple_output:
            return dict(zip(self.output_names, out))
        return {self.output_names[0]: out}


class SplitModel:
    """A model split into :class:`Stage` s (one per used device, in device order).

    Args:
        parent: the ``GraphModule`` returned by ``split_module`` (calls the stages in order).
        stages: the stages, in execution (= device) order.
        input_names: the model's placeholder names, in argument order.
        output_struct: the original output structure with every fx node replaced by its name.
        constants: ``{name: attribute target}`` of the constant inputs of stages (read locally).
        placement: ``{node name: device}`` the model was split with.
        input_device: where the model input lives (the placeholders' device, normally 0).
        output_device: where the result must end up (0: returned to the edge).
        source: the original (unsplit) ``GraphModule``; constants are read from it.
    """

    def __init__(self, parent: fx.GraphModule, stages: Sequence[Stage], input_names: Sequence[str], output_struct: Any,
                 constants: Mapping[str, str], placement: Mapping[str, int], input_device: int, output_device: int,
                 source: fx.GraphModule) -> None:
        self.parent = parent
        self.stages = list(stages)
        self.input_names = tuple(input_names)
        self.output_struct = output_struct
        self.constants = dict(constants)
        self.placement = dict(placement)
        self.input_device = int(input_device)
        self.output_device = int(output_device)
        self.source = source
        self._producer: dict[str, int | None] = {n: self.input_device for n in self.input_names}
        for n in self.constants:
            self._producer[n] = None
        for s in self.stages:
            for n in s.output_names:
                self._producer[n] = s.device

    # -- structure ----------------------------------------------------------------------------
    @property
    def devices(self) -> tuple[int, ...]:
        """Devices that run a stage, in order."""
        return tuple(s.device for s in self.stages)

    def stage(self, device: int) -> Stage | None:
        """The stage of ``device`` (``None`` when the device runs nothing)."""
        return next((s for s in self.stages if s.device == device), None)

    def producer(self, name: str) -> int | None:
        """Device that produces value ``name`` (``None`` for constants, available everywhere)."""
        if name not in self._producer:
            raise KeyError(f"no value {name!r} in the split model")
        return self._producer[name]

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the values the model output is made of (in order, without duplicates)."""
        names: list[str] = []
        fx.node.map_aggregate(self.output_struct, lambda v: names.append(v.name) if isinstance(v, _Ref) else None)
        return tuple(dict.fromkeys(names))

    def transfers(self) -> list[tuple[str, int, int]]:
        """``(value name, source device, destination device)`` of every value sent between devices
        (once per destination): stage inputs produced elsewhere, and output values returned to
        ``output_device``. Constants never travel."""
        out: dict[tuple[str, int], int] = {}
        for s in self.stages:
            for n in s.input_names:
                src = self.producer(n)
                if src is not None and src != s.device:
                    out.setdefault((n, s.device), src)
        for n in self.output_names:
            src = self.producer(n)
            if src is not None and src != self.output_device:
                out.setdefault((n, self.output_device), src)
        return [(n, src, dst) for (n, dst), src in out.items()]

    def boundary(self, first_remote: int = 1) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Values crossing between the *local* devices ``< first_remote`` and the *remote* ones.

        Returns ``(send, receive)``: the names the local side must send (inputs of remote stages
        produced locally, model inputs included) and the names it gets back (output values produced
        remotely). Raises ``ValueError`` when a local stage would need a remote value (not monotone).
        """
        send: list[str] = []
        for s in self.stages:
            for n in s.input_names:
                src = self.producer(n)
                if src is None:
                    continue
                if s.device < first_remote <= src:
                    raise ValueError(f"local stage {s.name} needs {n!r} from remote device {src}: the plan is not monotone")
                if s.device >= first_remote > src:
                    send.append(n)
        recv = [n for n in self.output_names if (self.producer(n) or 0) >= first_remote]
        return tuple(dict.fromkeys(send)), tuple(recv)

    # -- execution ----------------------------------------------------------------------------
    def constant(self, name: str) -> Any:
        """Value of constant ``name`` (read from the source module)."""
        obj: Any = self.source
        for part in self.constants[name].split("."):
            obj = getattr(obj, part)
        return obj

    def run_stages(self, values: dict[str, Any], devices: Iterable[int] | None = None) -> dict[str, Any]:
        """Run the stages of ``devices`` (default: all) in order, adding their outputs to ``values``
        (name → value, updated in place and returned). Constants are filled in as needed."""
        want = None if devices is None else set(devices)
        for s in self.stages:
            if want is not None and s.device not in want:
                continue
            for n in s.input_names:
                if n not in values and n in self.constants:
                    values[n] = self.constant(n)
            values.update(s.run(values))
        return values

    def inputs_to_values(self, *inputs: Any) -> dict[str, Any]:
        """``{placeholder name: value}`` of positional model inputs."""
        if len(inputs) != len(self.input_names):
            raise TypeError(f"the model takes {len(self.input_names)} input(s) {list(self.input_names)}, got {len(inputs)}")
        return dict(zip(self.input_names, inputs))

    def build_output(self, values: Mapping[str, Any]) -> Any:
        """The model output from the values (name → value)."""
        def get(v: Any) -> Any:
            if isinstance(v, _Ref):
                if v.name in values:
                    return values[v.name]
                if v.name in self.constants:
                    return self.constant(v.name)
                raise KeyError(f"output value {v.name!r} was not computed")
            return v
        return fx.node.map_aggregate(self.output_struct, get)

    @torch.no_grad()
    def run(self, *inputs: Any) -> Any:
        """Run every stage in sequence in this process; equals the original model's output."""
        return self.build_output(self.run_stages(self.inputs_to_values(*inputs)))

    __call__ = run

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}(device {s.device}: {len(s.input_names)} in, {len(s.output_names)} out)" for s in self.stages)
        return f"SplitModel([{parts}], {len(self.transfers())} transfers)"


@dataclass(frozen=True)
class _Ref:
    """A reference to a named value inside :attr:`SplitModel.output_struct`."""

    name: str


def split_graph_module(gm: fx.GraphModule, assignment_by_node_name: Mapping[str, int], *, output_device: int = 0) -> SplitModel:
    """Split a traced ``GraphModule`` into one stage per used device (``split_module`` underneath).

    Args:
        gm: the fx module (``ModelGraph.gm`` from :func:`latpred.graph.trace.trace`).
        assignment_by_node_name: ``{fx node name: device index}`` for every ``call_*`` node (extra
            names, e.g. of ``output``/``constant`` nodes, are ignored; placeholders default to device 0,
            ``get_attr`` constants are read locally by every stage that needs them).
        output_device: device the result returns to (counts in :meth:`SplitModel.transfers`).

    Returns:
        a :class:`SplitModel`; :meth:`SplitModel.run` equals ``gm``'s output.

    Raises:
        ValueError: a node without a device, a negative device, or a plan that is not monotone (a
            value would flow from a later device back to an earlier one).
    """
    from torch.fx.passes.split_module import split_module

    if not isinstance(gm, fx.GraphModule):
        raise ValueError(f"split_graph_module needs a torch.fx.GraphModule, got {type(gm).__name__}")
    place = {str(k): int(v) for k, v in assignment_by_node_name.items()}
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    input_devices = {place.get(n.name, 0) for n in placeholders}
    if len(input_devices) > 1:
        raise ValueError(f"all model inputs must start on one device, got devices {sorted(input_devices)}")
    input_device = input_devices.pop() if input_devices else 0
    dev: dict[str, int] = {n.name: input_device for n in placeholders}
    missing = [n.name for n in nodes if n.op.startswith("call_") and n.name not in place]
    if missing:
        raise ValueError(f"the plan gives no device to {len(missing)} node(s) of the module: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    for n in nodes:
        if not n.op.startswith("call_"):
            continue
        d = place[n.name]
        if d < 0:
            raise ValueError(f"node {n.name!r}: device index must be >= 0, got {d}")
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                continue
            if dev[a.name] > d:
                raise ValueError(f"the plan is not monotone: {a.name!r} runs on device {dev[a.name]} but its consumer "
                                 f"{n.name!r} on device {d}; repair it (CostModel.repair)")
        dev[n.name] = d

    parent = split_module(gm, gm, lambda n: dev[n.name], keep_original_order=False, keep_original_node_name=True)
    sub_names = set(parent.meta.get("partition_names", ())) if hasattr(parent, "meta") else set()
    calls = [n for n in parent.graph.nodes if n.op == "call_module" and (n.target in sub_names or
                                                                         (not sub_names and str(n.target).startswith("submod_")))]
    stages = []
    for c in calls:
        sub = getattr(parent, str(c.target))
        ph = [n.name for n in sub.graph.nodes if n.op == "placeholder"]
        if len(ph) != len(c.args):
            raise RuntimeError(f"{c.target}: {len(ph)} placeholders but the parent passes {len(c.args)} values")
        out_node = next(n for n in sub.graph.nodes if n.op == "output")
        ret = out_node.args[0]
        tuple_output = isinstance(ret, (tuple, list))
        outs = tuple(r.name for r in ret) if tuple_output else (ret.name,)
        device = int(str(c.target).rsplit("_", 1)[-1])
        stages.append(Stage(device, str(c.target), sub, tuple(ph), outs, tuple_output))
    stages.sort(key=lambda s: s.device)

    constants = {n.name: str(n.target) for n in nodes if n.op == "get_attr"}
    out_node = next(n for n in nodes if n.op == "output")
    struct = fx.node.map_arg(out_node.args[0], lambda a: _Ref(a.name))
    split = SplitModel(parent, stages, [n.name for n in placeholders], struct, constants, place, input_device,
                       output_device, gm)
    known = set(split._producer)
    for s in stages:
        bad = [n for n in s.input_names if n not in known]
        if bad:
            raise RuntimeError(f"{s.name}: inputs {bad} are produced by no stage (split_module naming changed?)")
    return split


def _graph_module(model_or_gm: Any, example_input: Any = None) -> fx.GraphModule:
    if isinstance(model_or_gm, ModelGraph):
        if model_or_gm.gm is None:
            raise ValueError("the ModelGraph has no fx GraphModule (ONNX graphs cannot be split for execution)")
        return model_or_gm.gm
    if isinstance(model_or_gm, fx.GraphModule):
        return model_or_gm
    if isinstance(model_or_gm, torch.nn.Module):
        if example_input is not None:
            from latpred.graph.trace import trace

            return trace(model_or_gm, example_input).gm
        from latpred.graph.trace import _symbolic_trace

        return _symbolic_trace(model_or_gm.eval())[0]
    raise ValueError(f"cannot split a {type(model_or_gm).__name__}; give a ModelGraph, an fx GraphModule or a torch.nn.Module")


# -- optimization -----------------------------------------------------------------------------------
def optimize_partition(model_or_graph: Any, example_input: Any = None, devices: Sequence[Any] = (), link: Any = None, *,
                       objectives: Sequence[str] | str = ("latency",), constraints: Mapping[str, float | None] | None = None,
                       conditions: Sequence[Mapping[str, Any] | None] | None = None, device_names: Sequence[str] | None = None,
                       input_on: int = 0, output_to: int | None = 0, power_w: Sequence[float] | None = None,
                       tx_power_w: Sequence[float] | None = None, **optimize_kwargs: Any) -> PartitionPlan:
    """Find a partition plan of a model over ``devices`` (edge first, cloud last).

    Args:
        model_or_graph: a ``torch.nn.Module`` (traced with :func:`latpred.graph.trace.trace` on
            ``example_input``) or a :class:`~latpred.graph.model_graph.ModelGraph`.
        example_input: the model input (tensor or tuple); required for a module.
        devices: one entry per device: a :class:`latpred.Predictor` (node times come from
            ``predictor.predict_graph(graph, **conditions[i]).node_ms``), a per-node ms array of shape
            ``(n_nodes,)`` aligned with the graph's nodes, or a ``GraphLatency`` (its ``node_ms``).
        link: a :class:`~partition.cost.Link` (every adjacent device pair), a list of ``k - 1`` links,
            a ``k × k`` link matrix, or a dict of ``Link`` arguments (``{"bandwidth_mbps": 20, "rtt_ms": 5}``).
        objectives: names from :data:`~partition.problems.OBJECTIVES` (``latency``, ``edge_memory``,
            ``bytes``, ``energy``); one gives the best plan, several a Pareto front (kept in
            :attr:`PartitionPlan.pareto`; the returned plan is the front's best by the first objective).
        constraints: ``{"max_edge_memory_bytes": ..., "max_latency_ms": ...}``.
        conditions: per device, the predictor conditions (``batch_size``, ``utilization``,
            ``threads``, extra conditions); ignored for array devices. Devices must agree on
            ``batch_size``; the graph is re-scaled to it.
        device_names: names of the devices (default ``edge, dev1, …, cloud``).
        input_on, output_to, power_w, tx_power_w: passed to :class:`~partition.cost.CostModel`.
        **optimize_kwargs: passed to :func:`~partition.problems.optimize` (``pop_size``, ``n_gen``,
            ``seed``, ``encoding``, ...).

    Raises:
        ValueError: fewer than 2 devices, an unknown device entry type, a node-ms array of the wrong
            shape, a bad link (e.g. bandwidth <= 0), a predictor lacking op types the graph needs (and
            without generic fallback), conflicting batch sizes, or no feasible plan.
    """
    from latpred.graph.trace import trace

    if isinstance(model_or_graph, ModelGraph):
        graph = model_or_graph
    elif isinstance(model_or_graph, torch.nn.Module):
        if example_input is None:
            raise ValueError("optimize_partition: a torch module needs example_input to be traced")
        graph = trace(model_or_graph, example_input)
    else:
        raise ValueError(f"optimize_partition: expected a torch.nn.Module or a ModelGraph, got {type(model_or_graph).__name__}")
    devices = list(devices)
    k = len(devices)
    if k < 2:
        raise ValueError(f"optimize_partition: need at least 2 devices (edge, cloud), got {k}")
    conds = [dict(c or {}) for c in (conditions if conditions is not None else [None] * k)]
    if len(conds) != k:
        raise ValueError(f"optimize_partition: conditions must give one dict per device ({k}), got {len(conds)}")
    names = tuple(device_names) if device_names is not None else ("edge", *[f"dev{i}" for i in range(1, k - 1)], "cloud")
    if len(names) != k:
        raise ValueError(f"optimize_partition: device_names must give {k} names, got {len(names)}")
    objs = (objectives,) if isinstance(objectives, str) else tuple(objectives)

    batch = {int(c["batch_size"]) for c, d in zip(conds, devices) if "batch_size" in c and _is_predictor(d)}
    if len(batch) > 1:
        raise ValueError(f"optimize_partition: devices disagree on batch_size {sorted(batch)}; one request has one batch size")
    if batch:
        graph = graph.with_batch_size(batch.pop())
    node_ms = [_device_node_ms(i, names[i], d, graph, conds[i]) for i, d in enumerate(devices)]
    links = _links(link, k)
    cm = CostModel(graph, node_ms, links, input_on=input_on, output_to=output_to, power_w=power_w, tx_power_w=tx_power_w)
    res = optimize(cm, objs, constraints, **optimize_kwargs)
    best = res.best_index
    metrics = _scalar_metrics({key: v[best] for key, v in res.metrics.items()})
    chosen = {o: float(res.objectives[best, j]) for j, o in enumerate(objs)}
    pareto: tuple[tuple[tuple[int, ...], dict[str, float]], ...] = ()
    if len(objs) > 1:
        pareto = tuple((tuple(int(x) for x in res.assignments[i]), {o: float(res.objectives[i, j]) for j, o in enumerate(objs)})
                       for i in range(len(res.assignments)))
    return PartitionPlan(tuple(int(x) for x in res.assignments[best]), cm.node_names, names, {**chosen, **metrics}, pareto,
                         "ga" if len(objs) == 1 else "nsga2", graph.name)


def _is_predictor(d: Any) -> bool:
    from latpred.predictor import is_predictor

    return is_predictor(d)


def _device_node_ms(i: int, name: str, d: Any, graph: ModelGraph, cond: Mapping[str, Any]) -> np.ndarray:
    n = len(graph.nodes)
    if _is_predictor(d):
        _check_coverage(i, name, d, graph)
        c = dict(cond)
        c.pop("batch_size", None)  # the graph is already at that batch size
        lat = d.predict_graph(graph, batch_size=graph.batch_size, utilization=c.pop("utilization", 0.0),
                              threads=c.pop("threads", None), **c)
        arr = np.asarray(lat.node_ms, dtype=float)
    elif hasattr(d, "node_ms") and hasattr(d, "node_names"):  # a GraphLatency
        if list(d.node_names) != [nd.name for nd in graph.nodes]:
            raise ValueError(f"device {i} ({name}): the GraphLatency's node names do not match the graph's")
        arr = np.asarray(d.node_ms, dtype=float)
    elif isinstance(d, (np.ndarray, list, tuple)) or torch.is_tensor(d):
        try:
            arr = np.asarray(d.cpu().numpy() if torch.is_tensor(d) else d, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"device {i} ({name}): node ms must be numbers") from None
    else:
        raise ValueError(f"device {i} ({name}): unsupported device entry {type(d).__name__}; give a latpred.Predictor, "
                         f"a per-node ms array of shape ({n},) or a GraphLatency")
    if arr.shape != (n,):
        raise ValueError(f"device {i} ({name}): node ms must have shape ({n},) (one value per graph node), got {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise ValueError(f"device {i} ({name}): node ms must be finite and >= 0")
    return arr


def _check_coverage(i: int, name: str, predictor: Any, graph: ModelGraph) -> None:
    if predictor.generic is not None:
        return
    lacking: dict[str, int] = {}
    for nd in graph.compute_nodes:
        key = nd.op if nd.op is not None else f"<no op type: {nd.target}>"
        if nd.op is None or not predictor.covers(nd.op):
            lacking[key] = lacking.get(key, 0) + 1
    if lacking:
        desc = ", ".join(f"{k} ({v} node{'s' if v > 1 else ''})" for k, v in sorted(lacking.items()))
        raise ValueError(f"device {i} ({name}): the predictor has no model for op types the graph {graph.name!r} needs and "
                         f"no generic fallback: {desc}; retrain it with those op types or with a generic fallback")


def _links(link: Any, k: int) -> Any:
    if link is None:
        raise ValueError("optimize_partition: give a link (Link(bandwidth_mbps=..., rtt_ms=...))")
    try:
        if isinstance(link, Mapping):
            return Link(**link)
        if isinstance(link, Link):
            return link
        items = list(link)
    except (TypeError, ValueError) as e:
        raise ValueError(f"optimize_partition: bad link {link!r}: {e}") from None
    if all(isinstance(x, Mapping) for x in items):
        try:
            return [Link(**x) for x in items]
        except (TypeError, ValueError) as e:
            raise ValueError(f"optimize_partition: bad link: {e}") from None
    return items

