"""profile(space, device, store): measure every spec of a space that the store does not hold yet."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..errors import MeasurementError, SpaceError
from ..spec import ModuleSpec
from .devices import Device
from .metadata import check_same_machine
from .space import ParameterSpace
from .state_check import check_state, format_state_check
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
    measurements: int = 0
    #: specs that had some passes in the store and got their remaining passes in this run
    continued: int = 0
    #: :meth:`~latpred.profiling.state_check.StateCheck.to_dict` of the check run before measuring, if any
    state_check: dict[str, Any] | None = None

    @property
    def samples_per_s(self) -> float:
        """New specs completed per second (all passes of a spec count once)."""
        return (self.measured + self.failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self, state_check: bool = True) -> str:
        """One line (with the state check's line(s) first, unless ``state_check`` is false: shown already)."""
        resumed = f", {self.continued} resumed with their remaining passes" if self.continued else ""
        line = (f"run {self.run_id}: {self.measured} new specs measured{resumed}, {self.failed} failed, {self.already_done} "
                f"complete in the store before (of {self.planned} in the space); {self.measurements} measurements "
                f"in {self.elapsed_s:.1f} s ({self.samples_per_s:.2f} specs/s) - {self.status}")
        return line if self.state_check is None or not state_check else format_state_check(self.state_check) + "\n" + line


def order_for_measurement(specs: list[ModuleSpec]) -> list[ModuleSpec]:
    """Group by target utilization (one load change per level), keeping the interleaved op order."""
    return sorted(specs, key=lambda s: s.utilization)  # sort is stable: op interleaving is kept


def lower_nominal(store: ProfileStore, device_id: int, ref: Any) -> None:
    """Move the store's nominal down to the fastest reference seen (rescaling its samples), adopt it on the device."""
    stored = store.reference_nominal(device_id)
    nominal = {t: min(stored.get(t, v), v) for t, v in ref.floor.items()}
    store.set_reference_nominal(device_id, nominal)
    ref.set_nominal(nominal)


def finish_run(device: Device, store: ProfileStore, device_id: int, ref: Any, run_id: int, status: str) -> None:
    """End a measuring run: background load off, the store's nominal lowered to the fastest reference seen, the run
    marked ``status``."""
    set_util = getattr(device, "set_utilization", None)
    if set_util is not None:
        set_util(0.0)
    if ref is not None and ref.floor:
        lower_nominal(store, device_id, ref)
    store.finish_run(run_id, status)


def adopt_store_reference(device: Device, store: ProfileStore, device_id: int) -> Any:
    """Make ``device`` measure in the store's units: its reference probe takes the store's nominal and
    normalisation scheme; a store profiled on raw timings stays raw (the device's probe is dropped). Returns
    the probe in use (None: raw)."""
    ref = getattr(device, "reference", None)
    store_nominal = store.reference_nominal(device_id) if ref is not None else {}
    if ref is not None and not store_nominal and store.raw_unloaded_samples(device_id):
        # a store profiled on raw timings stays raw: normalised and raw windows must not be pooled
        device.reference = ref = None
    if ref is not None:  # measure in the store's units; the first run's calibration sets them
        ref.set_nominal(store_nominal)
        scheme = store.reference_scheme(device_id)
        if scheme is not None:  # windows of two normalisation schemes must not be pooled either
            ref.scheme = scheme
    return ref


def profile(space: ParameterSpace, device: Device, store: ProfileStore, *, limit: int | None = None,
            passes: int = 3, progress: bool = True, retry_failed: bool = False,
            on_sample: Callable[[ModuleSpec, str], Any] | None = None, check_state_n: int = 0,
            on_state_check: Callable[[str], Any] | None = None) -> ProfileReport:
    """Measure the specs of ``space`` on ``device`` into ``store``; resumable.

    Each spec is measured in ``passes`` passes: pass 1 measures every spec, pass 2 every spec
    again, and so on, so a spec's passes lie minutes apart and a transient disturbance of the
    machine hits at most one of them. The store pools the windows of all passes and reduces them
    with the device's statistic. Every pass of every spec is committed as soon as it is measured;
    re-running the same call resumes where it stopped (specs and passes already stored are
    skipped). On a CPU that normalises by a reference kernel, the device adopts the store's
    nominal before measuring and the store's nominal moves down to the fastest reference seen at
    the end (stored samples are rescaled exactly); it also keeps the store's normalisation scheme
    (:mod:`latpred.profiling.reference`; ``latpred db renormalise`` converts a store). A spec that
    cannot run is stored as failed with its reason and the run goes on
    (``retry_failed`` measures failed ones again). ``KeyboardInterrupt`` marks the run
    interrupted and re-raises.

    ``check_state_n``: when the store already holds samples of this device and the run has specs
    to measure, first re-measure that many stored specs once and compare
    (:func:`~latpred.profiling.state_check.check_state`): the result is kept with the run's settings
    and in the report, and says whether the machine is in another state than when the store was
    profiled (pooling two states costs accuracy); ``on_state_check`` gets its summary before
    measuring starts. 0 skips it.
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise SpaceError(f"passes must be a positive integer, got {passes!r}")
    specs = space.specs(limit)
    meta = device.metadata()
    device_id = store.register_device(meta)
    check_same_machine(store.device(device_id)["metadata"], meta, f"store {store.path}, device {device_id},")
    if retry_failed:
        store.delete_failed(device_id)
    stored = store.done_keys(device_id)
    counts = store.pass_counts(device_id)
    failed_keys = stored - set(counts)
    ref = adopt_store_reference(device, store, device_id)
    plan = [(p, s) for p in range(passes) for s in order_for_measurement(specs)
            if s.key not in failed_keys and counts.get(s.key, 0) <= p]
    already = sum(1 for s in specs if s.key in failed_keys or counts.get(s.key, 0) >= passes)
    check = None
    if check_state_n and plan and counts:
        result = check_state(device, store, device_id, check_state_n)
        check = None if result is None else result.to_dict()
        if result is not None and on_state_check is not None:
            on_state_check(result.summary())
    run_id = store.start_run(device_id, space.name, json.dumps(space.to_dict(), sort_keys=True),
                             {"device": device.settings(), "limit": limit, "passes": passes, "measurements": len(plan),
                              **({"state_check": check} if check is not None else {})},
                             sum(1 for p, s in plan if p == 0 and s.key not in counts))
    measured = failed = 0
    status = "failed"
    t0 = time.perf_counter()
    bar = tqdm(total=len(plan), desc=f"profiling {space.name}", unit="meas", disable=not progress, dynamic_ncols=True)
    dead: set[str] = set()
    try:
        for p, spec in plan:
            if spec.key in dead:
                bar.update(1)
                continue
            bar.set_postfix_str(f"pass {p + 1}/{passes} {spec.op} util={spec.utilization:g}", refresh=False)
            try:
                m = device.measure(spec)
            except MeasurementError as e:
                if p == 0 or counts.get(spec.key, 0) == 0:
                    store.add_sample(run_id, device_id, spec, error=str(e))
                    failed += 1
                dead.add(spec.key)
                outcome = "failed"
            else:
                if p == 0 and counts.get(spec.key, 0) == 0:
                    store.add_sample(run_id, device_id, spec, measurement=m)
                else:
                    store.add_pass(device_id, spec, m, lambda t, s=spec: device.reduce(s, t), expected_passes=p)
                measured += p == 0
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
        finish_run(device, store, device_id, ref, run_id, status)
    continued = len({s.key for _, s in plan if counts.get(s.key, 0) > 0})
    return ProfileReport(run_id, device_id, len(specs), already, measured, failed,
                         time.perf_counter() - t0, status, len(plan), continued, check)
