"""Re-measure chosen samples of a store in place, keeping what they read before.

A store can hold a group of samples that one run measured in a machine state the others never saw: on the
2-core dev VM, run 7 of the ``default`` store read every SiLU on one thread 1.7x slower than runs 3-6 and
than the same specs re-measured later (docs/benchmarks.md), and since in-place SiLU was drawn in that run
only, the regression models learnt "in-place SiLU is slow" and put EfficientNet's SiLUs at 2x. Such a
group is found by comparing runs (``bench/run_offsets.py``) and mended here: each selected sample is
measured again with the profiler's protocol (the store's reference nominal and normalisation scheme, the
same number of passes, passes interleaved over the selection), the new passes replace its latency and
windows, and the old values move into ``extra["replaced"]`` (latency, passes, windows, run, time) so no
measurement is lost. The work is recorded as a run of its own (space name ``remeasure``) which the
samples then belong to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..errors import MeasurementError, SpaceError, StoreError
from ..ops import get_op
from .devices import Device
from .metadata import check_same_machine
from .store import ProfileStore, Sample

__all__ = ["RemeasureReport", "select_samples", "remeasure"]


@dataclass(frozen=True)
class RemeasureReport:
    """What one call of :func:`remeasure` did: per sample ``(id, old ms, new ms)`` (new None when its first pass
    failed and it kept its old values; a sample whose later pass failed keeps the passes it got)."""

    run_id: int | None
    changes: list[tuple[int, float, float | None]]
    elapsed_s: float
    status: str

    @property
    def median_ratio(self) -> float | None:
        """Median of new / old latency over the re-measured samples."""
        r = sorted(new / old for _, old, new in self.changes if new is not None and old > 0)
        return None if not r else (r[len(r) // 2] if len(r) % 2 else (r[len(r) // 2 - 1] + r[len(r) // 2]) / 2)

    def summary(self) -> str:
        done = sum(new is not None for _, _, new in self.changes)
        ratio = self.median_ratio
        tail = f"; new / old {ratio:.3f} at the median" if ratio is not None else ""
        return (f"run {self.run_id}: {done} of {len(self.changes)} samples re-measured in {self.elapsed_s:.1f} s "
                f"(old values kept in extra['replaced']){tail} - {self.status}")


def _defaults(op: str) -> dict[str, Any]:
    return {p.name: p.default for p in get_op(op).params}


def _mib(s: Sample) -> float:
    return get_op(s.spec.op).costs(s.spec).bytes_moved(s.spec.dtype) / 2**20


def _matches(s: Sample, threads: int | None, utilization: float | None, where: Mapping[str, Any]) -> bool:
    if threads is not None and s.spec.threads != threads:
        return False
    if utilization is not None and abs(s.spec.utilization - utilization) > 1e-9:
        return False
    defaults = _defaults(s.spec.op)  # a parameter a stored spec predates reads as its default
    return all(str(s.spec.batch_size if k == "batch_size" else s.spec.params.get(k, defaults.get(k))).lower()
               == str(v).lower() for k, v in where.items())


def select_samples(store: ProfileStore, *, op: str | None = None, run: int | None = None, threads: int | None = None,
                   utilization: float | None = None, where: Mapping[str, Any] | None = None,
                   device_id: int | None = None, min_mib: float | None = None) -> list[Sample]:
    """The successful samples matching every given filter (``where``: spec parameter -> value, compared as text,
    ``batch_size`` included; ``min_mib``: one call moves at least this many MiB, as the op's cost model counts
    them). A filter naming a parameter that no sample of the selection has, a negative ``min_mib``, or a
    selection that matches nothing, is a :class:`SpaceError` naming it."""
    where = dict(where or {})
    if min_mib is not None and not (isinstance(min_mib, (int, float)) and min_mib >= 0):
        raise SpaceError(f"min_mib must be a non-negative number, got {min_mib!r}")
    pool = [s for s in store.samples(op=op, device_id=device_id) if run is None or s.run_id == run]
    ops = sorted({s.spec.op for s in pool})
    for k in where:
        if k != "batch_size" and not any(k in _defaults(o) for o in ops):
            raise SpaceError(f"no sample of op {', '.join(ops) or 'none'} has a parameter {k!r}")
    out = [s for s in pool if _matches(s, threads, utilization, where) and (min_mib is None or _mib(s) >= min_mib)]
    if not out:
        raise SpaceError(f"no stored sample matches op={op} run={run} threads={threads} utilization={utilization} "
                         f"where={where}" + (f" min_mib={min_mib}" if min_mib is not None else ""))
    return out


def remeasure(device: Device, store: ProfileStore, samples: list[Sample], passes: int = 3, progress: bool = True,
              on_sample: Callable[[Sample, float, float | None], Any] | None = None) -> RemeasureReport:
    """Measure ``samples`` again on ``device`` (``passes`` passes, interleaved) and replace them in ``store``.

    The device must be the one that profiled them (same fingerprint): measurements of another machine would
    mix two devices in one sample. A sample whose first new pass fails keeps its old values untouched.
    ``KeyboardInterrupt`` marks the run interrupted: samples done so far keep their new passes.
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise SpaceError(f"passes must be a positive integer, got {passes!r}")
    if not samples:
        raise SpaceError("no sample to re-measure")
    meta = device.metadata()
    device_id = store.register_device(meta)
    check_same_machine(store.device(device_id)["metadata"], meta, f"store {store.path}, device {device_id},")
    other = sorted({s.device_id for s in samples} - {device_id})
    if other:
        raise StoreError(f"the selected samples belong to device {other[0]} of the store, but this machine registers as "
                         f"device {device_id}: re-measure them on the machine that profiled them")
    from .runner import adopt_store_reference, finish_run

    ref = adopt_store_reference(device, store, device_id)
    run_id = store.start_run(device_id, "remeasure", json.dumps({"samples": [s.id for s in samples]}),
                             {"device": device.settings(), "passes": passes, "measurements": passes * len(samples)},
                             len(samples))
    changes: dict[int, tuple[float, float | None]] = {s.id: (float(s.latency_ms or 0.0), None) for s in samples}
    dead: set[int] = set()
    status, t0 = "failed", time.perf_counter()
    bar = tqdm(total=passes * len(samples), desc="re-measuring", unit="meas", disable=not progress, dynamic_ncols=True)
    try:
        for p in range(passes):
            for s in samples:
                bar.update(1)
                if s.id in dead:
                    continue
                try:
                    m = device.measure(s.spec)
                except MeasurementError:
                    dead.add(s.id)
                    continue
                if p == 0:
                    store.replace_sample(s.id, run_id, m)
                else:
                    store.add_pass(device_id, s.spec, m, lambda t, sp=s.spec: device.reduce(sp, t), expected_passes=p)
                changes[s.id] = (changes[s.id][0], store.sample(s.id).latency_ms)
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        bar.close()
        finish_run(device, store, device_id, ref, run_id, status)
    if on_sample is not None:
        for s in samples:
            on_sample(s, *changes[s.id])
    return RemeasureReport(run_id, [(i, old, new) for i, (old, new) in changes.items()], time.perf_counter() - t0, status)
