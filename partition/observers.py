"""Observers of the runtime conditions a deployment plan depends on (for :mod:`partition.adaptive`).

Every observer has one method, ``observe() -> dict``, returning the conditions it knows, under these
keys (a value of ``None`` means "unknown now"; a key an observer does not measure is left out):

* ``utilization``: CPU utilization of the edge machine in [0, 1) (background load, our own process
  excluded when possible), the ``utilization`` condition of :meth:`latpred.Predictor.predict_graph`;
* ``gpu_utilization``: GPU utilization in [0, 1] (NVML), ``None`` without NVML;
* ``batch_size``: the batch size the request queue forms;
* ``bandwidth_mbps`` / ``rtt_ms``: link estimates from real transfers (EWMA).

:class:`CompositeObserver` merges several observers; :class:`ScriptedObserver` replays a condition
trace (tests, examples, benchmarks).
"""

from __future__ import annotations

import bisect
import collections
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Observer", "CpuObserver", "GpuObserver", "BatchSizeObserver", "LinkObserver", "LinkProber", "ScriptedObserver",
           "CompositeObserver", "CONDITION_KEYS"]

#: the condition keys observers report
CONDITION_KEYS = ("utilization", "gpu_utilization", "batch_size", "bandwidth_mbps", "rtt_ms")


@runtime_checkable
class Observer(Protocol):
    """Anything with ``observe() -> dict`` of conditions (see the module docstring for the keys)."""

    def observe(self) -> dict[str, Any]:
        ...


class CpuObserver:
    """Edge CPU utilization over the window since the previous :meth:`observe` (psutil).

    ``utilization = (busy CPU time - CPU time of the excluded processes) / (wall time x cores)``, i.e. the
    load *other* work puts on the machine, which is what the predictor's ``utilization`` condition means.
    Our own process (``exclude_self``) and ``exclude_pids`` (e.g. a cloud server process co-located for a
    demo) are excluded; their children are not. The value is clipped to ``[0, max_utilization]``.

    ``cpus`` restricts the measurement to those logical cores (e.g. the cores an edge process is pinned
    to, when an emulated cloud runs on the others): busy time and wall time count those cores only, and an
    excluded process counts only while its CPU affinity lies within them (elsewhere it is not in the
    measured busy time to begin with).
    """

    def __init__(self, exclude_self: bool = True, exclude_pids: Iterable[int] = (), max_utilization: float = 0.95,
                 cpus: Sequence[int] | None = None) -> None:
        import psutil

        self._psutil = psutil
        self.exclude_pids = set(int(p) for p in exclude_pids) | ({os.getpid()} if exclude_self else set())
        self.max_utilization = float(max_utilization)
        n_all = psutil.cpu_count(logical=True) or 1
        if cpus is not None:
            cpus = sorted({int(c) for c in cpus})
            if not cpus or cpus[0] < 0 or cpus[-1] >= n_all:
                raise ValueError(f"cpus must be logical core indices in [0, {n_all}), got {cpus!r}")
        self.cpus = cpus
        self.n_cpus = n_all if cpus is None else len(cpus)
        self._t0 = self._sample()

    def _excluded_cpu_s(self) -> float:
        total = 0.0
        for pid in list(self.exclude_pids):
            try:
                proc = self._psutil.Process(pid)
                if self.cpus is not None and not set(proc.cpu_affinity()) <= set(self.cpus):
                    continue
                t = proc.cpu_times()
            except self._psutil.Error:  # exited
                continue
            total += t.user + t.system
        return total

    @staticmethod
    def _busy(t: Any) -> float:
        return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def _sample(self) -> tuple[float, float, float]:
        if self.cpus is None:
            busy = self._busy(self._psutil.cpu_times())
        else:
            per = self._psutil.cpu_times(percpu=True)
            busy = sum(self._busy(per[c]) for c in self.cpus)
        return time.monotonic(), busy, self._excluded_cpu_s()

    def observe(self) -> dict[str, Any]:
        t1 = self._sample()
        wall_s, busy_s, own_s = (t1[0] - self._t0[0]), (t1[1] - self._t0[1]), (t1[2] - self._t0[2])
        self._t0 = t1
        if wall_s <= 0.01:  # too short a window to say anything
            return {"utilization": None}
        u = (busy_s - max(0.0, own_s)) / (wall_s * self.n_cpus)
        return {"utilization": min(self.max_utilization, max(0.0, u))}


