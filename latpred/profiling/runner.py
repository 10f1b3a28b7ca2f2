"""profile(space, device, store): measure every spec of a space that the store does not hold yet."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..errors import MeasurementError
from ..spec import ModuleSpec
from .devices import Device
from .space import ParameterSpace
from .store import ProfileStore

__all__ = ["ProfileReport", "profile", "order_for_measurement"]


@dataclass(frozen=True)
class ProfileReport:
    """What one call of :func:`profile` did."""

    run_id: int
    device_id: int
    planned: int
    already_done: int
    measured: int
    failed: int
    elapsed_s: float
    status: str

    @property
    def samples_per_s(self) -> float:
        return (self.measured + self.failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        return (f"run {self.run_id}: {self.measured} measured, {self.failed} failed, {self.already_done} already in "
                f"the store (of {self.planned} planned) in {self.elapsed_s:.1f} s "
                f"({self.samples_per_s:.2f} samples/s) - {self.status}")


def order_for_measurement(specs: list[ModuleSpec]) -> list[ModuleSpec]:
    """Group by target utilization (one load change per level), keeping the interleaved op order."""
    return sorted(specs, key=lambda s: s.utilization)  # sort is stable: op interleaving is kept


def profile(space: ParameterSpace, device: Device, store: ProfileStore, *, limit: int | None = None,
            progress: bool = True, retry_failed: bool = False,
            on_sample: Callable[[ModuleSpec, str], Any] | None = None) -> ProfileReport:
    """Measure the specs of ``space`` on ``device`` into ``store``; resumable.

    Every sample is committed as soon as it is measured. Specs already stored for this device
    (measured or failed) are skipped, so re-running the same call resumes where it stopped;
    ``retry_failed`` measures failed ones again. A spec that cannot run is stored as failed with
    its reason and the run goes on. ``KeyboardInterrupt`` marks the run interrupted and re-raises.
    """
    specs = space.specs(limit)
    device_id = store.register_device(device.metadata())
    if retry_failed:
        store.delete_failed(device_id)
    done = store.done_keys(device_id)
    todo = order_for_measurement([s for s in specs if s.key not in done])
    run_id = store.start_run(device_id, space.name, json.dumps(space.to_dict(), sort_keys=True),
                             {"device": device.settings(), "limit": limit}, len(todo))
    measured = failed = 0
    status = "failed"
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"profiling {space.name}", unit="spec", disable=not progress, dynamic_ncols=True)
    try:
        for spec in todo:
            bar.set_postfix_str(f"{spec.op} util={spec.utilization:g}", refresh=False)
            try:
                m = device.measure(spec)
            except MeasurementError as e:
                store.add_sample(run_id, device_id, spec, error=str(e))
                failed += 1
                outcome = "failed"
            else:
                store.add_sample(run_id, device_id, spec, measurement=m)
                measured += 1
                outcome = "ok"
            bar.update(1)
            if on_sample is not None:
                on_sample(spec, outcome)
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        bar.close()
        set_util = getattr(device, "set_utilization", None)
        if set_util is not None:
            set_util(0.0)
        store.finish_run(run_id, status)
    return ProfileReport(run_id, device_id, len(specs), len(specs) - len(todo), measured, failed,
                         time.perf_counter() - t0, status)
