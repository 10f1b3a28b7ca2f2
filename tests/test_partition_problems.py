"""pymoo problems and optimize(): seeded GA reaches the exact optimum, NSGA-II fronts, constraint errors."""

import numpy as np
import pytest

from latpred.graph.model_graph import ModelGraph, generic_node, plain_node
from latpred.ops.base import Costs
from partition import CostModel, CutPointProblem, Link, PartitionProblem, min_cut_partition, optimize


def chain_graph(n, rng):
    nodes = [plain_node("x", "input", "x", batch_size=1, out_shapes=[(1, 150_000)])]
    for i in range(n):
        nodes.append(generic_node(f"n{i}", "f", Costs(1.0, 0.0, 1.0, 1.0), batch_size=1,
                                  out_shapes=[(1, int(rng.integers(1000, 200_000)))], param_bytes=int(rng.integers(0, 10**6))))
    nodes.append(plain_node("y", "output", "y", batch_size=1))
    names = [nd.name for nd in nodes]
    return ModelGraph(nodes, list(zip(names[:-1], names[1:])))


@pytest.fixture(scope="module")
def chain30():
    rng = np.random.default_rng(3)
    g = chain_graph(30, rng)
    edge = np.r_[0, rng.uniform(1, 5, 30), 0]
    cloud = edge * 0.1
    return CostModel(g, [edge, cloud], [Link(bandwidth_mbps=100.0, rtt_ms=2.0)], power_w=[3.0, 0.0])


def test_problem_evaluate_shapes(chain30):
    p = PartitionProblem(chain30, ("latency", "edge_memory"), {"max_edge_memory_bytes": 1e6})
    assert p.n_var == 30 and p.n_obj == 2 and p.n_ieq_constr == 1
    X = np.random.default_rng(0).integers(0, 2, size=(7, 30))
    out = p.evaluate(X, return_as_dictionary=True)
    assert out["F"].shape == (7, 2) and out["G"].shape == (7, 1)
    m = chain30.evaluate(p.decode(X))
    np.testing.assert_allclose(out["F"][:, 0], m["latency_ms"])
    assert chain30.is_monotone(p.decode(X)).all()
    c = CutPointProblem(chain30)
    assert c.n_var == 1
    a = c.decode(np.array([[5]]))
    assert a[0].tolist() == [0] * 5 + [1] * 26 + [0]


def test_ga_reaches_exact_optimum(chain30):
    exact = min_cut_partition(chain30)
    res = optimize(chain30, ("latency",), pop_size=20, n_gen=5, seed=1)
    assert res.assignments.shape == (1, 32)
    assert res.latency_ms == pytest.approx(exact.latency_ms)
    assert chain30.evaluate(res.assignment)["latency_ms"][0] == pytest.approx(exact.latency_ms)
    assert {"single_cut", "min_cut", "all_0", "all_1"} <= set(res.seeds)
    cut = optimize(chain30, "latency", pop_size=10, n_gen=3, encoding="cut")
    assert cut.latency_ms == pytest.approx(exact.latency_ms)


def test_nsga2_front_is_non_dominated(chain30):
    res = optimize(chain30, ("latency", "edge_memory"), pop_size=24, n_gen=10, seed=0)
    F = res.objectives
    assert F.shape[1] == 2 and len(F) >= 2
    for i in range(len(F)):
        for j in range(len(F)):
            if i != j:
                assert not (np.all(F[j] <= F[i]) and np.any(F[j] < F[i])), (i, j)
    m = chain30.evaluate(res.assignments)
    np.testing.assert_allclose(F[:, 0], m["latency_ms"])
    np.testing.assert_allclose(F[:, 1], m["edge_memory_bytes"])
    assert chain30.is_monotone(res.assignments).all()
    # the latency end of the front reaches the exact optimum (seeded)
    assert F[:, 0].min() == pytest.approx(min_cut_partition(chain30).latency_ms)


def test_constraints(chain30):
    with pytest.raises(ValueError, match=r"no plan satisfies max_edge_memory_bytes=10; the smallest edge memory"):
        optimize(chain30, ("latency",), {"max_edge_memory_bytes": 10}, pop_size=10, n_gen=2)
    with pytest.raises(ValueError, match="max_latency_ms"):
        optimize(chain30, ("latency",), {"max_latency_ms": 0.01}, pop_size=10, n_gen=2)
    limit = 2e6
    res = optimize(chain30, ("latency", "energy"), {"max_edge_memory_bytes": limit}, pop_size=16, n_gen=5)
    assert (res.metrics["edge_memory_bytes"] <= limit).all()


def test_bad_arguments(chain30):
    with pytest.raises(ValueError, match=r"unknown objective 'speed'; allowed: \['bytes', 'edge_memory', 'energy', 'latency'\]"):
        optimize(chain30, ("speed",))
    with pytest.raises(ValueError, match="unknown constraint"):
        optimize(chain30, ("latency",), {"max_bytes": 1})
    no_power = CostModel(chain30.graph, list(chain30.node_ms), [Link(100.0)])
    with pytest.raises(ValueError, match="power_w"):
        PartitionProblem(no_power, ("energy",))
    with pytest.raises(ValueError, match="encoding"):
        optimize(chain30, encoding="bits")


def test_three_devices():
    rng = np.random.default_rng(4)
    g = chain_graph(8, rng)
    edge = np.r_[0, rng.uniform(1, 5, 8), 0]
    cm = CostModel(g, [edge, edge * 0.3, edge * 0.1], [Link(100.0, rtt_ms=1.0), Link(50.0, rtt_ms=5.0)])
    res = optimize(cm, ("latency", "bytes"), pop_size=16, n_gen=5)
    assert cm.is_monotone(res.assignments).all()
    assert {"all_2", "min_cut_0_1", "min_cut_0_2"} <= set(res.seeds)
