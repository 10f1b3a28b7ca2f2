"""torch.fx tracing plus shape propagation: a ``torch.nn.Module`` becomes a :class:`ModelGraph`.

1. :class:`LatpredTracer` keeps every module an op type covers (``nn.Conv2d``, ``nn.Linear``, ...)
   as a leaf, plus the standard ``torch.nn`` leaves. A submodule fx cannot trace (data-dependent
   control flow, iteration over a proxy, ...) is found from the failing frame and made a leaf too,
   and tracing is retried: the model is never rejected for one untraceable block.
2. :class:`ShapeProp` (an fx ``Interpreter``) runs the traced module once on the example inputs and
   writes one typed entry, ``node.meta["latpred"]`` (a :class:`GraphNode`), per node: its output
   shapes, whether it only aliases its input (a view), and its op spec through
   :func:`latpred.graph.fx_map.map_call`. Calls no op type covers get their FLOPs from PyTorch's
   ``FlopCounterMode`` and are predicted by the generic fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from ..errors import SpecError
from ..ops.base import Costs
from ..spec import DTYPES
from .fx_map import COPY_WHEN_STRIDED, Call, NoFit, leaf_module_types, map_call
from .model_graph import GraphNode, ModelGraph, generic_node, plain_node, spec_node

__all__ = ["trace", "LatpredTracer", "ShapeProp", "META_KEY"]

META_KEY = "latpred"
_TORCH_TO_DTYPE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_MAX_LEAF_RETRIES = 50


class LatpredTracer(fx.Tracer):
    """fx tracer whose leaves are the op-type modules, the standard nn leaves and ``extra_leaves``."""

    def __init__(self, extra_leaves: Sequence[str] = ()) -> None:
        super().__init__()
        self.extra_leaves = set(extra_leaves)
        self._leaf_types = leaf_module_types()

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.extra_leaves or type(m) in self._leaf_types:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _failing_submodule(model: torch.nn.Module, exc: BaseException, leaves: set[str]) -> str | None:
    """Qualified name of the innermost submodule whose ``forward`` was running when tracing failed."""
    names = {id(m): n for n, m in model.named_modules() if n}
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        obj = frame.f_locals.get("self")
        name = names.get(id(obj)) if obj is not None else None
        if name is not None and name not in leaves:
            return name
    return None


def _symbolic_trace(model: torch.nn.Module, leaves: Sequence[str] = ()) -> tuple[fx.GraphModule, list[str]]:
    """Trace ``model``, turning untraceable submodules into leaves; returns the module and those leaves."""
    forced = list(leaves)
    for _ in range(_MAX_LEAF_RETRIES):
        tracer = LatpredTracer(forced)
        try:
            graph = tracer.trace(model)
        except Exception as e:  # fx raises TraceError, TypeError, RuntimeError ... from user code
            culprit = _failing_submodule(model, e, set(forced))
            if culprit is None:
                raise SpecError(f"torch.fx cannot trace {type(model).__name__}: the failure is in its own forward(), "
                                f"not in a submodule ({type(e).__name__}: {e})") from e
            forced.append(culprit)
            continue
        name = type(model).__name__
        return fx.GraphModule(tracer.root, graph, name), forced
    raise SpecError(f"torch.fx cannot trace {type(model).__name__}: gave up after {_MAX_LEAF_RETRIES} untraceable submodules")


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1


def _target_name(n: fx.Node, module: torch.nn.Module | None) -> str:
    if n.op == "call_module":
        return f"{type(module).__module__.replace('torch.nn.modules.', 'nn.').split('.')[0]}.{type(module).__name__}" \
            if not type(module).__module__.startswith("torch.nn") else f"nn.{type(module).__name__}"
    if n.op == "call_method":
        return f"Tensor.{n.target}"
    t = n.target
    mod = getattr(t, "__module__", None) or ""
    return f"{mod + '.' if mod else ''}{getattr(t, '__name__', str(t))}"


class ShapeProp(fx.Interpreter):
    """Runs a traced module once and writes ``node.meta["latpred"]``: the node's :class:`GraphNode`."""

    def __init__(self, gm: fx.GraphModule, batch_size: int, dtype: str) -> None:
        super().__init__(gm)
        self.batch_size = batch_size
        self.dtype = dtype
        self._batched: dict[fx.Node, bool] = {}
        self._owned: set[str] = set()

    # -- helpers ------------------------------------------------------------------------------
    def _sample(self, shape: Sequence[int], batched: bool) -> tuple[int, ...]:
        s = tuple(int(d) for d in shape)
        if not batched:
            return s
        b = self.batch_size
        if not s or s[0] % b:
            raise NoFit(f"leading dimension of shape {s} is not a multiple of the batch size {b}")
        return (s[0] // b, *s[1:]) if s[0] != b else s[1:]

    def _param_bytes(self, n: fx.Node) -> int:
        if n.op == "get_attr":
            return 0
        if n.op != "call_module" or n.target in self._owned:
            return 0
        self._owned.add(n.target)
        m = self.fetch_attr(n.target)
        return int(sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]))

    def _flops(self, n: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            getattr(self, n.op)(n.target, args, kwargs)
        return float(counter.get_total_flops())

    # -- the pass -----------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        result = super().run_node(n)
        batched = n.op == "placeholder" or any(self._batched.get(a, False) for a in n.all_input_nodes)
        self._batched[n] = batched
        n.meta[META_KEY] = self._node(n, args, kwargs, result, batched)
        return result

    def _node(self, n: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any, batched: bool) -> GraphNode:
        outs = _tensors(result)
        shapes = [tuple(t.shape) for t in outs]
        common = {"batch_size": self.batch_size, "dtype": self.dtype, "out_shapes": shapes}
        if n.op == "placeholder":
            return plain_node(n.name, "input", f"input {n.target}", **common)
        if n.op == "output":
            return plain_node(n.name, "output", "output", **common)
        if n.op == "get_attr":
            nbytes = sum(t.numel() * t.element_size() for t in outs)
            return plain_node(n.name, "constant", f"get_attr {n.target}", batch_dependent=False, param_bytes=nbytes, **common)
        module = self.fetch_attr(n.target) if n.op == "call_module" else None
        target = _target_name(n, module)
        ins = _tensors((args, kwargs))
        in_nodes = [a for a in pytree.tree_leaves((n.args, n.kwargs)) if isinstance(a, fx.Node)]
        if not outs:  # size(), getattr, asserts, shape arithmetic: no tensor, no compute
            return plain_node(n.name, "view", target, **common)
        storages = {_storage(t) for t in ins}
        aliases = all(_storage(t) in storages for t in outs)
        if aliases and (n.op, n.target) in COPY_WHEN_STRIDED:
            return plain_node(n.name, "view", target, batch_dependent=batched, **common)
        param_bytes = self._param_bytes(n)
        in_batched = tuple(self._batched.get(a, False) for a in in_nodes if isinstance(self.env.get(a), torch.Tensor))
        reason = ""
        if batched:
            try:
                call = Call(n.op, n.target, tuple(n.args), dict(n.kwargs),
                            tuple(self._sample(t.shape, b) for t, b in zip(ins, in_batched)), in_batched,
                            tuple(self._sample(s, True) for s in shapes), module,
                            tuple(t.is_contiguous() for t in ins))
                op, params = map_call(call)
                return spec_node(n.name, target, op, params, param_bytes=param_bytes, module=n.target if module else None,
                                 **common)
            except (NoFit, SpecError) as e:
                reason = str(e)
        else:
            reason = "does not depend on the model input"
        if aliases:
            return plain_node(n.name, "view", target, batch_dependent=batched, **common)
        in_elems = float(sum(t.numel() for t in ins))
        out_elems = float(sum(t.numel() for t in outs))
        flops = max(self._flops(n, args, kwargs), out_elems)
        costs = Costs(flops=flops, weights=param_bytes / max(1, outs[0].element_size()), in_elems=in_elems,
                      out_elems=out_elems)
        return generic_node(n.name, target, costs, batch_dependent=batched, param_bytes=param_bytes,
                            module=n.target if module else None, reason=reason, **common)


def trace(model: torch.nn.Module, example_inputs: Any, *, name: str | None = None,
          leaf_modules: Sequence[str] = ()) -> ModelGraph:
    """Trace ``model`` with torch.fx and propagate shapes on ``example_inputs`` into a :class:`ModelGraph`.

    ``example_inputs`` is a tensor or a tuple of tensors; the first tensor's leading dimension is
    the batch size. ``leaf_modules`` names submodules to keep whole (predicted by the fallback).
    Submodules fx cannot trace become leaves automatically (listed in ``graph.metadata["leaves"]``).
    The model is put in eval mode and run once under ``torch.no_grad()``.
    """
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"trace() needs a torch.nn.Module, got {type(model).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    tensors = _tensors(inputs)
    if not tensors:
        raise SpecError("trace() needs at least one example input tensor")
    first = tensors[0]
    if first.dim() == 0:
        raise SpecError("the first example input must have a batch dimension")
    float_params = [p.dtype for p in model.parameters() if p.is_floating_point()]
    torch_dtype = float_params[0] if float_params else first.dtype if first.is_floating_point() else torch.float32
    dtype = _TORCH_TO_DTYPE.get(torch_dtype)
    if dtype not in DTYPES:
        raise SpecError(f"unsupported model dtype {torch_dtype}; expected one of {sorted(DTYPES)}")
    model = model.eval()
    gm, leaves = _symbolic_trace(model, leaf_modules)
    prop = ShapeProp(gm, int(first.shape[0]), dtype)
    with torch.no_grad():
        prop.run(*inputs)
    nodes: list[GraphNode] = []
    edges: list[tuple[str, str]] = []
    for n in gm.graph.nodes:
        nodes.append(n.meta[META_KEY])
        edges.extend((a.name, n.name) for a in dict.fromkeys(n.all_input_nodes))
    meta = {"leaves": leaves, "model_class": type(model).__name__}
    return ModelGraph(nodes, edges, int(first.shape[0]), dtype, name or type(model).__name__.lower(), "fx", gm, meta)

