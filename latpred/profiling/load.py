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
:class:`GpuMonitor`), so CPU workers start fast.

Worker processes. No multiprocessing: each worker is ``python <this file> KIND ...`` started with
:class:`subprocess.Popen`, so the parent's ``__main__`` module is never re-imported (a user script
without an ``if __name__ == "__main__":`` guard works) and a worker imports only the standard library
and psutil (a CUDA worker also torch), never the ``latpred`` package. The parent shares a few
float64/int64 slots with its workers through a memory-mapped temp file (the target, a stop flag; see
:class:`_SharedState`); workers read the target at every period, and nap ``_IDLE_NAP_S`` at a time
while it is 0 (no busy polling). Each worker reports start-up on its stdout with one JSON line
(``ready`` or ``error``), which the parent waits for; the file is unlinked once every worker has
mapped it. Workers stop when :meth:`stop` is called, when the load is garbage collected or the
interpreter exits normally (``weakref.finalize``), and on their own within about a period or
``_IDLE_NAP_S`` when the parent process dies (even by SIGKILL): every worker compares
``os.getppid()`` with the parent's pid every period, and while idle. Linux (POSIX) only.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import random
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from typing import Any

import psutil

# Nothing from latpred is imported at module level, on purpose: worker processes run this file as a
# script (see _worker_command), so that they do not import the latpred package, which imports torch.
# For the same reason this module imports only the standard library and psutil at module level.
# DeviceError is imported where it is raised.

__all__ = [
    "CpuLoad",
    "CudaLoad",
    "GpuMonitor",
    "SystemMonitor",
    "make_load",
    "system_utilization",
]

_IDLE_NAP_S = 0.05  # an idle worker (target 0) naps this long between checks of target, stop flag, parent
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
# state shared by the parent and its workers
# ---------------------------------------------------------------------------------------------

_SLOT_TARGET = 0  # float64: the target busy fraction of every worker
_SLOT_STOP = 1  # int64: 1 tells the workers to exit
_STATE_SLOTS = 4  # 8-byte slots in the file (the rest are reserved, zero)
_STATE_SIZE = 8 * _STATE_SLOTS


class _SharedState:
    """A few aligned 8-byte slots in a memory-mapped temp file, shared by the parent and its workers.

    The parent :meth:`create` s the file (mode 0600, in a private ``mkdtemp`` directory) and writes
    it; a worker :meth:`attach` es to it read-only. Each slot is read and written whole with
    ``struct`` (one aligned 8-byte copy), so a reader sees either the old or the new value. Once every
    worker has mapped it the parent :meth:`unlink` s the file (the mappings stay valid), so nothing is
    left in the temp directory even if the parent is killed later.
    """

    def __init__(self, mm: mmap.mmap, path: str, directory: str | None) -> None:
        self._mm = mm
        self.path = path
        self._dir = directory  # owned by the parent, which removes it

    @classmethod
    def create(cls, target: float) -> _SharedState:
        directory = tempfile.mkdtemp(prefix="latpred-load-")
        try:
            path = os.path.join(directory, "state")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, _STATE_SIZE)  # zero-filled: stop flag 0
                mm = mmap.mmap(fd, _STATE_SIZE)  # MAP_SHARED, read/write
            finally:
                os.close(fd)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        state = cls(mm, path, directory)
        state.set_target(target)
        return state

    @classmethod
    def attach(cls, path: str) -> _SharedState:
        fd = os.open(path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, _STATE_SIZE, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return cls(mm, path, None)

    # -- slots ---------------------------------------------------------------------------------
    def target(self) -> float:
        return struct.unpack_from("d", self._mm, 8 * _SLOT_TARGET)[0]

    def set_target(self, value: float) -> None:
        struct.pack_into("d", self._mm, 8 * _SLOT_TARGET, value)

    def stop_requested(self) -> bool:
        return struct.unpack_from("q", self._mm, 8 * _SLOT_STOP)[0] != 0

    def request_stop(self) -> None:
        if not self._mm.closed:
            struct.pack_into("q", self._mm, 8 * _SLOT_STOP, 1)

    # -- cleanup -------------------------------------------------------------------------------
    def unlink(self) -> None:
        """Remove the file and its directory (parent only; the mappings stay valid). Idempotent."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def close(self) -> None:
        """Unmap and unlink. Idempotent."""
        self.unlink()
        self._mm.close()


# ---------------------------------------------------------------------------------------------
# worker side (runs in the worker processes: ``python <this file> KIND ...``, see _worker_main)
# ---------------------------------------------------------------------------------------------


def _parent_alive(parent_pid: int) -> bool:
    # A dead parent's children are re-parented (to init or a subreaper), so getppid() changes.
    return os.getppid() == parent_pid


def _duty_cycle(state: _SharedState, parent_pid: int, period_s: float, busy, closed_loop: bool) -> None:
    """Run the duty cycle until the parent requests a stop or dies.

    ``state`` holds the target (read at every period) and the stop flag. Periods run on an absolute
    clock.

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
    while not state.stop_requested():
        if not _parent_alive(parent_pid):
            return
        u = state.target()
        if u <= 0.0:
            # Idle: short naps (no busy polling) until the target, the stop flag or the parent changes.
            time.sleep(_IDLE_NAP_S)
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


def _cpu_worker(state: _SharedState, parent_pid: int, period_s: float, report, slot: int) -> int:
    report("ready", info=None)
    _duty_cycle(state, parent_pid, period_s, _spin, closed_loop=True)
    return 0


def _cuda_worker(state: _SharedState, parent_pid: int, period_s: float, report, index: int, size: int) -> int:
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
        report("error", message=f"{type(exc).__name__}: {exc}")
        return 1
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

    report("ready", info={"kernel_ms": kernel_s * 1000.0, "chunk": chunk})
    _duty_cycle(state, parent_pid, period_s, busy, closed_loop=False)
    return 0


# KIND -> (worker function, converters of its extra arguments)
_WORKERS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "cpu": (_cpu_worker, (int,)),  # slot
    "cuda": (_cuda_worker, (int, int)),  # index, size
}


