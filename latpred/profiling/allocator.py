"""Pin the C allocator so that a process's memory reuse does not depend on its history.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, a block above the
*mmap threshold* gets fresh pages from the kernel on every allocation and returns them on free, and the
heap top is given back to the kernel once more than the *trim threshold* (twice the mmap threshold) lies
free there. Both thresholds move with the largest block the process has freed so far (up to 32 MiB; larger
blocks are always mapped afresh). So whether an op's output and scratch buffers reuse memory, or
page-fault on every call (each new 4 KiB page costs ~1 µs on the 2-vCPU dev VM, and that price drifts with
the host), depends on what the process ran before:

* a 1x1 convolution 24 -> 144 channels on 8 x 56 x 56 maps took 10.4 ms with 7,400 page faults a call in a
  fresh process, and 1.9 ms with 79 faults once the allocator was pinned (2026-11-28, cpu2);
* vgg16 at batch 8: 1,578-1,617 ms with 255,000 faults a call, against 1,277 ms with ~9,000 pinned;
  mobilenet_v2 at batch 8: 110-133 ms against 72 ms. At batch 1 the two agree (nothing crosses the threshold).

A latency that depends on the history of the process cannot be profiled, predicted or validated. The
*reuse* mode (:data:`REUSE`, what :class:`~latpred.profiling.devices.CpuDevice` pins by default) sets
``M_MMAP_MAX = 0`` (never map a block on its own), no automatic trimming of the heap top (``M_TRIM_THRESHOLD
= -1``) and a top pad of 256 MiB, so that once a model or op has run its first calls it runs out of memory
the process already holds, every time. (Until 2026-12-05 the trim threshold was 1 GiB: vgg16 at batch 32
freed more than that at the heap top on every call, gave it back, and faulted 260,000-411,000 pages back in
on the next call, 8.6-13.0 s a call against 6.5-6.8 s with no trimming; densenet121 at batch 32 needed
three calls to stop faulting.) This is
the steady state of a long-running inference server with a caching allocator (jemalloc or tcmalloc, as
PyTorch's CPU performance guide recommends). The price would be a process that keeps every heap page it
ever touched: a profiling run over 1,600 large specs grew to 24 GiB and was killed. So a CPU device calls
:func:`release_free_memory` (glibc ``malloc_trim(0)``: free pages go back to the kernel) before each
measurement, outside its timing: the op's warm-up calls fault its pages in once and the timed windows
reuse them, and the process holds about one op's working set at a time. The
*system* mode (:data:`SYSTEM`) leaves the allocator alone. Pinning is process-wide and cannot be undone;
outside glibc (macOS, musl) reuse cannot be pinned and :func:`pin_allocator` says so and returns *system*.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import warnings
from typing import Any

from ..errors import SpecError

__all__ = ["REUSE", "SYSTEM", "ALLOCATOR_MODES", "pin_allocator", "allocator_mode", "check_allocator",
           "release_free_memory"]

#: blocks are never mapped on their own and the heap is not trimmed: memory is reused from call to call
REUSE = "reuse"
#: the C library's defaults (glibc: thresholds that move with the process's history)
SYSTEM = "system"
ALLOCATOR_MODES = (REUSE, SYSTEM)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = -1  # glibc: never trim the heap top on free (release_free_memory trims between measurements)
_TOP_PAD = 256 << 20

_pinned: str = SYSTEM
_libc: Any = None


def check_allocator(mode: Any) -> str:
    """``mode`` if it is one of :data:`ALLOCATOR_MODES`; raises :class:`SpecError` naming the known ones otherwise."""
    if mode not in ALLOCATOR_MODES:
        raise SpecError(f"unknown allocator mode {mode!r}; known: {', '.join(ALLOCATOR_MODES)}")
    return mode


def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def pin_allocator(mode: str = REUSE) -> str:
    """Pin this process's allocator to ``mode`` and return the mode now in force.

    *reuse* stays pinned for the rest of the process (a later *system* request cannot undo it and returns
    *reuse*). Where the C library is not glibc, *reuse* cannot be pinned: a warning says so and *system*
    is returned, so that callers record what the measurements really ran under.
    """
    global _pinned, _libc
    check_allocator(mode)
    if mode == SYSTEM or _pinned == REUSE:
        return _pinned
    libc = _glibc()
    if libc is None:
        warnings.warn("the C library is not glibc: the allocator cannot be pinned to reuse memory, so large ops may "
                      "page-fault depending on what the process ran before (allocator mode 'system')", stacklevel=2)
        return SYSTEM
    ok = all(libc.mallopt(p, v) == 1 for p, v in
             ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))
    if not ok:
        warnings.warn("glibc refused a mallopt setting: the allocator is left in mode 'system'", stacklevel=2)
        return SYSTEM
    _pinned, _libc = REUSE, libc
    return _pinned


def release_free_memory() -> bool:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim(0)``) if this process pinned *reuse*.

    Call it between measurements, never inside a timed window: the next calls fault their pages in again.
    Returns whether memory was released (False when the allocator is not pinned or nothing was free)."""
    if _pinned != REUSE or _libc is None:
        return False
    return bool(_libc.malloc_trim(0))


def allocator_mode() -> str:
    """The allocator mode this process is pinned to (*system* until :func:`pin_allocator` pins *reuse*)."""
    return _pinned
