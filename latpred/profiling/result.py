"""The outcome of measuring one spec on one device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Measurement"]


@dataclass(frozen=True)
class Measurement:
    """Timings of one spec.

    Attributes:
        latency_ms: the robust per-call statistic (see the device's ``statistic``).
        timings_ms: per-call time of every timing window, in measurement order (all repeats kept).
        calls_per_window: calls averaged inside each window.
        util_observed: utilization of the device by the background load during the windows (0..1),
            or ``None`` when no load ran.
        system_util: whole-device utilization observed during the windows (0..1), or ``None``.
        extra: device-specific figures (e.g. ``kernel_ms`` on CUDA).
    """

    latency_ms: float
    timings_ms: tuple[float, ...]
    calls_per_window: int
    util_observed: float | None = None
    system_util: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
