"""Measure many whole models in passes spread over time, as ``latpred profile`` measures specs.

A single whole-model measurement on a shared machine lands in whatever slow episode the machine is
in (see ``bench/drift.py``): the same resnet18 call reads 33–73 ms within minutes. Like the
profiler, :func:`measure_in_passes` measures every job once per pass — pass 1 over all jobs, then
pass 2 over all jobs, … — so a job's passes lie minutes apart, pools the windows of all passes and
reduces them with the device's statistic (the minimum unloaded, the median under background load).
Within a pass the jobs are grouped by utilization (one load change per level), and every other pass
walks them in reverse, so no job is always measured right after a load change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MeasurementError, SpecError
from ..metrics import pass_agreement
from ..profiling.devices import robust_stat
from ..profiling.reference import WORKING_SET_SCHEME, reference_exponent

__all__ = ["ModelJob", "PooledMeasurement", "measure_in_passes", "pass_agreement", "check_passes",
           "model_reference_exponent"]


@dataclass(frozen=True)
class ModelJob:
    """One whole-model measurement: ``module(*make_inputs())`` under a utilization and thread count."""

    module: Any
    make_inputs: Callable[[], tuple[Any, ...]]
    utilization: float = 0.0
    threads: int | None = None
    #: the model's beta for the working-set normalisation (:func:`model_reference_exponent`); None: the device's default
    reference_exponent: float | None = None


@dataclass
class PooledMeasurement:
    """A job's latency over all passes (None when every pass failed), each pass's own figure, errors."""

    latency_ms: float | None = None
    pass_ms: list[float] = field(default_factory=list)
    windows_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: each successful pass's device extras (e.g. CUDA's ``host_ms``, ``gpu_ms``, ``single_ms``)
    pass_extra: list[dict[str, Any]] = field(default_factory=list)

    def component(self, name: str) -> float | None:
        """Median over passes of a numeric per-pass extra (None when no pass has it)."""
        values = [float(e[name]) for e in self.pass_extra if isinstance(e.get(name), (int, float))]
        return float(np.median(values)) if values else None


def _statistic(device: Any, utilization: float) -> str:
    own = getattr(device, "statistic_for_utilization", None)
    if own is not None:
        return own(utilization)
    protocol = getattr(device, "protocol", None)
    if protocol is None:
        return "median"
    return protocol.loaded_statistic if utilization > 0 else protocol.statistic


def model_reference_exponent(graph: Any, node_ms: Any, batch_size: int, scheme: str = WORKING_SET_SCHEME) -> float:
    """A whole model's beta of ``window * (nominal / reference) ** beta``: its compute nodes' exponents
    (:func:`~latpred.profiling.reference.reference_exponent` of the bytes each moves at ``batch_size``)
    weighted by their predicted milliseconds ``node_ms`` (one per graph node, e.g. ``GraphLatency.isolated_ms``
    of one condition), so a model whose time goes to large, memory-streaming nodes is normalised as they are.
    """
    ms = np.asarray(node_ms, dtype=float)
    if ms.shape != (len(graph.nodes),):
        raise SpecError(f"node_ms must hold one value per graph node ({len(graph.nodes)}), got shape {ms.shape}")
    num = den = 0.0
    for node, t in zip(graph.nodes, ms):
        if node.kind != "compute" or node.costs is None or not np.isfinite(t) or t <= 0:
            continue
        costs = node.costs if node.costs_per_sample is None else node.costs.plus(node.costs_per_sample, batch_size - graph.batch_size)
        num += t * reference_exponent(max(costs.bytes_moved(graph.dtype), 0.0), scheme)
        den += t
    return num / den if den > 0 else 1.0


def check_passes(passes: Any) -> None:
    """Raise :class:`SpecError` unless ``passes`` is a positive integer (callers check before any work)."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise SpecError(f"passes must be a positive integer, got {passes!r}")


def measure_in_passes(device: Any, jobs: Sequence[ModelJob], passes: int = 3,
                      progress: Callable[[int, int, ModelJob, float | None], None] | None = None) -> list[PooledMeasurement]:
    """Measure every job ``passes`` times, pass-major; returns one :class:`PooledMeasurement` per job, in order.

    ``progress(pass_index, job_index, job, ms)`` is called after each measurement (``ms`` None when it
    failed). A failed pass is recorded in ``errors`` and the job keeps its other passes.
    """
    check_passes(passes)
    out = [PooledMeasurement() for _ in jobs]
    # one load change per utilization level; odd passes walk each level backwards
    groups = [[i for i, j in enumerate(jobs) if j.utilization == u] for u in sorted({j.utilization for j in jobs})]
    for p in range(passes):
        walk = [i for idx in groups for i in (idx[::-1] if p % 2 else idx)]
        for i in walk:
            job, res = jobs[i], out[i]
            try:
                # only a device that normalises by a reference probe takes an exponent (CpuDevice)
                kw = {} if job.reference_exponent is None or getattr(device, "reference", None) is None \
                    else {"reference_exponent": job.reference_exponent}
                m = device.measure_model(job.module, job.make_inputs(), utilization=job.utilization, threads=job.threads, **kw)
            except MeasurementError as e:
                res.errors.append(f"pass {p + 1}: {e}")
                if progress is not None:
                    progress(p, i, job, None)
                continue
            res.pass_ms.append(float(m.latency_ms))
            res.pass_extra.append(dict(m.extra or {}))
            res.windows_ms += [float(t) for t in m.timings_ms]
            if progress is not None:
                progress(p, i, job, float(m.latency_ms))
    if hasattr(device, "set_utilization"):
        device.set_utilization(0.0)
    for job, res in zip(jobs, out):
        if res.windows_ms:
            res.latency_ms = robust_stat(res.windows_ms, _statistic(device, job.utilization))
    return out
