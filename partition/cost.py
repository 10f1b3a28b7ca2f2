"""Cost model of a partitioned (edge → … → cloud) deployment of a :class:`~latpred.graph.model_graph.ModelGraph`.

A *plan* (an *assignment*) gives every graph node a device index ``0 .. k-1``; devices are ordered
edge (``0``) → … → cloud (``k-1``). :meth:`CostModel.evaluate` scores a whole population of plans
at once (an int array of shape ``(pop, n_nodes)``) with numpy, looping only over nodes.

Execution model (documented assumptions):

* **Sequential execution.** One request runs device after device; there is no pipelining, so the
  latency is the sum of the compute time of every node on the device it is assigned to plus the time
  of every transfer.
* **Transfers.** A node's output tensor (``out_bytes``) produced on device ``a`` and consumed on
  devices ``b != a`` is sent *once per distinct destination device*, not once per consuming edge.
  One transfer over a :class:`Link` takes ``rtt_ms + size_bytes * 8 / (bandwidth_mbps * 1e6) * 1e3
  + serialize_ms_per_mb * size_bytes / 1e6`` ms (1 MB = 1e6 bytes). With adjacent-only links (a
  chain) a transfer between non-adjacent devices crosses every hop in between and costs the sum of
  the hop costs; with a ``k × k`` link matrix it uses the direct link. ``bytes_transferred`` counts
  each (tensor, destination) pair once, whatever the number of hops.
* **Pinned nodes.** ``input`` nodes run on ``input_on``; ``output`` nodes on ``output_to`` (the
  result returns to that device: a transfer, not a violation of the edge → cloud order), or, with
  ``output_to=None``, on the latest device of their predecessors (set by :meth:`CostModel.repair`).
  ``view`` / ``constant`` nodes normally cost 0 ms (``node_ms`` is used as given) but carry tensors.
* **Edge memory** (device 0): parameter bytes of the nodes on the edge plus the peak activation
  bytes held there. Liveness estimate over the topological order: a tensor produced on the edge, or
  received there, is live from its producer's position until its last consumer on the edge (at
  least at its producer's position when produced there: it is sent right after production). ``view``
  nodes alias their input, so a view on the edge adds no bytes but keeps its source alive until the
  view's own last edge consumer; a ``constant`` (or ``output``) node on the edge aliases its
  parameters (its input) and adds no activation bytes. A tensor received from another device always
  counts its full ``out_bytes``.
* **Energy** (when ``power_w`` is given): ``power_w[d] * busy_ms[d] / 1e3`` summed over devices, plus
  ``tx_power_w[d] * (time of the transfers device d sends) / 1e3`` when ``tx_power_w`` is given.
  Give ``power_w=[p_edge, 0, ...]`` for an edge-only (battery) energy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latpred.graph.model_graph import ModelGraph

__all__ = ["Link", "CostModel", "Plan", "repair", "METRICS"]

#: Keys of the dict returned by :meth:`CostModel.evaluate` (all arrays of shape ``(pop,)`` except
#: ``device_ms``, shape ``(pop, k)``; ``energy_j`` only when ``power_w`` is given).
METRICS = ("latency_ms", "compute_ms", "transfer_ms", "device_ms", "edge_memory_bytes", "edge_param_bytes",
           "edge_activation_bytes", "bytes_transferred", "n_transfers", "energy_j")


@dataclass(frozen=True)
class Link:
    """A network link between two devices.

    Attributes:
        bandwidth_mbps: bandwidth in megabits per second (> 0).
        rtt_ms: fixed cost of one transfer in ms (round trip / setup), charged per tensor sent.
        serialize_ms_per_mb: (de)serialization time in ms per megabyte (1e6 bytes) sent.
    """

    bandwidth_mbps: float
    rtt_ms: float = 0.0
    serialize_ms_per_mb: float = 0.0

    def __post_init__(self) -> None:
        bw = self.bandwidth_mbps
        if isinstance(bw, bool) or not isinstance(bw, (int, float, np.integer, np.floating)) or not math.isfinite(bw) \
                or bw <= 0:
            raise ValueError(f"Link: bandwidth_mbps must be a finite number > 0, got {bw!r}")
        for name in ("rtt_ms", "serialize_ms_per_mb"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"Link: {name} must be a finite number >= 0, got {v!r}")

    @property
    def ms_per_byte(self) -> float:
        """Time per byte sent in ms (bandwidth plus serialization)."""
        return 8.0 / (self.bandwidth_mbps * 1e6) * 1e3 + self.serialize_ms_per_mb / 1e6

    def transfer_ms(self, size_bytes: float) -> float:
        """Time in ms to send one tensor of ``size_bytes`` over this link."""
        return self.rtt_ms + self.ms_per_byte * float(size_bytes)


@dataclass
class Plan:
    """One deployment plan: the device of every node and its metrics (scalars).

    Attributes:
        assignment: int array ``(n_nodes,)``, the device index of every node (graph order).
        metrics: the :meth:`CostModel.evaluate` values of this plan (``latency_ms``, ...).
        method: what produced it (``"single_cut"``, ``"min_cut"``, ``"ga"``, ...).
        node_names: node names aligned with ``assignment``.
        info: extra method-specific values (e.g. ``cut`` index, ``cut_value_ms``).
    """

    assignment: np.ndarray
    metrics: dict[str, Any]
    method: str = ""
    node_names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        return float(self.metrics["latency_ms"])

    @property
    def edge_memory_bytes(self) -> float:
        return float(self.metrics["edge_memory_bytes"])

    @property
    def bytes_transferred(self) -> float:
        return float(self.metrics["bytes_transferred"])

    def placement(self) -> dict[str, int]:
        """``{node name: device index}``."""
        return {n: int(d) for n, d in zip(self.node_names, self.assignment)}


#: up to this many nodes :meth:`CostModel.repair` uses a dense reachability matrix (n x n float32)
_REACH_MAX_NODES = 3000
#: edge activation peak: views node by node, every other producer in one vectorised pass (False: all node by node)
_VECTOR_PEAK = True

class CostModel:
    """Latency / memory / traffic / energy of partition plans of ``graph`` over ``k >= 2`` devices.

    Args:
        graph: the model graph (nodes in topological order).
        node_ms: per device (ordered edge → … → cloud), the predicted time in ms of every node, an
            array of shape ``(n_nodes,)`` or ``(n_conditions, n_nodes)`` aligned with ``graph.nodes``
            (a ``(k, n_nodes)`` or ``(k, n_conditions, n_nodes)`` array also works).
        links: ``k - 1`` :class:`Link` (one per adjacent device pair, a chain; a single ``Link`` is
            used for every adjacent pair), or a ``k × k`` matrix of ``Link`` (``links[a][b]`` for
            a → b; ``None`` on the diagonal; a missing ``links[a][b]`` falls back to ``links[b][a]``).
        input_on: device where the model input starts (``input`` nodes are pinned there).
        output_to: device the result must return to (``output`` nodes are pinned there), or
            ``None``: the output stays wherever its producer ran.
        power_w: optional busy power in watts per device (enables the ``energy_j`` metric).
        tx_power_w: optional transmit power in watts per device, charged for the transfers it sends.
        condition: row of 2-D ``node_ms`` to use (required when they have several rows).
    """

    def __init__(self, graph: ModelGraph, node_ms: Sequence[Any] | np.ndarray, links: Any, *, input_on: int = 0,
                 output_to: int | None = 0, power_w: Sequence[float] | None = None,
                 tx_power_w: Sequence[float] | None = None, condition: int | None = None) -> None:
        self.graph = graph
        n = len(graph.nodes)
        self.n_nodes = n
        self.node_ms = _node_ms_matrix(node_ms, n, condition)
        k = self.node_ms.shape[0]
        self.k = k
        self.input_on = _device_arg("input_on", input_on, k)
        self.output_to = None if output_to is None else _device_arg("output_to", output_to, k)
        self.power_w = _per_device("power_w", power_w, k)
        self.tx_power_w = _per_device("tx_power_w", tx_power_w, k)
        self.transfer_fixed_ms, self.transfer_ms_per_byte = _link_costs(links, k)

        # -- static structure -------------------------------------------------------------
        self.kinds = np.array([nd.kind for nd in graph.nodes])
        self.out_bytes = np.array([float(nd.out_bytes) for nd in graph.nodes])
        self.param_bytes = np.array([float(nd.param_bytes) for nd in graph.nodes])
        preds: list[list[int]] = [[] for _ in range(n)]
        succs: list[list[int]] = [[] for _ in range(n)]
        for u, v in graph.edges:
            iu, iv = graph.index(u), graph.index(v)
            if iu not in preds[iv]:
                preds[iv].append(iu)
                succs[iu].append(iv)
        self.preds = [np.array(sorted(p), dtype=np.intp) for p in preds]
        self.succs = [np.array(sorted(s), dtype=np.intp) for s in succs]
        self.input_idx = np.flatnonzero(self.kinds == "input")
        self.output_idx = np.flatnonzero(self.kinds == "output")
        #: indices of the nodes an optimizer chooses (all but inputs and outputs, which are pinned/derived)
        self.free_idx = np.flatnonzero((self.kinds != "input") & (self.kinds != "output"))
        self.is_view = self.kinds == "view"
        # nodes whose output aliases existing memory on their own device (no new activation bytes)
        self.is_alias = np.isin(self.kinds, ("view", "constant", "output"))
        # input-independent constant/view nodes (weights and views of weights), placed next to their consumers
        weight = np.zeros(n, dtype=bool)
        for v in range(n):
            if self.kinds[v] == "constant" and len(self.preds[v]) == 0:
                weight[v] = True
            elif self.kinds[v] in ("constant", "view") and len(self.preds[v]) and weight[self.preds[v]].all():
                weight[v] = True
        self.weight_idx = np.flatnonzero(weight & np.array([len(s) > 0 for s in self.succs]))
        # edges grouped by producer, for the vectorised transfer count of evaluate()
        self._senders = np.array([u for u in range(n) if len(self.succs[u])], dtype=np.intp)
        self._edge_dst = np.concatenate([self.succs[u] for u in self._senders]) if len(self._senders) else np.zeros(0, np.intp)
        counts = np.array([len(self.succs[u]) for u in self._senders], dtype=np.intp)
        self._edge_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp) if len(counts) else counts

    # -- helpers ----------------------------------------------------------------------------
    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(nd.name for nd in self.graph.nodes)

    def transfer_ms(self, src: int, dst: int, size_bytes: float) -> float:
        """Time in ms to send ``size_bytes`` from device ``src`` to device ``dst`` (0 when equal)."""
        if src == dst:
            return 0.0
        return float(self.transfer_fixed_ms[src, dst] + self.transfer_ms_per_byte[src, dst] * size_bytes)

    def _as_pop(self, assign: Any) -> np.ndarray:
        a = np.asarray(assign)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != self.n_nodes:
            raise ValueError(f"assignment must have shape (pop, {self.n_nodes}), got {np.shape(assign)}")
        if a.size and not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError("assignment must hold integer device indices")
        a = a.astype(np.intp)
        if a.size and (a.min() < 0 or a.max() >= self.k):
            raise ValueError(f"assignment device indices must lie in [0, {self.k - 1}]")
        return a

    def pin(self, assign: Any) -> np.ndarray:
        """A copy of ``assign`` (``(pop, n_nodes)``) with inputs on ``input_on`` and outputs on ``output_to``."""
        a = self._as_pop(assign).copy()
        a[:, self.input_idx] = self.input_on
        if self.output_to is not None:
            a[:, self.output_idx] = self.output_to
        return a

    def expand(self, free: Any) -> np.ndarray:
        """Full assignments ``(pop, n_nodes)`` from values of the free nodes ``(pop, len(free_idx))``.

        Inputs are set to ``input_on``, outputs to ``output_to`` (or to device 0 when ``output_to`` is
        ``None``; :meth:`repair` then moves them after their producers)."""
        f = np.atleast_2d(np.asarray(free)).astype(np.intp)
        a = np.zeros((f.shape[0], self.n_nodes), dtype=np.intp)
        a[:, self.free_idx] = f
        a[:, self.input_idx] = self.input_on
        a[:, self.output_idx] = 0 if self.output_to is None else self.output_to
        return a

    def is_monotone(self, assign: Any) -> np.ndarray:
        """Bool ``(pop,)``: every edge goes to the same or a later device (output returns excepted)."""
        a = self._as_pop(assign)
        ok = np.ones(a.shape[0], dtype=bool)
        for v in range(self.n_nodes):
            p = self.preds[v]
            if p.size == 0 or (self.output_to is not None and self.kinds[v] == "output"):
                continue
            ok &= (a[:, p] <= a[:, [v]]).all(axis=1)
        return ok

    def _reach(self) -> np.ndarray:
        """``M[u, v]``: whether node u's device bounds node v's from below in :meth:`repair`'s running max
        (u is v or an ancestor of v; an output node takes its predecessors' maximum, not its own value,
        when it is not pinned). Built once, in topological order."""
        reach = getattr(self, "_reach_cache", None)
        if reach is None:
            n = self.n_nodes
            reach = np.zeros((n, n), dtype=bool)
            for v in range(n):
                p = self.preds[v]
                if self.kinds[v] == "output":
                    if self.output_to is None and p.size:
                        reach[:, v] = reach[:, p].any(axis=1)
                    else:
                        reach[v, v] = True
                    continue
                reach[v, v] = True
                if p.size:
                    reach[:, v] |= reach[:, p].any(axis=1)
            reach = self._reach_cache = reach.astype(np.float32)
        return reach

    def repair(self, assign: Any) -> np.ndarray:
        """Make plans executable edge → … → cloud; see :func:`repair`."""
        a = np.clip(np.asarray(assign), 0, self.k - 1)
        a = self.pin(np.rint(a) if a.dtype.kind == "f" else a)
        if a.shape[0] and self.n_nodes <= _REACH_MAX_NODES:
            # the running max along the edges is, per node, the max over itself and its ancestors: one matrix
            # product per device level (is any reaching node on device >= d?) instead of a loop over the nodes
            reach = self._reach()
            out = np.zeros_like(a)
            for d in range(1, self.k):
                out += ((a >= d).astype(np.float32) @ reach) > 0
            a = out
        else:
            for v in range(self.n_nodes):
                p = self.preds[v]
                if self.kinds[v] == "output":
                    if self.output_to is None and p.size:
                        a[:, v] = a[:, p].max(axis=1)
                    continue
                if p.size:
                    a[:, v] = np.maximum(a[:, v], a[:, p].max(axis=1))
        a[:, self.input_idx] = self.input_on
        for v in self.weight_idx[::-1]:
            a[:, v] = a[:, self.succs[v]].min(axis=1)
        return a

    def restrict(self, devices: Sequence[int]) -> CostModel:
        """A cost model over a subset of the devices (sorted, containing ``input_on`` and ``output_to``).

        Transfers between two kept devices cost what they cost in this model (multi-hop included),
        so a plan of the restricted model, mapped back with ``np.asarray(devices)[plan]``, has the
        same latency here (device 0 must be kept for ``edge_memory_bytes`` to mean the same)."""
        dev = [int(d) for d in devices]
        if len(dev) < 2 or sorted(set(dev)) != dev or dev[0] < 0 or dev[-1] >= self.k:
            raise ValueError(f"devices must be >= 2 sorted distinct indices in [0, {self.k - 1}], got {devices!r}")
        for name, d in (("input_on", self.input_on), ("output_to", self.output_to)):
            if d is not None and d not in dev:
                raise ValueError(f"devices {dev} must contain {name}={d}")
        links: list[list[Link | None]] = [[None] * len(dev) for _ in dev]
        for i, a in enumerate(dev):
            for j, b in enumerate(dev):
                if a != b:
                    per_byte = self.transfer_ms_per_byte[a, b]
                    links[i][j] = Link(8e-3 / per_byte, rtt_ms=float(self.transfer_fixed_ms[a, b]))
        cm = CostModel(self.graph, self.node_ms[dev], links, input_on=dev.index(self.input_on),
                       output_to=None if self.output_to is None else dev.index(self.output_to),
                       power_w=None if self.power_w is None else self.power_w[dev],
                       tx_power_w=None if self.tx_power_w is None else self.tx_power_w[dev])
        cm.transfer_fixed_ms = self.transfer_fixed_ms[np.ix_(dev, dev)].copy()
        cm.transfer_ms_per_byte = self.transfer_ms_per_byte[np.ix_(dev, dev)].copy()
        return cm

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, assign: Any) -> dict[str, np.ndarray]:
        """Score a population of plans.

        Args:
            assign: int array ``(pop, n_nodes)`` (or ``(n_nodes,)``) of device indices. Inputs and
                pinned outputs are overwritten with their devices; plans are not repaired (use
                :meth:`repair` first to score only executable plans).

        Returns:
            dict of arrays of shape ``(pop,)``: ``latency_ms``, ``compute_ms``, ``transfer_ms``,
            ``edge_memory_bytes``, ``edge_param_bytes``, ``edge_activation_bytes``,
            ``bytes_transferred``, ``n_transfers``, ``energy_j`` (only with ``power_w``); and
            ``device_ms`` of shape ``(pop, k)`` (compute time per device).
        """
        a = self.pin(assign)
        pop, n, k = a.shape[0], self.n_nodes, self.k
        cols = np.arange(n)
        comp = self.node_ms[a, cols[None, :]]  # (pop, n)
        device_ms = np.stack([np.where(a == d, comp, 0.0).sum(axis=1) for d in range(k)], axis=1)
        compute_ms = device_ms.sum(axis=1)

        # a tensor is sent once to every other device that consumes it: recv[p, u, d] for producer u
        # (vectorised over the population and all producers at once)
        senders = self._senders
        transfer_ms, bytes_tx, n_tx = np.zeros(pop), np.zeros(pop), np.zeros(pop)
        send_ms = np.zeros((pop, k))
        if len(senders):
            dst_dev = a[:, self._edge_dst]  # (pop, E)
            onehot = (dst_dev[:, :, None] == np.arange(k)[None, None, :]).astype(np.int8)  # (pop, E, k)
            recv = np.maximum.reduceat(onehot, self._edge_start, axis=1).astype(bool)  # (pop, U, k)
            src = a[:, senders]  # (pop, U)
            recv &= src[:, :, None] != np.arange(k)[None, None, :]
            size = self.out_bytes[senders][None, :, None]
            t = np.where(recv, self.transfer_fixed_ms[src] + self.transfer_ms_per_byte[src] * size, 0.0)  # (pop, U, k)
            transfer_ms = t.sum(axis=(1, 2))
            bytes_tx = (recv * size).sum(axis=(1, 2))
            n_tx = recv.sum(axis=(1, 2)).astype(float)
            if self.tx_power_w is not None:
                per_sender = t.sum(axis=2)  # (pop, U): time each producer's device spends sending
                for d in range(k):
                    send_ms[:, d] = np.where(src == d, per_sender, 0.0).sum(axis=1)

        edge_param = (a == 0).astype(float) @ self.param_bytes
        edge_act = self._edge_activation_peak(a)
        out = {
            "latency_ms": compute_ms + transfer_ms,
            "compute_ms": compute_ms,
            "transfer_ms": transfer_ms,
            "device_ms": device_ms,
            "edge_memory_bytes": edge_param + edge_act,
            "edge_param_bytes": edge_param,
            "edge_activation_bytes": edge_act,
            "bytes_transferred": bytes_tx,
            "n_transfers": n_tx,
        }
        if self.power_w is not None:
            energy = device_ms @ self.power_w / 1e3
            if self.tx_power_w is not None:
                energy = energy + send_ms @ self.tx_power_w / 1e3
            out["energy_j"] = energy
        return out

    def _edge_activation_peak(self, a: np.ndarray) -> np.ndarray:
        """Peak activation bytes live on device 0 (see the module docstring for the liveness rule)."""
        pop, n = a.shape
        on_edge = a == 0
        end = np.full((pop, n), -1, dtype=np.intp)  # last position the tensor of u is live on the edge, -1: never

        def last_use(u: int) -> np.ndarray:
            e = np.full(pop, -1, dtype=np.intp)
            for c in self.succs[u]:
                use = end[:, c] if self.is_view[c] else c
                e = np.maximum(e, np.where(on_edge[:, c], use, -1))
            return np.where(on_edge[:, u], np.maximum(e, u), e)

        if not _VECTOR_PEAK:
            for u in range(n - 1, -1, -1):
                end[:, u] = last_use(u)
        else:
            # only views chain (a view's tensor lives as long as its consumers): those few go node by node,
            # in reverse order; every other producer takes the max over its consumers in one pass
            for u in np.flatnonzero(self.is_view)[::-1]:
                end[:, u] = last_use(int(u))
            e = np.full((pop, n), -1, dtype=np.intp)
            if len(self._senders):
                dst = self._edge_dst
                use = np.where(self.is_view[dst][None, :], end[:, dst], dst[None, :])
                e[:, self._senders] = np.maximum.reduceat(np.where(on_edge[:, dst], use, -1), self._edge_start, axis=1)
            plain = ~self.is_view
            end[:, plain] = np.where(on_edge, np.maximum(e, np.arange(n)[None, :]), e)[:, plain]
        size = np.where(on_edge & self.is_alias[None, :], 0.0, self.out_bytes[None, :])
        size = np.where(end >= 0, size, 0.0)
        diff = np.zeros((pop, n + 1))
        diff[:, :n] += size
        rows = np.repeat(np.arange(pop), n)
        np.add.at(diff, (rows, np.where(end >= 0, end + 1, n).ravel()), -size.ravel())
        return np.cumsum(diff[:, :n], axis=1).max(axis=1) if n else np.zeros(pop)

    def plan(self, assign: Any, method: str = "", **info: Any) -> Plan:
        """A :class:`Plan` of one assignment ``(n_nodes,)`` with its evaluated metrics."""
        a = self.pin(assign)[0]
        m = self.evaluate(a[None, :])
        metrics = {key: (v[0].tolist() if np.ndim(v[0]) else float(v[0])) for key, v in m.items()}
        return Plan(a, metrics, method, self.node_names, dict(info))


def repair(cost_model: CostModel, assign: Any) -> np.ndarray:
    """Make every plan executable as a sequence edge → … → cloud (vectorised over the population).

    In topological order every node is moved to the latest device among itself and its predecessors
    (running max), so device indices never decrease along an edge; inputs are pinned to
    ``input_on``; outputs to ``output_to`` (returning the result there is a transfer, not a
    violation), or with ``output_to=None`` to the latest device of their predecessors. Finally,
    input-independent ``constant`` nodes (and views of them) are moved to the earliest device among
    their consumers: still monotone, and never more transfer or edge memory.

    Args:
        cost_model: gives the graph structure and pins.
        assign: device indices ``(pop, n_nodes)`` (floats are rounded, values clipped to ``[0, k-1]``).

    Returns:
        int array ``(pop, n_nodes)``.
    """
    return cost_model.repair(assign)


# -- argument checks ---------------------------------------------------------------------------
def _node_ms_matrix(node_ms: Any, n: int, condition: int | None) -> np.ndarray:
    try:
        rows = [np.asarray(x, dtype=float) for x in node_ms]
    except (TypeError, ValueError):
        raise ValueError("node_ms must be a sequence (one per device) of float arrays") from None
    if len(rows) < 2:
        raise ValueError(f"node_ms must give at least 2 devices (edge → cloud), got {len(rows)}")
    out = []
    for d, r in enumerate(rows):
        if r.ndim == 2:
            if r.shape[0] == 1:
                r = r[0]
            elif condition is None:
                raise ValueError(f"node_ms[{d}] has {r.shape[0]} conditions (shape {r.shape}); pass condition=<row index>")
            else:
                if not 0 <= condition < r.shape[0]:
                    raise ValueError(f"condition={condition} out of range for node_ms[{d}] with {r.shape[0]} rows")
                r = r[condition]
        if r.shape != (n,):
            raise ValueError(f"node_ms[{d}] must have shape ({n},) (one value per graph node), got {r.shape}")
        if not np.all(np.isfinite(r)) or (r < 0).any():
            raise ValueError(f"node_ms[{d}] must be finite and >= 0")
        out.append(r)
    return np.stack(out)


def _device_arg(name: str, d: Any, k: int) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d < k:
        raise ValueError(f"{name} must be a device index in [0, {k - 1}], got {d!r}")
    return int(d)


def _per_device(name: str, values: Any, k: int) -> np.ndarray | None:
    if values is None:
        return None
    v = np.asarray(values, dtype=float).ravel()
    if v.shape != (k,) or not np.all(np.isfinite(v)) or (v < 0).any():
        raise ValueError(f"{name} must give one finite value >= 0 (watts) per device ({k}), got {values!r}")
    return v


def _link_costs(links: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(fixed_ms, ms_per_byte) matrices ``(k, k)`` of the cheapest-by-construction route a → b."""
    fixed = np.zeros((k, k))
    per = np.zeros((k, k))
    if isinstance(links, Link):
        links = [links] * (k - 1)
    links = list(links)
    if links and all(isinstance(x, Link) for x in links):
        if len(links) != k - 1:
            raise ValueError(f"links: need {k - 1} Link (one per adjacent device pair) for {k} devices, got {len(links)}")
        for a in range(k):
            for b in range(k):
                lo, hi = min(a, b), max(a, b)
                fixed[a, b] = sum(x.rtt_ms for x in links[lo:hi])
                per[a, b] = sum(x.ms_per_byte for x in links[lo:hi])
        return fixed, per
    if len(links) != k or any(isinstance(r, Link) or len(r) != k for r in links):
        raise ValueError(f"links must be {k - 1} Link (adjacent pairs) or a {k}x{k} matrix of Link")
    for a in range(k):
        for b in range(k):
            if a == b:
                continue
            x = links[a][b] if links[a][b] is not None else links[b][a]
            if not isinstance(x, Link):
                raise ValueError(f"links[{a}][{b}] (and links[{b}][{a}]) must be a Link, got {links[a][b]!r}")
            fixed[a, b], per[a, b] = x.rtt_ms, x.ms_per_byte
    return fixed, per
