"""Keep numpy's BLAS on one thread where latency is predicted or measured.

numpy's OpenBLAS worker threads busy-wait for a while after every multi-threaded call. Torch's OpenMP
threads then share the cores with a spinning BLAS thread. On cpu2-avx2 (2 cores):

* MEDN's 54,000 rows for resnet50 x 1,000 conditions took 27 ms median alone and 79 ms right after one
  numpy matrix product (400 x 300 x 1,000);
* a 64-channel 3 x 3 convolution on 56 x 56 maps that runs in 1.5-2.9 ms took 28-32 ms (median of 15)
  when it started 5-20 ms after such a product; with numpy's BLAS on one thread, 1.6-2.9 ms.

So a measurement taken after any numpy BLAS work in the same process can read many times slow. The
predictor's numpy products (Gaussian-process and SVR kernels, ridge models) and the partition cost
model's are small, so one BLAS thread costs them little.

* :func:`single_threaded_blas` — a block (the predictor's calls);
* :func:`hold_single_threaded_blas` — until the returned release is called (a measuring device, the edge
  runner, a cloud server process).

Holds nest and may overlap from several threads: the first sets numpy's BLAS to one thread, the last
release restores what it was. BLAS libraries loaded after the first use (other than numpy's) are not
touched. Without
threadpoolctl (a scikit-learn dependency) both do nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["hold_single_threaded_blas", "single_threaded_blas"]

_CONTROLLER: list[Any] = []  # the BLAS libraries loaded when first asked (scanning them costs ~2 ms)
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"holds": 0, "limiter": None}


def _blas() -> Any:
    if not _CONTROLLER:
        try:
            import numpy  # noqa: F401  (its BLAS must be loaded to be found)
            from threadpoolctl import ThreadpoolController

            _CONTROLLER.append(ThreadpoolController().select(user_api="blas"))
        except Exception:  # threadpoolctl missing or unable to inspect this process: leave BLAS as it is
            _CONTROLLER.append(None)
    return _CONTROLLER[0]


def hold_single_threaded_blas() -> Callable[[], None]:
    """Set numpy's BLAS to one thread until the returned function is called (calling it again does nothing)."""
    blas = _blas()
    with _LOCK:
        _STATE["holds"] += 1
        if _STATE["holds"] == 1 and blas is not None and len(blas.lib_controllers):
            _STATE["limiter"] = blas.limit(limits=1)
    done = [False]

    def release() -> None:
        with _LOCK:
            if done[0]:
                return
            done[0] = True
            _STATE["holds"] -= 1
            if _STATE["holds"] == 0 and _STATE["limiter"] is not None:
                _STATE["limiter"].restore_original_limits()
                _STATE["limiter"] = None

    return release


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with numpy's BLAS on one thread."""
    release = hold_single_threaded_blas()
    try:
        yield
    finally:
        release()
