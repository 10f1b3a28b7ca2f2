"""Attention: scaled-dot-product attention and nn.MultiheadAttention (self-attention)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..spec import ModuleSpec
from .base import Costs, OpType, Param

__all__ = ["ScaledDotProductAttention", "MultiheadAttention"]


class _Sdpa(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


class ScaledDotProductAttention(OpType):
    name = "sdpa"
    doc = "F.scaled_dot_product_attention on (batch, heads, tokens, head_dim) q/k/v"
    torch_targets = (F.scaled_dot_product_attention,)
    params = (
        Param("heads", "int", minimum=1),
        Param("q_tokens", "int", minimum=1),
        Param("kv_tokens", "int", minimum=1, tie="q_tokens", doc="default: q_tokens"),
        Param("head_dim", "int", minimum=1),
        Param("causal", "bool", default=False, feature="linear"),
    )

    def build(self, spec: ModuleSpec) -> nn.Module:
        return _Sdpa(spec.params["causal"])

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        p = spec.params
        b, h, d = spec.batch_size, p["heads"], p["head_dim"]
        return [(b, h, p["q_tokens"], d), (b, h, p["kv_tokens"], d), (b, h, p["kv_tokens"], d)]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        return self.input_shapes(spec)[0]

    def costs(self, spec: ModuleSpec) -> Costs:
        p = spec.params
        bh = spec.batch_size * p["heads"]
        q, kv, d = p["q_tokens"], p["kv_tokens"], p["head_dim"]
        return Costs(flops=bh * (4.0 * q * kv * d + 5.0 * q * kv), weights=0,
                     in_elems=bh * (q + 2 * kv) * d, out_elems=bh * q * d)


class _SelfAttention(nn.Module):
    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class MultiheadAttention(OpType):
    name = "mha"
    doc = "torch.nn.MultiheadAttention self-attention (batch_first, need_weights=False), projections included"
    torch_targets = (nn.MultiheadAttention,)
    params = (
        Param("embed_dim", "int", minimum=1),
        Param("heads", "int", minimum=1),
        Param("tokens", "int", minimum=1),
    )

    def check(self, v: Mapping[str, Any]) -> None:
        if v["embed_dim"] % v["heads"]:
            raise SpecError(f"mha.heads={v['heads']} must divide embed_dim={v['embed_dim']}")

    def build(self, spec: ModuleSpec) -> nn.Module:
        return _SelfAttention(spec.params["embed_dim"], spec.params["heads"])

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        return [(spec.batch_size, spec.params["tokens"], spec.params["embed_dim"])]

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        return self.input_shapes(spec)[0]

    def costs(self, spec: ModuleSpec) -> Costs:
        p = spec.params
        b, t, e = spec.batch_size, p["tokens"], p["embed_dim"]
        proj = 2.0 * b * t * e * e * 4  # q, k, v and output projections
        attn = b * (4.0 * t * t * e + 5.0 * p["heads"] * t * t)
        return Costs(flops=proj + attn, weights=4 * e * e + 4 * e, in_elems=b * t * e,
                     out_elems=b * t * e + 4 * b * t * e)
