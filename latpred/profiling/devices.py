"""Devices that measure specs: the :class:`Device` protocol, CPU, CUDA and a fake for logic tests.

Timing protocol (CPU and CUDA alike, see :class:`TimingProtocol`): build the module and inputs,
warm up for ``warmup_ms``, calibrate how many calls fill a ``window_ms`` timing window, then time
``repeats`` windows (fewer for slow specs, never fewer than ``min_repeats``, capped by
``max_sample_ms``) with the garbage collector paused; for a slow spec (one call per window) the
last warm-up call counts as the first window. The per-call time of every window is kept. The
reported latency is a statistic over windows. Unloaded CPU: every window is normalised by a
reference kernel timed right after it (:mod:`latpred.profiling.reference`, the machine's speed at
that moment) and the median of the normalised windows is reported; without a reference
(``reference_calls=0``, and on CUDA) the minimum of raw windows (interference only ever adds
time). Under a background load: the median of raw windows (the typical latency while the load
runs; windows span several load periods). The profiler measures each spec in several passes
spread over the run and reduces the pooled windows the same way. Latency is
host wall-clock from the call to a finished result (CUDA: synchronised), which is what a request
sees even under a co-running load; CUDA events additionally give the kernel-time share, and the
host and GPU stages are timed apart with a host-speed probe (:meth:`CudaDevice._components`, for
:mod:`latpred.graph.overlap`).
"""

from __future__ import annotations

import gc
import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..blas import hold_single_threaded_blas
from ..errors import DeviceError, MeasurementError, SpecError
from ..ops import get_op
from ..spec import ModuleSpec
from .allocator import REUSE, pin_allocator, release_free_memory
from .reference import CONSTANT_SCHEME, ReferenceProbe, check_exponent, normalised_windows
from .result import Measurement

__all__ = ["Device", "TimingProtocol", "CpuDevice", "CudaDevice", "FakeDevice", "make_device", "robust_stat"]

STATISTICS = ("median", "min", "mean", "trimmed")


def robust_stat(values: list[float] | tuple[float, ...], statistic: str = "median") -> float:
    """Reduce window timings to one figure: median, min, mean or 20%-trimmed mean."""
    if not values:
        raise MeasurementError("no timing windows to reduce")
    if statistic == "median":
        return float(statistics.median(values))
    if statistic == "min":
        return float(min(values))
    if statistic == "mean":
        return float(statistics.fmean(values))
    if statistic == "trimmed":
        v = sorted(values)
        k = int(len(v) * 0.2)
        return float(statistics.fmean(v[k:len(v) - k] or v))
    raise SpecError(f"unknown statistic {statistic!r}; expected one of {STATISTICS}")


