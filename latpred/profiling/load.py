"""Device-utilization emulation: background load with a target duty cycle, plus utilization monitors.

A profile is taken *under* a device utilization rate: while a module is measured, other work keeps a
target fraction of the device busy. :class:`CpuLoad` does that for the CPU with one worker process
per logical core; :class:`CudaLoad` does it for one GPU with a process that runs matmul kernels.
Both run a duty cycle: in every period (``period_ms`` on average; each period's length is jittered
by +-25% so that the load does not phase-lock with the kernel's accounting tick or with a periodic
workload) a worker is busy for ``target`` of the period and sleeps for the rest.

Closed loop (CPU). When the measured workload competes for the cores, a worker that spins for
``target x period`` of wall time receives less than that in CPU time. So a CPU worker's busy phase
ends on CPU time, not wall time: it spins until its own CPU time (``time.process_time``) over a
sliding window (the last ~250 ms of periods plus the current one) reaches ``target x`` the window's
wall time, or until the period ends (busy fraction clamped to [0, 1]). Slowed down by competing work,
it stays busy longer; a period that fell short (late wake-up, preemption) is made up in the next
ones. There is no integrator (the error is bounded by the window), so nothing winds up or
oscillates; the window is cleared on a target change, so a new target applies from the next period.
The load cannot exceed the worker's fair share of a core: with ``k`` other runnable threads per
core, a worker gets at most about ``1 / (k + 1)``.

Utilization figures (all 0..1):

* :meth:`CpuLoad.window_utilization`: CPU time of the load's workers since :meth:`~CpuLoad.reset_window`
  divided by ``wall time x logical cores`` of the machine. With the default ``workers`` (one per
  logical core) it matches ``target``; with fewer workers it is ``target x workers / cores``.
* :class:`SystemMonitor` / :func:`system_utilization`: whole-machine CPU utilization over a window,
  from ``psutil.cpu_times()`` deltas (busy = everything but idle, iowait and steal; steal time is
  left out of both numerator and denominator, so a noisy hypervisor does not read as load).
* :class:`GpuMonitor` / :meth:`CudaLoad.window_utilization`: whole-GPU utilization (fraction of time
  a kernel ran, as NVML defines it, so it includes other processes) from NVML when ``pynvml``
  imports, else ``torch.cuda.utilization()``, else ``nvidia-smi``, else ``None``.

Nothing happens at import time, and torch is imported lazily (only by :class:`CudaLoad` and
:class:`GpuMonitor`), so CPU workers spawn fast.

Workers are daemon processes of a ``spawn`` multiprocessing context. They stop when :meth:`stop` is
called, when the load is garbage collected or the interpreter exits normally (``weakref.finalize``),
and on their own within about ``_PARENT_CHECK_S`` when the parent process dies (even by SIGKILL):
every worker compares ``os.getppid()`` with the parent's pid every period, and while idle.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import random
import runpy
import subprocess
import time
import weakref
from collections import deque
from typing import Any

import psutil

# Nothing from latpred is imported at module level, on purpose: worker processes run this file on
# its own (see _worker_launch), so that they do not import the latpred package, which imports torch.
# DeviceError is imported where it is raised.

__all__ = [
    "CpuLoad",
    "CudaLoad",
    "GpuMonitor",
    "SystemMonitor",
    "make_load",
    "system_utilization",
]

_PARENT_CHECK_S = 0.25  # an idle worker wakes up this often to check that its parent is alive
_WINDOW_S = 0.25  # sliding window over which a CPU worker keeps its CPU time at target x wall time
_PERIOD_JITTER = 0.25  # each period lasts period_ms x uniform(1 - jitter, 1 + jitter)
_MAX_LAG_PERIODS = 5  # a worker this far behind its clock (stopped, starved) restarts the clock
_START_TIMEOUT_S = 30.0  # CPU workers must report ready within this
_CUDA_START_TIMEOUT_S = 120.0  # CUDA init + warm-up can be slow on a cold machine
_CUDA_CHUNK_S = 0.001  # a CUDA worker synchronizes after about this much queued kernel time


def _check_target(target: float) -> float:
    try:
        value = float(target)
    except (TypeError, ValueError):
        raise ValueError(f"load target must be a number in [0, 1), got {target!r}") from None
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"load target must be in [0, 1), got {target!r}")
    return value


def _check_period(period_ms: float) -> float:
    value = float(period_ms)
    if not 1.0 <= value <= 10_000.0:
        raise ValueError(f"period_ms must be in [1, 10000], got {period_ms!r}")
    return value


# ---------------------------------------------------------------------------------------------
# worker side (runs in the spawned processes; module-level so that spawn can import them)
# ---------------------------------------------------------------------------------------------


def _parent_alive(parent_pid: int) -> bool:
    # A dead parent's children are re-parented (to init or a subreaper), so getppid() changes.
    return os.getppid() == parent_pid


def _duty_cycle(target, active, stop, parent_pid: int, period_s: float, busy, closed_loop: bool) -> None:
    """Run the duty cycle until ``stop`` is set or the parent dies.

    ``target`` is a shared double, ``active``/``stop`` are events. Periods run on an absolute clock.

    Open loop: ``busy(start + target * period, None)`` occupies the device until that
    ``perf_counter`` deadline.

    Closed loop: ``busy(period_end, cpu_goal)`` occupies the CPU until this process's CPU time
    (``time.process_time``) reaches ``cpu_goal`` or the period ends, whichever comes first. The
    goal makes the CPU time over a sliding window (the last ``_WINDOW_S`` of periods plus the current
    one) equal ``target x`` its wall time: when competing work slows the worker down, it stays busy
    for more wall time, up to the whole period (busy fraction clamped to [0, 1]); a period that fell
    short (late wake-up, preemption) is made up in the following ones. The window is cleared when
    the target changes, so a new target takes effect at the next period without a transient.
    """
    n_window = max(5, round(_WINDOW_S / period_s))
    window: deque[tuple[float, float]] = deque(maxlen=n_window)  # (wall s, cpu s) of past periods
    next_start: float | None = None
    last_u = -1.0
    t_prev = c_prev = 0.0  # wall / cpu clock at the end of the previous period (contiguous accounting)
    while not stop.is_set():
        if not _parent_alive(parent_pid):
            return
        u = target.value
        if u <= 0.0:
            # Blocked, not polling: set_target(>0) and stop() set `active`; the timeout is only
            # there to notice a dead parent.
            active.wait(_PARENT_CHECK_S)
            next_start = None
            continue
        now = time.perf_counter()
        if next_start is None or now - next_start > _MAX_LAG_PERIODS * period_s:
            # First period, after idling, or far behind (process stopped): restart the clock, the
            # first time with a random phase so that workers do not all spin at the same instants.
            phase = random.random() * period_s if next_start is None else 0.0
            if phase > 0:
                time.sleep(phase)
            next_start = time.perf_counter()
            window.clear()
            t_prev, c_prev = next_start, time.process_time()
        if u != last_u:
            window.clear()
            last_u = u
        start = next_start
        # Jittered period length (mean period_s): a fixed period that is a multiple of the kernel's
        # accounting tick phase-locks with it, and /proc/stat (SystemMonitor) then misreads the load.
        end = start + period_s * (1.0 + _PERIOD_JITTER * (2.0 * random.random() - 1.0))
        if closed_loop:
            w_wall = sum(w for w, _ in window)
            w_cpu = sum(c for _, c in window)
            cpu_goal = c_prev + u * (w_wall + end - t_prev) - w_cpu
            busy(end, cpu_goal)
        else:
            busy(start + u * (end - start), None)
        next_start = end
        delay = end - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t_now, c_now = time.perf_counter(), time.process_time()
        window.append((t_now - t_prev, c_now - c_prev))
        t_prev, c_prev = t_now, c_now


def _spin(deadline: float, cpu_goal: float | None) -> None:
    """Busy-loop until ``perf_counter() >= deadline`` or ``process_time() >= cpu_goal``."""
    clock = time.perf_counter
    if cpu_goal is None:
        while clock() < deadline:
            pass
        return
    cpu = time.process_time
    while clock() < deadline and cpu() < cpu_goal:
        pass


def _cpu_worker(target, active, stop, parent_pid: int, period_s: float, ready, slot: int) -> None:
    ready.put(("ready", slot, os.getpid(), None))
    _duty_cycle(target, active, stop, parent_pid, period_s, _spin, closed_loop=True)


def _cuda_worker(target, active, stop, parent_pid: int, period_s: float, ready, index: int, size: int) -> None:
    try:
        import torch

        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        out = torch.empty(size, size, device=device)
        for _ in range(5):  # warm-up (cuBLAS handle, clocks)
            torch.mm(a, b, out=out)
        torch.cuda.synchronize(device)
        start_ev = torch.cuda.Event(enable_timing=True)
        end_ev = torch.cuda.Event(enable_timing=True)
        reps = 20
        start_ev.record()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        end_ev.record()
        end_ev.synchronize()
        kernel_s = max(1e-6, start_ev.elapsed_time(end_ev) / 1000.0 / reps)
    except Exception as exc:  # report any start-up failure to the parent, which raises DeviceError
        ready.put(("error", index, os.getpid(), f"{type(exc).__name__}: {exc}"))
        return
    chunk = max(1, int(_CUDA_CHUNK_S / kernel_s))

    def busy(deadline: float, _cpu_goal: float | None) -> None:
        clock = time.perf_counter
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                return
            for _ in range(min(chunk, max(1, math.ceil(remaining / kernel_s)))):
                torch.mm(a, b, out=out)
            torch.cuda.synchronize(device)

    ready.put(("ready", index, os.getpid(), {"kernel_ms": kernel_s * 1000.0, "chunk": chunk}))
    _duty_cycle(target, active, stop, parent_pid, period_s, busy, closed_loop=False)


# ---------------------------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------------------------

_WORKER_RUN_NAME = "__latpred_load_worker__"


def _worker_launch(fn, args: tuple) -> tuple[Any, tuple, dict[str, Any]]:
    """(target, args, kwargs) for a spawn ``Process`` that runs ``fn(*args)``.

    A spawned child imports the module of its target before running it; for ``fn`` that is
    ``latpred.profiling.load``, hence the ``latpred`` package and torch (seconds per worker, and
    memory). Instead the child runs this file by path with ``runpy.run_path``, which imports only the
    standard library and psutil, and the hook at the end of the file calls ``fn``. Falls back to
    ``fn`` itself when this file cannot be run by path (e.g. installed inside a zip).
    """
    path = __file__
    if __name__ == _WORKER_RUN_NAME or not path or not os.path.isfile(path):
        return fn, args, {}
    return runpy.run_path, (path,), {
        "init_globals": {"_LATPRED_WORKER_CALL": (fn.__name__, args)},
        "run_name": _WORKER_RUN_NAME,
    }


def _shutdown(procs: list, stop, active, timeout_s: float = 2.0) -> None:
    """Stop worker processes (also the finalizer: must not reference the load object)."""
    stop.set()
    active.set()  # wake idle workers so that they see `stop`
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(1.0)
        if p.is_alive():
            p.kill()
            p.join(1.0)
    for p in procs:
        try:
            p.close()
        except ValueError:  # still running after kill: leave it to the OS
            pass
    procs.clear()


class _BackgroundLoad:
    """Shared machinery of :class:`CpuLoad` and :class:`CudaLoad`."""

    _start_timeout_s = _START_TIMEOUT_S

    def __init__(self, target: float, period_ms: float) -> None:
        self._ctx = mp.get_context("spawn")
        self._initial_target = _check_target(target)
        self.period_ms = _check_period(period_ms)
        self._procs: list = []
        self._pids: list[int] = []
        self._target = None
        self._active = None
        self._stop = None
        self._finalizer: weakref.finalize | None = None
        self.worker_info: list[Any] = []

    # -- subclass hooks ------------------------------------------------------------------------
    def _worker_specs(self) -> list[tuple[Any, tuple]]:
        """(function, extra args) for each worker process."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._procs)

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (empty when stopped)."""
        return list(self._pids) if self._procs else []

    @property
    def target(self) -> float:
        return self._target.value if self._target is not None else self._initial_target

    def start(self):
        """Start the workers and wait until every one has reported ready. Returns ``self``."""
        if self._procs:
            return self
        self._target = self._ctx.Value("d", self._initial_target, lock=False)
        self._active = self._ctx.Event()
        self._stop = self._ctx.Event()
        if self._initial_target > 0:
            self._active.set()
        ready = self._ctx.Queue()
        parent_pid = os.getpid()
        period_s = self.period_ms / 1000.0
        procs = []
        self._finalizer = weakref.finalize(self, _shutdown, procs, self._stop, self._active)
        try:
            for slot, (fn, extra) in enumerate(self._worker_specs()):
                args = (self._target, self._active, self._stop, parent_pid, period_s, ready, *extra)
                target, args, kwargs = _worker_launch(fn, args)
                p = self._ctx.Process(
                    target=target,
                    args=args,
                    kwargs=kwargs,
                    name=f"latpred-{type(self).__name__}-{slot}",
                    daemon=True,
                )
                p.start()
                procs.append(p)
            self.worker_info = self._wait_ready(ready, procs)
        except BaseException:
            self._finalizer()
            raise
        finally:
            ready.close()
            ready.join_thread()
        self._procs = procs
        self._pids = [p.pid for p in procs]
        return self

    def _wait_ready(self, ready, procs: list) -> list[Any]:
        from latpred.errors import DeviceError

        info: dict[int, Any] = {}
        deadline = time.monotonic() + self._start_timeout_s
        while len(info) < len(procs):
            try:
                status, slot, _pid, detail = ready.get(timeout=0.1)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode is not None]
                if dead:
                    raise DeviceError(f"{type(self).__name__}: worker {dead[0].name} exited with code "
                                      f"{dead[0].exitcode} during start-up") from None
                if time.monotonic() > deadline:
                    raise DeviceError(f"{type(self).__name__}: workers not ready after "
                                      f"{self._start_timeout_s:.0f} s") from None
                continue
            if status == "error":
                raise DeviceError(f"{type(self).__name__}: worker failed to start: {detail}")
            info[slot] = detail
        return [info[k] for k in sorted(info)]

    def stop(self) -> None:
        """Stop and join the workers. Idempotent; the load can be started again."""
        if self._finalizer is not None:
            self._finalizer()  # runs _shutdown at most once
            self._finalizer = None
        self._procs = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def set_target(self, target: float) -> None:
        """Change the target of the running workers (no restart); before start, of the next start."""
        value = _check_target(target)
        self._initial_target = value
        if self._target is not None:
            self._target.value = value
            if value > 0:
                self._active.set()
            else:
                self._active.clear()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}(target={self.target:.3f}, period_ms={self.period_ms:g}, {state})"


class CpuLoad(_BackgroundLoad):
    """Background CPU load holding a target utilization.

    Args:
        target: busy fraction of each worker, in [0, 1). 0 starts the workers idle (blocked).
        workers: number of worker processes (default: ``psutil.cpu_count(logical=True)``, one per
            logical core, so that ``target`` is the whole-machine utilization added by the load).
        period_ms: duty-cycle period in milliseconds.

    Use as a context manager, or call :meth:`start` / :meth:`stop`::

        with CpuLoad(0.5) as load:
            load.reset_window()
            ...  # measure
            util = load.window_utilization()
    """

    def __init__(self, target: float = 0.0, workers: int | None = None, period_ms: float = 20.0) -> None:
        super().__init__(target, period_ms)
        n = (psutil.cpu_count(logical=True) or 1) if workers is None else int(workers)
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self.workers = n
        self._window_start: tuple[float, dict[int, float]] | None = None

    def _worker_specs(self) -> list[tuple[Any, tuple]]:
        return [(_cpu_worker, (slot,)) for slot in range(self.workers)]

    def start(self) -> CpuLoad:
        super().start()
        self.reset_window()
        return self

    def _cpu_seconds(self) -> dict[int, float]:
        out = {}
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:  # exited: its CPU time since the reset is lost (counted as 0)
                continue
            out[pid] = t.user + t.system
        return out

    def reset_window(self) -> None:
        """Start a new observation window for :meth:`window_utilization`."""
        self._window_start = (time.monotonic(), self._cpu_seconds())

    def window_utilization(self) -> float | None:
        """The workers' share of the machine's CPU since :meth:`reset_window` (0..1).

        ``sum(worker CPU time delta) / (wall time x logical cores)``; ``None`` when not running.
        """
        if not self.running or self._window_start is None:
            return None
        t0, cpu0 = self._window_start
        cpu1 = self._cpu_seconds()
        wall = time.monotonic() - t0
        if wall <= 0:
            return None
        used = sum(max(0.0, cpu1[pid] - cpu0.get(pid, 0.0)) for pid in cpu1)
        return used / (wall * (psutil.cpu_count(logical=True) or 1))

    observed = window_utilization


class GpuMonitor:
    """Whole-GPU utilization (0..1) over a window: ``reset()``, later ``value()``.

    Sources, first that works: NVML (``pynvml``, package nvidia-ml-py) — the average of the driver's
    utilization samples since :meth:`reset`, or the current reading when samples are unavailable;
    ``torch.cuda.utilization()``; ``nvidia-smi``. ``value()`` returns ``None`` when none works.
    ``index`` is the CUDA device index as torch sees it (``CUDA_VISIBLE_DEVICES`` applied).
    """

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)
        self._nvml = None
        self._handle = None
        self._nvml_tried = False
        self._t0_us = 0
        self.source: str | None = None

    def _nvml_handle(self):
        if self._nvml_tried:
            return self._handle
        self._nvml_tried = True
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            handle = None
            try:  # map the torch index to the physical GPU through its UUID
                import torch

                uuid = str(torch.cuda.get_device_properties(self.index).uuid)
                uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception:
                handle = None
            if handle is None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except Exception:  # pynvml.NVMLError and friends: no NVML on this machine
            return None
        self._nvml, self._handle = pynvml, handle
        return handle

    def reset(self) -> None:
        self._t0_us = int(time.time() * 1e6)

    def _nvml_value(self) -> float | None:
        handle = self._nvml_handle()
        if handle is None:
            return None
        nvml = self._nvml
        try:
            _, samples = nvml.nvmlDeviceGetSamples(handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, self._t0_us)
            values = [s.sampleValue.uiVal for s in samples if s.timeStamp >= self._t0_us]
            if values:
                self.source = "nvml-samples"
                return sum(values) / len(values) / 100.0
        except Exception:  # not supported / no samples yet
            pass
        try:
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        except Exception:
            return None
        self.source = "nvml"
        return rates.gpu / 100.0

    def _torch_value(self) -> float | None:
        try:
            import torch

            value = torch.cuda.utilization(self.index)
        except Exception:  # needs pynvml/amdsmi; any failure means "not available"
            return None
        self.source = "torch"
        return value / 100.0

    def _smi_value(self) -> float | None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            ids = [s.strip() for s in visible.split(",")]
            if self.index >= len(ids):
                return None
            gpu_id = ids[self.index]
        else:
            gpu_id = str(self.index)
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", gpu_id],
                capture_output=True, text=True, timeout=5.0, check=True,
            ).stdout
            value = float(out.strip().splitlines()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
        self.source = "nvidia-smi"
        return value / 100.0

    def value(self) -> float | None:
        """Utilization since :meth:`reset` (NVML samples), else the latest reading; ``None`` if unknown."""
        for read in (self._nvml_value, self._torch_value, self._smi_value):
            v = read()
            if v is not None:
                return v
        self.source = None
        return None


class CudaLoad(_BackgroundLoad):
    """Background GPU load: one process keeps ``cuda:<index>`` busy for ``target`` of each period.

    During the busy part of a period the worker queues ``size x size`` fp32 matmuls (about 1 ms of
    kernels at a time) and synchronizes, until the busy time has elapsed; then it sleeps. The duty
    cycle is open loop (kernel time is not corrected for competing work).
    :meth:`window_utilization` is whole-GPU utilization from :class:`GpuMonitor` (``None`` when no
    source works).

    Raises:
        DeviceError: CUDA is not available or ``index`` is out of range (at construction), or the
            worker fails to initialise the device (at :meth:`start`).
    """

    _start_timeout_s = _CUDA_START_TIMEOUT_S

    def __init__(self, target: float = 0.0, index: int = 0, period_ms: float = 20.0, size: int = 2048) -> None:
        from latpred.errors import DeviceError

        super().__init__(target, period_ms)
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - torch is a dependency
            raise DeviceError(f"CudaLoad needs torch: {exc}") from exc
        if not torch.cuda.is_available():
            raise DeviceError("CudaLoad: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if not 0 <= int(index) < count:
            raise DeviceError(f"CudaLoad: cuda:{index} does not exist ({count} device(s))")
        if int(size) < 64:
            raise ValueError(f"size must be >= 64, got {size!r}")
        self.index = int(index)
        self.size = int(size)
        self.workers = 1
        self._monitor = GpuMonitor(self.index)

    def _worker_specs(self) -> list[tuple[Any, tuple]]:
        return [(_cuda_worker, (self.index, self.size))]

    def start(self) -> CudaLoad:
        super().start()
        self.reset_window()
        return self

    def reset_window(self) -> None:
        """Start a new observation window for :meth:`window_utilization`."""
        self._monitor.reset()

    def window_utilization(self) -> float | None:
        """Whole-GPU utilization since :meth:`reset_window` (see :class:`GpuMonitor`), or ``None``."""
        return self._monitor.value()

    observed = window_utilization


def make_load(kind: str, target: float, **kw: Any) -> CpuLoad | CudaLoad:
    """Build (not start) a load for ``kind`` ``'cpu'`` or ``'cuda'``; ``kw`` go to the constructor."""
    if kind == "cpu":
        return CpuLoad(target, **kw)
    if kind == "cuda":
        return CudaLoad(target, **kw)
    raise ValueError(f"unknown load kind {kind!r}; expected 'cpu' or 'cuda'")


# ---------------------------------------------------------------------------------------------
# whole-machine CPU monitor
# ---------------------------------------------------------------------------------------------


def _busy_total(t) -> tuple[float, float]:
    idle = t.idle + getattr(t, "iowait", 0.0)
    busy = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    # On Linux guest time is already included in user/nice; steal is left out of both sums.
    return busy, busy + idle


class SystemMonitor:
    """Whole-machine CPU utilization (0..1) over a window: ``reset()``, later ``value()``.

    Computed from ``psutil.cpu_times()`` deltas: busy (user, nice, system, irq, softirq) over busy +
    idle + iowait. The window starts at construction or at the last :meth:`reset`.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._t0 = _busy_total(psutil.cpu_times())

    def value(self) -> float:
        busy1, total1 = _busy_total(psutil.cpu_times())
        busy0, total0 = self._t0
        d_total = total1 - total0
        if d_total <= 0:  # window shorter than the kernel's accounting tick
            return 0.0
        return min(1.0, max(0.0, (busy1 - busy0) / d_total))


def system_utilization(interval_s: float = 1.0) -> float:
    """Whole-machine CPU utilization (0..1) over the next ``interval_s`` seconds (blocks)."""
    monitor = SystemMonitor()
    time.sleep(interval_s)
    return monitor.value()


if __name__ == _WORKER_RUN_NAME:  # a worker process started through _worker_launch
    _fn_name, _fn_args = globals()["_LATPRED_WORKER_CALL"]
    globals()[_fn_name](*_fn_args)
