"""Convolutions: Conv2d (grouped, depthwise, dilated, strided) and ConvTranspose2d."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import SpecError
from ..spec import ModuleSpec
from .base import Costs, OpType, Param, conv_out

__all__ = ["Conv2d", "ConvTranspose2d"]

_SPATIAL = (
    Param("h", "int", minimum=1, doc="input height"),
    Param("w", "int", minimum=1, tie="h", doc="input width (default: equal to h)"),
)


def _groups(values: dict[str, Any], name: str) -> None:
    g = values.get("groups")
    if g == "depthwise":
        values["groups"] = values["in_channels"]
    elif isinstance(g, str):
        raise SpecError(f"{name}.groups must be an integer or 'depthwise', got {g!r}")


class Conv2d(OpType):
    name = "conv2d"
    doc = "torch.nn.Conv2d; groups='depthwise' sets groups=in_channels; padding='same' keeps size at stride 1"
    torch_targets = (nn.Conv2d,)
    params = (
        Param("in_channels", "int", minimum=1, feature="log_align"),
        Param("out_channels", "int", minimum=1, feature="log_align"),
        Param("kernel_size", "int", minimum=1),
        Param("stride", "int", default=1, minimum=1),
        Param("padding", "int", default="same", minimum=0, symbols=("same",),
              doc="'same' = dilation*(kernel_size-1)//2"),
        Param("dilation", "int", default=1, minimum=1),
        Param("groups", "int", default=1, minimum=1, symbols=("depthwise",)),
        Param("bias", "bool", default=False, feature="linear"),
        *_SPATIAL,
    )

    def _resolve_symbols(self, values: dict[str, Any]) -> dict[str, Any]:
        _groups(values, self.name)
        if values.get("padding") == "same":
            values["padding"] = values["dilation"] * (values["kernel_size"] - 1) // 2
        return values

    def check(self, v: Mapping[str, Any]) -> None:
        for c in ("in_channels", "out_channels"):
            if v[c] % v["groups"]:
                raise SpecError(f"conv2d.groups={v['groups']} must divide {c}={v[c]}")
        for ax in ("h", "w"):
            if conv_out(v[ax], v["kernel_size"], v["stride"], v["padding"], v["dilation"]) < 1:
                raise SpecError(
                    f"conv2d.kernel_size={v['kernel_size']} (dilation {v['dilation']}) is larger than the "
                    f"padded input: {ax}={v[ax]} + 2*padding={v['padding']}")

    def out_hw(self, p: Mapping[str, Any]) -> tuple[int, int]:
        return tuple(conv_out(p[a], p["kernel_size"], p["stride"], p["padding"], p["dilation"])
                     for a in ("h", "w"))  # type: ignore[return-value]

    def build(self, spec: ModuleSpec) -> nn.Module:
        p = spec.params
        return nn.Conv2d(p["in_channels"], p["out_channels"], p["kernel_size"], p["stride"],
                         p["padding"], p["dilation"], p["groups"], p["bias"])

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        p = spec.params
        return [(spec.batch_size, p["in_channels"], p["h"], p["w"])]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        return (spec.batch_size, spec.params["out_channels"], *self.out_hw(spec.params))

    def costs(self, spec: ModuleSpec) -> Costs:
        p = spec.params
        b = spec.batch_size
        oh, ow = self.out_hw(p)
        k2 = p["kernel_size"] ** 2
        cin_g = p["in_channels"] // p["groups"]
        weights = p["out_channels"] * cin_g * k2 + (p["out_channels"] if p["bias"] else 0)
        return Costs(
            flops=2.0 * b * p["out_channels"] * oh * ow * cin_g * k2,
            weights=weights,
            in_elems=b * p["in_channels"] * p["h"] * p["w"],
            out_elems=b * p["out_channels"] * oh * ow,
        )


class ConvTranspose2d(OpType):
    name = "conv_transpose2d"
    doc = "torch.nn.ConvTranspose2d (upsampling convolution)"
    torch_targets = (nn.ConvTranspose2d,)
    params = (
        Param("in_channels", "int", minimum=1, feature="log_align"),
        Param("out_channels", "int", minimum=1, feature="log_align"),
        Param("kernel_size", "int", minimum=1),
        Param("stride", "int", default=1, minimum=1),
        Param("padding", "int", default=0, minimum=0),
        Param("output_padding", "int", default=0, minimum=0),
        Param("groups", "int", default=1, minimum=1, symbols=("depthwise",)),
        Param("dilation", "int", default=1, minimum=1),
        Param("bias", "bool", default=False, feature="linear"),
        *_SPATIAL,
    )

    def _resolve_symbols(self, values: dict[str, Any]) -> dict[str, Any]:
        _groups(values, self.name)
        return values

    def _out(self, size: int, p: Mapping[str, Any]) -> int:
        return ((size - 1) * p["stride"] - 2 * p["padding"] + p["dilation"] * (p["kernel_size"] - 1)
                + p["output_padding"] + 1)

    def check(self, v: Mapping[str, Any]) -> None:
        for c in ("in_channels", "out_channels"):
            if v[c] % v["groups"]:
                raise SpecError(f"conv_transpose2d.groups={v['groups']} must divide {c}={v[c]}")
        if v["output_padding"] >= max(v["stride"], v["dilation"]):
            raise SpecError(
                f"conv_transpose2d.output_padding={v['output_padding']} must be smaller than stride "
                f"or dilation ({v['stride']}, {v['dilation']})")
        for ax in ("h", "w"):
            if self._out(v[ax], v) < 1:
                raise SpecError(f"conv_transpose2d.padding={v['padding']} leaves no output along {ax}")

    def build(self, spec: ModuleSpec) -> nn.Module:
        p = spec.params
        return nn.ConvTranspose2d(p["in_channels"], p["out_channels"], p["kernel_size"], p["stride"],
                                  p["padding"], p["output_padding"], p["groups"], p["bias"], p["dilation"])

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        p = spec.params
        return [(spec.batch_size, p["in_channels"], p["h"], p["w"])]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        p = spec.params
        return (spec.batch_size, p["out_channels"], self._out(p["h"], p), self._out(p["w"], p))

    def costs(self, spec: ModuleSpec) -> Costs:
        p = spec.params
        b = spec.batch_size
        k2 = p["kernel_size"] ** 2
        cout_g = p["out_channels"] // p["groups"]
        out = self.output_shape(spec)
        return Costs(
            flops=2.0 * b * p["in_channels"] * p["h"] * p["w"] * cout_g * k2,
            weights=p["in_channels"] * cout_g * k2 + (p["out_channels"] if p["bias"] else 0),
            in_elems=b * p["in_channels"] * p["h"] * p["w"],
            out_elems=float(torch.Size(out).numel()),
        )
