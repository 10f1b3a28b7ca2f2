"""Build a :class:`~latpred.graph.model_graph.ModelGraph` from an ONNX model.

:func:`from_onnx` loads and checks the model, infers every tensor shape at a concrete batch size and
maps each ONNX node to one :class:`GraphNode`: a spec of a registry op type where one fits (the same
specs the torch.fx tracer produces for the equivalent PyTorch module), a ``view`` node for layout
ops, a ``constant`` node for values computed from weights alone (folded by the runtime), and a
generic node with tensor-size costs otherwise. Nothing is dropped: every ONNX node is one node.

Tensors fall into three classes: ``const`` (initializers, ``Constant`` outputs and anything computed
from them alone), ``shape`` (``Shape``/``Size`` outputs and small integer tensors computed from them:
the shape arithmetic of dynamic exports) and ``act`` (activations). A constant tensor's bytes count as
``param_bytes`` of the first compute node that reads it (an initializer reached through an
``Identity``/``Transpose`` alias counts once per alias, as the PyTorch module holds one tensor each).

Which tensors scale with the batch is known exactly when the batch dimension is symbolic (shapes are
inferred a second time at batch + 1 and compared, which also finds a batch merged with heads or moved
off axis 0); for a fixed-batch export, an activation whose leading dimension is a multiple of the
batch is taken to scale with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import SpecError
from ..ops.base import Costs
from ..spec import dtype_bytes
from .model_graph import GraphNode, ModelGraph, fold_chw, generic_node, plain_node, spec_node, tensor_bytes

__all__ = ["from_onnx"]

_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
_INDEX_TYPES = {TensorProto.INT64, TensorProto.INT32}
_CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}
#: layout ops that move no data in PyTorch (views); Flatten with axis != 1 joins them
_VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Expand", "Slice", "Split", "Shape", "Size"}
_ACTIVATIONS = {"Relu": "relu", "Gelu": "gelu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish",
                "HardSigmoid": "hardsigmoid"}
_BINARY = {"Add": "add", "Mul": "mul", "Sub": "sub", "Div": "div"}
#: activations PyTorch modules build in place (``nn.ReLU/ReLU6/SiLU/Hardswish(inplace=True)``, as torchvision's CNNs
#: do); ONNX has no in-place notion, so :func:`from_onnx` marks these in place where PyTorch could run them so
#: (``inplace_activations``). Sigmoid, Tanh and HardSigmoid modules have no in-place form and stay out-of-place.
_INPLACE_FNS = ("relu", "relu6", "silu", "hardswish")
#: inputs that are arguments (sizes, scales, pads), not weights: never counted as parameter bytes
_ARG_INPUTS = {"Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 2, 3}, "Clip": {1, 2}, "Dropout": {1, 2}}
_SMALL_INIT = 1024  # initializers up to this many elements stay in the shape-inference model (for data propagation)


class _NoSpec(Exception):
    """Raised by a mapping when no op type fits the node; the message becomes the generic node's reason."""


