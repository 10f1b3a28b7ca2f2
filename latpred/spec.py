"""ModuleSpec: one module configuration plus the runtime conditions it runs under.

A spec is immutable and hashable. Its canonical key (:attr:`ModuleSpec.key`) is a JSON string
that identifies the measurement: the profile store uses it to resume runs and never measure the
same spec twice on the same device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from .errors import SpecError

__all__ = ["ModuleSpec", "DTYPES", "dtype_bytes"]

#: Supported tensor dtypes and their element sizes in bytes.
DTYPES: Mapping[str, int] = MappingProxyType({"float32": 4, "float16": 2, "bfloat16": 2})

Scalar = int | float | bool | str


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype``; raises :class:`SpecError` for an unknown dtype."""
    try:
        return DTYPES[dtype]
    except KeyError:
        raise SpecError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}") from None


def _freeze(name: str, values: Mapping[str, Any] | None) -> Mapping[str, Scalar]:
    out: dict[str, Scalar] = {}
    for k, v in sorted((values or {}).items()):
        if not isinstance(k, str):
            raise SpecError(f"{name} keys must be strings, got {k!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise SpecError(f"{name}[{k!r}] must be finite, got {v!r}")
        if not isinstance(v, (int, float, bool, str)):
            raise SpecError(f"{name}[{k!r}] must be a scalar (int, float, bool, str), got {type(v).__name__}")
        out[k] = v
    return MappingProxyType(out)


@dataclass(frozen=True, eq=False)
class ModuleSpec:
    """A module configuration and the conditions under which it runs.

    Attributes:
        op: registered op type (see ``latpred.ops.registry``).
        params: the op's hyper-parameters (channel counts, kernel size, spatial size, ...).
        batch_size: leading dimension of every input tensor.
        dtype: element type of inputs and weights (``float32``, ``float16``, ``bfloat16``).
        utilization: target utilization of the device by *other* work, in ``[0, 1)``.
        threads: intra-op threads (CPU); ``None`` means the device default.
        extra: user-defined runtime parameters (numbers or booleans), recorded and featurized.
    """

    op: str
    params: Mapping[str, Scalar] = field(default_factory=dict)
    batch_size: int = 1
    dtype: str = "float32"
    utilization: float = 0.0
    threads: int | None = None
    extra: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.op, str) or not self.op:
            raise SpecError(f"op must be a non-empty string, got {self.op!r}")
        object.__setattr__(self, "params", _freeze("params", self.params))
        object.__setattr__(self, "extra", _freeze("extra", self.extra))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SpecError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        dtype_bytes(self.dtype)
        u = self.utilization
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0.0 <= u < 1.0:
            raise SpecError(f"utilization must be a number in [0, 1), got {u!r}")
        object.__setattr__(self, "utilization", float(u))
        t = self.threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise SpecError(f"threads must be a positive integer or None, got {t!r}")

    # -- identity ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; :meth:`from_dict` inverts it."""
        return {
            "op": self.op,
            "params": dict(self.params),
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "utilization": self.utilization,
            "threads": self.threads,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModuleSpec:
        """Build a spec from :meth:`to_dict` output; unknown keys are an error."""
        allowed = {"op", "params", "batch_size", "dtype", "utilization", "threads", "extra"}
        unknown = set(data) - allowed
        if unknown:
            raise SpecError(f"unknown spec field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "op" not in data:
            raise SpecError("spec is missing the 'op' field")
        return cls(**dict(data))

    @property
    def key(self) -> str:
        """Canonical JSON identity of the spec (stable across processes and versions)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModuleSpec) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params.items())
        cond = f"bs={self.batch_size}, {self.dtype}, util={self.utilization:g}, threads={self.threads}"
        if self.extra:
            cond += ", " + ", ".join(f"{k}={v}" for k, v in self.extra.items())
        return f"ModuleSpec({self.op}: {p} | {cond})"

    # -- convenience ------------------------------------------------------------------------
    def with_conditions(self, **changes: Any) -> ModuleSpec:
        """A copy with other runtime conditions (batch_size, dtype, utilization, threads, extra)."""
        bad = set(changes) - {"batch_size", "dtype", "utilization", "threads", "extra"}
        if bad:
            raise SpecError(f"with_conditions() got non-condition field(s) {sorted(bad)}")
        return replace(self, **changes)

    def with_params(self, **changes: Scalar) -> ModuleSpec:
        """A copy with some hyper-parameters changed."""
        return replace(self, params={**self.params, **changes})
