"""Exact two-device partitioners: best single cut, min-cut == brute force on random DAGs."""

import numpy as np
import pytest

from partition import CostModel, Link, best_single_cut, brute_force, min_cut_partition
from tests.helpers_partition import make_graph


def random_dag(rng, n_compute, with_constant=False):
    nodes = [("x", "input", 4 * int(rng.integers(1, 2000)), 0)]
    edges = []
    for i in range(n_compute):
        name = f"n{i}"
        nodes.append((name, "compute", 4 * int(rng.integers(1, 2000)), 0))
        prev = [nd[0] for nd in nodes[:-1]]
        k = int(rng.integers(1, min(3, len(prev)) + 1))
        for p in rng.choice(prev, size=k, replace=False):
            edges.append((str(p), name))
    if with_constant:
        nodes.insert(1, ("w", "constant", 4000, 4000))
        edges.append(("w", nodes[int(rng.integers(2, len(nodes)))][0]))
    consumed = {u for u, _ in edges}
    nodes.append(("y", "output", 0, 0))
    for nd in nodes[1:-1]:
        if nd[0] not in consumed or rng.random() < 0.15:
            edges.append((nd[0], "y"))
    return make_graph(nodes, edges)


def random_model(rng, g, output_to=0, rtt_ms=None):
    n = len(g)
    comp = np.array([nd.kind == "compute" for nd in g.nodes])
    edge = np.where(comp, rng.uniform(0.5, 5.0, n), 0.0)
    cloud = edge * rng.uniform(0.05, 0.6, n)
    link = Link(bandwidth_mbps=float(rng.uniform(5, 200)),
                rtt_ms=float(rng.uniform(0, 3)) if rtt_ms is None else rtt_ms,
                serialize_ms_per_mb=float(rng.uniform(0, 5)))
    return CostModel(g, [edge, cloud], [link], output_to=output_to)


@pytest.mark.parametrize("output_to", [0, None, 1])
def test_min_cut_equals_brute_force(output_to):
    rng = np.random.default_rng({0: 0, None: 1, 1: 2}[output_to])
    for trial in range(8):
        g = random_dag(rng, int(rng.integers(3, 13)), with_constant=trial % 3 == 0)
        cm = random_model(rng, g, output_to=output_to)
        mc = min_cut_partition(cm)
        bf = brute_force(cm)
        assert mc.latency_ms == pytest.approx(bf.latency_ms, rel=1e-9, abs=1e-9)
        # the returned plan is monotone and its evaluated latency is the cut value
        assert cm.is_monotone(mc.assignment[None, :])[0]
        assert cm.evaluate(mc.assignment)["latency_ms"][0] == pytest.approx(mc.latency_ms)
        assert mc.info["cut_value_ms"] == pytest.approx(mc.latency_ms, rel=1e-6)
        # the single cut is a feasible plan, never better than the optimum
        sc = best_single_cut(cm)
        assert cm.is_monotone(sc.assignment[None, :])[0]
        assert sc.latency_ms >= mc.latency_ms - 1e-9


def test_single_cut_exact_on_chain():
    rng = np.random.default_rng(5)
    n = 10
    nodes = [("x", "input", 40000, 0)] + [(f"n{i}", "compute", 4 * int(rng.integers(1, 20000)), 0) for i in range(n)]
    nodes.append(("y", "output", 0, 0))
    edges = [(nodes[i][0], nodes[i + 1][0]) for i in range(len(nodes) - 1)]
    g = make_graph(nodes, edges)
    for _ in range(5):
        cm = random_model(rng, g)
        sc = best_single_cut(cm)
        assert sc.latency_ms == pytest.approx(brute_force(cm).latency_ms)
        assert sc.latency_ms == pytest.approx(min_cut_partition(cm).latency_ms)
        i = sc.info["cut"]
        assert (sc.assignment[1:i] == 0).all() and (sc.assignment[max(i, 1):-1] == 1).all()


def test_hand_computed_chain_cut():
    g = make_graph([("x", "input", 4000, 0), ("a", "compute", 2000, 0), ("b", "compute", 1000, 0),
                    ("c", "compute", 400, 0), ("d", "compute", 40, 0), ("y", "output", 0, 0)],
                   [("x", "a"), ("a", "b"), ("b", "c"), ("c", "d"), ("d", "y")])
    cm = CostModel(g, [np.array([0, 1, 2, 3, 4, 0.0]), np.array([0, 0.1, 0.2, 0.3, 0.4, 0.0])],
                   [Link(8.0, rtt_ms=2.0, serialize_ms_per_mb=1000.0)])
    # cuts: after a: 1 + 0.9 + (2+4) + 2.08 = 9.98; after b: 3 + 0.7 + 4 + 2.08 = 9.78; after c: 6 + .4 + 2.8 + 2.08
    sc = best_single_cut(cm)
    assert sc.latency_ms == pytest.approx(9.78)
    assert sc.assignment.tolist() == [0, 0, 0, 1, 1, 0]
    assert min_cut_partition(cm).latency_ms == pytest.approx(9.78)


def test_fork_min_cut_charges_producer_once():
    # a's big tensor feeds b and c; sending it once beats the single cut that keeps b on the edge
    g = make_graph([("x", "input", 40000, 0), ("a", "compute", 4000, 0), ("b", "compute", 40, 0),
                    ("c", "compute", 40, 0), ("d", "compute", 40, 0), ("y", "output", 0, 0)],
                   [("x", "a"), ("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "y")])
    edge = np.array([0, 1, 10, 10, 1, 0.0])
    cloud = np.array([0, 1, 1, 1, 1, 0.0]) * 0.1
    cm = CostModel(g, [edge, cloud], [Link(8.0, rtt_ms=1.0)])
    mc = min_cut_partition(cm)
    # a on edge (1) ; b, c, d on cloud (0.3) ; a up once (1 + 4) ; d back (1 + 0.04)
    assert mc.assignment.tolist() == [0, 0, 1, 1, 1, 0]
    assert mc.latency_ms == pytest.approx(1 + 0.3 + 5 + 1.04)
    # charging a's transfer per edge would cost one more transfer of a
    assert cm.evaluate(mc.assignment)["n_transfers"][0] == 2
    assert mc.latency_ms == pytest.approx(brute_force(cm).latency_ms)


def test_two_devices_required():
    g = make_graph([("x", "input", 40, 0), ("a", "compute", 40, 0), ("y", "output", 0, 0)], [("x", "a"), ("a", "y")])
    z = np.zeros(3)
    cm = CostModel(g, [z, z, z], [Link(10.0), Link(10.0)])
    with pytest.raises(ValueError, match="2 devices"):
        min_cut_partition(cm)
    with pytest.raises(ValueError, match="2 devices"):
        best_single_cut(cm)
    assert min_cut_partition(cm.restrict((0, 2))).latency_ms == pytest.approx(0.0)
