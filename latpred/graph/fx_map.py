"""Map one torch.fx call (module, function or method, with its tensor shapes) to an op spec.

:func:`map_call` answers ``(op type, params)`` for calls an op type of the registry covers, or
raises :class:`NoFit` with the reason it cannot (a non-square kernel, a scalar operand, ...); the
tracer then predicts the node with the generic fallback. Shapes here are *per sample*: the batch
dimension is already removed (a leading dimension that merges batch and heads is divided by the
batch), so a spec's ``batch_size`` condition can change without re-tracing.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import REGISTRY
from ..ops.pointwise import ACTIVATIONS, INPLACE_ACTIVATIONS
from .model_graph import fold_chw

__all__ = ["NoFit", "Call", "map_call", "leaf_module_types"]


class NoFit(Exception):
    """No op type covers this call; the message says why."""


@dataclass(frozen=True)
class Call:
    """One fx call: ``kind`` is call_module / call_function / call_method; ``ins`` are the shapes of the
    tensor arguments in order, per sample when ``batched[i]`` (they depend on the model input), whole
    otherwise (a weight or constant); ``outs`` the per-sample output shapes; ``module`` the called
    submodule (call_module); ``in_contiguous`` whether each tensor argument is contiguous."""

    kind: str
    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    ins: tuple[tuple[int, ...], ...]
    batched: tuple[bool, ...]
    outs: tuple[tuple[int, ...], ...]
    module: nn.Module | None = None
    in_contiguous: tuple[bool, ...] = ()

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[i] if i < len(self.args) else default

    def x(self) -> tuple[int, ...]:
        """Per-sample shape of the first tensor argument."""
        if not self.ins or not self.batched[0]:
            raise NoFit("its first tensor argument does not depend on the model input")
        return self.ins[0]


def _fold(sample_shape: Sequence[int]) -> dict[str, int]:
    """``channels``/``h``/``w`` of a per-sample shape, by :func:`~latpred.graph.model_graph.fold_chw`."""
    c, h, w = fold_chw((1, *sample_shape))
    return {"channels": c, "h": h, "w": w}


def _square(v: Any, what: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise NoFit(f"non-square {what} {tuple(v)}")
        v = v[0]
    if not isinstance(v, int):
        raise NoFit(f"{what} {v!r} is not an integer")
    return v


def _conv(c: Call, transposed: bool) -> dict[str, Any]:
    m = c.module
    if m.padding_mode != "zeros":
        raise NoFit(f"padding_mode={m.padding_mode!r}")
    cc, h, w = _chw3(c.x())
    padding = m.padding if isinstance(m.padding, str) else _square(m.padding, "padding")
    if padding == "valid":
        padding = 0
    p = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _square(m.kernel_size, "kernel"),
         "stride": _square(m.stride, "stride"), "padding": padding, "dilation": _square(m.dilation, "dilation"),
         "groups": m.groups, "bias": m.bias is not None, "h": h, "w": w}
    if transposed:
        p["output_padding"] = _square(m.output_padding, "output_padding")
    return p


def _chw3(s: tuple[int, ...]) -> tuple[int, int, int]:
    if len(s) != 3:
        raise NoFit(f"expects a (C, H, W) sample, got shape {s}")
    return s


def _act_fn(c: Call) -> str:
    if c.kind == "call_module":
        for fn, (cls, _) in ACTIVATIONS.items():
            if type(c.module) is cls:
                return fn
    fn = _ACT_FUNCS.get(c.target) if c.kind == "call_function" else _ACT_METHODS.get(c.target)
    if fn is None:
        raise NoFit("not an activation")
    return fn


def _inplace(c: Call) -> bool:
    """Whether the call writes into its first argument: ``inplace=True`` modules and keyword arguments,
    ``relu_``-style functions and methods, and augmented assignments (``x += y`` traces as ``operator.iadd``)."""
    if c.kind == "call_module":
        return bool(getattr(c.module, "inplace", False))
    if c.kind == "call_method":
        return str(c.target).endswith("_")
    if c.target in _INPLACE_FUNCS:
        return True
    return bool(c.kwargs.get("inplace", False))


def _activation(c: Call) -> dict[str, Any]:
    fn = _act_fn(c)
    return {"fn": fn, **_fold(c.x()), "inplace": _inplace(c) and fn in INPLACE_ACTIVATIONS}


def _elementwise(c: Call) -> dict[str, Any]:
    fn = _BIN_FUNCS.get(c.target) if c.kind == "call_function" else _BIN_METHODS.get(c.target)
    tensors = [a for a in c.args[:2] if isinstance(a, torch.fx.Node)]
    if len(tensors) < 2 or len(c.ins) < 2:
        raise NoFit(f"{fn} with a scalar operand")
    if not (c.batched[0] or c.batched[1]):
        raise NoFit("neither operand depends on the model input")
    out = c.outs[0]
    sizes = [math.prod(s) for s in c.ins[:2]]
    # in place only when the written operand is the full-size one (an in-place op cannot grow its target)
    inplace = _inplace(c) and c.batched[0] and sizes[0] == math.prod(out)
    return {"fn": fn, **_fold(out), "broadcast": min(sizes) < math.prod(out), "inplace": bool(inplace)}


def _norm_tokens(c: Call, dim_shape: Any) -> dict[str, Any]:
    s = c.x()
    dims = [dim_shape] if isinstance(dim_shape, int) else list(dim_shape)
    if len(dims) != 1:
        raise NoFit(f"layer norm over {len(dims)} dimensions")
    return {"tokens": max(1, math.prod(s[:-1])), "dim": s[-1]}


def _layernorm(c: Call) -> dict[str, Any]:
    if c.kind == "call_module":
        return _norm_tokens(c, c.module.normalized_shape)
    return _norm_tokens(c, c.arg(1, "normalized_shape"))


def _pool(c: Call, fn_params: tuple[str, ...]) -> dict[str, Any]:
    if c.kind == "call_module":
        m = c.module
        k, s, pad = m.kernel_size, m.stride, m.padding
        dil, ceil = getattr(m, "dilation", 1), m.ceil_mode
    else:
        k = c.arg(1, "kernel_size")
        s = c.arg(2, "stride") or k
        pad = c.arg(3, "padding", 0)
        dil = c.arg(4, "dilation", 1) if "dilation" in fn_params else 1
        ceil = c.arg(5 if "dilation" in fn_params else 4, "ceil_mode", False)
    if _square(dil, "dilation") != 1:
        raise NoFit("dilated pooling")
    cc, h, w = _chw3(c.x())
    return {"channels": cc, "h": h, "w": w, "kernel_size": _square(k, "kernel"), "stride": _square(s, "stride"),
            "padding": _square(pad, "padding"), "ceil_mode": bool(ceil)}


def _adaptive(c: Call) -> dict[str, Any]:
    if c.kind == "call_method":  # x.mean((2, 3)) on a (C, H, W) sample
        dims = c.arg(1, "dim")
        dims = sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims]))
        if dims != [2, 3] or len(c.x()) != 3:
            raise NoFit(f"mean over dims {dims}")
        size = 1
    else:
        size = c.module.output_size if c.kind == "call_module" else c.arg(1, "output_size")
        if isinstance(size, (tuple, list)) and None in size:
            raise NoFit(f"output_size {size}")
        size = _square(size, "output_size")
    cc, h, w = _chw3(c.x())
    return {"channels": cc, "h": h, "w": w, "output_size": size}


def _softmax(c: Call) -> dict[str, Any]:
    s = c.x()
    return {"rows": max(1, math.prod(s[:-1])), "cols": s[-1] if s else 1}


def _matmul(c: Call) -> dict[str, Any]:
    if len(c.ins) < 2:
        raise NoFit("matmul needs two tensors")
    a, b = c.x(), c.ins[1]
    if len(a) < 2 or len(b) < 2 or b[-2] != a[-1]:
        raise NoFit(f"operand shapes {a} @ {b}")
    m, k = a[-2], a[-1]
    heads = math.prod(a[:-2]) if len(a) > 2 else 1
    if not c.batched[1]:  # a weight shared by the whole batch
        if len(b) != 2:
            raise NoFit(f"a constant right operand of shape {b}")
        return {"heads": heads, "m": m, "k": k, "n": b[-1], "shared_rhs": True}
    if b[:-2] != a[:-2]:
        raise NoFit(f"operand sample shapes {a} @ {b}")
    return {"heads": heads, "m": m, "k": k, "n": b[-1], "shared_rhs": False}


def _sdpa(c: Call) -> dict[str, Any]:
    q, kk = c.x(), c.ins[1] if len(c.ins) > 1 else ()
    if len(q) != 3 or len(kk) != 3:
        raise NoFit("sdpa expects (heads, tokens, head_dim) samples")
    if c.arg(3, "attn_mask") is not None:
        raise NoFit("sdpa with an attention mask")
    return {"heads": q[0], "q_tokens": q[1], "kv_tokens": kk[1], "head_dim": q[2], "causal": bool(c.arg(5, "is_causal", False))}


def _mha(c: Call) -> dict[str, Any]:
    m = c.module
    q, k, v = (c.args + (None, None, None))[:3]
    if not (q is k is v) or q is None:
        raise NoFit("cross-attention (query, key and value differ)")
    if not m.batch_first:
        raise NoFit("batch_first=False (sequence-first layout)")
    if c.kwargs.get("attn_mask") is not None or c.kwargs.get("key_padding_mask") is not None:
        raise NoFit("attention with a mask")
    s = c.x()
    return {"embed_dim": m.embed_dim, "heads": m.num_heads, "tokens": s[0]}


def _flatten(c: Call) -> dict[str, Any]:
    contiguous = c.in_contiguous[0] if c.in_contiguous else True
    return {**_fold(c.x()), "copy": not contiguous}


def _copy(c: Call) -> dict[str, Any]:
    return {**_fold(c.x()), "copy": True}


def _cat(c: Call) -> dict[str, Any]:
    tensors = c.arg(0, "tensors")
    n = len(tensors) if isinstance(tensors, (list, tuple)) else 1
    f = _fold(c.outs[0])
    return {"n_inputs": n, "channels": max(1, round(f["channels"] / n)), "h": f["h"], "w": f["w"]}


def _dropout(c: Call) -> dict[str, Any]:
    p = c.module.p if c.kind == "call_module" else c.arg(1, "p", 0.5)
    return {**_fold(c.x()), "p": float(p)}


def _chw(c: Call) -> dict[str, Any]:
    cc, h, w = _chw3(c.x())
    return {"channels": cc, "h": h, "w": w}


_ACT_FUNCS: dict[Any, str] = {F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu", F.relu6: "relu6",
                              F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
                              torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
                "tanh_": "tanh"}
#: functions that write into their first argument
_INPLACE_FUNCS = {F.relu_, torch.relu_, operator.iadd, operator.imul, operator.isub, operator.itruediv}
_BIN_FUNCS: dict[Any, str] = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.mul: "mul",
                              operator.imul: "mul", torch.mul: "mul", operator.sub: "sub", operator.isub: "sub",
                              torch.sub: "sub", operator.truediv: "div", operator.itruediv: "div", torch.div: "div"}
_BIN_METHODS = {"add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "sub": "sub", "sub_": "sub", "div": "div",
                "div_": "div"}

#: (op type, parameter function) per module class
_MODULES: dict[type, tuple[str, Callable[[Call], dict[str, Any]]]] = {
    nn.Conv2d: ("conv2d", lambda c: _conv(c, False)),
    nn.ConvTranspose2d: ("conv_transpose2d", lambda c: _conv(c, True)),
    nn.Linear: ("linear", lambda c: {"in_features": c.module.in_features, "out_features": c.module.out_features,
                                     "tokens": max(1, math.prod(c.x()[:-1])), "bias": c.module.bias is not None}),
    nn.BatchNorm2d: ("batchnorm2d", _chw),
    nn.LayerNorm: ("layernorm", _layernorm),
    nn.GroupNorm: ("groupnorm", lambda c: {"groups": c.module.num_groups, **_chw(c)}),
    nn.MaxPool2d: ("maxpool2d", lambda c: _pool(c, ())),
    nn.AvgPool2d: ("avgpool2d", lambda c: _pool(c, ())),
    nn.AdaptiveAvgPool2d: ("adaptive_avgpool2d", _adaptive),
    nn.Dropout: ("dropout", _dropout),
    nn.Dropout2d: ("dropout", _dropout),
    nn.Flatten: ("flatten", _flatten),
    nn.Softmax: ("softmax", _softmax),
    nn.MultiheadAttention: ("mha", _mha),
    nn.Embedding: ("embedding", lambda c: {"num_embeddings": c.module.num_embeddings,
                                           "embedding_dim": c.module.embedding_dim, "tokens": max(1, math.prod(c.x()))}),
    **{cls: ("activation", _activation) for cls, _ in ACTIVATIONS.values()},
}

_FUNCTIONS: dict[Any, tuple[str, Callable[[Call], dict[str, Any]]]] = {
    **{f: ("activation", _activation) for f in _ACT_FUNCS},
    **{f: ("elementwise", _elementwise) for f in _BIN_FUNCS},
    F.layer_norm: ("layernorm", _layernorm),
    F.max_pool2d: ("maxpool2d", lambda c: _pool(c, ("dilation",))),
    F.avg_pool2d: ("avgpool2d", lambda c: _pool(c, ())),
    F.adaptive_avg_pool2d: ("adaptive_avgpool2d", _adaptive),
    F.dropout: ("dropout", _dropout),
    torch.flatten: ("flatten", _flatten),
    torch.cat: ("cat", _cat), torch.concat: ("cat", _cat),
    F.softmax: ("softmax", _softmax), torch.softmax: ("softmax", _softmax),
    torch.matmul: ("matmul", _matmul), torch.bmm: ("matmul", _matmul), operator.matmul: ("matmul", _matmul),
    F.scaled_dot_product_attention: ("sdpa", _sdpa),
    torch.reshape: ("flatten", _copy),  # only reached when the reshape copies (a view is a view node)
}

_METHODS: dict[str, tuple[str, Callable[[Call], dict[str, Any]]]] = {
    **{m: ("activation", _activation) for m in _ACT_METHODS},
    **{m: ("elementwise", _elementwise) for m in _BIN_METHODS},
    "flatten": ("flatten", _flatten), "softmax": ("softmax", _softmax), "matmul": ("matmul", _matmul),
    "bmm": ("matmul", _matmul), "mean": ("adaptive_avgpool2d", _adaptive),
    "contiguous": ("flatten", _copy), "reshape": ("flatten", _copy), "view": ("flatten", _copy),
    "clone": ("flatten", _copy),
}

#: calls that copy a tensor only when their input is not contiguous (otherwise they return a view)
COPY_WHEN_STRIDED = {("call_method", "contiguous"), ("call_method", "reshape"), ("call_function", torch.reshape),
                     ("call_method", "view")}


def leaf_module_types() -> frozenset[type]:
    """Module classes the tracer keeps as leaves because an op type covers them."""
    return frozenset(_MODULES)


def map_call(c: Call) -> tuple[str, dict[str, Any]]:
    """The op type and parameters of ``c``; raises :class:`NoFit` (with the reason) when none fits."""
    if c.kind == "call_module":
        entry = _MODULES.get(type(c.module))
        where = f"module {type(c.module).__name__}"
    elif c.kind == "call_function":
        entry = _FUNCTIONS.get(c.target)
        where = f"function {getattr(c.target, '__name__', c.target)}"
    else:
        entry = _METHODS.get(c.target)
        where = f"method .{c.target}()"
    if entry is None:
        raise NoFit(f"no op type covers {where}")
    op, fn = entry
    if op not in REGISTRY:
        raise NoFit(f"op type {op!r} is not registered")
    try:
        return op, fn(c)
    except NoFit as e:
        raise NoFit(f"{where}: {e}") from None
    except (AttributeError, IndexError, TypeError) as e:
        raise NoFit(f"{where}: unexpected arguments ({type(e).__name__}: {e})") from None