def _worker_main(argv: list[str]) -> int:
    """Entry point of a worker: ``python load.py KIND STATE_PATH PARENT_PID PERIOD_S EXTRA...``.

    Reports start-up to the parent with exactly one JSON line on the original stdout,
    ``{"status": "ready", "pid": ..., "info": ...}`` or ``{"status": "error", "pid": ...,
    "message": ...}``; anything else the worker prints to stdout goes to its stderr (inherited from
    the parent) so that it cannot corrupt the handshake.
    """
    # The parent owns the workers' lifetime: Ctrl-C in a terminal reaches the whole process group,
    # and the parent's exit or stop() ends the workers without one traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # `python <file>` puts this file's directory first on sys.path (unless -P): drop it, so that the
    # modules next to this one cannot shadow those imported from here on (torch and its imports).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    handshake = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    def report(status: str, **fields: Any) -> None:
        if handshake.closed:
            return
        try:
            handshake.write(json.dumps({"status": status, "pid": os.getpid(), **fields}) + "\n")
            handshake.flush()
        except (OSError, ValueError):  # the parent is gone or gave up waiting
            pass
        finally:
            try:
                handshake.close()
            except OSError:
                pass

    try:
        kind, path, parent_pid, period_s, *extra = argv
        fn, converters = _WORKERS[kind]
        if len(extra) != len(converters):
            raise ValueError(f"{kind} worker takes {len(converters)} extra argument(s), got {extra!r}")
        args = [conv(value) for conv, value in zip(converters, extra)]
        ppid, period = int(parent_pid), float(period_s)
        state = _SharedState.attach(path)
    except Exception as exc:  # bad command line or state file
        if isinstance(exc, KeyError):
            message = f"unknown worker kind {exc.args[0]!r}; expected one of {sorted(_WORKERS)}"
        else:
            message = f"{type(exc).__name__}: {exc}"
        report("error", message=message)
        return 2
    try:
        return fn(state, ppid, period, report, *args)
    except BaseException as exc:  # an unexpected failure before "ready" still reaches the parent
        report("error", message=f"{type(exc).__name__}: {exc}")
        raise


# ---------------------------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------------------------


def _worker_command(kind: str, *args: Any) -> list[str]:
    """The command line of a worker: this interpreter, with the parent's flags, running this file."""
    path = os.path.abspath(__file__)
    flags = subprocess._args_from_interpreter_flags()  # what multiprocessing uses, too
    if sys.version_info >= (3, 11) and "-P" not in flags and "-I" not in flags:
        flags.append("-P")  # do not put this file's directory first on sys.path
    return [sys.executable, *flags, path, kind, *(str(a) for a in args)]


def _shutdown(procs: list, state: _SharedState, owner_pid: int, timeout_s: float = 2.0) -> None:
    """Stop worker processes (also the finalizer: must not reference the load object)."""
    if os.getpid() != owner_pid:  # a forked copy of the parent: the workers are not its children
        return
    state.request_stop()  # workers see it within a period (busy) or _IDLE_NAP_S (idle)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(1.0)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(1.0)
            except subprocess.TimeoutExpired:  # still running after kill: leave it to the OS
                pass
    for p in procs:
        if p.stdout is not None:
            p.stdout.close()
    procs.clear()
    state.close()


