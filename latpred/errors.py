"""Exception hierarchy: every error the package raises derives from :class:`LatpredError`.

Leaf errors also subclass the matching builtin so callers can catch either.
"""

from __future__ import annotations

__all__ = [
    "LatpredError",
    "SpaceError",
    "UnknownOpError",
    "SpecError",
    "StoreError",
    "DeviceError",
    "MeasurementError",
]


class LatpredError(Exception):
    """Root of every error raised by latpred."""


class SpaceError(LatpredError, ValueError):
    """A parameter space (TOML or Python) is malformed; the message names the field."""


class UnknownOpError(LatpredError, KeyError):
    """An op type is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class SpecError(LatpredError, ValueError):
    """A module spec is invalid (missing parameter, impossible shape, ...)."""


class StoreError(LatpredError, RuntimeError):
    """The profile store cannot be opened, read or written."""


class DeviceError(LatpredError, RuntimeError):
    """A device is unavailable or misconfigured."""


class MeasurementError(LatpredError, RuntimeError):
    """Measuring one spec failed (out of memory, unsupported dtype, ...)."""
