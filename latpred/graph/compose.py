"""Composition: isolated node latencies -> whole-model latency.

Profiling times each module alone, with its inputs and weights hot in cache and nothing queued
around it; a model runs nodes back to back. On the 2-core CPU the plain sum of isolated latencies
is 0.71-0.89x of the model's latency (DESIGN.md), on an eager GPU 1.07-1.94x. The composition model
is linear and per node, so node latencies stay additive (the partitioner sums them per device):

    node_ms = scale[class(node)] * isolated_ms(node) + overhead_ms[kind(node)]
              + ms_per_param_mb * min(param_MiB(node), weight_cache_mib)
              + ms_per_activation_mb * min(output_MiB(node), activation_cap_mib)
              + ms_per_spilled_mb * clip(output_MiB(node) - activation_cap_mib, 0, spill_cap_mib - activation_cap_mib)
    model_ms = sum(node_ms)

with classes ``conv`` (dense convolutions), ``dwconv`` (grouped and depthwise convolutions: few
FLOPs per byte, so alone and in a model they run at different speeds from dense ones), ``gemm``
(linear, matmul, attention, embedding), ``memory``
(element-wise, normalisation, pooling, concatenation, layout copies), ``maxpool`` (max-pools over ReLU outputs past
the stem, :func:`zero_clamped_inputs`: their compare-and-branch loop runs 0.71-0.84x as long on a model's nearly
constant activation planes as on the profiler's random inputs, measured on googlenet's at batch 8 on the dev VM; in
context 0.55-0.88x isolated across the zoo's max-pools, average pools 1.03-1.07x; see docs/benchmarks.md) and
``generic`` (fallback nodes), a fixed overhead per compute node (dispatch; the per-view-node term is kept in the format
but fitted as 0, see :meth:`Composition.fit`), and a cost per MiB of
weights and of output activations (in a model, weights are read cold once per inference and
activations leave the cache between layers; profiling repeats each module with both hot). Scales
capture what remains. A node's weights count only up to ``weight_cache_mib`` (the device's last-level
cache, :attr:`~latpred.Predictor.cache_mib`): weights larger than the cache stream from memory on every
call, so profiling the layer alone already measured them cold (AlexNet's 144 MiB classifier layer at
batch 1 was over-predicted 1.6x in leave-one-model-out without the cap; with it, on 3-pass measurements
of the zoo and 30 random networks, leave-one-model-out MAPE fell from 13.2% to 11.8% and acc10 stayed
within noise, 51.6% -> 50.8%; docs/benchmarks.md). By the same argument such a node should pay nothing, not the
cost of ``weight_cache_mib``: with ``streamed_weights_free`` (compositions fitted since 2026-12-04) weights above
the cache are free (:func:`cold_weights`); refitted so on the same random-network cases, the zoo's acc10 rose from
60.7% to 64.3% and from 58.3% to 61.9% on two pinned measurements (AlexNet at batch 1 had read 1.30-1.44x). A node's
output likewise counts only up to
``activation_cap_mib`` (the CPU's private per-core cache, :attr:`~latpred.Predictor.activation_cap_mib`): the
in-context cost of an output is that of the part that would have stayed in the core's cache when the
module runs alone; beyond it, the module streams its output to memory alone as in a model. Without the
cap the per-MiB activation term fitted on random networks grew linearly with the batch and put
depthwise-heavy models 1.3-1.6x over their measurement at batch 8 and 32; with a 1 MiB cap (the per-core L2
of the 2-core dev VM) the random-network composition scored the zoo at 58.3% acc10 / MAPE 10.6% against
45.2% / 15.1% uncapped that evening, and 58.7% / 13.1% against 49.2% / 18.6% on the afternoon's zoo
(docs/benchmarks.md). Nodes that write into their input (``nn.ReLU(inplace=True)``, ``x += y``: the
``inplace`` spec parameter) allocate no output and pay no activation cost (``inplace_free``): the term is
fitted on out-of-place outputs, and charged to the in-place activations of torchvision's CNNs it put
mobilenet_v2 and efficientnet_b0 at batch 1 25-33% over their measurement on one thread.
The last term (compositions fitted since 2026-12-06; :func:`spilled_outputs`) charges the part of an output that
spills past the core's private cache but fits the last-level cache (``spill_cap_mib``, the LLC,
:attr:`~latpred.Predictor.cache_mib`): profiled alone, a layer reruns with its input and output there; in a model the
tensors around it push them out. Past the LLC, the layer streamed its output from memory alone too. The one-slope
activation term could not hold both ends: uncapped it over-predicted depthwise-heavy models at batch 8 and 32, capped
at the L2 it left them under-predicted at batch 8, where most outputs are 1-30 MiB (mobilenet_v2 at batch 8: its
depthwise, normalisation and activation nodes ran 1.28x, 1.49x and 2.1x their isolated time in the model, its dense
convolutions 1.10x; under load on one thread the model took 1.23x the sum of its isolated nodes at batch 8, 1.06x at
batch 32). Refitted on the same calibration cases, the zoo against the median of nine runs read 91.7% acc10 / MAPE
4.50% against 85.7% / 5.35%, and 2.4-4.8 points of acc10 better with each of four MEDN seeds (docs/benchmarks.md).
Coefficients are fitted by non-negative least squares on *relative* error over whole-network measurements,
separately per regime: unloaded (utilization 0), loaded, and unloaded on a single thread of a multi-threaded
device (measured on the 2-core CPU: at one thread the zoo composes differently — vit_b_16 ran 19–23% above the
unloaded 2-thread composition — see docs/benchmarks.md). A regime without enough measurements shares the
coefficients of the nearest one (single-thread → unloaded; otherwise all rows), and every class scale is
pulled towards 1 (``shrink``, see :meth:`Composition.fit`). They are fitted on generated random networks
(:mod:`latpred.graph.calibrate`) and/or on measured real models that are not the ones evaluated (``latpred
calibrate --from-validation``; ``bench/composition_lomo.py`` scores it leave-one-model-out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpecError

__all__ = ["Composition", "CLASSES", "FEATURES", "node_class", "node_classes", "zero_clamped_inputs", "REGIMES",
           "DEFAULT_SHRINK", "cold_weights", "spilled_outputs"]

CLASSES = ("conv", "dwconv", "gemm", "memory", "maxpool", "generic")
#: a class added later takes, in a composition written before it, the scale of the class that held its nodes then
#: (``dwconv`` from 2026-12-01, ``maxpool`` from 2026-12-05): the same predictions as when it was written
_INHERITS = {"dwconv": "conv", "maxpool": "memory"}
_CLASS_OF = {"conv2d": "conv", "conv_transpose2d": "conv", "linear": "gemm", "matmul": "gemm", "sdpa": "gemm",
             "mha": "gemm", "embedding": "gemm"}
#: activations whose output is clamped at zero (see :func:`zero_clamped_inputs`)
ZERO_CLAMPING = frozenset({"relu", "relu6"})
#: ops whose output holds only values of their inputs: a clamp at zero survives them
_CLAMP_KEEPING = frozenset({"cat", "maxpool2d", "flatten", "dropout"})
#: conditions the composition is fitted for separately
REGIMES = ("unloaded", "loaded", "single_thread")
#: regression features of a model: isolated ms per class, node counts, weight and activation MiB of compute nodes
FEATURES = (*CLASSES, "compute_nodes", "view_nodes", "param_mib", "activation_mib", "spilled_mib")
_N_FEATURES = len(FEATURES)
#: features of compositions written before the spilled-output term (2026-12-06): read with that term at 0
_FEATURES_BEFORE_SPILL = FEATURES[:-1]
#: default strength of the pull towards the plain sum in :meth:`Composition.fit` (see there)
DEFAULT_SHRINK = 3.0
_K = len(CLASSES)


def node_class(op: str | None, groups: Any = 1, clamped_input: bool = False) -> str:
    """Composition class of an op type (``None``: a fallback node); a convolution with ``groups`` > 1 is ``dwconv``,
    a max-pool is ``maxpool`` when its input is clamped at zero (``clamped_input``, :func:`zero_clamped_inputs`)."""
    if op is None:
        return "generic"
    if op == "maxpool2d":
        return "maxpool" if clamped_input else "memory"
    cls = _CLASS_OF.get(op, "memory")
    return "dwconv" if cls == "conv" and groups is not None and int(groups) > 1 else cls


def zero_clamped_inputs(graph: Any) -> list[bool]:
    """Per node of a :class:`~latpred.graph.ModelGraph` (in order): whether every tensor it reads is clamped at zero by
    a ReLU or ReLU6 (:data:`ZERO_CLAMPING`), directly or through views, flattens, dropouts, concatenations and
    max-pools, with at least one more activation between the model input and that ReLU (not the stem's).

    Max-pooling such values runs faster in a model than the profiler measured it on random inputs. Past the first
    layer, a convolution reads non-negative activations, so each output channel carries an offset larger than its
    spatial variation, and after the ReLU whole planes are zero or nearly constant: the max-pool's compare-and-branch
    loop predicts them (googlenet with random weights on random images, batch 8, dev VM: 0.71-0.84x the time on random
    inputs of the same shape; the same values shuffled, SiLU in place of ReLU in a random network, or the stem's
    max-pool, whose ReLU follows a convolution of the zero-mean image: 0.93-1.05x; docs/benchmarks.md). The size of
    the effect depends on the values, so on the weights: it is fitted on random-weight networks, as the zoo is
    validated; for trained models, calibrate on real models (``latpred calibrate --from-validation``)."""
    preds: dict[str, list[str]] = {n.name: [] for n in graph.nodes}
    for u, v in graph.edges:
        preds[v].append(u)
    clamped: dict[str, bool] = {}  # the node's output is clamped
    depth: dict[str, int] = {}  # most activations on a path from the model input
    reads: list[bool] = []  # every input of the node is clamped
    for n in graph.nodes:
        ps = preds[n.name]
        depth[n.name] = max((depth[p] for p in ps), default=0) + (n.op == "activation")
        reads.append(bool(ps) and all(clamped[p] for p in ps))
        if n.op == "activation":
            clamped[n.name] = n.spec.params.get("fn") in ZERO_CLAMPING and depth[n.name] >= 2
        else:
            clamped[n.name] = (n.kind == "view" or n.op in _CLAMP_KEEPING) and reads[-1]
    return reads


def node_classes(graph: Any) -> list[str]:
    """:func:`node_class` of every node of a graph (its op, convolution groups and zero-clamped input)."""
    return [node_class(n.op, node_groups(n), c) for n, c in zip(graph.nodes, zero_clamped_inputs(graph))]


def node_groups(node: Any) -> Any:
    """A graph node's convolution ``groups`` (1 for nodes without a spec or without the parameter): what
    :func:`node_class` needs besides the op type."""
    return node.spec.params.get("groups", 1) if getattr(node, "spec", None) is not None else 1


def regime(utilization: Any, threads: Any = None, default_threads: int | None = None) -> np.ndarray:
    """Index in :data:`REGIMES` per condition: loaded (utilization > 0), single_thread (unloaded, 1 thread,
    on a device whose default is more; ``threads`` None or 0 = the default), else unloaded."""
    u = np.asarray(utilization, dtype=float)
    out = (u > 0).astype(int)
    if threads is not None and default_threads != 1:
        t = np.broadcast_to(np.asarray([0 if v is None else v for v in np.ravel(threads)], dtype=float).reshape(np.shape(threads)),
                            u.shape)
        out[(u <= 0) & (t == 1)] = REGIMES.index("single_thread")
    return out


@dataclass
class Composition:
    """Per-regime coefficients in :data:`FEATURES` order: scales of :data:`CLASSES`, the compute-node and
    view-node overheads (ms), ms per MiB of weights and of output activations. ``calibrated`` is False
    for the identity (plain sum)."""

    coef: dict[str, list[float]] = field(default_factory=lambda: {r: [1.0] * _K + [0.0] * (_N_FEATURES - _K) for r in REGIMES})
    calibrated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    #: per-node cap on the weight MiB that pays the cold-weight cost (None: no cap, as compositions written before it)
    weight_cache_mib: float | None = None
    #: per-node cap on the output MiB that pays the activation cost (None: no cap, as compositions written before it)
    activation_cap_mib: float | None = None
    #: in-place nodes pay no activation cost (False for compositions written before it: they paid as any node)
    inplace_free: bool = True
    #: a node whose weights exceed ``weight_cache_mib`` pays no cold-weight cost: alone it streamed them from memory
    #: too (False for compositions written before it: such a node paid for ``weight_cache_mib``, see :func:`cold_weights`)
    streamed_weights_free: bool = True
    #: upper end of the spilled-output band (the last-level cache): a node's output MiB between ``activation_cap_mib``
    #: and this pay the spilled-output cost (:func:`spilled_outputs`); None: no such term (compositions written before it)
    spill_cap_mib: float | None = None

    def __post_init__(self) -> None:
        self.weight_cache_mib = check_cache_mib(self.weight_cache_mib)
        self.activation_cap_mib = check_cache_mib(self.activation_cap_mib, "activation_cap_mib")
        self.spill_cap_mib = check_cache_mib(self.spill_cap_mib, "spill_cap_mib")
        if "single_thread" not in self.coef and "unloaded" in self.coef:  # written before the single-thread regime
            self.coef = {**self.coef, "single_thread": list(self.coef["unloaded"])}
        # coefficients without the spilled-output term (written before it): the term is 0
        self.coef = {r: list(c) + [0.0] if isinstance(c, (list, tuple)) and len(c) == _N_FEATURES - 1 else c
                     for r, c in self.coef.items()}
        for r in REGIMES:
            c = self.coef.get(r)
            if c is None or len(c) != _N_FEATURES or not all(np.isfinite(c)) or min(c) < 0:
                raise SpecError(f"composition coefficients for {r!r} must be {_N_FEATURES} non-negative numbers, got {c!r}")

    # -- applying ---------------------------------------------------------------------------
    def matrix(self, utilization: Any, threads: Any = None, default_threads: int | None = None) -> np.ndarray:
        """Coefficient rows (conditions, features) for the regime of each condition (see :func:`regime`)."""
        table = np.array([self.coef[r] for r in REGIMES])
        return table[regime(utilization, threads, default_threads)]

    def apply(self, isolated_ms: np.ndarray, classes: np.ndarray, compute: np.ndarray, view: np.ndarray,
              utilization: np.ndarray, param_mib: np.ndarray | None = None,
              activation_mib: np.ndarray | None = None, threads: Any = None, default_threads: int | None = None) -> np.ndarray:
        """Composed per-node ms (conditions, nodes) from isolated ms (conditions, nodes).

        ``classes`` is each node's index in :data:`CLASSES` (-1 for nodes with no compute), ``compute``
        and ``view`` are boolean masks of the compute and view nodes, ``param_mib`` (nodes,) and
        ``activation_mib`` (conditions, nodes) the weight and output MiB of the compute nodes;
        ``threads`` per condition (with the device's ``default_threads``) picks the single-thread regime.
        """
        coef = self.matrix(utilization, threads, default_threads)  # (C, F)
        scale = np.where(classes[None, :] >= 0, coef[:, np.maximum(classes, 0)], 0.0)
        out = scale * isolated_ms + coef[:, _K:_K + 1] * compute[None, :] + coef[:, _K + 1:_K + 2] * view[None, :]
        if param_mib is not None:
            out = out + coef[:, _K + 2:_K + 3] * (cold_weights(param_mib, self.weight_cache_mib, self.streamed_weights_free)
                                                  * compute)[None, :]
        if activation_mib is not None:
            out = out + coef[:, _K + 3:_K + 4] * capped_weights(activation_mib, self.activation_cap_mib) * compute[None, :]
            if self.spill_cap_mib is not None:
                out = out + coef[:, _K + 4:_K + 5] * spilled_outputs(activation_mib, self.activation_cap_mib,
                                                                     self.spill_cap_mib) * compute[None, :]
        return out

    # -- fitting ----------------------------------------------------------------------------
    @staticmethod
    def features(isolated_ms: np.ndarray, classes: np.ndarray, compute: np.ndarray, view: np.ndarray,
                 param_mib: np.ndarray, activation_mib: np.ndarray, weight_cache_mib: float | None = None,
                 activation_cap_mib: float | None = None, streamed_weights_free: bool = True,
                 spill_cap_mib: float | None = None) -> np.ndarray:
        """Per-condition regression features (:data:`FEATURES`): summed isolated ms per class, compute and
        view node counts, weight MiB (each node's capped at ``weight_cache_mib``), output-activation MiB
        (each node's capped at ``activation_cap_mib``) and spilled output MiB (each node's between
        ``activation_cap_mib`` and ``spill_cap_mib``, :func:`spilled_outputs`; 0 when either is None) of the compute
        nodes. Fit with the same caps the composition will apply."""
        iso = np.atleast_2d(isolated_ms)
        cap = check_cache_mib(activation_cap_mib, "activation_cap_mib")
        act = capped_weights(np.atleast_2d(activation_mib), cap)
        spilled = spilled_outputs(np.atleast_2d(activation_mib), cap, check_cache_mib(spill_cap_mib, "spill_cap_mib"))
        out = np.empty((len(iso), _N_FEATURES))
        for k in range(_K):
            out[:, k] = iso[:, classes == k].sum(axis=1)
        out[:, _K] = compute.sum()
        out[:, _K + 1] = view.sum()
        out[:, _K + 2] = float(np.sum(cold_weights(param_mib, check_cache_mib(weight_cache_mib), streamed_weights_free) * compute))
        out[:, _K + 3] = (act * compute[None, :]).sum(axis=1)
        out[:, _K + 4] = (spilled * compute[None, :]).sum(axis=1)
        return out

    @classmethod
    def fit(cls, features: np.ndarray, measured_ms: np.ndarray, utilization: np.ndarray,
            info: dict[str, Any] | None = None, min_rows: int = 8, threads: Any = None,
            default_threads: int | None = None, shrink: float = DEFAULT_SHRINK,
            weight_cache_mib: float | None = None, activation_cap_mib: float | None = None,
            inplace_free: bool = True, streamed_weights_free: bool = True, spill_cap_mib: float | None = None) -> Composition:
        """Fit coefficients (NNLS on relative error) from rows of :meth:`features` and measured model ms.

        Rows are split by :func:`regime` (``threads`` per row, None = the device default). A regime with
        fewer than ``min_rows`` measurements shares the coefficients fitted on all rows, except
        single_thread, which then shares unloaded's. Classes absent from the calibration set, and the
        generic fallback class, keep scale 1.

        ``shrink`` pulls each class scale towards 1, as an extra row ``sqrt(shrink) * (scale - 1)`` of
        relative error would (a ridge penalty; the overhead terms are not pulled: shrinking them spreads
        one overhead over several collinear terms, e.g. per node and per MiB of weights, which then
        extrapolate badly to other models). With a few calibration networks the unshrunk fit overfits:
        fitted on 8 of the 30 random networks, the zoo's MAPE was 23.7% in the median subset and up to
        421% (a gemm scale of 36 from networks with almost no gemm); with the default ``shrink=3``
        16.1% and 20.4% at most (over 40 subsets), and leave-one-model-out on the zoo also improves
        (MAPE 12.9 -> 12.4%; docs/benchmarks.md). ``shrink=0`` is plain NNLS.

        ``weight_cache_mib``, ``activation_cap_mib``, ``spill_cap_mib`` and ``inplace_free`` are stored in the
        composition: how the features were computed (:func:`~latpred.graph.predict.composition_features` leaves
        in-place outputs out).
        """
        if not shrink >= 0:
            raise SpecError(f"shrink must be >= 0, got {shrink!r}")
        from scipy.optimize import nnls

        F = np.asarray(features, dtype=float)
        y = np.asarray(measured_ms, dtype=float)
        if F.ndim != 2 or F.shape[1] != _N_FEATURES or len(F) != len(y):
            raise SpecError(f"composition features must be (rows, {_N_FEATURES}) matching the measurements")
        if len(y) < min_rows or not np.all(y > 0):
            raise SpecError(f"composition fit needs at least {min_rows} positive measurements, got {len(y)}")
        reg = regime(utilization, threads, default_threads)

        g = CLASSES.index("generic")
        view = FEATURES.index("view_nodes")

        def solve(mask: np.ndarray) -> list[float]:
            # generic (fallback) nodes keep scale 1: they are rare in calibration networks, and a fitted
            # scale would be decided by a handful of scalar multiplications, then applied to any model.
            # The view-node overhead stays 0: aliasing views launch no kernel, and a fitted value was
            # decided by the one model with many views (shufflenet's channel shuffle), which it then
            # over-predicted by 150% in leave-one-model-out on the zoo (docs/benchmarks.md)
            A = F[mask] / y[mask, None]
            b = 1.0 - A[:, g]
            A = A.copy()
            A[:, g] = 0.0
            A[:, view] = 0.0
            present = np.abs(A).sum(axis=0) > 0
            coef = np.ones(_N_FEATURES)
            coef[_K:] = 0.0
            Ap, bp = A[:, present], b
            if shrink > 0:  # pull the class scales towards 1 (see the docstring)
                w = np.sqrt(shrink) * (np.arange(_N_FEATURES)[present] < _K)
                Ap = np.vstack([Ap, np.diag(w)])
                bp = np.concatenate([b, w * coef[present]])
            sol, _ = nnls(Ap, bp)
            coef[present] = sol
            return [float(v) for v in coef]

        everything = solve(np.ones(len(y), dtype=bool))
        coef = {r: solve(reg == i) if (reg == i).sum() >= min_rows else everything for i, r in enumerate(REGIMES)}
        single = REGIMES.index("single_thread")
        if (reg == single).sum() < min_rows:
            coef["single_thread"] = coef["unloaded"]
        comp = cls(coef, True, dict(info or {}), weight_cache_mib, activation_cap_mib, bool(inplace_free),
                   bool(streamed_weights_free), spill_cap_mib)
        pred = (F * comp.matrix(utilization, threads, default_threads)).sum(axis=1)
        rel = pred / y - 1
        comp.info.update({"shrink": float(shrink), "rows": int(len(y)),
                          "rows_per_regime": {r: int((reg == i).sum()) for i, r in enumerate(REGIMES)},
                          "fit_mape": float(np.mean(np.abs(rel)) * 100), "fit_acc10": float(np.mean(np.abs(rel) <= 0.10)),
                          "sum_ratio_median": float(np.median(F[:, :len(CLASSES)].sum(axis=1) / y))})
        return comp

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(CLASSES), "features": list(FEATURES), "coef": self.coef, "calibrated": self.calibrated,
                "weight_cache_mib": self.weight_cache_mib, "activation_cap_mib": self.activation_cap_mib,
                "inplace_free": self.inplace_free, "streamed_weights_free": self.streamed_weights_free,
                "spill_cap_mib": self.spill_cap_mib, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Composition:
        classes = list(d.get("classes", []))
        features = list(d.get("features", []))
        known = ([*classes, *FEATURES[_K:]], [*classes, *_FEATURES_BEFORE_SPILL[_K:]])
        if features not in known or not set(classes) <= set(CLASSES) or any(
                c not in classes and _INHERITS.get(c) not in classes for c in CLASSES):
            raise SpecError(f"composition features {d.get('features')} differ from this latpred's {list(FEATURES)}; "
                            "recalibrate with `latpred calibrate`")
        # written before a class existed (dwconv, maxpool): its nodes keep the scale of the class that held them
        source = [classes.index(c if c in classes else _INHERITS[c]) for c in CLASSES]
        coef = {r: [float(c[i]) for i in source] + list(map(float, c[len(classes):]))
                for r, c in dict(d["coef"]).items() if r in REGIMES}
        inplace_free = d.get("inplace_free", False)
        streamed = d.get("streamed_weights_free", False)
        for name, flag in (("inplace_free", inplace_free), ("streamed_weights_free", streamed)):
            if not isinstance(flag, bool):
                raise SpecError(f"composition {name} must be true or false, got {flag!r}")
        return cls(coef, bool(d.get("calibrated")), dict(d.get("info", {})), d.get("weight_cache_mib"), d.get("activation_cap_mib"),
                   inplace_free, streamed, d.get("spill_cap_mib"))

    def describe(self) -> str:
        if not self.calibrated:
            return "composition: plain sum of isolated node latencies (not calibrated)"
        spill = self.spill_cap_mib is not None and self.activation_cap_mib is not None
        parts = []
        for r in REGIMES:
            c = self.coef[r]
            scales = ", ".join(f"{k}×{v:.2f}" for k, v in zip(CLASSES, c))
            parts.append(f"{r}: {scales}, +{c[_K] * 1e3:.1f} µs/compute node, +{c[_K + 1] * 1e3:.1f} µs/view node, "
                         f"+{c[_K + 2]:.3f} ms/MiB of weights, +{c[_K + 3]:.3f} ms/MiB of activations"
                         + (f", +{c[_K + 4]:.3f} ms/MiB spilled" if spill else ""))
        caps = ([] if self.weight_cache_mib is None else [
            f"weights counted up to {self.weight_cache_mib:g} MiB per node" + (", larger ones free" if self.streamed_weights_free
                                                                              else "")]) + (
            [] if self.activation_cap_mib is None else [f"outputs up to {self.activation_cap_mib:g} MiB per node"]) + (
            [f"outputs spilled from {self.activation_cap_mib:g} to {self.spill_cap_mib:g} MiB per node"] if spill else []) + (
            ["in-place outputs free"] if self.inplace_free else [])
        cap = f" ({', '.join(caps)})" if caps else ""
        return "composition (calibrated)" + cap + ": " + "; ".join(parts)


def check_cache_mib(value: Any, what: str = "weight_cache_mib") -> float | None:
    """``value`` as a positive finite float, or None; anything else raises :class:`SpecError` naming ``what``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise SpecError(f"{what} must be a positive number of MiB (or None), got {value!r}")
    return float(value)


def cold_weights(param_mib: np.ndarray, weight_cache_mib: float | None, streamed_free: bool = True) -> np.ndarray:
    """Each node's weight MiB that pays the cold-weight cost in a model. Profiled alone, a layer whose weights fit
    the cache ran with them hot, and in a model reads them cold once: it pays for all of them. A layer whose weights
    exceed the cache streamed them from memory alone as well: with ``streamed_free`` it pays nothing (else, as
    compositions written before, it pays for ``weight_cache_mib``). Unchanged when ``weight_cache_mib`` is None."""
    p = np.asarray(param_mib, dtype=float)
    if weight_cache_mib is None:
        return p
    return np.where(p <= weight_cache_mib, p, 0.0) if streamed_free else np.minimum(p, weight_cache_mib)


def spilled_outputs(activation_mib: np.ndarray, activation_cap_mib: float | None, spill_cap_mib: float | None) -> np.ndarray:
    """Each node's output MiB that spills past the core's private cache within the last-level cache: the part
    between ``activation_cap_mib`` and ``spill_cap_mib``, 0 when either is None. Profiled alone, a layer whose input
    and output fit the last-level cache reran with both there; in a model, the tensors alive around it (its
    neighbours' outputs, the skip connections, the weights) push its output out. Past the last-level cache it
    streamed its output from memory alone as well, so that part pays nothing more."""
    a = np.asarray(activation_mib, dtype=float)
    if activation_cap_mib is None or spill_cap_mib is None or spill_cap_mib <= activation_cap_mib:
        return np.zeros_like(a)
    return np.clip(a - activation_cap_mib, 0.0, spill_cap_mib - activation_cap_mib)


def capped_weights(param_mib: np.ndarray, weight_cache_mib: float | None) -> np.ndarray:
    """Each node's MiB (weights or outputs), capped at ``weight_cache_mib`` (unchanged when None)."""
    p = np.asarray(param_mib, dtype=float)
    return p if weight_cache_mib is None else np.minimum(p, weight_cache_mib)


def class_index(ops: Sequence[str | None], kinds: Sequence[str], groups: Sequence[Any] | None = None,
                clamped_inputs: Sequence[bool] | None = None) -> np.ndarray:
    """:data:`CLASSES` index per node (-1 for nodes that are not compute nodes); ``groups`` per node (convolutions),
    ``clamped_inputs`` per node (:func:`zero_clamped_inputs`; max-pools)."""
    groups = [1] * len(ops) if groups is None else groups
    clamped = [False] * len(ops) if clamped_inputs is None else clamped_inputs
    return np.array([CLASSES.index(node_class(op, g, c)) if k == "compute" else -1
                     for op, k, g, c in zip(ops, kinds, groups, clamped)], dtype=int)