class GpuObserver:
    """GPU utilization through NVML (``nvidia-ml-py``; optional): ``None`` when NVML is absent.

    Uses :class:`latpred.profiling.load.GpuMonitor` (NVML samples since the previous observation, else
    ``torch.cuda.utilization`` / ``nvidia-smi``); ``nvml_only`` restricts it to NVML.
    """

    def __init__(self, index: int = 0, nvml_only: bool = True) -> None:
        from latpred.profiling.load import GpuMonitor

        self.monitor = GpuMonitor(index)
        self.nvml_only = bool(nvml_only)
        self.monitor.reset()

    def observe(self) -> dict[str, Any]:
        try:
            v = self.monitor._nvml_value() if self.nvml_only else self.monitor.value()
        except Exception:  # any NVML failure: unknown
            v = None
        self.monitor.reset()
        return {"gpu_utilization": None if v is None else float(v)}


class BatchSizeObserver:
    """The batch size the request queue forms: call :meth:`record` with each batch's size.

    :meth:`observe` reports the most common size among the last ``window`` batches (ties: the latest),
    ``None`` before any batch.
    """

    def __init__(self, window: int = 16) -> None:
        self._sizes: collections.deque[int] = collections.deque(maxlen=max(1, int(window)))
        self._lock = threading.Lock()

    def record(self, batch_size: int) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        with self._lock:
            self._sizes.append(int(batch_size))

    def observe(self) -> dict[str, Any]:
        with self._lock:
            sizes = list(self._sizes)
        if not sizes:
            return {"batch_size": None}
        counts = collections.Counter(sizes)
        best = max(counts.values())
        return {"batch_size": next(s for s in reversed(sizes) if counts[s] == best)}


def _lower_envelope_fit(samples: Iterable[tuple[float, float]], bucket: float = 1.25) -> tuple[float, float]:
    """(slope, intercept) of ``ms = intercept + slope * size`` fitted to the fastest transfer of each size.

    Delays on a shared machine are one-sided (a scheduling hiccup only adds time), so, as link probers
    such as pathchar do, each size bucket (sizes within a factor ``bucket``) keeps its minimum time and
    the line goes through those minima: one slow transfer no longer drags the fitted RTT. With a single
    bucket (or a degenerate spread) the slope is 0."""
    mins: dict[int, tuple[float, float]] = {}
    for size, ms in samples:
        key = int(math.floor(math.log(size) / math.log(bucket)))
        if key not in mins or ms < mins[key][1]:
            mins[key] = (size, ms)
    pts = list(mins.values())
    n = len(pts)
    mx = sum(s for s, _ in pts) / n
    my = sum(m for _, m in pts) / n
    sxx = sum((s - mx) ** 2 for s, _ in pts)
    if n < 2 or sxx <= 0:
        return 0.0, my
    slope = sum((s - mx) * (m - my) for s, m in pts) / sxx
    return slope, my - slope * mx


