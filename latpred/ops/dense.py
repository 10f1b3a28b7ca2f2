"""Dense ops: Linear, matmul/bmm and Embedding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..spec import ModuleSpec
from .base import Costs, OpType, Param

__all__ = ["Linear", "MatMul", "Embedding"]


class Linear(OpType):
    name = "linear"
    doc = "torch.nn.Linear over (batch, tokens, in_features); tokens=1 gives (batch, in_features)"
    torch_targets = (nn.Linear,)
    params = (
        Param("in_features", "int", minimum=1),
        Param("out_features", "int", minimum=1),
        Param("tokens", "int", default=1, minimum=1, doc="rows per sample (sequence length)"),
        Param("bias", "bool", default=True, feature="linear"),
    )

    def build(self, spec: ModuleSpec) -> nn.Module:
        p = spec.params
        return nn.Linear(p["in_features"], p["out_features"], p["bias"])

    def _lead(self, spec: ModuleSpec) -> tuple[int, ...]:
        t = spec.params["tokens"]
        return (spec.batch_size, t) if t > 1 else (spec.batch_size,)

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        return [(*self._lead(spec), spec.params["in_features"])]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        return (*self._lead(spec), spec.params["out_features"])

    def costs(self, spec: ModuleSpec) -> Costs:
        p = spec.params
        rows = spec.batch_size * p["tokens"]
        return Costs(
            flops=2.0 * rows * p["in_features"] * p["out_features"],
            weights=p["in_features"] * p["out_features"] + (p["out_features"] if p["bias"] else 0),
            in_elems=rows * p["in_features"],
            out_elems=rows * p["out_features"],
        )


class _MatMulModule(nn.Module):
    def __init__(self, rhs: torch.Tensor | None) -> None:
        super().__init__()
        self.rhs = None if rhs is None else nn.Parameter(rhs, requires_grad=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return torch.matmul(a, self.rhs if b is None else b)


class MatMul(OpType):
    name = "matmul"
    doc = ("torch.matmul / bmm: (batch, heads, m, k) @ (batch, heads, k, n); shared_rhs=true multiplies "
           "by one (k, n) matrix (a weight)")
    torch_targets = (torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm, torch.Tensor.__matmul__)
    params = (
        Param("heads", "int", default=1, minimum=1, doc="extra batch dimension (attention heads)"),
        Param("m", "int", minimum=1),
        Param("k", "int", minimum=1),
        Param("n", "int", minimum=1),
        Param("shared_rhs", "bool", default=False, feature="linear"),
    )

    def build(self, spec: ModuleSpec) -> nn.Module:
        p = spec.params
        return _MatMulModule(torch.randn(p["k"], p["n"]) if p["shared_rhs"] else None)

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        p = spec.params
        a = (spec.batch_size, p["heads"], p["m"], p["k"])
        return [a] if p["shared_rhs"] else [a, (spec.batch_size, p["heads"], p["k"], p["n"])]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        p = spec.params
        return (spec.batch_size, p["heads"], p["m"], p["n"])

    def costs(self, spec: ModuleSpec) -> Costs:
        p = spec.params
        bh = spec.batch_size * p["heads"]
        rhs = p["k"] * p["n"]
        return Costs(
            flops=2.0 * bh * p["m"] * p["k"] * p["n"],
            weights=rhs if p["shared_rhs"] else 0,
            in_elems=bh * p["m"] * p["k"] + (0 if p["shared_rhs"] else bh * rhs),
            out_elems=bh * p["m"] * p["n"],
        )


class Embedding(OpType):
    name = "embedding"
    doc = "torch.nn.Embedding lookup of (batch, tokens) indices"
    torch_targets = (nn.Embedding,)
    params = (
        Param("num_embeddings", "int", minimum=1),
        Param("embedding_dim", "int", minimum=1),
        Param("tokens", "int", minimum=1),
    )

    def build(self, spec: ModuleSpec) -> nn.Module:
        p = spec.params
        return nn.Embedding(p["num_embeddings"], p["embedding_dim"])

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        return [(spec.batch_size, spec.params["tokens"])]

    def make_inputs(self, spec: ModuleSpec, device: Any = "cpu") -> tuple[torch.Tensor, ...]:
        p = spec.params
        return (torch.randint(0, p["num_embeddings"], self.input_shapes(spec)[0], device=device),)

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        return (spec.batch_size, spec.params["tokens"], spec.params["embedding_dim"])

    def costs(self, spec: ModuleSpec) -> Costs:
        p = spec.params
        rows = spec.batch_size * p["tokens"]
        return Costs(flops=0.0, weights=p["num_embeddings"] * p["embedding_dim"], in_elems=rows,
                     out_elems=rows * p["embedding_dim"], weights_touched=rows * p["embedding_dim"])