def from_onnx(path_or_model: str | os.PathLike[str] | onnx.ModelProto, batch_size: int | None = None,
              dtype: str = "float32", name: str | None = None, inplace_activations: bool = True) -> ModelGraph:
    """A :class:`ModelGraph` of an ONNX model (a file path or an ``onnx.ModelProto``).

    Args:
        path_or_model: the ``.onnx`` file or a loaded model.
        batch_size: batch size of the graph. A symbolic batch dimension (axis 0 of the inputs) is
            set to it (default 1); a model exported with a fixed batch is built at that batch and
            re-scaled with :meth:`ModelGraph.with_batch_size` when ``batch_size`` differs.
        dtype: element type the specs and byte counts assume (``float32``, ``float16``, ``bfloat16``).
        name: graph name (default: the file's stem, else the ONNX graph's name).
        inplace_activations: mark a ReLU / ReLU6 (``Clip(0, 6)``) / HardSwish node in place (``inplace`` spec
            parameter: no output buffer, an in-place kernel) when its input is an activation that no other node
            and no graph output reads — how PyTorch runs the ``inplace=True`` activations torchvision's CNNs are
            built with, so the graph predicts as the traced module does. ``False`` for models whose activations
            allocate their output.

    Raises:
        SpecError: missing file, not an ONNX model, checker or shape-inference failure, symbolic
            dimensions other than the batch, or control flow (``If``/``Loop``/``Scan``, sub-graphs).
    """
    dtype_bytes(dtype)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}")
    model, where, path = _load(path_or_model)
    _check(model, where, path)
    graph = model.graph
    for node in graph.node:
        sub = [a.name for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
        if node.op_type in _CONTROL_FLOW or sub:
            raise SpecError(f"{where}: node {node.name or node.output[0]!r} is an {node.op_type} (control flow / "
                            f"sub-graph{' in ' + ', '.join(sub) if sub else ''}); from_onnx supports straight-line "
                            "graphs only")

    init_names = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    inputs = [v for v in graph.input if v.name not in init_names]
    dims, dynamic = _input_dims(inputs, where)
    file_batch = next((d[0] for d in dims.values() if d and d[0] is not None), 1)
    b = int(batch_size or 1) if dynamic else int(file_batch)
    fixed = {n: [b if x is None else x for x in d] for n, d in dims.items()}
    shapes, values = _infer(model, fixed, where)
    shapes2 = None
    if dynamic:  # a second inference at b + 1 tells exactly which tensors scale with the batch
        try:
            shapes2 = _infer(model, {n: [b + 1 if x is None else x for x in d] for n, d in dims.items()}, where)[0]
        except SpecError:
            shapes2 = None

    gname = name or (path.stem if path is not None else "") or graph.name or "model"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    meta = {"path": str(path) if path is not None else None, "opset": opset,
            "producer": f"{model.producer_name} {model.producer_version}".strip(), "dynamic_batch": dynamic,
            "inputs": {n: list(d) for n, d in fixed.items()}}
    if not isinstance(inplace_activations, bool):
        raise SpecError(f"inplace_activations must be True or False, got {inplace_activations!r}")
    g = _Builder(model, inputs, shapes, shapes2, values, b, dtype, where, inplace_activations).build(gname, meta)
    if batch_size is not None and int(batch_size) != g.batch_size:
        g = g.with_batch_size(int(batch_size))
    return g


# -- loading and checking ---------------------------------------------------------------------------
def _load(src: Any) -> tuple[onnx.ModelProto, str, Path | None]:
    if isinstance(src, onnx.ModelProto):
        return src, f"ONNX model {src.graph.name or '<unnamed>'!r}", None
    if not isinstance(src, (str, os.PathLike)):
        raise SpecError(f"from_onnx expects a path or an onnx.ModelProto, got {type(src).__name__}")
    path = Path(src)
    where = f"ONNX file {str(path)!r}"
    if not path.is_file():
        raise SpecError(f"{where} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError and friends: not a protobuf ModelProto
        raise SpecError(f"{where} is not an ONNX model: {type(e).__name__}: {e}") from None
    return model, where, path


def _check(model: onnx.ModelProto, where: str, path: Path | None) -> None:
    if not model.graph.node and not model.graph.input and not model.ir_version:
        raise SpecError(f"{where} is not an ONNX model (no graph)")
    try:
        onnx.checker.check_model(str(path) if path is not None else model)
    except Exception as e:  # ValidationError, or a ValueError for protos over 2 GiB
        raise SpecError(f"{where} fails the ONNX checker: {str(e).strip().splitlines()[0] if str(e).strip() else e}") from None


def _input_dims(inputs: Sequence[onnx.ValueInfoProto], where: str) -> tuple[dict[str, list[int | None]], bool]:
    """Input dims with ``None`` for a symbolic batch (axis 0); SpecError for any other unknown dim."""
    out: dict[str, list[int | None]] = {}
    dynamic = False
    for v in inputs:
        if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            raise SpecError(f"{where}: input {v.name!r} has no tensor shape")
        d: list[int | None] = []
        for i, dim in enumerate(v.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                d.append(int(dim.dim_value))
            elif i == 0:
                d.append(None)
                dynamic = True
            else:
                sym = dim.dim_param or "?"
                raise SpecError(f"{where}: input {v.name!r} has an unknown dimension {sym!r} at axis {i}; only the "
                                "batch (axis 0) may be symbolic: export with fixed sizes for the other axes")
        out[v.name] = d
    return out, dynamic


def _infer(model: onnx.ModelProto, input_dims: dict[str, list[int]], where: str
           ) -> tuple[dict[str, tuple[tuple[int, ...] | None, int]], dict[str, np.ndarray]]:
    """Shapes of every tensor at concrete input dims: ``(tensor -> (shape, elem type), small known values)``.

    Runs strict shape inference with data propagation on a light copy of the model: large
    initializers become typed graph inputs (no weight bytes are copied), small ones stay. Where
    shape arithmetic leaves a shape unknown (a Reshape target computed through ``Div``, ...), the
    small integer computations whose inputs are known are evaluated with the ONNX reference
    evaluator, replaced by initializers, and inference runs again until nothing changes.
    """
    g = model.graph
    lm = onnx.ModelProto()
    lm.ir_version = model.ir_version
    lm.opset_import.extend(model.opset_import)
    lm.functions.extend(model.functions)
    lg = lm.graph
    lg.name = g.name
    lg.node.extend(g.node)
    for v in g.input:
        if v.name in input_dims:
            lg.input.append(onnx.helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, input_dims[v.name]))
    values: dict[str, np.ndarray] = {}
    for t in g.initializer:
        if math.prod(t.dims) <= _SMALL_INIT and t.data_location != TensorProto.EXTERNAL:
            lg.initializer.append(t)
            try:
                values[t.name] = numpy_helper.to_array(t)
            except Exception:  # an unreadable small initializer only loses its value
                pass
        else:
            lg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for st in g.sparse_initializer:
        lg.input.append(onnx.helper.make_tensor_value_info(st.values.name, st.values.data_type, list(st.dims)))
    for v in g.output:  # outputs keep their type, not their (possibly symbolic) shape
        lg.output.append(onnx.helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, None))
    opsets = {o.domain or "": o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    while True:
        shapes = _shapes(lm, g, where)
        if all(shapes.get(t, (None, 0))[0] is not None for node in lg.node for t in node.output if t):
            return shapes, values
        keep, folded = [], False
        for node in lg.node:
            out = _fold(node, shapes, values, opsets)
            if out is None:
                keep.append(node)
                continue
            folded = True
            for t, v in out.items():
                values[t] = v
                lg.initializer.append(numpy_helper.from_array(v, t))
        if not folded:
            return shapes, values
        del lg.node[:]
        lg.node.extend(keep)


def _shapes(lm: onnx.ModelProto, g: onnx.GraphProto, where: str) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(lm, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:
        raise SpecError(f"{where}: ONNX shape inference failed: {str(e).strip()}") from None
    out: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for t in (*g.initializer, *lm.graph.initializer):
        out[t.name] = (tuple(int(d) for d in t.dims), t.data_type)
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tt = v.type.tensor_type
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shape = tuple(int(d.dim_value) for d in tt.shape.dim)
        if v.name not in out or out[v.name][0] is None:
            out[v.name] = (shape, tt.elem_type)
    return out


def _fold(node: onnx.NodeProto, shapes: dict[str, tuple[tuple[int, ...] | None, int]], values: dict[str, np.ndarray],
          opsets: dict[str, int]) -> dict[str, np.ndarray] | None:
    """Output values of a small computation whose inputs (or, for Shape/Size, input shape) are known."""
    if node.domain not in ("", "ai.onnx") or node.op_type.startswith("Random") or node.op_type in _CONTROL_FLOW:
        return None
    ins = [t for t in node.input if t]
    if node.op_type in ("Shape", "Size"):
        s = shapes.get(ins[0], (None, 0))[0]
        if s is None:
            return None
        if node.op_type == "Size":
            return {node.output[0]: np.array(math.prod(s), dtype=np.int64)}
        a = {x.name: x.i for x in node.attribute}
        lo, hi = a.get("start", 0), a.get("end", len(s))
        lo, hi = (max(0, min(len(s), v + len(s) if v < 0 else v)) for v in (lo, hi))
        return {node.output[0]: np.array(s[lo:hi], dtype=np.int64)}
    if not all(t in values for t in ins):
        return None
    try:
        from onnx.reference import ReferenceEvaluator

        res = ReferenceEvaluator(node, opsets=opsets).run(None, {t: values[t] for t in ins})
    except Exception:  # an op the reference evaluator cannot run stays unfolded
        return None
    out = {t: np.asarray(v) for t, v in zip(node.output, res) if t}
    if any(v.size > _SMALL_INIT or v.dtype == object for v in out.values()):
        return None
    return out


# -- building ---------------------------------------------------------------------------------------
class _Builder:
    def __init__(self, model: onnx.ModelProto, inputs: Sequence[onnx.ValueInfoProto],
                 shapes: dict[str, tuple[tuple[int, ...] | None, int]],
                 shapes2: dict[str, tuple[tuple[int, ...] | None, int]] | None, values: dict[str, np.ndarray], b: int,
                 dtype: str, where: str, inplace_activations: bool = True) -> None:
        self.model, self.graph, self.inputs = model, model.graph, inputs
        self.inplace_activations = inplace_activations
        #: how many nodes (and graph outputs) read each tensor: an activation may write into its input only when
        #: it is that input's sole reader
        self.readers: dict[str, int] = {}
        for node in self.graph.node:
            for t in {t for t in node.input if t}:
                self.readers[t] = self.readers.get(t, 0) + 1
        for v in self.graph.output:
            self.readers[v.name] = self.readers.get(v.name, 0) + 1
        self.input_names = {v.name for v in inputs}  # an activation never writes into the caller's input
        self.shapes, self.shapes2, self.b, self.dtype, self.where = shapes, shapes2, b, dtype, where
        self.cls: dict[str, str] = {}
        self.values = dict(values)
        self.charged: set[str] = set()
        self._norm_cache: dict[str, tuple[int, ...] | None] = {}
        for t in self.graph.initializer:
            self.cls[t.name] = "const"
        for st in self.graph.sparse_initializer:
            self.cls[st.values.name] = "const"
        for v in inputs:
            self.cls[v.name] = "act"

    # tensors ------------------------------------------------------------------------------
    def shape(self, t: str) -> tuple[int, ...] | None:
        return self.shapes.get(t, (None, 0))[0]

    def elem_type(self, t: str) -> int:
        return self.shapes.get(t, (None, 0))[1]

    def norm(self, t: str) -> tuple[int, ...] | None:
        """``(batch, *per-sample dims)`` of a batch-proportional activation, else ``None``.

        A batch axis other than 0 moves to the front; a merged batch (``batch * heads`` in one axis)
        is split into ``(batch, heads)``.
        """
        if t in self._norm_cache:
            return self._norm_cache[t]
        res = None
        s = self.shape(t)
        if self.cls.get(t) == "act" and s:
            axis, k = None, 0
            if self.shapes2 is not None:
                s2 = self.shapes2.get(t, (None, 0))[0]
                if s2 is not None and len(s2) == len(s):
                    diff = [i for i, (x, y) in enumerate(zip(s, s2)) if x != y]
                    if len(diff) == 1 and s[diff[0]] % self.b == 0 and s2[diff[0]] == s[diff[0]] // self.b * (self.b + 1):
                        axis, k = diff[0], s[diff[0]] // self.b
            elif s[0] % self.b == 0 and s[0] > 0:
                axis, k = 0, s[0] // self.b
            if axis is not None:
                res = (self.b, *s[:axis], *((k,) if k > 1 else ()), *s[axis + 1:])
        self._norm_cache[t] = res
        return res

    def need(self, t: str, what: str = "input") -> tuple[int, ...]:
        n = self.norm(t)
        if n is None:
            raise _NoSpec(f"{what} {t!r} is not a batch-proportional activation")
        return n

    def plain(self, t: str) -> bool:
        """The tensor's batch is axis 0, unmerged (its shape is its normalized shape)."""
        return self.norm(t) == self.shape(t)

    def value(self, t: str) -> np.ndarray | None:
        return self.values.get(t) if t else None

    def nbytes(self, t: str) -> int:
        s = self.shape(t)
        if s is None:
            return 0
        et = self.elem_type(t)
        if et in _FLOATS:
            return tensor_bytes(s, self.dtype)
        try:
            size = onnx.helper.tensor_dtype_to_np_dtype(et).itemsize
        except Exception:
            size = 1
        return int(math.prod(s)) * size

    # graph --------------------------------------------------------------------------------
    def build(self, gname: str, meta: dict[str, Any]) -> ModelGraph:
        nodes: list[GraphNode] = []
        edges: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        used: set[str] = set()
        producer: dict[str, str] = {}

        def unique(base: str) -> str:
            n, i = base, 1
            while n in used:
                n, i = f"{base}_{i}", i + 1
            used.add(n)
            return n

        def connect(tensors: Sequence[str], me: str) -> None:
            for t in tensors:
                p = producer.get(t)
                if p is not None and (p, me) not in seen:
                    seen.add((p, me))
                    edges.append((p, me))

        for v in self.inputs:
            n = unique(v.name)
            producer[v.name] = n
            nodes.append(plain_node(n, "input", "input", batch_size=self.b, dtype=self.dtype,
                                    out_shapes=[self.shape(v.name) or ()], batch_dependent=self.norm(v.name) is not None))
        for i, node in enumerate(self.graph.node):
            n = unique(node.name or (node.output[0] if node.output and node.output[0] else f"{node.op_type}_{i}"))
            gn = self.node(node, n)
            # per-sample bytes from the tensors that scale with the batch (any axis), not only those batch-first
            per = sum(tensor_bytes(self.shape(t), self.dtype) for t in node.output
                      if t and self.norm(t) is not None) // self.b
            nodes.append(gn if gn.out_bytes_per_sample == per or gn.kind == "constant" else replace(gn, out_bytes_per_sample=per))
            connect([t for t in node.input if t], n)
            for t in node.output:
                if t:
                    producer[t] = n
        for v in self.graph.output:
            n = unique("output")
            s = self.shape(v.name)
            nodes.append(plain_node(n, "output", "output", batch_size=self.b, dtype=self.dtype,
                                    out_shapes=[s] if s is not None else [], batch_dependent=self.norm(v.name) is not None))
            connect([v.name], n)
        return ModelGraph(nodes, edges, self.b, self.dtype, gname, "onnx", None, meta)

    def node(self, node: onnx.NodeProto, n: str) -> GraphNode:
        op = node.op_type
        target = op if node.domain in ("", "ai.onnx") else f"{node.domain}::{op}"
        ins = [t for t in node.input if t]
        outs = [t for t in node.output if t]
        classes = [self.cls.get(t, "act") for t in ins]
        if op == "Constant":
            self._constant_value(node)
        if op in ("Shape", "Size"):
            kind, out_cls = "view", "shape"
        elif all(c == "const" for c in classes):
            kind, out_cls = "constant", "const"
        elif all(c in ("const", "shape") for c in classes) and all(self._shape_like(t) for t in outs):
            kind, out_cls = "view", "shape"
        else:
            kind, out_cls = "compute", "act"
        for t in outs:
            self.cls[t] = out_cls
        for t in outs:
            if self.shape(t) is None and (t == node.output[0] or kind == "compute"):
                raise SpecError(f"{self.where}: node {n!r} ({target}): shape inference left the shape of output {t!r} "
                                "unknown")
        out_shapes = [s for s in (self.shape(t) for t in outs) if s is not None]
        dep = any(self.norm(t) is not None for t in outs)
        if kind != "compute":
            return plain_node(n, kind, target, batch_size=self.b, dtype=self.dtype, out_shapes=out_shapes,
                              batch_dependent=kind != "constant" and dep)
        try:
            if node.domain not in ("", "ai.onnx"):
                raise _NoSpec(f"ONNX op {target} has no op type")
            mapped = self.map(node, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
        except _NoSpec as e:
            return self._generic(node, n, target, ins, outs, out_shapes, dep, str(e))
        if mapped is None:
            return plain_node(n, "view", target, batch_size=self.b, dtype=self.dtype, out_shapes=out_shapes,
                              batch_dependent=dep)
        spec_op, params = mapped
        per = sum(tensor_bytes(self.shape(t), self.dtype) for t in outs if self.norm(t) is not None) // self.b
        pb = self._charge(node)
        try:
            return spec_node(n, target, spec_op, params, batch_size=self.b, dtype=self.dtype,
                             param_bytes=pb, out_shapes=out_shapes, out_bytes_per_sample=per)
        except SpecError as e:
            return self._generic(node, n, target, ins, outs, out_shapes, dep, f"{spec_op}: {e}", pb)

    def _shape_like(self, t: str) -> bool:
        s = self.shape(t)
        return s is not None and len(s) <= 1 and (self.elem_type(t) in _INDEX_TYPES or math.prod(s) <= 1)

    def _constant_value(self, node: onnx.NodeProto) -> None:
        for a in node.attribute:
            v = onnx.helper.get_attribute_value(a)
            try:
                if a.name == "value" and math.prod(v.dims) <= 16:
                    self.values[node.output[0]] = numpy_helper.to_array(v)
                elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    self.values[node.output[0]] = np.asarray(v)
            except Exception:
                pass

    def _charge(self, node: onnx.NodeProto) -> int:
        """Bytes of the constant inputs not counted yet (skipping arguments, scalars and integer shape/index tensors)."""
        skip = _ARG_INPUTS.get(node.op_type, ())
        total = 0
        for t in dict.fromkeys(t for j, t in enumerate(node.input) if t and j not in skip):
            s = self.shape(t)
            if (self.cls.get(t) != "const" or t in self.charged or s is None or math.prod(s) <= 1
                    or self.elem_type(t) in _INDEX_TYPES):
                continue
            self.charged.add(t)
            total += self.nbytes(t)
        return total

    def _generic(self, node: onnx.NodeProto, n: str, target: str, ins: Sequence[str], outs: Sequence[str],
                 out_shapes: Sequence[tuple[int, ...]], dep: bool, reason: str, param_bytes: int | None = None) -> GraphNode:
        out_elems = float(sum(math.prod(s) for s in out_shapes))
        in_elems = weights = 0.0
        for t in dict.fromkeys(ins):
            s = self.shape(t)
            if s is None:
                continue
            if self.cls.get(t) == "const":
                weights += math.prod(s) if self.elem_type(t) not in _INDEX_TYPES else 0
            else:
                in_elems += math.prod(s)
        costs = Costs(flops=out_elems, weights=weights, in_elems=in_elems, out_elems=out_elems)
        return generic_node(n, target, costs, batch_size=self.b, batch_dependent=dep, dtype=self.dtype,
                            param_bytes=self._charge(node) if param_bytes is None else param_bytes, out_shapes=out_shapes,
                            reason=reason)

    # op mapping ---------------------------------------------------------------------------
    def map(self, node: onnx.NodeProto, a: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """``(op type, params)`` of the node, ``None`` for a view; raises :class:`_NoSpec` otherwise."""
        op = node.op_type
        i = list(node.input)
        if op in ("Conv", "ConvTranspose"):
            return self._conv(node, a)
        if op == "Gemm":
            x = self.need(i[0])
            if self.cls.get(i[1]) != "const" or len(self.shape(i[1]) or ()) != 2 or a.get("transA", 0):
                raise _NoSpec("Gemm of two activations (or transA) has no op type")
            k, n = self.shape(i[1])
            if a.get("transB", 0):
                k, n = n, k
            return "linear", {"in_features": k, "out_features": n, "tokens": math.prod(x[1:-1]),
                              "bias": len(i) > 2 and bool(i[2])}
        if op == "MatMul":
            return self._matmul(i)
        if op == "BatchNormalization":
            if a.get("training_mode", 0):
                raise _NoSpec("BatchNormalization in training mode has no op type")
            c, h, w = fold_chw(self.need(i[0]))
            return "batchnorm2d", {"channels": c, "h": h, "w": w}
        if op == "LayerNormalization":
            x, s = self.need(i[0]), self.shape(i[0])
            axis = a.get("axis", -1) % len(s)
            dim = math.prod(s[axis:])
            per = math.prod(x[1:])
            if per % dim or (self.plain(i[0]) and axis == 0):
                raise _NoSpec(f"LayerNormalization over axes {axis}.. of {s} has no op type")
            return "layernorm", {"tokens": per // dim, "dim": dim}
        if op == "InstanceNormalization":
            c, h, w = fold_chw(self.need(i[0]))
            return "groupnorm", {"groups": c, "channels": c, "h": h, "w": w}
        if op == "GroupNormalization":
            c, h, w = fold_chw(self.need(i[0]))
            return "groupnorm", {"groups": a.get("num_groups", 1), "channels": c, "h": h, "w": w}
        if op in _ACTIVATIONS or op == "Clip":
            fn = _ACTIVATIONS.get(op) or self._clip_fn(node, a)
            c, h, w = fold_chw(self.need(i[0]))
            inplace = (self.inplace_activations and fn in _INPLACE_FNS and self.readers.get(i[0]) == 1
                       and i[0] not in self.input_names)
            return "activation", {"fn": fn, "channels": c, "h": h, "w": w, "inplace": inplace}
        if op in _BINARY:
            return self._binary(node, _BINARY[op])
        if op in ("MaxPool", "AveragePool"):
            return self._pool(node, a)
        if op == "GlobalAveragePool":
            c, h, w = fold_chw(self.need(i[0]))
            return "adaptive_avgpool2d", {"channels": c, "h": h, "w": w, "output_size": 1}
        if op == "Concat":
            return self._concat(node, a)
        if op == "Softmax":
            x, s = self.need(i[0]), self.shape(i[0])
            if a.get("axis", -1) % len(s) != len(s) - 1:
                raise _NoSpec(f"Softmax over axis {a.get('axis')} (not the last) has no op type")
            return "softmax", {"rows": math.prod(x[1:-1]), "cols": x[-1]}
        if op == "Flatten":
            x = self.need(i[0])
            if a.get("axis", 1) != 1 or not self.plain(i[0]):
                return None
            c, h, w = fold_chw(x)
            return "flatten", {"channels": c, "h": h, "w": w, "copy": False}
        if op == "Dropout":
            c, h, w = fold_chw(self.need(i[0]))
            ratio = self.value(i[1]) if len(i) > 1 else None
            p = float(ratio) if ratio is not None and ratio.size == 1 else float(a.get("ratio", 0.5))
            return "dropout", {"channels": c, "h": h, "w": w, "p": p}
        if op == "Gather":
            return self._gather(node, a)
        if op in _VIEWS:
            return None
        raise _NoSpec(f"ONNX op {op} has no op type")

    def _conv(self, node: onnx.NodeProto, a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        op = node.op_type
        i = list(node.input)
        x, wsh = self.need(i[0]), self.shape(i[1])
        if len(x) != 4 or not self.plain(i[0]) or wsh is None or len(wsh) != 4:
            raise _NoSpec(f"{op} over a {len(self.shape(i[0]) or ()) - 2}-D input has no op type (only 2-D)")
        k = list(a.get("kernel_shape", wsh[2:]))
        strides = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            if op == "ConvTranspose":
                raise _NoSpec(f"ConvTranspose with auto_pad={auto} has no op type")
            tot = [max((-(-x[2 + j] // strides[j]) - 1) * strides[j] + (k[j] - 1) * dil[j] + 1 - x[2 + j], 0)
                   for j in range(2)]
            pads = [t // 2 for t in tot] + [t - t // 2 for t in tot]
        for name, v in (("kernel", k), ("stride", strides), ("dilation", dil)):
            if v[0] != v[1]:
                raise _NoSpec(f"{op} with a non-square {name} {v} has no op type")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise _NoSpec(f"{op} with asymmetric padding {pads} has no op type")
        if pads[0] != pads[1]:
            raise _NoSpec(f"{op} with different padding along h and w {pads} has no op type")
        g = int(a.get("group", 1))
        p = {"kernel_size": k[0], "stride": strides[0], "padding": pads[0], "dilation": dil[0], "groups": g,
             "bias": len(i) > 2 and bool(i[2]), "h": x[2], "w": x[3]}
        if op == "Conv":
            return "conv2d", {"in_channels": x[1], "out_channels": wsh[0], **p}
        if "output_shape" in a:
            raise _NoSpec("ConvTranspose with an explicit output_shape has no op type")
        opad = list(a.get("output_padding", [0, 0]))
        if opad[0] != opad[1]:
            raise _NoSpec(f"ConvTranspose with different output_padding along h and w {opad} has no op type")
        return "conv_transpose2d", {"in_channels": x[1], "out_channels": wsh[1] * g, "output_padding": opad[0], **p}

    def _matmul(self, i: Sequence[str]) -> tuple[str, dict[str, Any]]:
        x = self.need(i[0], "left operand")
        if self.cls.get(i[1]) == "const":
            w = list(self.shape(i[1]) or ())
            while len(w) > 2 and w[0] == 1:
                w = w[1:]
            if len(w) != 2 or len(x) < 2 or x[-1] != w[0]:
                raise _NoSpec(f"MatMul by a constant of shape {self.shape(i[1])} has no op type")
            return "linear", {"in_features": w[0], "out_features": w[1], "tokens": math.prod(x[1:-1]), "bias": False}
        y = self.need(i[1], "right operand")
        if len(x) < 3 or len(y) < 3 or math.prod(x[1:-2]) != math.prod(y[1:-2]) or x[-1] != y[-2]:
            raise _NoSpec(f"MatMul of {self.shape(i[0])} and {self.shape(i[1])} (broadcast) has no op type")
        return "matmul", {"heads": math.prod(x[1:-2]), "m": x[-2], "k": x[-1], "n": y[-1]}

    def _clip_fn(self, node: onnx.NodeProto, a: dict[str, Any]) -> str:
        i = list(node.input)
        lo = self.value(i[1]) if len(i) > 1 else a.get("min")
        hi = self.value(i[2]) if len(i) > 2 else a.get("max")
        lo_v = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
        hi_v = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
        if lo_v == 0.0 and hi_v == 6.0:
            return "relu6"
        raise _NoSpec(f"Clip(min={lo_v}, max={hi_v}) has no op type (only Clip(0, 6) = relu6)")

    def _binary(self, node: onnx.NodeProto, fn: str) -> tuple[str, dict[str, Any]]:
        out = node.output[0]
        y, ys = self.need(out, "output"), self.shape(out)
        # as the fx tracer: broadcast when an operand (a (N, C, 1, 1) gate, a bias, a scalar) is smaller than the output
        sizes = [math.prod(self.shape(t) or ()) for t in node.input[:2] if t]
        broadcast = min(sizes) < math.prod(ys)
        c, h, w = fold_chw(y)
        return "elementwise", {"fn": fn, "channels": c, "h": h, "w": w, "broadcast": broadcast}

    def _pool(self, node: onnx.NodeProto, a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        op = node.op_type
        x = self.need(node.input[0])
        if len(x) != 4 or not self.plain(node.input[0]):
            raise _NoSpec(f"{op} over a {len(self.shape(node.input[0]) or ()) - 2}-D input has no op type (only 2-D)")
        if len([t for t in node.output if t]) > 1:
            raise _NoSpec(f"{op} returning indices has no op type")
        k = list(a["kernel_shape"])
        strides = list(a.get("strides", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto not in ("NOTSET", "VALID"):
            raise _NoSpec(f"{op} with auto_pad={auto} has no op type")
        if auto == "VALID":
            pads = [0, 0, 0, 0]
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _NoSpec(f"dilated {op} has no op type")
        for name, v in (("kernel", k), ("stride", strides)):
            if v[0] != v[1]:
                raise _NoSpec(f"{op} with a non-square {name} {v} has no op type")
        if len(set(pads)) != 1:
            raise _NoSpec(f"{op} with padding {pads} (asymmetric or different along h and w) has no op type")
        return ("maxpool2d" if op == "MaxPool" else "avgpool2d",
                {"channels": x[1], "h": x[2], "w": x[3], "kernel_size": k[0], "stride": strides[0], "padding": pads[0],
                 "ceil_mode": bool(a.get("ceil_mode", 0))})

    def _concat(self, node: onnx.NodeProto, a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        out = node.output[0]
        y = self.need(out, "output")
        if not self.plain(out):
            raise _NoSpec("Concat of tensors whose batch is not axis 0 has no op type")
        r = len(y)
        axis = a["axis"] % r
        if axis == 0:
            raise _NoSpec("Concat along the batch axis has no op type")
        n = len([t for t in node.input if t])
        c, h, w = fold_chw(y)
        # the fold slot the concat axis lands in is split n ways (cat's channels are per input; the total is exact
        # when the inputs are equal along the axis, rounded otherwise)
        slot = 0 if axis == 1 else 2 if axis == r - 1 and r >= 4 else 1
        chw = [c, h, w]
        chw[slot] = max(1, round(chw[slot] / n))
        return "cat", {"n_inputs": n, "channels": chw[0], "h": chw[1], "w": chw[2]}

    def _gather(self, node: onnx.NodeProto, a: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        data, idx = node.input[0], node.input[1]
        if self.cls.get(data) == "const" and self.cls.get(idx) == "act":
            w = self.shape(data) or ()
            ix = self.need(idx, "indices")
            if len(w) != 2 or a.get("axis", 0) != 0:
                raise _NoSpec(f"Gather from a constant of shape {w} has no op type")
            return "embedding", {"num_embeddings": w[0], "embedding_dim": w[1], "tokens": math.prod(ix[1:])}
        if self.cls.get(data) == "act" and self.cls.get(idx) in ("const", "shape") and self.shape(idx) == ():
            return None  # x[:, i]: a select, a view in PyTorch
        raise _NoSpec("Gather (index_select) has no op type")