class LinkObserver:
    """Link bandwidth and RTT estimated from real transfers (the timings of :meth:`EdgeRunner.infer`).

    Feed it with :meth:`record` (a timings dict: ``bytes_sent``, ``bytes_received``, ``transfer_ms``,
    ``fallback``). A round trip costs ``rtt_ms + bytes * 8 / bandwidth``; with a window of transfers of
    different sizes (e.g. across plan changes) both are fitted by least squares through the fastest
    transfer of each size (delays on a shared machine only add time); with same-size
    transfers the RTT cannot be told apart, so the last fitted (or the given ``rtt_ms``) RTT is kept
    and only the bandwidth is updated. Estimates are EWMAs (weight ``alpha`` of a new sample). A sample
    whose bandwidth differs from the estimate by more than ``reset_factor`` (either way) is a step
    change, once the RTT is known (given or fitted): the window is cleared and the estimate jumps to
    the sample's bandwidth (upwards by at most ``reset_factor``² per sample). Fallbacks and duplicates are
    ignored. Real loopback costs (encoding, gRPC) count as link time. When no request crosses the
    link, :class:`LinkProber` feeds it probes.
    """

    def __init__(self, alpha: float = 0.3, rtt_ms: float = 0.0, window: int = 32, min_size_spread: float = 1.5,
                 reset_factor: float | None = 2.0) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if reset_factor is not None and not reset_factor > 1:
            raise ValueError(f"reset_factor must be > 1 (or None), got {reset_factor!r}")
        self.reset_factor = reset_factor
        self.alpha = float(alpha)
        self.rtt_ms: float = float(rtt_ms)
        self.bandwidth_mbps: float | None = None
        self.min_size_spread = float(min_size_spread)
        self._window: collections.deque[tuple[float, float]] = collections.deque(maxlen=max(2, int(window)))
        self._lock = threading.Lock()
        self.n_samples = 0
        self.last_sample_s: float | None = None  # time.monotonic() of the last recorded transfer
        # step changes are only judged once the RTT is known (given, or fitted): with an unknown RTT a small transfer
        # looks much slower than a large one, and would read as a step change on every size change
        self._rtt_known = self.rtt_ms > 0

    def idle_s(self) -> float:
        """Seconds since the last recorded transfer (``inf`` before the first)."""
        last = self.last_sample_s
        return math.inf if last is None else time.monotonic() - last

    def record(self, timings: Mapping[str, Any]) -> None:
        """Add the timings of one request (ignored unless it reached the cloud)."""
        if timings.get("fallback") or timings.get("duplicate") or int(timings.get("attempts", 1) or 0) != 1:
            return
        size_bytes = float(timings.get("bytes_sent", 0)) + float(timings.get("bytes_received", 0))
        ms = float(timings.get("transfer_ms", 0.0))
        if size_bytes <= 0 or not ms > 0:
            return
        self.record_transfer(size_bytes, ms)

    def record_transfer(self, size_bytes: float, transfer_ms: float) -> None:
        """Add one round trip of ``size_bytes`` (both directions) that took ``transfer_ms``."""
        with self._lock:
            wire_ms = transfer_ms - self.rtt_ms
            jump_from = None
            if self.reset_factor and self._rtt_known and self.bandwidth_mbps:
                ratio = math.inf if wire_ms <= 0 else size_bytes * 8 / (wire_ms / 1e3) / 1e6 / self.bandwidth_mbps
                if not 1 / self.reset_factor <= ratio <= self.reset_factor:
                    # a step change of the link: forget the old regime (its samples would bend the RTT fit) and jump to
                    # the new sample's bandwidth instead of easing towards it; upwards by at most reset_factor² per
                    # sample (one small transfer whose wire time is lost in the RTT's noise must not read as a 100x
                    # faster link), downwards at once (a transfer that took far longer is clear evidence)
                    self._window.clear()
                    jump_from, self.bandwidth_mbps = self.bandwidth_mbps, None
            self._window.append((float(size_bytes), float(transfer_ms)))
            self.n_samples += 1
            self.last_sample_s = time.monotonic()
            sizes = [s for s, _ in self._window]
            if len(self._window) >= 4 and max(sizes) >= self.min_size_spread * min(sizes):
                slope, rtt = _lower_envelope_fit(self._window)
                if slope > 0 and rtt >= 0:  # a negative intercept is noise (e.g. size-dependent host costs): keep the last RTT
                    self.rtt_ms = (1 - self.alpha) * self.rtt_ms + self.alpha * rtt
                    self._rtt_known = True
            wire_ms = transfer_ms - self.rtt_ms
            bw = math.inf if wire_ms <= 0 else size_bytes * 8 / (wire_ms / 1e3) / 1e6
            if jump_from is not None:
                f2 = self.reset_factor ** 2  # type: ignore[operator]
                self.bandwidth_mbps = min(bw, jump_from * f2)
            elif math.isfinite(bw):
                self.bandwidth_mbps = bw if self.bandwidth_mbps is None else (1 - self.alpha) * self.bandwidth_mbps + self.alpha * bw

    def observe(self) -> dict[str, Any]:
        with self._lock:
            return {"bandwidth_mbps": self.bandwidth_mbps, "rtt_ms": self.rtt_ms if self.n_samples else None}


