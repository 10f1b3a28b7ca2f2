"""Reference-kernel normalisation of CPU timings on a machine whose speed drifts.

On a shared VM the CPU runs in episodes of different speed (noisy neighbours, SMT siblings): the
same op reads up to 1.6x slower for 0.1–1 s at a time, and a measurement lands in whatever
episode the machine is in. A small fixed workload (the *reference*: a 3x3 conv, a matmul and an
element-wise op, ~0.35 ms on one thread here) timed right after every timing window reads the
machine's speed at that moment. Each window is divided by its reference and multiplied by the
device's *nominal* reference time, so every window is expressed at one machine speed:

    normalised_window = window_ms * nominal_ms / reference_ms

The median of the normalised windows (pooled over passes) is then far more repeatable than the
minimum of raw windows: on the 2-vCPU dev VM, 200 unloaded specs measured twice in 3 passes agree
within ±10% for 69% of specs against 50% for the raw minimum (``bench/repeatability.py``).

The nominal is per thread count and is what makes measurements comparable: the profiler keeps one
per device in the store (the fastest reference ever seen there, so it only moves down and every
stored sample is rescaled exactly when it does), a trained predictor carries it in its metadata,
and whole models measured for that predictor adopt it (:func:`adopt_reference`). Only unloaded
measurements are normalised: under an emulated background load the slowdown is the thing being
measured, and the reference would cancel it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from ..errors import SpecError

__all__ = ["ReferenceProbe", "parse_nominal", "adopt_reference"]


def parse_nominal(value: Any, what: str = "reference nominal") -> dict[int, float]:
    """``{threads: ms}`` from a mapping whose keys may be strings (JSON); raises :class:`SpecError` on bad entries."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{what} must be a mapping of thread count to milliseconds, got {type(value).__name__}")
    out: dict[int, float] = {}
    for k, v in value.items():
        try:
            threads = int(k)
        except (TypeError, ValueError):
            raise SpecError(f"{what}: thread count {k!r} is not an integer") from None
        if threads < 1 or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise SpecError(f"{what}: entry {k!r}: {v!r} needs a thread count >= 1 and a positive finite time")
        out[threads] = float(v)
    return out


class ReferenceProbe:
    """Times the reference workload; holds the nominal and the fastest reading per thread count.

    ``calls``: reference calls per probe (the probe reads their minimum). ``calibration_s``: how long
    a thread count without a nominal is probed to set one (its fastest probe).
    """

    def __init__(self, calls: int = 5, calibration_s: float = 0.3) -> None:
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise SpecError(f"reference calls must be a positive integer, got {calls!r}")
        if not calibration_s > 0:
            raise SpecError(f"reference calibration_s must be positive, got {calibration_s!r}")
        self.calls = calls
        self.calibration_s = float(calibration_s)
        self.nominal: dict[int, float] = {}
        self.floor: dict[int, float] = {}
        self._work: Any = None

    def _workload(self) -> Any:
        if self._work is None:
            import torch

            g = torch.Generator().manual_seed(0)
            conv = torch.nn.Conv2d(32, 32, 3, padding=1).eval()
            x = torch.randn(1, 32, 28, 28, generator=g)
            a, b = torch.randn(128, 128, generator=g), torch.randn(128, 128, generator=g)

            def run() -> None:
                conv(x)
                torch.mm(a, b)
                (x * 2 + 1).relu()
            self._work = run
        return self._work

    def probe(self, threads: int) -> float:
        """Milliseconds of the fastest of ``calls`` reference calls, on the caller's current torch threads."""
        run, clock = self._workload(), time.perf_counter
        best = math.inf
        for _ in range(self.calls):
            t = clock()
            run()
            best = min(best, clock() - t)
        ms = best * 1e3
        if ms < self.floor.get(threads, math.inf):
            self.floor[threads] = ms
        return ms

    def nominal_for(self, threads: int) -> float:
        """The nominal for ``threads``; probes for ``calibration_s`` to set one when there is none."""
        if threads not in self.nominal:
            t0 = time.perf_counter()
            best = math.inf
            while time.perf_counter() - t0 < self.calibration_s:
                best = min(best, self.probe(threads))
            self.nominal[threads] = best
        return self.nominal[threads]

    def set_nominal(self, nominal: Mapping[Any, Any]) -> None:
        """Adopt nominals (e.g. a store's or a predictor's); thread counts not given keep theirs."""
        self.nominal.update(parse_nominal(nominal))

    def settings(self) -> dict[str, Any]:
        return {"calls": self.calls, "calibration_s": self.calibration_s,
                "nominal_ms": {str(k): v for k, v in sorted(self.nominal.items())}}


def adopt_reference(device: Any, predictor: Any) -> str:
    """Make ``device`` measure in ``predictor``'s units; returns what it did, in words.

    A predictor trained on normalised data carries ``metadata["reference_nominal_ms"]``: the device
    adopts it, so whole models are normalised to the same machine speed as the modules were. A
    predictor without it was profiled on raw timings: the device's normalisation is switched off
    so whole models are measured the same way. Devices without a reference (CUDA, fakes) are left alone.
    """
    ref = getattr(device, "reference", None)
    if ref is None:
        return "no reference normalisation on this device"
    nominal = parse_nominal(getattr(predictor, "metadata", {}).get("reference_nominal_ms"),
                            "predictor metadata reference_nominal_ms")
    if not nominal:
        device.reference = None
        return "predictor was profiled without reference normalisation: measuring raw timings"
    ref.set_nominal(nominal)
    return "normalised to the predictor's reference nominal " + ", ".join(
        f"{t} thread{'s' if t > 1 else ''}: {v:.3f} ms" for t, v in sorted(nominal.items()))
