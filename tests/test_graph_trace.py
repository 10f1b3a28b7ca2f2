"""torch.fx tracing into ModelGraph: specs, shapes, views, leaves, batch re-scaling."""

import math

import pytest
import torch
from torch import nn

from latpred import SpecError
from latpred.graph.trace import trace
from tests.helpers_graph import Tiny


def _by_target(g, op):
    return [n for n in g.nodes if n.op == op]


def test_tiny_graph_nodes_specs_and_views():
    g = trace(Tiny().eval(), torch.randn(2, 3, 32, 32))
    assert g.batch_size == 2 and g.source == "fx"
    conv1 = g.node("conv1")
    assert conv1.spec.op == "conv2d"
    assert dict(conv1.spec.params) == {"in_channels": 3, "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1,
                                       "dilation": 1, "groups": 1, "bias": False, "h": 32, "w": 32}
    assert conv1.spec.batch_size == 2
    assert g.node("conv2").spec.params["groups"] == 8
    assert g.node("relu").spec.params["fn"] == "relu"
    add = g.node("add")
    assert add.spec.op == "elementwise" and add.spec.params["broadcast"] is False
    # channel shuffle: view/transpose are views, contiguous() of a transposed tensor is a copy
    assert g.node("view").kind == "view" and g.node("transpose").kind == "view"
    cont = g.node("contiguous")
    assert cont.spec.op == "flatten" and cont.spec.params["copy"] is True
    assert g.node("mean").spec.op == "adaptive_avgpool2d"
    assert g.node("fc").spec.params == {"in_features": 8, "out_features": 10, "tokens": 1, "bias": True}
    assert g.node("block").kind == "view"  # nn.Identity returns its input
    assert g.coverage().node_share == 1.0
    # tensor bytes on nodes and edges
    assert conv1.out_bytes == 2 * 8 * 16 * 16 * 4 and conv1.out_bytes_per_sample == 8 * 16 * 16 * 4
    nxg = g.to_networkx()
    assert nxg.edges["conv1", "bn1"]["bytes"] == conv1.out_bytes
    import networkx as nx

    assert nx.is_directed_acyclic_graph(nxg)


def test_param_bytes_and_flops_of_resnet18():
    tv = pytest.importorskip("torchvision")
    m = tv.models.resnet18().eval()
    g = trace(m, torch.randn(1, 3, 224, 224))
    total = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
    assert g.param_bytes == total
    assert g.coverage().node_share == 1.0
    assert g.total_flops == pytest.approx(2 * 1.814e9, rel=0.01)  # 1.81 GMACs (torchvision's figure)
    assert len(_by_target(g, "conv2d")) == 20


def test_with_batch_size_equals_tracing_at_that_batch():
    m = Tiny().eval()
    g1 = trace(m, torch.randn(1, 3, 32, 32)).with_batch_size(8)
    g8 = trace(m, torch.randn(8, 3, 32, 32))
    assert [n.name for n in g1.nodes] == [n.name for n in g8.nodes]
    for a, b in zip(g1.nodes, g8.nodes):
        assert a.spec == b.spec
        assert a.out_bytes == b.out_bytes and a.out_shapes == b.out_shapes
        if a.costs is not None:
            assert a.costs.flops == pytest.approx(b.costs.flops) and a.costs.in_elems == pytest.approx(b.costs.in_elems)


def test_untraceable_submodule_becomes_a_leaf_predicted_by_fallback():
    g = trace(Tiny(untraceable=True).eval(), torch.randn(1, 3, 32, 32))
    assert g.metadata["leaves"] == ["block"]
    node = g.node("block")
    assert node.kind == "compute" and node.spec is None
    assert "no op type covers module Untraceable" in node.reason
    assert node.flops >= 2 * 8 * 9 * 8 * 16 * 16  # the FLOP counter saw the conv inside
    assert node.param_bytes == (8 * 8 * 9 + 8) * 4
    cov = g.coverage()
    assert cov.fallback[0][0] == "block" and 0 < cov.fallback_flops_share < 1


def test_untraceable_root_is_a_clear_error():
    with pytest.raises(SpecError, match="cannot trace Untraceable"):
        trace(__import__("tests.helpers_graph", fromlist=["x"]).Untraceable(), torch.randn(1, 8, 4, 4))


def test_bad_inputs():
    with pytest.raises(SpecError, match="needs a torch.nn.Module"):
        trace(lambda x: x, torch.randn(1))
    with pytest.raises(SpecError, match="at least one example input"):
        trace(nn.ReLU(), ())


def test_vit_attention_and_layernorm_specs():
    tv = pytest.importorskip("torchvision")
    m = tv.models.vit_b_16().eval()
    g = trace(m, torch.randn(1, 3, 224, 224))
    mha = _by_target(g, "mha")
    assert len(mha) == 12 and dict(mha[0].spec.params) == {"embed_dim": 768, "heads": 12, "tokens": 197}
    ln = _by_target(g, "layernorm")[0]
    assert dict(ln.spec.params) == {"tokens": 197, "dim": 768}
    lin = [n for n in _by_target(g, "linear") if n.spec.params["tokens"] == 197]
    assert lin and lin[0].spec.params["in_features"] == 768
    assert g.coverage().node_share == 1.0
    assert math.isclose(g.with_batch_size(4).node(mha[0].name).out_bytes, 4 * mha[0].out_bytes)
