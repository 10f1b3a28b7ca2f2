"""CostModel, Link and repair of the partition package (hand-computed values on tiny graphs)."""

import numpy as np
import pytest

from partition import CostModel, Link, repair
from tests.helpers_partition import make_graph

# per transfer: rtt 2 ms + bytes * 8 / 8e6 * 1e3 (1e-3 ms/B) + 1000 ms/MB serialization (1e-3 ms/B) = 2 + 2e-3 * bytes
LINK = Link(bandwidth_mbps=8.0, rtt_ms=2.0, serialize_ms_per_mb=1000.0)


def chain4():
    g = make_graph([("x", "input", 4000, 0), ("a", "compute", 2000, 100), ("b", "compute", 1000, 200),
                    ("c", "compute", 400, 300), ("d", "compute", 40, 400), ("y", "output", 0, 0)],
                   [("x", "a"), ("a", "b"), ("b", "c"), ("c", "d"), ("d", "y")])
    edge = np.array([0, 1, 2, 3, 4, 0.0])
    cloud = np.array([0, 0.1, 0.2, 0.3, 0.4, 0.0])
    return g, edge, cloud


def test_link_validation():
    for bad in (0, -1.0, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="bandwidth_mbps"):
            Link(bad)
    with pytest.raises(ValueError, match="rtt_ms"):
        Link(10, rtt_ms=-1)
    assert LINK.transfer_ms(1000) == pytest.approx(4.0)


def test_chain_hand_computed():
    g, edge, cloud = chain4()
    cm = CostModel(g, [edge, cloud], [LINK])
    plans = np.array([[0, 0, 0, 1, 1, 0],   # cut after b
                      [0, 1, 1, 1, 1, 0],   # all cloud
                      [0, 0, 0, 0, 0, 0]])  # all edge
    m = cm.evaluate(plans)
    # cut after b: compute 1+2+0.3+0.4; b up (2+2 ms), d back (2+0.08 ms)
    assert m["latency_ms"] == pytest.approx([3.7 + 4 + 2.08, 1.0 + (2 + 8) + 2.08, 10.0])
    assert m["transfer_ms"] == pytest.approx([6.08, 12.08, 0.0])
    assert m["bytes_transferred"] == pytest.approx([1040, 4040, 0])
    assert m["n_transfers"].tolist() == [2, 2, 0]
    assert m["device_ms"][0] == pytest.approx([3.0, 0.7])
    # edge memory, cut after b: params a+b; activations peak at position 1: x (4000, used by a) + a (2000)
    assert m["edge_param_bytes"] == pytest.approx([300, 0, 1000])
    assert m["edge_activation_bytes"] == pytest.approx([6000, 4000, 6000])
    assert m["edge_memory_bytes"] == pytest.approx([6300, 4000, 7000])
    # a single plan (1-D) gives arrays of shape (1,)
    assert cm.evaluate(plans[0])["latency_ms"].shape == (1,)
    # the output pin: output_to=None lets the result stay on the cloud
    cm2 = CostModel(g, [edge, cloud], [LINK], output_to=None)
    assert cm2.evaluate(cm2.repair(plans[:1]))["latency_ms"] == pytest.approx([3.7 + 4])


def test_vectorised_equals_rowwise():
    g, edge, cloud = chain4()
    cm = CostModel(g, [edge, cloud], LINK, power_w=[2.0, 50.0], tx_power_w=[1.0, 0.0])
    rng = np.random.default_rng(0)
    a = cm.repair(rng.integers(0, 2, size=(40, len(g))))
    m = cm.evaluate(a)
    for i in range(len(a)):
        mi = cm.evaluate(a[i])
        for key in m:
            assert np.allclose(mi[key][0], m[key][i]), key


def test_energy():
    g, edge, cloud = chain4()
    cm = CostModel(g, [edge, cloud], [LINK], power_w=[2.0, 50.0], tx_power_w=[1.0, 3.0])
    m = cm.evaluate(np.array([[0, 0, 0, 1, 1, 0]]))
    # busy: edge 3 ms * 2 W, cloud 0.7 ms * 50 W; edge sends b (4 ms) at 1 W, cloud sends d (2.08 ms) at 3 W
    assert m["energy_j"] == pytest.approx([(3 * 2 + 0.7 * 50 + 4 * 1 + 2.08 * 3) / 1e3])
    assert "energy_j" not in CostModel(g, [edge, cloud], [LINK]).evaluate(np.zeros((1, 6), int))


