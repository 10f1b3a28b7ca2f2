"""Normalisation layers: BatchNorm2d, LayerNorm, GroupNorm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import SpecError
from ..spec import ModuleSpec
from .base import Costs, OpType, Param

__all__ = ["BatchNorm2d", "LayerNorm", "GroupNorm"]


class _Chw(OpType):
    """Shared shape logic of ops over a (batch, channels, h, w) tensor with unchanged output."""

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        p = spec.params
        return [(spec.batch_size, p["channels"], p["h"], p["w"])]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        return self.input_shapes(spec)[0]

    def _elems(self, spec: ModuleSpec) -> int:
        p = spec.params
        return spec.batch_size * p["channels"] * p["h"] * p["w"]


CHW = (
    Param("channels", "int", minimum=1),
    Param("h", "int", minimum=1),
    Param("w", "int", minimum=1, tie="h", doc="default: equal to h"),
)


class BatchNorm2d(_Chw):
    name = "batchnorm2d"
    doc = "torch.nn.BatchNorm2d in eval mode (running statistics)"
    torch_targets = (nn.BatchNorm2d,)
    params = CHW

    def build(self, spec: ModuleSpec) -> nn.Module:
        return nn.BatchNorm2d(spec.params["channels"])

    def costs(self, spec: ModuleSpec) -> Costs:
        n = self._elems(spec)
        return Costs(flops=2.0 * n, weights=4 * spec.params["channels"], in_elems=n, out_elems=n)


class GroupNorm(_Chw):
    name = "groupnorm"
    doc = "torch.nn.GroupNorm"
    torch_targets = (nn.GroupNorm,)
    params = (Param("groups", "int", minimum=1), *CHW)

    def check(self, v: Mapping[str, Any]) -> None:
        if v["channels"] % v["groups"]:
            raise SpecError(f"groupnorm.groups={v['groups']} must divide channels={v['channels']}")

    def build(self, spec: ModuleSpec) -> nn.Module:
        return nn.GroupNorm(spec.params["groups"], spec.params["channels"])

    def costs(self, spec: ModuleSpec) -> Costs:
        n = self._elems(spec)
        return Costs(flops=8.0 * n, weights=2 * spec.params["channels"], in_elems=n, out_elems=n)


class LayerNorm(OpType):
    name = "layernorm"
    doc = "torch.nn.LayerNorm over the last dimension of (batch, tokens, dim)"
    torch_targets = (nn.LayerNorm,)
    params = (
        Param("tokens", "int", minimum=1),
        Param("dim", "int", minimum=1),
    )

    def build(self, spec: ModuleSpec) -> nn.Module:
        return nn.LayerNorm(spec.params["dim"])

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        return [(spec.batch_size, spec.params["tokens"], spec.params["dim"])]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        return self.input_shapes(spec)[0]

    def costs(self, spec: ModuleSpec) -> Costs:
        n = spec.batch_size * spec.params["tokens"] * spec.params["dim"]
        return Costs(flops=8.0 * n, weights=2 * spec.params["dim"], in_elems=n, out_elems=n)
