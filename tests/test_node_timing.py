"""In-context node timing (real measurements on this CPU, tiny models)."""

import pytest
import torch
from torch import nn

from latpred import trace
from latpred.errors import SpecError
from latpred.graph.node_timing import time_in_context


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.Flatten(),
                      nn.Linear(64 * 16 * 16, 10)).eval()
    return m, torch.randn(2, 16, 16, 16)


def test_every_node_is_timed_inside_the_running_model():
    m, x = _model()
    g = trace(m, (x,))
    t = time_in_context(g.gm, (x,), runs=5, threads=1)
    assert set(t.node_ms) == {n.name for n in g.gm.graph.nodes}
    assert all(v > 0 for v in t.node_ms.values()) and all(len(v) == 5 for v in t.runs_ms.values())
    assert t.threads == 1 and t.runs == 5 and t.statistic == "min"
    conv2 = next(n.name for n in g.nodes if n.op == "conv2d" and n.spec.params["in_channels"] == 64)
    relu = next(n.name for n in g.nodes if n.op == "activation")
    # a 64->64 3x3 convolution over 2x16x16 (38 MFLOP) outweighs a ReLU over the same activations
    assert t.node_ms[conv2] > 3 * t.node_ms[relu]
    # every node's reading lies inside the run that produced it, and the plain call skips the interpreter
    assert sum(t.node_ms.values()) <= t.interpreted_ms * 1.05
    assert 0 < t.module_ms and t.overhead_per_node_ms >= 0


def test_threads_are_restored_and_bad_arguments_are_named():
    m, x = _model()
    g = trace(m, (x,))
    before = torch.get_num_threads()
    time_in_context(g.gm, (x,), runs=1, warmup=0, threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(SpecError, match="GraphModule"):
        time_in_context(m, (x,))
    with pytest.raises(SpecError, match="runs must be an integer >= 1"):
        time_in_context(g.gm, (x,), runs=0)
    with pytest.raises(SpecError, match="threads"):
        time_in_context(g.gm, (x,), threads=0)
    with pytest.raises(SpecError, match="unknown statistic"):
        time_in_context(g.gm, (x,), statistic="max")
