"""The op registry: one :class:`OpType` per supported module type."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UnknownOpError
from ..spec import ModuleSpec
from .attention import MultiheadAttention, ScaledDotProductAttention
from .base import Costs, OpType, Param
from .conv import Conv2d, ConvTranspose2d
from .dense import Embedding, Linear, MatMul
from .norm import BatchNorm2d, GroupNorm, LayerNorm
from .pointwise import ACTIVATIONS, Activation, Cat, Dropout, Elementwise, Flatten, Softmax
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = ["REGISTRY", "get_op", "op_names", "resolve_spec", "OpType", "Param", "Costs", "ACTIVATIONS"]

_ALL: tuple[OpType, ...] = (
    Conv2d(), ConvTranspose2d(), Linear(), BatchNorm2d(), LayerNorm(), GroupNorm(), Activation(),
    MaxPool2d(), AvgPool2d(), AdaptiveAvgPool2d(), Dropout(), Flatten(), Elementwise(), Cat(),
    MatMul(), Softmax(), ScaledDotProductAttention(), MultiheadAttention(), Embedding(),
)

#: op name -> op type, read-only
REGISTRY: Mapping[str, OpType] = {op.name: op for op in _ALL}


def op_names() -> list[str]:
    """Registered op type names, in registry order."""
    return list(REGISTRY)


def get_op(name: str) -> OpType:
    """The op type called ``name``; :class:`UnknownOpError` lists the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOpError(f"unknown op type {name!r}; known: {', '.join(REGISTRY)}") from None


def resolve_spec(spec: ModuleSpec) -> ModuleSpec:
    """The spec with its parameters completed and validated by its op type."""
    op = get_op(spec.op)
    return ModuleSpec(spec.op, op.resolve(spec.params), spec.batch_size, spec.dtype, spec.utilization,
                      spec.threads, spec.extra)
