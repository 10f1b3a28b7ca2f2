"""Element-wise and layout ops: activations, add/mul, dropout, flatten/reshape, cat, softmax."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..spec import ModuleSpec
from .base import TORCH_DTYPES, Costs, OpType, Param
from .norm import CHW, _Chw

__all__ = ["Activation", "Elementwise", "Dropout", "Flatten", "Cat", "Softmax", "ACTIVATIONS", "INPLACE_ACTIVATIONS"]

#: activation name -> (module class, flops per element)
ACTIVATIONS: dict[str, tuple[type[nn.Module], float]] = {
    "relu": (nn.ReLU, 1.0),
    "relu6": (nn.ReLU6, 2.0),
    "gelu": (nn.GELU, 8.0),
    "silu": (nn.SiLU, 4.0),
    "hardswish": (nn.Hardswish, 4.0),
    "hardsigmoid": (nn.Hardsigmoid, 3.0),
    "sigmoid": (nn.Sigmoid, 4.0),
    "tanh": (nn.Tanh, 4.0),
}


#: activation name -> its in-place form (GELU has none)
INPLACE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu_, "relu6": lambda x: F.relu6(x, inplace=True), "silu": lambda x: F.silu(x, inplace=True),
    "hardswish": lambda x: F.hardswish(x, inplace=True), "hardsigmoid": lambda x: F.hardsigmoid(x, inplace=True),
    "sigmoid": torch.sigmoid_, "tanh": torch.tanh_,
}
#: in-place inputs are shifted to [8, ...): every in-place activation then maps them to themselves, to a fixed
#: point, or (tanh) towards 0 no faster than 1/sqrt(calls), so repeating the call in a timing window never
#: drifts into denormals (SiLU or Hardswish on values near 0 would halve them on every call)
_INPLACE_SHIFT = 8.0

_INPLACE_DOC = ("writes into its input (``nn.ReLU(inplace=True)``, ``x += y``): no output is allocated, which "
                "above 32 MiB saves a fresh mmap and its page faults on every call (a ReLU over 37 MiB took "
                "0.56 ms in place against 10.9 ms out of place on the 2-core CPU)")


class _InPlace(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Activation(_Chw):
    name = "activation"
    doc = "element-wise activation (ReLU, ReLU6, GELU, SiLU, Hardswish, Hardsigmoid, Sigmoid, Tanh), out of place or in place"
    torch_targets = tuple(cls for cls, _ in ACTIVATIONS.values())
    params = (Param("fn", "choice", choices=tuple(ACTIVATIONS), feature="onehot"), *CHW,
              Param("inplace", "bool", default=False, feature="linear", doc=_INPLACE_DOC))

    def check(self, v: Mapping[str, Any]) -> None:
        if v["inplace"] and v["fn"] not in INPLACE_ACTIVATIONS:
            raise SpecError(f"activation {v['fn']!r} has no in-place form; in-place ones: {', '.join(INPLACE_ACTIVATIONS)}")

    def build(self, spec: ModuleSpec) -> nn.Module:
        if spec.params["inplace"]:
            return _InPlace(INPLACE_ACTIVATIONS[spec.params["fn"]])
        return ACTIVATIONS[spec.params["fn"]][0]()

    def make_inputs(self, spec: ModuleSpec, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        (x,) = super().make_inputs(spec, device)
        return (x.abs_().add_(_INPLACE_SHIFT),) if spec.params["inplace"] else (x,)

    def costs(self, spec: ModuleSpec) -> Costs:
        n = self._elems(spec)
        return Costs(flops=ACTIVATIONS[spec.params["fn"]][1] * n, weights=0, in_elems=n, out_elems=n)


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "mul": torch.mul, "sub": torch.sub, "div": torch.div,
}


_INPLACE_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.Tensor.add_, "mul": torch.Tensor.mul_, "sub": torch.Tensor.sub_, "div": torch.Tensor.div_,
}


class _Binary(nn.Module):
    def __init__(self, fn: str, inplace: bool = False) -> None:
        super().__init__()
        self.fn = (_INPLACE_BINARY if inplace else _BINARY)[fn]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fn(a, b)


class Elementwise(_Chw):
    name = "elementwise"
    doc = "binary element-wise op (residual add, SE-style mul); broadcast=true uses a (batch, c, 1, 1) operand"
    params = (
        Param("fn", "choice", choices=tuple(_BINARY), feature="onehot"),
        *CHW,
        Param("broadcast", "bool", default=False, feature="linear"),
        Param("inplace", "bool", default=False, feature="linear", doc=_INPLACE_DOC + "; the first operand is written"),
    )

    def build(self, spec: ModuleSpec) -> nn.Module:
        return _Binary(spec.params["fn"], spec.params["inplace"])

    def make_inputs(self, spec: ModuleSpec, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        a, b = super().make_inputs(spec, device)
        if spec.params["inplace"] and spec.params["fn"] in ("mul", "div"):
            # a timing window repeats the call on the same tensor: a factor of +-1 keeps its magnitude
            # (random factors would shrink it into denormals, a slow path real models never take)
            b = torch.where(b < 0, -1.0, 1.0).to(dtype=TORCH_DTYPES[spec.dtype])
        return a, b

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        a = super().input_shapes(spec)[0]
        return [a, (a[0], a[1], 1, 1) if spec.params["broadcast"] else a]

    def costs(self, spec: ModuleSpec) -> Costs:
        n = self._elems(spec)
        second = spec.batch_size * spec.params["channels"] if spec.params["broadcast"] else n
        return Costs(flops=float(n), weights=0, in_elems=n + second, out_elems=n)


class Dropout(_Chw):
    name = "dropout"
    doc = "torch.nn.Dropout in eval mode (identity; measures the call overhead)"
    torch_targets = (nn.Dropout, nn.Dropout2d)
    params = (*CHW, Param("p", "float", default=0.5, minimum=0.0, feature="none"))

    def build(self, spec: ModuleSpec) -> nn.Module:
        return nn.Dropout(spec.params["p"])

    def costs(self, spec: ModuleSpec) -> Costs:
        return Costs(flops=0.0, weights=0, in_elems=0, out_elems=0)


class _Flatten(nn.Module):
    def __init__(self, transposed: bool) -> None:
        super().__init__()
        self.transposed = transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            x = x.transpose(1, 3)  # a non-contiguous view: reshape must copy
        return x.reshape(x.shape[0], -1)


class Flatten(_Chw):
    name = "flatten"
    doc = "flatten / reshape of (batch, c, h, w) to (batch, c*h*w); copy=true reshapes a non-contiguous view"
    torch_targets = (nn.Flatten, torch.flatten, torch.reshape)
    params = (*CHW, Param("copy", "bool", default=False, feature="linear"))

    def build(self, spec: ModuleSpec) -> nn.Module:
        return _Flatten(spec.params["copy"])

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        p = spec.params
        return (spec.batch_size, p["channels"] * p["h"] * p["w"])

    def costs(self, spec: ModuleSpec) -> Costs:
        n = self._elems(spec) if spec.params["copy"] else 0
        return Costs(flops=0.0, weights=0, in_elems=n, out_elems=n)


class _Cat(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class Cat(OpType):
    name = "cat"
    doc = "torch.cat of n_inputs (batch, channels, h, w) tensors along the channel dimension"
    torch_targets = (torch.cat, torch.concat)
    params = (Param("n_inputs", "int", default=2, minimum=1), *CHW)

    def build(self, spec: ModuleSpec) -> nn.Module:
        return _Cat()

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        p = spec.params
        return [(spec.batch_size, p["channels"], p["h"], p["w"])] * p["n_inputs"]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        p = spec.params
        return (spec.batch_size, p["channels"] * p["n_inputs"], p["h"], p["w"])

    def costs(self, spec: ModuleSpec) -> Costs:
        p = spec.params
        n = spec.batch_size * p["channels"] * p["n_inputs"] * p["h"] * p["w"]
        return Costs(flops=0.0, weights=0, in_elems=n, out_elems=n)


class _Softmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=-1)


class Softmax(OpType):
    name = "softmax"
    doc = "softmax over the last dimension of (batch, rows, cols)"
    torch_targets = (nn.Softmax, F.softmax, torch.softmax, torch.Tensor.softmax)
    params = (Param("rows", "int", minimum=1), Param("cols", "int", minimum=1))

    def build(self, spec: ModuleSpec) -> nn.Module:
        return _Softmax()

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        return [(spec.batch_size, spec.params["rows"], spec.params["cols"])]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        return self.input_shapes(spec)[0]

    def costs(self, spec: ModuleSpec) -> Costs:
        n = spec.batch_size * spec.params["rows"] * spec.params["cols"]
        return Costs(flops=5.0 * n, weights=0, in_elems=n, out_elems=n)