def test_fork_sent_once_per_destination():
    g = make_graph([("x", "input", 400, 0), ("a", "compute", 1000, 0), ("b", "compute", 100, 0),
                    ("c", "compute", 100, 0), ("d", "compute", 40, 0), ("y", "output", 0, 0)],
                   [("x", "a"), ("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "y")])
    ms = np.zeros(6)
    cm = CostModel(g, [ms, ms], [LINK])
    m = cm.evaluate(np.array([[0, 0, 1, 1, 1, 0],    # a on edge, b and c on the cloud: a's tensor sent once
                              [0, 0, 0, 1, 1, 0]]))  # b on edge: a sent once (to c); b sent to d
    assert m["bytes_transferred"] == pytest.approx([1000 + 40, 1000 + 100 + 40])
    assert m["transfer_ms"] == pytest.approx([(2 + 2.0) + (2 + 0.08), (2 + 2.0) + (2 + 0.2) + (2 + 0.08)])
    assert m["n_transfers"].tolist() == [2, 3]


def test_multi_hop_and_matrix_links():
    g = make_graph([("x", "input", 1000, 0), ("a", "compute", 1000, 0), ("y", "output", 0, 0)],
                   [("x", "a"), ("a", "y")])
    ms = np.zeros(3)
    l01, l12 = Link(8.0, rtt_ms=1.0), Link(80.0, rtt_ms=5.0)
    cm = CostModel(g, [ms, ms, ms], [l01, l12], output_to=None)
    # x from device 0 to device 2 crosses both hops: (1 + 1) + (5 + 0.1)
    assert cm.evaluate(np.array([[0, 2, 2]]))["transfer_ms"] == pytest.approx([7.1])
    assert cm.transfer_ms(2, 0, 1000) == pytest.approx(7.1)
    direct = Link(800.0, rtt_ms=0.5)
    cm2 = CostModel(g, [ms, ms, ms], [[None, l01, direct], [None, None, l12], [None, None, None]], output_to=None)
    assert cm2.transfer_ms(0, 2, 1000) == pytest.approx(0.51)
    assert cm2.transfer_ms(2, 0, 1000) == pytest.approx(0.51)  # falls back to links[0][2]
    with pytest.raises(ValueError, match="links"):
        CostModel(g, [ms, ms, ms], [l01])
    # a restricted model keeps the multi-hop cost
    sub = cm.restrict((0, 2))
    assert sub.evaluate(np.array([[0, 1, 1]]))["transfer_ms"] == pytest.approx([7.1])


def test_argument_checks():
    g, edge, cloud = chain4()
    with pytest.raises(ValueError, match="at least 2"):
        CostModel(g, [edge], [])
    with pytest.raises(ValueError, match="shape"):
        CostModel(g, [edge, cloud[:3]], [LINK])
    with pytest.raises(ValueError, match="condition"):
        CostModel(g, [np.stack([edge, edge]), cloud], [LINK])
    cm = CostModel(g, [np.stack([edge, 2 * edge]), cloud], [LINK], condition=1)
    assert cm.node_ms[0] == pytest.approx(2 * edge)
    with pytest.raises(ValueError, match="output_to"):
        CostModel(g, [edge, cloud], [LINK], output_to=2)
    with pytest.raises(ValueError, match="power_w"):
        CostModel(g, [edge, cloud], [LINK], power_w=[1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CostModel(g, [edge, cloud], [LINK]).evaluate(np.full((1, 6), 2))


def random_dag(rng, n_compute, with_constant=False):
    nodes = [("x", "input", 4 * int(rng.integers(1, 500)), 0)]
    edges = []
    for i in range(n_compute):
        name = f"n{i}"
        nodes.append((name, "compute", 4 * int(rng.integers(1, 500)), 4 * int(rng.integers(0, 100))))
        prev = [nd[0] for nd in nodes[:-1] if nd[1] != "constant"]
        k = int(rng.integers(1, min(3, len(prev)) + 1))
        for p in rng.choice(prev, size=k, replace=False):
            edges.append((str(p), name))
    if with_constant:
        nodes.insert(1, ("w", "constant", 400, 400))
        edges.append(("w", nodes[-1][0]))
    consumed = {u for u, _ in edges}
    nodes.append(("y", "output", 0, 0))
    for nd in nodes[1:-1]:
        if nd[0] not in consumed:
            edges.append((nd[0], "y"))
    return make_graph(nodes, edges)


def test_repair_makes_plans_monotone():
    rng = np.random.default_rng(1)
    for trial in range(5):
        g = random_dag(rng, 10, with_constant=trial % 2 == 0)
        for k, out in ((2, 0), (3, None), (3, 2)):
            ms = [np.zeros(len(g))] * k
            cm = CostModel(g, ms, [LINK] * (k - 1), output_to=out)
            a = rng.integers(0, k, size=(64, len(g)))
            r = repair(cm, a)
            assert r.shape == a.shape and r.dtype.kind == "i"
            assert cm.is_monotone(r).all()
            assert (r[:, cm.input_idx] == 0).all()
            if out is not None:
                assert (r[:, cm.output_idx] == out).all()
            np.testing.assert_array_equal(repair(cm, r), r)  # idempotent
            # nodes only move later, except constants pulled towards their consumers
            comp = cm.kinds == "compute"
            assert (r[:, comp] >= a[:, comp]).all()
            # a monotone plan without constants is left alone
            if len(cm.weight_idx) == 0:
                mono = a[cm.is_monotone(cm.pin(a))]
                np.testing.assert_array_equal(repair(cm, mono), cm.pin(mono))
            # random raw plans are not all monotone
            assert not cm.is_monotone(a).all()


def test_repair_by_reachability_equals_the_running_max(monkeypatch):
    """repair's matrix form (max over each node's ancestors, one product per device level) gives the
    node-by-node running max it replaces, outputs pinned or not."""
    import partition.cost as cost

    rng = np.random.default_rng(7)
    for trial in range(4):
        g = random_dag(rng, 25, with_constant=trial % 2 == 1)
        for k, out in ((2, None), (2, 1), (3, None), (4, 2)):
            cm = CostModel(g, [np.zeros(len(g))] * k, [LINK] * (k - 1), output_to=out)
            a = rng.integers(0, k, size=(40, len(g)))
            fast = cm.repair(a)
            monkeypatch.setattr(cost, "_REACH_MAX_NODES", -1)
            np.testing.assert_array_equal(fast, cm.repair(a))
            monkeypatch.setattr(cost, "_REACH_MAX_NODES", 3000)


def test_edge_activation_peak_vectorised_equals_node_by_node(monkeypatch):
    """The edge-memory liveness pass (views node by node, every other producer in one vectorised pass)
    gives the node-by-node result, on random DAGs with chains of views."""
    import partition.cost as cost

    rng = np.random.default_rng(11)
    for _ in range(6):
        nodes, edges = [("x", "input", 400, 0)], []
        for i in range(30):
            kind = "view" if rng.random() < 0.35 else "compute"
            nodes.append((f"n{i}", kind, 4 * int(rng.integers(1, 500)), 0))
            prev = [nd[0] for nd in nodes[:-1]]
            for p in rng.choice(prev, size=int(rng.integers(1, min(3, len(prev)) + 1)), replace=False):
                edges.append((str(p), f"n{i}"))
        consumed = {u for u, _ in edges}
        nodes.append(("y", "output", 0, 0))
        edges += [(nd[0], "y") for nd in nodes[1:-1] if nd[0] not in consumed]
        g = make_graph(nodes, edges)
        for k in (2, 3):
            cm = CostModel(g, [np.zeros(len(g))] * k, [LINK] * (k - 1))
            a = cm.repair(rng.integers(0, k, size=(32, len(g))))
            fast = cm._edge_activation_peak(a)
            monkeypatch.setattr(cost, "_VECTOR_PEAK", False)
            np.testing.assert_array_equal(fast, cm._edge_activation_peak(a))
            monkeypatch.setattr(cost, "_VECTOR_PEAK", True)


def test_constant_placed_next_to_consumer_and_views_alias():
    g = make_graph([("x", "input", 400, 0), ("w", "constant", 800, 800), ("a", "compute", 400, 0),
                    ("v", "view", 400, 0), ("b", "compute", 40, 0), ("y", "output", 0, 0)],
                   [("x", "a"), ("w", "a"), ("a", "v"), ("v", "b"), ("b", "y")])
    ms = np.zeros(6)
    cm = CostModel(g, [ms, ms], [LINK])
    r = cm.repair(np.array([[0, 0, 1, 1, 1, 0]]))
    assert r.tolist() == [[0, 1, 1, 1, 1, 0]]  # w follows its consumer a to the cloud
    m = cm.evaluate(np.array([[0, 0, 0, 0, 0, 0]]))
    # all edge: params 800; w aliases its params, v aliases a: peak x + a (400 + 400) at a, a kept alive to b
    assert m["edge_param_bytes"] == pytest.approx([800])
    assert m["edge_activation_bytes"] == pytest.approx([800])
    # v on the cloud, b on the edge: a sent up, v's tensor received back (400) live until b
    m = cm.evaluate(np.array([[0, 0, 0, 1, 0, 0]]))
    assert m["bytes_transferred"] == pytest.approx([800])