class LinkProber:
    """Keeps a :class:`LinkObserver` current with probes while no request crosses the link.

    Real transfers fed to ``link_observer.record`` are the best measurement, but a plan that keeps every
    node on the edge sends nothing: the estimate would freeze at its last value and a link that became
    fast enough to offload would never be noticed. On each :meth:`observe`, when the link observer has
    had no sample for ``idle_s`` seconds, this sends a pair of probes through ``runner.probe_link``
    (e.g. :meth:`partition.runtime.EdgeRunner.probe_link`, which travels the same gRPC channel and
    emulated link as requests): one ``spread`` times smaller than the other, so the observer can fit RTT
    and bandwidth apart. The larger probe is sized to about ``target_ms`` of wire time at the current
    estimate (64 KiB before the first), clipped to ``[min_bytes, max_bytes]``. Returns the link
    observer's estimate, so it replaces the link observer in a :class:`CompositeObserver`.
    """

    def __init__(self, runner: Any, link_observer: LinkObserver, idle_s: float = 2.0, target_ms: float = 20.0, spread: float = 4.0,
                 min_bytes: int = 4096, max_bytes: int = 4 << 20, timeout_s: float = 2.0) -> None:
        if not callable(getattr(runner, "probe_link", None)):
            raise TypeError(f"runner must have probe_link(size_bytes, reply_bytes, timeout_s), got {type(runner).__name__}")
        if not (idle_s >= 0 and target_ms > 0 and spread > 1 and 0 < min_bytes <= max_bytes and timeout_s > 0):
            raise ValueError("LinkProber needs idle_s >= 0, target_ms > 0, spread > 1, 0 < min_bytes <= max_bytes, timeout_s > 0; got "
                             f"{idle_s!r}, {target_ms!r}, {spread!r}, {min_bytes!r}, {max_bytes!r}, {timeout_s!r}")
        self.runner, self.link = runner, link_observer
        self.idle_s, self.target_ms, self.spread = float(idle_s), float(target_ms), float(spread)
        self.min_bytes, self.max_bytes, self.timeout_s = int(min_bytes), int(max_bytes), float(timeout_s)
        self.n_probes = 0
        self.n_failed = 0

    def probe_sizes(self) -> tuple[int, int]:
        """(small, large) probe sizes in bytes for the current bandwidth estimate."""
        bw = self.link.observe()["bandwidth_mbps"]
        large = 65536 if not bw else int(bw * 1e6 / 8 * self.target_ms / 1e3)
        large = min(self.max_bytes, max(self.min_bytes, large))
        return max(self.min_bytes, int(large / self.spread)), large

    def probe(self) -> int:
        """Send one pair of probes now; returns how many were answered (and recorded)."""
        ok = 0
        for size in self.probe_sizes():
            tm = self.runner.probe_link(size, 0, self.timeout_s)
            self.n_probes += 1
            if tm is None:
                self.n_failed += 1
                continue
            self.link.record(tm)
            ok += 1
        return ok

    def observe(self) -> dict[str, Any]:
        if self.link.idle_s() >= self.idle_s:
            self.probe()
        return self.link.observe()


class ScriptedObserver:
    """Replays a condition trace: ``[(t_s, {condition: value, ...}), ...]`` sorted by time.

    :meth:`at` gives the conditions in force at ``t_s`` (the last entry with ``t <= t_s``; the first
    entry before it). :meth:`observe` reads the clock: ``clock()`` seconds (default: seconds since the
    first observation, ``time.monotonic``), or, with ``step_s``, each call advances by ``step_s``
    (the first call reads ``t = 0``), which makes replays deterministic.
    """

    def __init__(self, trace: Sequence[tuple[float, Mapping[str, Any]]], clock: Callable[[], float] | None = None,
                 step_s: float | None = None) -> None:
        if not trace:
            raise ValueError("ScriptedObserver needs a non-empty trace")
        items = sorted(((float(t), dict(c)) for t, c in trace), key=lambda x: x[0])
        self.times = [t for t, _ in items]
        self.conditions = [c for _, c in items]
        self._clock = clock
        self.step_s = None if step_s is None else float(step_s)
        self._n = 0
        self._t0: float | None = None
        self.t_s = 0.0

    @property
    def duration_s(self) -> float:
        return self.times[-1]

    def at(self, t_s: float) -> dict[str, Any]:
        i = max(0, bisect.bisect_right(self.times, float(t_s)) - 1)
        return dict(self.conditions[i])

    def now(self) -> float:
        """The replay time the next :meth:`observe` would read (without advancing a stepped clock)."""
        if self.step_s is not None:
            return self._n * self.step_s
        if self._clock is not None:
            return float(self._clock())
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def observe(self) -> dict[str, Any]:
        if self.step_s is None and self._clock is None and self._t0 is None:
            self._t0 = time.monotonic()
        self.t_s = self.now()
        self._n += 1
        return self.at(self.t_s)


class CompositeObserver:
    """Merges the observations of several observers (a later observer's non-``None`` value wins)."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def observe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for o in self.observers:
            for k, v in o.observe().items():
                if v is not None or k not in out:
                    if isinstance(v, float) and not math.isfinite(v):
                        continue
                    out[k] = v
        return out
