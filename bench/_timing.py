"""Timing helper shared by the bench scripts (run as ``python bench/NAME.py``, so this folder is on the path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def min_ms(fn: Callable[[], Any], n: int) -> float:
    """Milliseconds of the fastest of ``n`` calls of ``fn``."""
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3
