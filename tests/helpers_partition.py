"""Tiny hand-built graphs for the partition tests."""

from latpred.graph.model_graph import ModelGraph, generic_node, plain_node
from latpred.ops.base import Costs


def make_graph(nodes, edges, name="g"):
    """nodes: (name, kind, out_bytes, param_bytes); out_bytes must be a multiple of 4 (float32)."""
    out = []
    for n, kind, ob, pb in nodes:
        shapes = [(1, ob // 4)] if ob else []
        if kind == "compute":
            out.append(generic_node(n, "f", Costs(1.0, 0.0, 1.0, 1.0), batch_size=1, out_shapes=shapes, param_bytes=pb))
        else:
            out.append(plain_node(n, kind, kind, batch_size=1, out_shapes=shapes, param_bytes=pb))
    return ModelGraph(out, list(edges), name=name)
