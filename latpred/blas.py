"""Keep numpy's BLAS on one thread while the predictor runs.

numpy's OpenBLAS worker threads busy-wait for a while after every multi-threaded call (up to ~0.1 s). The
predictor mixes numpy kernels (Gaussian-process and SVR kernels, ridge models) with MEDN's torch network,
whose OpenMP threads then share the two cores with a spinning BLAS thread: on cpu2-avx2, MEDN's 54,000
rows for resnet50 x 1,000 conditions took 27 ms median alone and 79 ms right after one numpy matrix
product. The predictor's numpy products are small, so one BLAS thread costs them little.
:func:`single_threaded_blas` sets numpy's BLAS to one thread for a block (~11 us to enter and leave) and
restores it after; BLAS libraries loaded later are not touched. Without threadpoolctl (a scikit-learn
dependency) it does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["single_threaded_blas"]

_CONTROLLER: list[Any] = []  # the BLAS libraries loaded when first asked (scanning them costs ~2 ms)


def _blas() -> Any:
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER.append(ThreadpoolController().select(user_api="blas"))
        except Exception:  # threadpoolctl missing or unable to inspect this process: leave BLAS as it is
            _CONTROLLER.append(None)
    return _CONTROLLER[0]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with numpy's BLAS on one thread (nested uses are fine)."""
    blas = _blas()
    if blas is None or not len(blas.lib_controllers):
        yield
        return
    with blas.limit(limits=1):
        yield
