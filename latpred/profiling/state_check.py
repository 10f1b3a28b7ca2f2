"""Has the machine changed since the store's earlier runs? Re-measure a few stored specs and compare.

A store grows over several runs (another space, another seed, a resumed run). On a shared VM the
runs can land in different machine states, and two states differ in more than one speed factor:
on the 2-vCPU dev VM, a store profiled in the morning and one profiled in a quieter afternoon
disagreed per op type by 0.73–1.25× even after reference normalisation, and specs under an emulated
load (which are not normalised) by 1.9×; a predictor trained on both cross-validated at 34.9% acc10
against 48.8% for the morning's data alone (``docs/benchmarks.md``). :func:`check_state` measures a
stratified random sample of stored specs once, as the profiler would, and reports how the new
readings compare with the stored ones, so that a run that would pool inconsistent data says so
before it starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import MeasurementError
from .store import ProfileStore

__all__ = ["StateCheck", "check_state", "format_state_check", "DEFAULT_TOLERANCE"]

#: a group whose median ratio is further than this from 1 is reported as a different machine state
DEFAULT_TOLERANCE = 0.10


@dataclass(frozen=True)
class StateCheck:
    """Re-measured / stored latency of ``n`` stored specs, overall and per group (``unloaded``, ``loaded``)."""

    n: int
    median_ratio: float
    within10: float
    groups: dict[str, dict[str, float]]
    failed: int = 0
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def changed(self) -> list[str]:
        """Groups whose median ratio is off by more than ``tolerance`` (another machine state)."""
        return [g for g, v in self.groups.items() if abs(v["median_ratio"] - 1.0) > self.tolerance]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}

    def summary(self) -> str:
        return format_state_check(self.to_dict())


def format_state_check(check: dict[str, Any]) -> str:
    """One line (two with a warning) from :meth:`StateCheck.to_dict` (as stored with a run's settings)."""
    parts = ", ".join(f"{g} x{v['median_ratio']:.2f} ({100 * v['within10']:.0f}% within ±10%, n={v['n']:.0f})"
                      for g, v in check["groups"].items())
    line = f"state check: {check['n']} stored specs re-measured once, now / stored at the median: {parts}"
    if check.get("changed"):
        line += (f"\nwarning: the machine reads differently from this store's earlier runs ({', '.join(check['changed'])}); "
                 "pooling the two states costs accuracy - consider profiling into a new store (docs/concepts.md)")
    return line


def _stratified(samples: list[Any], n: int, rng: np.random.Generator) -> list[Any]:
    """Up to ``n`` samples taken round-robin over (op type, loaded) strata in a seeded random order, so a small
    check still touches as many op types and both load levels as it can."""
    strata: dict[tuple[str, bool], list[Any]] = {}
    for s in samples:
        strata.setdefault((s.spec.op, s.spec.utilization > 0), []).append(s)
    keys = sorted(strata)
    rng.shuffle(keys)
    for k in keys:
        rng.shuffle(strata[k])
    picked: list[Any] = []
    while len(picked) < n and any(strata[k] for k in keys):
        for k in keys:
            if strata[k] and len(picked) < n:
                picked.append(strata[k].pop())
    return picked


def check_state(device: Any, store: ProfileStore, device_id: int, n: int = 24, seed: int = 0,
                tolerance: float = DEFAULT_TOLERANCE) -> StateCheck | None:
    """Measure ``n`` stored specs of ``device_id`` once on ``device`` and compare with their stored latency.

    The device must already measure in the store's units (the profiler adopts the store's reference
    nominal first). Specs are drawn across op types and loaded/unloaded, measured grouped by
    utilization (one load change per level), and the background load is switched off at the end.
    Returns ``None`` when the store holds no successful sample of the device (nothing to compare).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"state check size must be a positive integer, got {n!r}")
    stored = store.samples(device_id=device_id)
    if not stored:
        return None
    picked = sorted(_stratified(stored, n, np.random.default_rng(seed)), key=lambda s: s.spec.utilization)
    ratios: dict[str, list[float]] = {}
    failed = 0
    try:
        for s in picked:
            try:
                m = device.measure(s.spec)
            except MeasurementError:
                failed += 1
                continue
            if m.latency_ms > 0 and s.latency_ms and math.isfinite(m.latency_ms):
                ratios.setdefault("loaded" if s.spec.utilization > 0 else "unloaded", []).append(m.latency_ms / s.latency_ms)
    finally:
        set_util = getattr(device, "set_utilization", None)
        if set_util is not None:
            set_util(0.0)
    if not ratios:
        return None
    def stats(r: np.ndarray) -> dict[str, float]:
        return {"n": float(len(r)), "median_ratio": float(np.median(r)), "within10": float(np.mean(np.abs(r - 1) <= 0.10))}
    every = stats(np.concatenate([np.asarray(v) for v in ratios.values()]))
    return StateCheck(int(every["n"]), every["median_ratio"], every["within10"],
                      {g: stats(np.asarray(v)) for g, v in sorted(ratios.items(), key=lambda kv: kv[0] != "unloaded")},
                      failed, tolerance)
