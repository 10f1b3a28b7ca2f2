"""Pooling: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import SpecError
from ..spec import ModuleSpec
from .base import Costs, Param, conv_out
from .norm import CHW, _Chw

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


class _Pool(_Chw):
    module: type[nn.Module] = nn.MaxPool2d
    params = (
        *CHW,
        Param("kernel_size", "int", minimum=1),
        Param("stride", "int", minimum=1, tie="kernel_size", doc="default: kernel_size"),
        Param("padding", "int", default=0, minimum=0),
        Param("ceil_mode", "bool", default=False, feature="linear"),
    )

    def check(self, v: Mapping[str, Any]) -> None:
        if 2 * v["padding"] > v["kernel_size"]:
            raise SpecError(f"{self.name}.padding={v['padding']} must be at most half of kernel_size={v['kernel_size']}")
        for ax in ("h", "w"):
            if conv_out(v[ax], v["kernel_size"], v["stride"], v["padding"]) < 1:
                raise SpecError(f"{self.name}.kernel_size={v['kernel_size']} is larger than the padded input: "
                                f"{ax}={v[ax]} + 2*padding={v['padding']}")

    def _out(self, size: int, p: Mapping[str, Any]) -> int:
        k, s, pad = p["kernel_size"], p["stride"], p["padding"]
        if not p["ceil_mode"]:
            return conv_out(size, k, s, pad)
        out = -(-(size + 2 * pad - k) // s) + 1
        if (out - 1) * s >= size + pad:  # PyTorch: the last window must start inside the input
            out -= 1
        return out

    def build(self, spec: ModuleSpec) -> nn.Module:
        p = spec.params
        return self.module(p["kernel_size"], p["stride"], p["padding"], ceil_mode=p["ceil_mode"])

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        p = spec.params
        return (spec.batch_size, p["channels"], self._out(p["h"], p), self._out(p["w"], p))

    def costs(self, spec: ModuleSpec) -> Costs:
        b, c, oh, ow = self.output_shape(spec)
        out = b * c * oh * ow
        return Costs(flops=float(out * spec.params["kernel_size"] ** 2), weights=0,
                     in_elems=self._elems(spec), out_elems=out)


class MaxPool2d(_Pool):
    name = "maxpool2d"
    doc = "torch.nn.MaxPool2d"
    torch_targets = (nn.MaxPool2d,)
    module = nn.MaxPool2d


class AvgPool2d(_Pool):
    name = "avgpool2d"
    doc = "torch.nn.AvgPool2d"
    torch_targets = (nn.AvgPool2d,)
    module = nn.AvgPool2d


class AdaptiveAvgPool2d(_Chw):
    name = "adaptive_avgpool2d"
    doc = "torch.nn.AdaptiveAvgPool2d to a square output_size (1 = global average pooling)"
    torch_targets = (nn.AdaptiveAvgPool2d,)
    params = (*CHW, Param("output_size", "int", default=1, minimum=1))

    def build(self, spec: ModuleSpec) -> nn.Module:
        return nn.AdaptiveAvgPool2d(spec.params["output_size"])

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        o = spec.params["output_size"]
        return (spec.batch_size, spec.params["channels"], o, o)

    def costs(self, spec: ModuleSpec) -> Costs:
        n = self._elems(spec)
        o = spec.params["output_size"]
        return Costs(flops=float(n), weights=0, in_elems=n, out_elems=spec.batch_size * spec.params["channels"] * o * o)
