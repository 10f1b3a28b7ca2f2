"""Host/device overlap: a whole model's eager GPU latency from each node's host and GPU stage times.

Eager PyTorch on a GPU is a two-stage pipeline. The host runs each node's Python, dispatch and kernel
launches (``h_i``) and returns at once; the GPU runs the node's kernels (``g_i``) once they are issued
and the previous node's kernels are done. One request — a call, then a synchronisation — ends at::

    t_h[i] = t_h[i-1] + h_i
    t_g[i] = max(t_g[i-1], t_h[i]) + g_i
    latency = max(t_g[N], t_h[N]) + sync_ms

Back-to-back calls (a timing window of ``calls`` calls and one synchronisation) run the same
recurrence over the node sequence repeated ``calls`` times; per call it tends to ``max(ΣH, ΣG)``.
A module timed alone in such a window costs about ``max(h_i, g_i)``, so the plain sum of isolated
latencies over-counts every stretch where the two stages overlap — the 1.07–1.94× over eager GPU
latency that DESIGN.md records — and under-counts nothing.

The stage times are predicted by two ordinary :class:`~latpred.Predictor` objects trained on a CUDA
store's ``host_ms`` and ``gpu_ms`` (``latpred train --target host_ms`` / ``--target gpu_ms``; the CUDA
device times both for every spec, see :meth:`latpred.profiling.devices.CudaDevice._components`). The
recurrence is the composition; its corrections are measured, not fitted — host times at one host speed
(the probe), the GPU stage without a CUDA graph's replay overhead — except one number, the in-model /
isolated host time (:meth:`OverlapPredictor.fit_host_factor`, fitted on whole models measured with their
stage times: keep the evaluated models out of it). ``node_ms`` of the returned
:class:`~latpred.graph.predict.GraphLatency` are each node's increment of the request's finish time, so
they are non-negative and sum to the total, as the partitioner needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError
from .predict import GraphLatency

__all__ = ["overlap_ms", "OverlapPredictor", "FORMAT"]

FORMAT = "latpred-overlap-predictor"
_VERSION = 1


def overlap_ms(host_ms: Any, gpu_ms: Any, calls: int = 1, sync_ms: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-call latency of ``calls`` back-to-back calls and each node's share of the first call.

    ``host_ms`` and ``gpu_ms`` have shape ``conditions + (nodes,)`` in execution order. Returns
    ``(per_call_ms, node_ms)``: ``per_call_ms`` has the conditions' shape (the finish time of the last
    call, plus ``sync_ms``, divided by ``calls``); ``node_ms`` has the inputs' shape — how much each node
    of a single call moved the finish time ``max(t_g, t_h)`` on — and sums to the single-call latency
    less ``sync_ms``.
    """
    h, g = np.asarray(host_ms, dtype=float), np.asarray(gpu_ms, dtype=float)
    if h.shape != g.shape or h.ndim < 1:
        raise SpecError(f"host and GPU stage times need the same shape (conditions, nodes), got {h.shape} and {g.shape}")
    if isinstance(calls, bool) or not isinstance(calls, (int, np.integer)) or calls < 1:
        raise SpecError(f"calls must be a positive integer, got {calls!r}")
    if not np.all(np.isfinite(h)) or not np.all(np.isfinite(g)) or (h < 0).any() or (g < 0).any():
        raise SpecError("stage times must be finite and non-negative")
    if h.shape[-1] == 0:
        return np.full(h.shape[:-1], float(sync_ms)) / calls, h.copy()
    if h.size // h.shape[-1] > _LOOP_ABOVE:
        return _overlap_loop(h, g, int(calls), sync_ms)
    reps = (1,) * (h.ndim - 1) + (int(calls),)
    t_g = _gpu_finish(np.tile(h, reps), np.tile(g, reps))
    first = t_g[..., :h.shape[-1]]  # the GPU never finishes a node before the host issued it: finish = t_g
    node = np.diff(first, axis=-1, prepend=0.0)
    return (t_g[..., -1] + sync_ms) / calls, node


#: above this many conditions the recurrence steps node by node over vectors of conditions (they stay in
#: cache), below it runs as running sums over whole arrays (no Python loop: resnet50's 177 nodes at one
#: condition 0.9 -> 0.05 ms; at 1,000 conditions the loop was ~3x faster on the 2-core CPU)
_LOOP_ABOVE = 32