class _BackgroundLoad:
    """Shared machinery of :class:`CpuLoad` and :class:`CudaLoad`."""

    _start_timeout_s = _START_TIMEOUT_S

    def __init__(self, target: float, period_ms: float) -> None:
        self._target = _check_target(target)  # the current target, whether running or not
        self.period_ms = _check_period(period_ms)
        self._procs: list[subprocess.Popen] = []
        self._pids: list[int] = []
        self._state: _SharedState | None = None
        self._finalizer: weakref.finalize | None = None
        self.worker_info: list[Any] = []

    # -- subclass hooks ------------------------------------------------------------------------
    def _worker_specs(self) -> list[tuple[str, tuple]]:
        """(worker kind, extra args) for each worker process (see ``_WORKERS``)."""
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
        return self._target

    def start(self):
        """Start the workers and wait until every one has reported ready. Returns ``self``."""
        from latpred.errors import DeviceError

        if self._procs:
            return self
        state = _SharedState.create(self._target)
        parent_pid = os.getpid()
        period_s = self.period_ms / 1000.0
        procs: list[subprocess.Popen] = []
        names: list[str] = []
        self._finalizer = weakref.finalize(self, _shutdown, procs, state, parent_pid)
        try:
            for slot, (kind, extra) in enumerate(self._worker_specs()):
                cmd = _worker_command(kind, state.path, parent_pid, repr(period_s), *extra)
                names.append(f"latpred-{type(self).__name__}-{slot}")
                try:
                    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fds=True)
                except OSError as exc:
                    raise DeviceError(f"{type(self).__name__}: cannot start worker {names[-1]}: {exc}") from exc
                procs.append(p)
            self.worker_info = self._wait_ready(procs, names)
        except BaseException:
            self._finalizer()
            self._finalizer = None
            raise
        for p in procs:  # the handshake is over; the workers closed their end
            p.stdout.close()
        state.unlink()  # every worker has mapped the file
        self._state = state
        self._procs = procs
        self._pids = [p.pid for p in procs]
        return self

    def _wait_ready(self, procs: list[subprocess.Popen], names: list[str]) -> list[Any]:
        """Read each worker's JSON start-up line (with a timeout); their ``info`` in worker order."""
        from latpred.errors import DeviceError

        cls = type(self).__name__
        info: dict[int, Any] = {}
        buffers = [b""] * len(procs)
        deadline = time.monotonic() + self._start_timeout_s
        with selectors.DefaultSelector() as sel:
            for i, p in enumerate(procs):
                sel.register(p.stdout, selectors.EVENT_READ, i)
            while len(info) < len(procs):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeviceError(f"{cls}: workers not ready after {self._start_timeout_s:.0f} s")
                for key, _ in sel.select(min(remaining, 1.0)):
                    i = key.data
                    chunk = os.read(key.fd, 65536)
                    if not chunk:  # end of file before a whole line: the worker died
                        try:
                            code = procs[i].wait(5.0)
                        except subprocess.TimeoutExpired:
                            code = None
                        raise DeviceError(f"{cls}: worker {names[i]} exited with code {code} during start-up")
                    buffers[i] += chunk
                    if b"\n" not in buffers[i]:
                        continue
                    sel.unregister(key.fileobj)
                    line = buffers[i].split(b"\n", 1)[0]
                    try:
                        msg = json.loads(line)
                        status = msg["status"]
                    except (ValueError, TypeError, KeyError):
                        raise DeviceError(f"{cls}: worker {names[i]} sent {line[:200]!r} during start-up") from None
                    if status == "error":
                        raise DeviceError(f"{cls}: worker failed to start: {msg.get('message')}")
                    if status != "ready":
                        raise DeviceError(f"{cls}: worker {names[i]} sent {line[:200]!r} during start-up")
                    info[i] = msg.get("info")
        return [info[k] for k in sorted(info)]

    def stop(self) -> None:
        """Stop and join the workers. Idempotent; the load can be started again."""
        if self._finalizer is not None:
            self._finalizer()  # runs _shutdown at most once
            self._finalizer = None
        self._procs = []
        self._state = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def set_target(self, target: float) -> None:
        """Change the target of the running workers (no restart); before start, of the next start."""
        value = _check_target(target)
        self._target = value
        if self._state is not None:
            self._state.set_target(value)  # idle workers see it within _IDLE_NAP_S

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

    def _worker_specs(self) -> list[tuple[str, tuple]]:
        return [("cpu", (slot,)) for slot in range(self.workers)]

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

    def _worker_specs(self) -> list[tuple[str, tuple]]:
        return [("cuda", (self.index, self.size))]

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


if __name__ == "__main__":  # a worker process: python load.py KIND ... (see _worker_command)
    sys.exit(_worker_main(sys.argv[1:]))