@dataclass(frozen=True)
class TimingProtocol:
    """How one spec is timed. Defaults were chosen with ``bench/repeatability.py``."""

    warmup_ms: float = 10.0
    window_ms: float = 10.0
    repeats: int = 6
    min_repeats: int = 3
    max_sample_ms: float = 600.0
    statistic: str = "min"
    loaded_statistic: str = "median"
    settle_s: float = 1.0
    #: CPU: reference calls timed after every unloaded window to normalise it (0 = raw timings)
    reference_calls: int = 5
    #: statistic over reference-normalised windows (each window is already corrected for the machine's speed)
    normalised_statistic: str = "median"
    #: the warm-up goes on while a call still page-faults more than this many pages (the heap is still
    #: growing into its working set: densenet121 at batch 32 faulted 196,000 and 100,000 pages in its first two
    #: calls, 3.4 s against 1.7 s once steady), up to ``max_warmup_calls`` calls; where the process's page
    #: faults cannot be read (no ``resource`` module), warm-up ends by time alone
    steady_faults: int = 256
    max_warmup_calls: int = 8

    def __post_init__(self) -> None:
        for name in ("warmup_ms", "window_ms", "max_sample_ms"):
            if not getattr(self, name) > 0:
                raise SpecError(f"TimingProtocol.{name} must be positive, got {getattr(self, name)!r}")
        if self.min_repeats < 1 or self.repeats < self.min_repeats:
            raise SpecError(f"TimingProtocol needs 1 <= min_repeats <= repeats, got {self.min_repeats}, {self.repeats}")
        for name in ("statistic", "loaded_statistic", "normalised_statistic"):
            if getattr(self, name) not in STATISTICS:
                raise SpecError(f"unknown {name} {getattr(self, name)!r}; expected one of {STATISTICS}")
        if self.settle_s < 0:
            raise SpecError("TimingProtocol.settle_s must be >= 0")
        for name, least in (("reference_calls", 0), ("steady_faults", 0), ("max_warmup_calls", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise SpecError(f"TimingProtocol.{name} must be an integer >= {least}, got {v!r}")

    def statistic_for(self, spec: ModuleSpec) -> str:
        """The statistic that reduces ``spec``'s windows (unloaded vs under background load)."""
        return self.loaded_statistic if spec.utilization > 0 else self.statistic

    def reduce(self, spec: ModuleSpec, timings: tuple[float, ...] | list[float]) -> float:
        """Latency of ``spec`` from its window timings (possibly pooled over passes)."""
        return robust_stat(list(timings), self.statistic_for(spec))

    def time(self, call: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> tuple[list[float], int]:
        """Per-call milliseconds of each window, and the calls per window."""
        windows, n, _ = self._windows(call, sync, None)
        return windows, n

    def time_probed(self, call: Callable[[], Any], probe: Callable[[], float],
                    sync: Callable[[], None] = lambda: None) -> tuple[list[float], int, list[float]]:
        """As :meth:`time`, plus ``probe()`` (e.g. a reference kernel's ms) read right after every window."""
        return self._windows(call, sync, probe)

    def _windows(self, call: Callable[[], Any], sync: Callable[[], None],
                 probe: Callable[[], float] | None) -> tuple[list[float], int, list[float]]:
        clock = time.perf_counter
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            calls, t0, last = 0, clock(), 0.0
            while True:  # warm-up (also the first-call allocation and any lazy init), until the heap is steady
                f0 = _page_faults()
                t = clock()
                call()
                sync()
                calls += 1
                last = (clock() - t) * 1e3
                elapsed = clock() - t0
                steady = _page_faults() - f0 <= self.steady_faults or calls >= self.max_warmup_calls
                if calls >= 2 and steady and elapsed * 1e3 >= min(self.warmup_ms, self.max_sample_ms / 2):
                    break
            # a slow call is its own calibration; fast ones are calibrated over a short batch
            per_call = last if last > 5.0 else self._calibrate(call, sync, clock, last)
            n = max(1, int(round(self.window_ms / max(per_call, 1e-6))))
            window = n * per_call
            reps = min(self.repeats, max(self.min_repeats, int(self.max_sample_ms // max(window, 1e-6))))
            out: list[float] = []
            probes: list[float] = []
            if last > 5.0 and n == 1 and calls >= 2:
                # the last warm-up call of a slow spec was a warm, synchronised one-call window: keep it
                # as the first window instead of running the call once more (saves ~8% of a profile)
                out.append(last)
                if probe is not None:
                    probes.append(probe())
            while len(out) < reps:
                t = clock()
                for _ in range(n):
                    call()
                sync()
                out.append((clock() - t) * 1e3 / n)
                if probe is not None:
                    probes.append(probe())
            return out, n, probes
        finally:
            if gc_was_enabled:
                gc.enable()

    @staticmethod
    def _calibrate(call: Callable[[], Any], sync: Callable[[], None], clock: Callable[[], float],
                   estimate_ms: float) -> float:
        """Per-call ms of a fast call, over a batch of about 2 ms (sized from the warm-up's estimate)."""
        k = max(1, min(1000, int(2.0 / max(estimate_ms, 1e-4))))
        t = clock()
        for _ in range(k):
            call()
        sync()
        return (clock() - t) * 1e3 / k


try:
    from resource import RUSAGE_SELF as _RUSAGE_SELF
    from resource import getrusage as _getrusage
except ImportError:  # Windows
    _getrusage, _RUSAGE_SELF = None, 0


def _page_faults() -> int:
    """Minor page faults of this process so far (0 where they cannot be read)."""
    return _getrusage(_RUSAGE_SELF).ru_minflt if _getrusage is not None else 0


@runtime_checkable
class Device(Protocol):
    """What the profiler needs from a device."""

    kind: str

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable facts, including a stable ``fingerprint`` and ``kind``."""
        ...

    def settings(self) -> dict[str, Any]:
        """The measurement settings (stored with each run)."""
        ...

    def measure(self, spec: ModuleSpec) -> Measurement:
        """Time ``spec``; raise :class:`MeasurementError` when it cannot run."""
        ...

    def reduce(self, spec: ModuleSpec, timings: tuple[float, ...] | list[float]) -> float:
        """Latency from window timings pooled over passes (the same statistic :meth:`measure` uses)."""
        ...

    def close(self) -> None:
        """Stop background load and release resources."""
        ...


class _LoadMixin:
    """Background utilization handling and reduction shared by the real devices."""

    kind: str
    protocol: TimingProtocol
    _load: Any = None
    _monitor: Any = None
    _target: float = 0.0
    #: normalises unloaded windows by a reference kernel (CPU, see :mod:`latpred.profiling.reference`); None = raw
    reference: ReferenceProbe | None = None

    def _make_load(self, target: float) -> Any:
        from .load import make_load

        return make_load(self.kind, target, **self._load_kwargs())

    def _load_kwargs(self) -> dict[str, Any]:
        return {}

    def statistic_for_utilization(self, utilization: float) -> str:
        """The statistic over windows: normalised median unloaded (raw minimum without a reference), median loaded."""
        if utilization > 0:
            return self.protocol.loaded_statistic
        return self.protocol.normalised_statistic if self.reference is not None else self.protocol.statistic

    def reduce(self, spec: ModuleSpec, timings: tuple[float, ...] | list[float]) -> float:
        return robust_stat(list(timings), self.statistic_for_utilization(spec.utilization))

    def set_utilization(self, target: float) -> None:
        """Hold the device at ``target`` background utilization (0 stops the load)."""
        if not 0.0 <= target < 1.0:
            raise SpecError(f"utilization must be in [0, 1), got {target!r}")
        if target == self._target and (target == 0.0 or self._load is not None):
            return
        if target == 0.0:
            if self._load is not None:
                self._load.stop()
                self._load = None
        elif self._load is None:
            self._load = self._make_load(target)
            self._load.start()
        else:
            self._load.set_target(target)
        self._target = target
        if self.protocol.settle_s:
            time.sleep(self.protocol.settle_s)

    def _begin_window(self) -> None:
        if self._load is not None:
            self._load.reset_window()
        if self._monitor is not None:
            self._monitor.reset()

    def _end_window(self) -> tuple[float | None, float | None]:
        observed = self._load.window_utilization() if self._load is not None else (0.0 if self._target == 0 else None)
        system = self._monitor.value() if self._monitor is not None else None
        return observed, system

    def close(self) -> None:
        if self._load is not None:
            self._load.stop()
            self._load = None
        self._target = 0.0


class CpuDevice(_LoadMixin):
    """The host CPU. ``threads`` is the default intra-op thread count when a spec leaves it open.

    ``allocator``: *reuse* (default) pins this process's C allocator so that ops reuse memory instead of
    page-faulting depending on what the process ran before (:mod:`latpred.profiling.allocator`); *system*
    leaves it alone. :attr:`allocator` is the mode in force, recorded in :meth:`settings`. Until
    :meth:`close`, numpy's BLAS runs on one thread in this process (:mod:`latpred.blas`).
    """

    kind = "cpu"

    def __init__(self, protocol: TimingProtocol | None = None, threads: int | None = None,
                 load_period_ms: float = 20.0, allocator: str = REUSE) -> None:
        import torch

        from .load import SystemMonitor

        self.allocator = pin_allocator(allocator)
        # numpy's BLAS threads spin after each call and slow the torch threads being timed (latpred.blas)
        self._release_blas = hold_single_threaded_blas()
        self.protocol = protocol or TimingProtocol()
        self.load_period_ms = load_period_ms
        self.default_threads = threads or torch.get_num_threads()
        self._monitor = SystemMonitor()
        self._meta: dict[str, Any] | None = None
        self.reference = ReferenceProbe(self.protocol.reference_calls) if self.protocol.reference_calls else None

    def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            from .metadata import device_metadata

            self._meta = device_metadata("cpu")
        return self._meta

    def close(self) -> None:
        """Stop background load and give numpy's BLAS its threads back."""
        super().close()
        self._release_blas()

    def _load_kwargs(self) -> dict[str, Any]:
        return {"period_ms": self.load_period_ms}

    def settings(self) -> dict[str, Any]:
        return {"protocol": asdict(self.protocol), "default_threads": self.default_threads,
                "load_period_ms": self.load_period_ms, "allocator": self.allocator,
                "reference": self.reference.settings() if self.reference is not None else None}

    def measure(self, spec: ModuleSpec) -> Measurement:
        op = get_op(spec.op)
        beta = self.reference.exponent(op.costs(spec).bytes_moved(spec.dtype)) if self.reference is not None else 1.0
        return self._measure(lambda: op.instantiate(spec, "cpu"), spec.utilization, spec.threads, beta)

    def measure_model(self, module: Any, inputs: tuple[Any, ...], utilization: float = 0.0,
                      threads: int | None = None, reference_exponent: float | None = None) -> Measurement:
        """Time a whole model (eval mode, inference mode) under the same protocol and background load as specs.

        ``reference_exponent``: the model's beta under the working-set normalisation scheme (see
        :func:`latpred.graph.measure.model_reference_exponent`); ignored (beta = 1) when the reference
        probe uses the constant scheme, and None means 1.
        """
        beta = 1.0
        if reference_exponent is not None and self.reference is not None and self.reference.scheme != CONSTANT_SCHEME:
            beta = check_exponent(reference_exponent)
        return self._measure(lambda: (module.eval(), inputs), utilization, threads, beta)

    def _measure(self, build: Callable[[], tuple[Any, tuple[Any, ...]]], utilization: float,
                 threads: int | None, beta: float = 1.0) -> Measurement:
        import torch

        release_free_memory()  # the previous measurement's pages, outside any timing (reuse mode only)
        self.set_utilization(utilization)
        threads = threads or self.default_threads
        ref = self.reference if utilization == 0 else None
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        extra: dict[str, Any] = {"threads": threads}
        try:
            with torch.inference_mode():
                module, inputs = build()
                nominal = ref.nominal_for(threads) if ref is not None else None
                self._begin_window()
                if ref is None:
                    timings, n = self.protocol.time(lambda: module(*inputs))
                else:
                    raw, n, probes = self.protocol.time_probed(lambda: module(*inputs), lambda: ref.probe(threads))
                    timings = normalised_windows(raw, probes, nominal, beta)
                    extra.update(raw_timings_ms=raw, reference_ms=probes, reference_nominal_ms=nominal,
                                 reference_scheme=ref.scheme, reference_exponent=beta)
                observed, system = self._end_window()
        except (RuntimeError, ValueError, MemoryError) as e:
            raise MeasurementError(f"{type(e).__name__}: {e}") from e
        finally:
            torch.set_num_threads(before)
        return Measurement(robust_stat(timings, self.statistic_for_utilization(utilization)), tuple(timings), n,
                           observed, system, extra)


class CudaDevice(_LoadMixin):
    """One CUDA GPU. Latency is host wall-clock to a synchronised result; ``kernel_ms`` from events; with
    ``components`` (default) also the host and GPU stages apart (:meth:`_components`)."""

    kind = "cuda"

    def __init__(self, index: int = 0, protocol: TimingProtocol | None = None, clock_warmup_s: float = 1.0,
                 components: bool = True) -> None:
        import torch

        if not torch.cuda.is_available():
            raise DeviceError("CUDA device requested but torch.cuda.is_available() is False on this machine")
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceError(f"CUDA device index {index} out of range (found {torch.cuda.device_count()})")
        self.index = index
        self.device = torch.device("cuda", index)
        self.protocol = protocol or TimingProtocol()
        self.clock_warmup_s = clock_warmup_s
        #: also time the host and GPU stages apart (``host_ms``, ``gpu_ms``, ``single_ms`` in the extras)
        self.components = components
        self._probe: tuple[Any, Any] | None = None
        self._warm = False
        self._meta: dict[str, Any] | None = None

    def _load_kwargs(self) -> dict[str, Any]:
        return {"index": self.index}

    def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            from .metadata import device_metadata

            self._meta = device_metadata("cuda", index=self.index)
        return self._meta

    def settings(self) -> dict[str, Any]:
        return {"protocol": asdict(self.protocol), "index": self.index, "clock_warmup_s": self.clock_warmup_s,
                "components": self.components}

    def warm_up(self) -> None:
        """Run matmuls for ``clock_warmup_s`` so the GPU leaves its idle clocks before timing."""
        import torch

        a = torch.randn(2048, 2048, device=self.device)
        t = time.perf_counter()
        while time.perf_counter() - t < self.clock_warmup_s:
            a = torch.tanh(a @ a)
            torch.cuda.synchronize(self.device)
        self._warm = True

    def measure(self, spec: ModuleSpec) -> Measurement:
        op = get_op(spec.op)
        return self._measure(lambda: op.instantiate(spec, self.device), spec.utilization, self.protocol.statistic_for(spec))

    def measure_model(self, module: Any, inputs: tuple[Any, ...], utilization: float = 0.0,
                      threads: int | None = None, reference_exponent: float | None = None) -> Measurement:
        """Time a whole model moved to this GPU (host wall clock to a synchronised result)."""
        del threads, reference_exponent  # host threads do not apply to GPU kernels; no reference normalisation

        def build() -> tuple[Any, tuple[Any, ...]]:
            return module.eval().to(self.device), tuple(x.to(self.device) for x in inputs)
        return self._measure(build, utilization, self.protocol.loaded_statistic if utilization > 0 else self.protocol.statistic)

    def _measure(self, build: Callable[[], tuple[Any, tuple[Any, ...]]], utilization: float, statistic: str) -> Measurement:
        import torch

        self.set_utilization(utilization)
        if not self._warm:
            self.warm_up()
        sync = lambda: torch.cuda.synchronize(self.device)  # noqa: E731
        try:
            with torch.inference_mode():
                module, inputs = build()
                self._begin_window()
                timings, n = self.protocol.time(lambda: module(*inputs), sync)
                observed, system = self._end_window()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(n):
                    module(*inputs)
                end.record()
                sync()
                kernel_ms = start.elapsed_time(end) / n
                extra: dict[str, Any] = {"kernel_ms": kernel_ms}
                if self.components:
                    extra.update(self._components(lambda: module(*inputs), n))
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            raise MeasurementError(f"OutOfMemoryError: {e}") from e
        except (RuntimeError, ValueError) as e:
            raise MeasurementError(f"{type(e).__name__}: {e}") from e
        return Measurement(robust_stat(timings, statistic), tuple(timings), n, observed, system, extra)

    def _host_probe(self, calls: int = 32, repeats: int = 3) -> float:
        """Host ms to issue one call of a fixed tiny module (Linear(8, 8) + ReLU on a 4 x 8 input) without
        synchronising, the fastest of ``repeats`` batches of ``calls``: the dispatch speed of the host now."""
        import torch

        if self._probe is None:
            with torch.inference_mode(False):
                module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).to(self.device).eval()
            self._probe = (module, torch.randn(4, 8, device=self.device))
        module, x = self._probe
        clock, best = time.perf_counter, float("inf")
        with torch.inference_mode():
            torch.cuda.synchronize(self.device)
            for _ in range(repeats):
                t = clock()
                for _ in range(calls):
                    module(x)
                best = min(best, (clock() - t) * 1e3 / calls)
                torch.cuda.synchronize(self.device)
        return best

    def _components(self, call: Callable[[], Any], n: int, repeats: int = 5) -> dict[str, Any]:
        """The two stages an eager call overlaps, timed apart (see :mod:`latpred.graph.overlap`).

        ``host_ms``: host time to issue one call (Python, dispatch, kernel launches) with the launch queue
        empty and no synchronisation, the minimum per-call time of ``repeats`` batches of up to 64 calls.
        ``gpu_ms``: GPU time of one call without the host, from replaying a CUDA graph of the call (events,
        minimum of ``repeats`` batches of up to ``n`` replays); a call that cannot be captured (it
        synchronises, say) records ``gpu_error`` instead. ``single_ms``: the median of ``repeats`` single
        calls each synchronised (one request, nothing queued before or after it). ``host_probe_ms``: the
        host's dispatch speed around these timings (:meth:`_host_probe`, mean of one probe before and one
        after): the host side of a shared machine drifts (the H200's host read one zoo pass 2x slower than
        the next), and host times are compared at one speed by scaling with it. Returned figures are per
        call; they never fail the measurement.
        """
        import torch

        clock, dev = time.perf_counter, self.device
        sync = lambda: torch.cuda.synchronize(dev)  # noqa: E731
        out: dict[str, Any] = {}
        k = max(1, min(int(n), 64))
        host, single = [], []
        probes = [self._host_probe()]
        for _ in range(repeats):
            sync()
            t = clock()
            for _ in range(k):
                call()
            host.append((clock() - t) * 1e3 / k)
            sync()
            t = clock()
            call()
            sync()
            single.append((clock() - t) * 1e3)
        probes.append(self._host_probe())
        out["host_ms"], out["single_ms"] = min(host), statistics.median(single)
        out["host_probe_ms"] = statistics.mean(probes)
        graph = None
        try:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(2):
                    call()
            torch.cuda.current_stream(dev).wait_stream(side)
            sync()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(side):  # capture_begin/end directly: torch.cuda.graph() runs gc.collect() per call
                graph.capture_begin(capture_error_mode="thread_local")  # other threads (load monitor) may run
                try:
                    call()
                finally:
                    graph.capture_end()
            graph.replay()
            sync()
            reps, gpu = max(1, min(int(n), 200)), []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(reps):
                    graph.replay()
                end.record()
                sync()
                gpu.append(start.elapsed_time(end) / reps)
            out["gpu_ms"] = min(gpu)
        except Exception as e:  # noqa: BLE001 - an uncapturable call keeps its eager measurement
            out["gpu_error"] = f"{type(e).__name__}: {e}"[:300]
            try:
                sync()
            except Exception as again:  # noqa: BLE001
                out["gpu_error"] += f"; then {type(again).__name__}: {again}"[:200]
        finally:
            del graph
        return out


class FakeDevice:
    """A deterministic device for logic tests: latency from analytic costs, seeded noise.

    ``latency = (overhead_us + flops / gflops + bytes / gbps) * (1 + slowdown * utilization)``,
    times log-normal noise of ``noise`` sigma seeded by the spec. ``fail`` returns an error
    message for specs that must fail; ``delay_s`` sleeps per measurement.
    """

    kind = "fake"

    def __init__(self, gflops: float = 50.0, gbps: float = 10.0, overhead_us: float = 5.0, slowdown: float = 1.0,
                 noise: float = 0.02, delay_s: float = 0.0, fail: Callable[[ModuleSpec], str | None] | None = None,
                 name: str = "fake", model_scale: float = 1.25, model_overhead_us: float = 20.0,
                 components: bool = False) -> None:
        self.gflops, self.gbps, self.overhead_us = gflops, gbps, overhead_us
        #: also report ``host_ms`` (the overhead) and ``gpu_ms`` (the rest) apart, as CudaDevice does
        self.components = components
        self.model_scale, self.model_overhead_us = model_scale, model_overhead_us
        self.slowdown, self.noise, self.delay_s, self.fail, self.name = slowdown, noise, delay_s, fail, name

    def metadata(self) -> dict[str, Any]:
        fp = hashlib.sha256(f"fake|{self.name}|{self.gflops}|{self.gbps}|{self.overhead_us}".encode()).hexdigest()[:16]
        return {"kind": "fake", "name": self.name, "fingerprint": fp, "gflops": self.gflops, "gbps": self.gbps}

    def settings(self) -> dict[str, Any]:
        return {"noise": self.noise, "slowdown": self.slowdown}

    def true_latency_ms(self, spec: ModuleSpec) -> float:
        c = get_op(spec.op).costs(spec)
        base_us = self.overhead_us + c.flops / (self.gflops * 1e3) + c.bytes_moved(spec.dtype) / (self.gbps * 1e3)
        return base_us / 1e3 * (1.0 + self.slowdown * spec.utilization)

    def measure(self, spec: ModuleSpec) -> Measurement:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail is not None:
            msg = self.fail(spec)
            if msg:
                raise MeasurementError(msg)
        seed = int.from_bytes(hashlib.sha256(spec.key.encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        true = self.true_latency_ms(spec)
        timings = tuple(float(x) for x in true * np.exp(rng.normal(0, self.noise, 5)))
        extra: dict[str, Any] = {}
        if self.components:
            host = self.overhead_us / 1e3
            extra = {"host_ms": host, "gpu_ms": true - host, "single_ms": true}
        return Measurement(robust_stat(timings), timings, 1, spec.utilization, None, extra)

    def reduce(self, spec: ModuleSpec, timings: tuple[float, ...] | list[float]) -> float:
        return robust_stat(list(timings))

    def close(self) -> None:
        """Nothing to release (the :class:`Device` protocol's call)."""

    def measure_model(self, module: Any, inputs: tuple[Any, ...], utilization: float = 0.0,
                      threads: int | None = None, reference_exponent: float | None = None) -> Measurement:
        """A whole model on the fake device: ``model_scale`` × the sum of its nodes' true latencies plus
        ``model_overhead_us`` per compute node (the traced graph gives the nodes; uncovered nodes count
        their FLOPs at the device's rate), so composition fitting can be tested against known truth."""
        from ..graph.trace import trace

        graph = trace(module, inputs)
        total = host = 0.0
        for n in graph.compute_nodes:
            if n.spec is not None:
                base = self.true_latency_ms(n.spec.with_conditions(utilization=utilization, threads=threads))
            else:
                base = (self.overhead_us + n.flops / (self.gflops * 1e3)) / 1e3 * (1.0 + self.slowdown * utilization)
            total += self.model_scale * base + self.model_overhead_us / 1e3
            host += self.overhead_us / 1e3
        extra = {"host_ms": host, "gpu_ms": total - host, "single_ms": total, "host_probe_ms": 0.05} if self.components else {}
        return Measurement(total, (total,), 1, utilization, None, extra)


def make_device(kind: str, **kwargs: Any) -> Device:
    """A device by name: ``cpu``, ``cuda`` (or ``cuda:N``), ``fake``."""
    if kind == "cpu":
        return CpuDevice(**kwargs)
    if kind == "cuda" or kind.startswith("cuda:"):
        index = int(kind.split(":", 1)[1]) if ":" in kind else 0
        return CudaDevice(index=index, **kwargs)
    if kind == "fake":
        return FakeDevice(**kwargs)
    raise DeviceError(f"unknown device {kind!r}; expected cpu, cuda, cuda:N or fake")

