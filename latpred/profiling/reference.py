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

**How much of the slowdown to divide out depends on the working set.** The reference is small and
cache-resident; a slow episode of this VM (a busy SMT sibling, a noisy neighbour) slows cache-resident
work more than work that streams from memory. Stores of the same 585 unloaded specs taken in machine
states whose reference readings differed 2x (2026-11-27 05:32 against 08:52 and 18:13,
``bench/reference_exponent.py``, its per-size table) agree at the median when a window is normalised as

    normalised_window = window_ms * (nominal_ms / reference_ms) ** beta

with beta = 1 for specs that move up to 4 MiB, 0.75 at 16-64 MiB and 0.625 above 64 MiB; with beta = 1
for all of them the large specs read 1.12-1.34x apart. The *working-set* scheme
(:data:`WORKING_SET_SCHEME`, the default) therefore takes :func:`reference_exponent` of the bytes a
call moves: 1 up to :data:`EXPONENT_FULL_MIB`, falling linearly in log2 to :data:`EXPONENT_FLOOR` at
:data:`EXPONENT_FLOOR_MIB` and above. A whole model is normalised with the mean of its nodes'
exponents weighted by their predicted time (:func:`latpred.graph.measure.model_reference_exponent`).
The *constant* scheme (beta = 1) is how stores and predictors before it were made; a store keeps the
scheme it was profiled with, a predictor carries its store's, and ``latpred db renormalise`` converts a
store from its raw windows (nothing measured is lost).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from ..errors import SpecError
from .metadata import identity_differences

__all__ = ["ReferenceProbe", "parse_nominal", "adopt_reference", "reference_exponent", "check_scheme", "check_exponent",
           "normalised_windows",
           "WORKING_SET_SCHEME", "CONSTANT_SCHEME", "SCHEMES", "EXPONENT_FULL_MIB", "EXPONENT_FLOOR_MIB", "EXPONENT_FLOOR"]

#: beta = 1 for every measurement (stores and predictors made before the working-set scheme)
CONSTANT_SCHEME = "constant"
#: beta from the bytes one call moves (:func:`reference_exponent`)
WORKING_SET_SCHEME = "working-set-v1"
SCHEMES = (CONSTANT_SCHEME, WORKING_SET_SCHEME)
#: working sets up to this many MiB are divided by the whole reference slowdown (beta = 1)
EXPONENT_FULL_MIB = 4.0
#: from this many MiB on, beta is :data:`EXPONENT_FLOOR`
EXPONENT_FLOOR_MIB = 64.0
EXPONENT_FLOOR = 0.6


def check_scheme(scheme: Any) -> str:
    """``scheme`` if it is one of :data:`SCHEMES`; raises :class:`SpecError` naming the known ones otherwise."""
    if scheme not in SCHEMES:
        raise SpecError(f"unknown reference normalisation scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return scheme


def check_exponent(value: Any, what: str = "reference_exponent") -> float:
    """``value`` as a float in [0, 1] (a beta of :func:`normalised_windows`); raises :class:`SpecError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise SpecError(f"{what} must be in [0, 1], got {value!r}")
    return float(value)


def normalised_windows(raw_ms: Any, reference_ms: Any, nominal_ms: float, beta: float) -> list[float]:
    """Each raw window expressed at the nominal machine speed: ``raw * (nominal / reference) ** beta``."""
    return [float(w) * (float(nominal_ms) / float(r)) ** beta for w, r in zip(raw_ms, reference_ms)]


def reference_exponent(bytes_moved: float, scheme: str = WORKING_SET_SCHEME) -> float:
    """beta of ``window * (nominal / reference) ** beta`` for a call that moves ``bytes_moved`` bytes.

    1 under the constant scheme; under the working-set scheme 1 up to :data:`EXPONENT_FULL_MIB`,
    :data:`EXPONENT_FLOOR` from :data:`EXPONENT_FLOOR_MIB` on, linear in log2 of the size between.
    """
    if check_scheme(scheme) == CONSTANT_SCHEME:
        return 1.0
    mib = float(bytes_moved) / 2**20
    if not math.isfinite(mib) or mib < 0:
        raise SpecError(f"bytes moved must be a finite non-negative number, got {bytes_moved!r}")
    if mib <= EXPONENT_FULL_MIB:
        return 1.0
    frac = min(1.0, math.log2(mib / EXPONENT_FULL_MIB) / math.log2(EXPONENT_FLOOR_MIB / EXPONENT_FULL_MIB))
    return 1.0 - (1.0 - EXPONENT_FLOOR) * frac


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

    def __init__(self, calls: int = 5, calibration_s: float = 0.3, scheme: str = WORKING_SET_SCHEME) -> None:
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise SpecError(f"reference calls must be a positive integer, got {calls!r}")
        if not calibration_s > 0:
            raise SpecError(f"reference calibration_s must be positive, got {calibration_s!r}")
        self.calls = calls
        self.calibration_s = float(calibration_s)
        #: how much of the reference slowdown a measurement is divided by (:func:`reference_exponent`)
        self.scheme = check_scheme(scheme)
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

    def exponent(self, bytes_moved: float) -> float:
        """beta for a call moving ``bytes_moved`` bytes under this probe's scheme."""
        return reference_exponent(bytes_moved, self.scheme)

    def settings(self) -> dict[str, Any]:
        return {"calls": self.calls, "calibration_s": self.calibration_s, "scheme": self.scheme,
                "nominal_ms": {str(k): v for k, v in sorted(self.nominal.items())}}


def adopt_reference(device: Any, predictor: Any) -> str:
    """Make ``device`` measure in ``predictor``'s units; returns what it did, in words.

    A predictor trained on normalised data carries ``metadata["reference_nominal_ms"]``: the device
    adopts it, so whole models are normalised to the same machine speed as the modules were. A
    predictor without it was profiled on raw timings: the device's normalisation is switched off
    so whole models are measured the same way. The device also takes the predictor's normalisation
    scheme (``metadata["reference_scheme"]``; predictors without one were made with the constant
    scheme). Devices without a reference (CUDA, fakes) are left alone.

    When the predictor's device metadata names another machine than ``device``
    (:func:`~latpred.profiling.metadata.identity_differences`: another CPU family, vector ISA, core
    count, torch, ...), the message starts with a warning that names the differences: predicted against
    measured then compares two machines.
    """
    meta = getattr(predictor, "metadata", {}) or {}
    warn = ""
    metadata = getattr(device, "metadata", None)
    if callable(metadata) and isinstance(meta.get("device"), dict):
        diffs = identity_differences(meta["device"], metadata())
        if diffs:
            warn = (f"WARNING: the predictor was trained on another machine ({'; '.join(diffs)}): measured latencies "
                    f"here are not what it predicts; retrain on this machine. ")
    ref = getattr(device, "reference", None)
    if ref is None:
        return warn + "no reference normalisation on this device"
    nominal = parse_nominal(meta.get("reference_nominal_ms"), "predictor metadata reference_nominal_ms")
    if not nominal:
        device.reference = None
        return warn + "predictor was profiled without reference normalisation: measuring raw timings"
    ref.set_nominal(nominal)
    ref.scheme = check_scheme(meta.get("reference_scheme", CONSTANT_SCHEME))
    return warn + "normalised to the predictor's reference nominal " + ", ".join(
        f"{t} thread{'s' if t > 1 else ''}: {v:.3f} ms" for t, v in sorted(nominal.items())) + f" ({ref.scheme} scheme)"
