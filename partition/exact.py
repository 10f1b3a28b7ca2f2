"""Exact two-device partitioners: best single cut (Neurosurgeon) and DAG min-cut (DADS), plus brute force.

All three minimise ``latency_ms`` of :class:`~partition.cost.CostModel` (sequential execution: compute
on the edge + compute on the cloud + transfers).

Min-cut assumptions (:func:`min_cut_partition`):

* Every transferred tensor is sent separately and pays the link's ``rtt_ms`` (plus its size over the
  bandwidth and its serialization), which is exactly :meth:`CostModel.evaluate`'s rule: latency is
  then a sum of per-node and per-tensor terms and the s–t cut value equals the plan latency. Were
  several tensors batched into one message (one RTT per message), the cost would no longer be
  additive and the min-cut would over-charge RTTs.
* An edge → cloud tensor is charged once per producer through an auxiliary node when the producer has
  several cloud-side consumers; the cloud → edge return of the result (``output_to=0``) is charged
  once per tensor fed to an output node.
* Plans are monotone: no cloud → edge edge except the final output return (infinite reverse edges).
* Node times must be >= 0 (checked by the cost model).
"""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np

from .cost import CostModel, Plan

__all__ = ["best_single_cut", "min_cut_partition", "brute_force"]


def _need_two(cost_model: CostModel, what: str) -> None:
    if cost_model.k != 2:
        raise ValueError(f"{what} needs exactly 2 devices (edge, cloud), the cost model has {cost_model.k}; "
                         f"use CostModel.restrict((0, d)) or partition.optimize")


def single_cut_assignments(cost_model: CostModel, cuts: np.ndarray | None = None) -> np.ndarray:
    """Assignments ``(len(cuts), n_nodes)`` of single cuts: nodes ``[0:i]`` on device 0, the rest on the
    last device, for every cut position ``i`` in ``cuts`` (default ``0 .. n_nodes``); repaired."""
    n = cost_model.n_nodes
    c = np.arange(n + 1) if cuts is None else np.asarray(cuts, dtype=np.intp)
    a = np.where(np.arange(n)[None, :] >= c[:, None], cost_model.k - 1, 0)
    return cost_model.repair(a)


def best_single_cut(cost_model: CostModel) -> Plan:
    """Best single cut in topological order (Neurosurgeon): nodes ``[0:i]`` on the edge, the rest on the cloud.

    All ``n_nodes + 1`` cut positions are evaluated at once (inputs/outputs pinned, constants moved next
    to their consumers by :func:`~partition.cost.repair`). Exact for chains; the classic baseline
    for DAGs. Ties go to the earliest cut.

    Returns:
        a :class:`~partition.cost.Plan` with ``info["cut"]`` the cut position ``i``.
    """
    _need_two(cost_model, "best_single_cut")
    a = single_cut_assignments(cost_model)
    lat = cost_model.evaluate(a)["latency_ms"]
    i = int(np.argmin(lat))
    return cost_model.plan(a[i], "single_cut", cut=i)