def _overlap_loop(h: np.ndarray, g: np.ndarray, calls: int, sync_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`overlap_ms` stepping node by node (each step over all conditions at once)."""
    t_h = np.zeros(h.shape[:-1])
    t_g = np.zeros(h.shape[:-1])
    node = np.zeros_like(h)
    done = np.zeros(h.shape[:-1])
    for c in range(calls):
        for i in range(h.shape[-1]):
            t_h = t_h + h[..., i]
            t_g = np.maximum(t_g, t_h) + g[..., i]
            if c == 0:
                node[..., i] = t_g - done
                done = t_g
    return (t_g + sync_ms) / calls, node


def _gpu_finish(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``t_g`` of the recurrence for every node, without a Python loop over nodes.

    With ``G`` the running sum of ``g`` and ``u[i] = t_g[i] - G[i]``, the recurrence reads
    ``u[i] = max(u[i-1], t_h[i] - G[i-1])`` with ``u[-1] = 0``: a running maximum. Each ``t_h[i] - G[i-1]``
    is at least ``h_0 >= 0`` at ``i = 0``, so the running maximum is never below the start value."""
    # node-major copies: numpy accumulates along the first axis with vectorised inner loops, along the
    # last one element by element
    hn, gn = np.ascontiguousarray(np.moveaxis(h, -1, 0)), np.ascontiguousarray(np.moveaxis(g, -1, 0))
    G = np.cumsum(gn, axis=0)
    u = np.maximum.accumulate(np.cumsum(hn, axis=0) - (G - gn), axis=0)
    return np.moveaxis(u + G, 0, -1)


def _host_scale(host_scale: Any) -> np.ndarray:
    """``host_scale`` as an array, refused unless every value is positive and finite."""
    scale = np.asarray(host_scale, dtype=float)
    if not np.all(np.isfinite(scale)) or (scale <= 0).any():
        raise SpecError(f"host_scale must be positive and finite, got {host_scale!r}")
    return scale


class _Description:
    """What ``predictor.composition.describe()`` prints for an overlap predictor."""

    def __init__(self, owner: OverlapPredictor) -> None:
        self.owner = owner

    def describe(self) -> str:
        o = self.owner
        return (f"composition: host/device overlap (two-stage pipeline; host stage x {o.host_factor:.3g}, GPU stage minus "
                f"{1e3 * (o.gpu_overhead_ms or 0.0):.2f} us replay overhead per node, sync {o.sync_ms:.3g} ms)")


@dataclass
class OverlapPredictor:
    """Whole-model GPU latency from a host-stage and a GPU-stage predictor composed by :func:`overlap_ms`.

    ``host`` and ``gpu`` are :class:`~latpred.Predictor` objects of the same GPU trained on the
    ``host_ms`` and ``gpu_ms`` targets; ``sync_ms`` is the fixed cost of the final synchronisation;
    ``gpu_overhead_ms`` is taken off every node's GPU stage: an isolated ``gpu_ms`` is a CUDA graph
    replay and carries the replay's own overhead (~1.2 µs on the H200), which kernels issued back to
    back inside a model do not pay.
    :meth:`predict_graph` takes the conditions :meth:`latpred.Predictor.predict_graph` takes.
    """

    host: Any
    gpu: Any
    sync_ms: float = 0.0
    #: GPU-stage time of a call that launches nothing (None: the GPU predictor's ``gpu_replay_overhead_ms``, else 0)
    gpu_overhead_ms: float | None = None
    #: a node's host time inside a model relative to the same module issued in a tight loop (see :meth:`fit_host_factor`)
    host_factor: float = 1.0

    def __post_init__(self) -> None:
        for name, p, want in (("host", self.host, "host_ms"), ("gpu", self.gpu, "gpu_ms")):
            got = (getattr(p, "metadata", None) or {}).get("target", "latency_ms")
            if got != want:
                raise SpecError(f"the {name} predictor was trained on {got!r}; it must be trained on {want!r} "
                                f"(latpred train --target {want})")
        fp = [(getattr(p, "metadata", None) or {}).get("device_fingerprint") for p in (self.host, self.gpu)]
        if fp[0] and fp[1] and fp[0] != fp[1]:
            raise SpecError(f"host and GPU predictors come from different devices ({fp[0]} vs {fp[1]})")
        if not np.isfinite(self.sync_ms) or self.sync_ms < 0:
            raise SpecError(f"sync_ms must be finite and >= 0, got {self.sync_ms!r}")
        if not np.isfinite(self.host_factor) or self.host_factor <= 0:
            raise SpecError(f"host_factor must be finite and > 0, got {self.host_factor!r}")
        if self.gpu_overhead_ms is None:
            v = (getattr(self.gpu, "metadata", None) or {}).get("gpu_replay_overhead_ms", 0.0)
            self.gpu_overhead_ms = float(v) if isinstance(v, (int, float)) else 0.0
        if not np.isfinite(self.gpu_overhead_ms) or self.gpu_overhead_ms < 0:
            raise SpecError(f"gpu_overhead_ms must be finite and >= 0, got {self.gpu_overhead_ms!r}")

    # -- what the consumers of a Predictor use (latpred predict / validate, partition split) -------------
    @property
    def ops(self) -> list[str]:
        """Op types both stage predictors cover."""
        return sorted(set(self.host.ops) & set(self.gpu.ops))

    def covers(self, op: str) -> bool:
        return self.host.covers(op) and self.gpu.covers(op)

    @property
    def generic(self) -> Any:
        """The fallback for uncovered op types (both stage predictors need one; None otherwise)."""
        return self.host.generic if self.host.generic is not None and self.gpu.generic is not None else None

    @property
    def default_threads(self) -> int:
        return self.host.default_threads

    @property
    def extra_names(self) -> list[str]:
        return list(self.host.extra_names)

    @property
    def metadata(self) -> dict[str, Any]:
        """The host predictor's device facts, and the overlap's own settings."""
        h = getattr(self.host, "metadata", None) or {}
        return {"device": h.get("device", {}), "device_fingerprint": h.get("device_fingerprint"), "composition": "overlap",
                "host_probe_nominal_ms": self.host_nominal_ms, "host_factor": self.host_factor,
                "gpu_overhead_ms": self.gpu_overhead_ms, "sync_ms": self.sync_ms}

    @property
    def composition(self) -> _Description:
        return _Description(self)

    @property
    def host_nominal_ms(self) -> float | None:
        """The host-speed probe reading the host predictor's times are expressed at (None: not normalised)."""
        v = (getattr(self.host, "metadata", None) or {}).get("host_probe_nominal_ms")
        return float(v) if isinstance(v, (int, float)) and v > 0 else None

    def host_scale_for(self, probe_ms: Any) -> np.ndarray:
        """``host_scale`` for a host whose probe (:meth:`~latpred.profiling.devices.CudaDevice._host_probe`) reads ``probe_ms`` now."""
        nominal = self.host_nominal_ms
        if nominal is None:
            raise SpecError("the host predictor was trained on host times without a host-speed probe; "
                            "it has no nominal to scale against")
        p = np.asarray(probe_ms, dtype=float)
        if not np.all(np.isfinite(p)) or (p <= 0).any():
            raise SpecError(f"host probe readings must be positive and finite, got {probe_ms!r}")
        return p / nominal

    def predict(self, specs: Any, host_scale: Any = 1.0) -> np.ndarray:
        """Isolated latency (ms) of each spec: ``max(host × host_scale, gpu)``, what a module costs timed alone
        in a loop (its stages overlap across calls; no in-model host factor, no overhead taken off). On the
        H200 this beat a latency regressor on held-out specs, 76.6% acc10 against 42.1%
        (``bench/gpu_stage_modules.py``)."""
        specs = list(specs)
        scale = np.broadcast_to(_host_scale(host_scale), (len(specs),))
        return np.maximum(self.host.predict(specs) * scale, self.gpu.predict(specs))

    def stages(self, graph: Any, batch_size: Any = None, utilization: Any = 0.0, threads: Any = None,
               host_scale: Any = 1.0, **extra: Any) -> tuple[np.ndarray, np.ndarray, Any]:
        """Predicted host and GPU stage times per node, shape ``conditions + (nodes,)``, and the host prediction.

        ``host_scale`` (scalar or broadcastable to the conditions) multiplies the host stage: the host's
        speed relative to the one the host predictor learnt (:meth:`host_scale_for`)."""
        h = self.host.predict_graph(graph, batch_size, utilization, threads, **extra)
        g = self.gpu.predict_graph(graph, batch_size, utilization, threads, **extra)
        scale = _host_scale(host_scale)
        return h.isolated_ms * (self.host_factor * scale)[..., None], np.maximum(g.isolated_ms - self.gpu_overhead_ms, 0.0), h

    def fit_host_factor(self, graphs: Any, cases: Any) -> float:
        """Set and return :attr:`host_factor` from whole models measured with their host stage.

        ``cases``: dicts with ``model`` (a key of ``graphs``), ``batch_size``, ``utilization``, the model's
        measured ``host_ms`` and optionally the ``host_probe_ms`` read with it. The factor is the median of
        measured / predicted host time (the predicted one at the case's probe). Issued in a tight loop, a
        module finds the host's caches warm with its own code path; inside a model every node follows a
        different one (on the H200's host the zoo's nodes took 1.2-1.5x their isolated host time).
        Fit it on models that are not the ones evaluated (``bench/gpu_overlap.py`` does so leave-one-model-out).
        """
        ratios = []
        for c in cases:
            graph = graphs[c["model"]]
            scale = self.host_scale_for(c["host_probe_ms"]) if c.get("host_probe_ms") and self.host_nominal_ms else 1.0
            h = self.host.predict_graph(graph, c["batch_size"], c.get("utilization", 0.0)).isolated_ms.sum() * scale
            if c.get("host_ms") and h > 0:
                ratios.append(float(c["host_ms"]) / float(h))
        if not ratios:
            raise SpecError("fit_host_factor needs cases with a measured host_ms")
        self.host_factor = float(np.median(ratios))
        return self.host_factor

    def predict_graph(self, graph: Any, batch_size: Any = None, utilization: Any = 0.0, threads: Any = None,
                      calls: int | str = "window", host_scale: Any = 1.0, window_ms: float | None = None,
                      **extra: Any) -> GraphLatency:
        """Per-call latency as latpred measures it (``calls="window"``), of one request (``calls=1``), or of
        ``calls`` back-to-back calls.

        ``"window"`` mirrors the timing protocol every measured latency here comes from
        (:class:`~latpred.profiling.devices.TimingProtocol`): as many back-to-back calls as fill a
        ``window_ms`` window (default: the protocol's, 10 ms), then one synchronisation. It is computed from
        the first two calls of the recurrence — ``(F1 + (n - 1) (F2 - F1)) / n`` with ``F1``, ``F2`` the
        finish times of one and two calls — which is exact once a call's pipeline repeats itself.
        """
        h, g, base = self.stages(graph, batch_size, utilization, threads, host_scale, **extra)
        one, node = overlap_ms(h, g, 1, self.sync_ms)
        if isinstance(calls, str):
            if calls != "window":
                raise SpecError(f"calls must be a positive integer or 'window', got {calls!r}")
            if window_ms is None:
                from ..profiling.devices import TimingProtocol

                window_ms = TimingProtocol().window_ms
            if not (np.isfinite(window_ms) and window_ms > 0):
                raise SpecError(f"window_ms must be positive, got {window_ms!r}")
            two, _ = overlap_ms(h, g, 2, self.sync_ms)
            f1, f2 = one - self.sync_ms, 2 * two - self.sync_ms
            n = np.maximum(1.0, np.round(window_ms / np.maximum(one, 1e-12)))
            total = (f1 + (n - 1) * (f2 - f1) + self.sync_ms) / n
            label = f"overlap(window {window_ms:g} ms)"
        else:
            total, _ = overlap_ms(h, g, calls, self.sync_ms)
            label = f"overlap(calls={calls})"
        if calls != 1:
            node = node * (total / np.maximum(node.sum(axis=-1), 1e-12))[..., None]
        return GraphLatency(base.node_names, node, np.maximum(h, g), total, base.conditions, base.fallback_nodes,
                            composition=label, out_of_domain_nodes=base.out_of_domain_nodes)

    def save(self, path: str | Path) -> Path:
        """Write ``host/``, ``gpu/`` (ordinary predictor directories) and ``overlap.json``."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        self.host.save(d / "host")
        self.gpu.save(d / "gpu")
        (d / "overlap.json").write_text(json.dumps({"format": FORMAT, "version": _VERSION, "sync_ms": self.sync_ms,
                                                    "gpu_overhead_ms": self.gpu_overhead_ms, "host_factor": self.host_factor},
                                                   indent=2))
        return d

    @classmethod
    def load(cls, path: str | Path) -> OverlapPredictor:
        from ..predictor import Predictor

        d = Path(path)
        meta_path = d / "overlap.json"
        if not meta_path.is_file():
            raise SpecError(f"{d} is not an overlap predictor directory (no overlap.json)")
        try:
            doc = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise SpecError(f"{meta_path}: not valid JSON ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SpecError(f"{meta_path}: not a {FORMAT} file")
        if doc.get("version") != _VERSION:
            raise SpecError(f"{meta_path}: format version {doc.get('version')!r} is not supported (this latpred reads {_VERSION})")
        overhead = doc.get("gpu_overhead_ms")
        return cls(Predictor.load(d / "host"), Predictor.load(d / "gpu"), float(doc.get("sync_ms", 0.0)),
                   None if overhead is None else float(overhead), float(doc.get("host_factor", 1.0)))