def min_cut_partition(cost_model: CostModel) -> Plan:
    """Latency-optimal two-device partition of a DAG by an s–t minimum cut (DADS-style).

    Source side = edge (device 0), sink side = cloud (device 1). Capacities: ``s → v`` the cloud time
    of ``v``, ``v → t`` its edge time; an edge → cloud transfer of ``u``'s tensor (once per
    producer: single consumer ``u → c``, several consumers ``u → x_u`` plus ``x_u → c`` of infinite
    capacity); the output return as ``s → p`` for every producer ``p`` feeding an output pinned to
    the edge; infinite ``c → u`` edges forbid cloud → edge edges; infinite edges pin inputs/outputs.
    See the module docstring for assumptions.

    Returns:
        a :class:`~partition.cost.Plan` (metrics from :meth:`CostModel.evaluate`, which equal the cut
        value) with ``info["cut_value_ms"]``.

    Raises:
        ValueError: not 2 devices, or no monotone plan exists with the pins.
    """
    _need_two(cost_model, "min_cut_partition")
    cm = cost_model
    g = nx.DiGraph()
    s, t = ("__source__",), ("__sink__",)
    g.add_node(s)
    g.add_node(t)
    kinds = cm.kinds
    out_pinned_edge = cm.output_to == 0

    def add_cap(u: object, v: object, c: float) -> None:
        if c <= 0:
            return
        if g.has_edge(u, v):
            if "capacity" in g[u][v]:
                g[u][v]["capacity"] += c
        else:
            g.add_edge(u, v, capacity=float(c))

    def add_inf(u: object, v: object) -> None:
        if g.has_edge(u, v):
            g[u][v].pop("capacity", None)
        else:
            g.add_edge(u, v)

    for v in range(cm.n_nodes):
        g.add_node(v)
        add_cap(s, v, cm.node_ms[1, v])
        add_cap(v, t, cm.node_ms[0, v])
    for v in cm.input_idx:
        add_inf(s, v) if cm.input_on == 0 else add_inf(v, t)
    if cm.output_to is not None:
        for v in cm.output_idx:
            add_inf(s, v) if cm.output_to == 0 else add_inf(v, t)

    for u in range(cm.n_nodes):
        cons = [int(c) for c in cm.succs[u]]
        if out_pinned_edge:
            returned = [c for c in cons if kinds[c] == "output"]
            cons = [c for c in cons if kinds[c] != "output"]
            if returned:  # the tensor goes back to the edge iff u runs on the cloud
                add_cap(s, u, cm.transfer_ms(1, 0, cm.out_bytes[u]))
        if not cons:
            continue
        for c in cons:
            add_inf(c, u)  # monotone: c on edge and u on cloud is forbidden
        up = cm.transfer_ms(0, 1, cm.out_bytes[u])
        if len(cons) == 1:
            add_cap(u, cons[0], up)
        else:
            x = ("__aux__", u)
            add_cap(u, x, up)
            if up <= 0:
                continue
            for c in cons:
                add_inf(x, c)
    try:
        value, (src_side, _) = nx.minimum_cut(g, s, t)
    except nx.NetworkXUnbounded:
        raise ValueError("min_cut_partition: no monotone plan exists with the pinned inputs/outputs") from None
    a = np.array([0 if v in src_side else 1 for v in range(cm.n_nodes)], dtype=np.intp)
    return cm.plan(a, "min_cut", cut_value_ms=float(value))


def brute_force(cost_model: CostModel, objective: str = "latency_ms", max_free: int = 16) -> Plan:
    """Best monotone plan by enumerating all ``k ** n_free`` assignments (tests / tiny graphs only).

    Args:
        cost_model: any number of devices.
        objective: a key of :meth:`CostModel.evaluate` to minimise.
        max_free: refuse graphs with more free nodes than this.
    """
    cm = cost_model
    nf = len(cm.free_idx)
    if nf > max_free:
        raise ValueError(f"brute_force: {nf} free nodes > max_free={max_free}")
    free = np.array(list(itertools.product(range(cm.k), repeat=nf)), dtype=np.intp).reshape(-1, nf)
    a = cm.expand(free)
    if cm.output_to is None:  # output nodes follow their producers
        a = _outputs_follow(cm, a)
    a = a[cm.is_monotone(a)]
    if len(a) == 0:
        raise ValueError("brute_force: no monotone plan")
    val = cm.evaluate(a)[objective]
    i = int(np.argmin(val))
    return cm.plan(a[i], "brute_force", n_plans=len(a))


def _outputs_follow(cm: CostModel, a: np.ndarray) -> np.ndarray:
    a = a.copy()
    for v in cm.output_idx:
        if cm.preds[v].size:
            a[:, v] = a[:, cm.preds[v]].max(axis=1)
    return a
