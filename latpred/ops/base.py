"""The op-type contract: parameters, spec resolution, module building, shapes and costs.

Each op type is one :class:`OpType` subclass instance in the registry. Everything an op type
knows is here; featurization (``latpred.features``) and sampling (``latpred.profiling.space``)
only read these declarations, so adding an op type is adding one class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..errors import SpecError
from ..spec import ModuleSpec, dtype_bytes

__all__ = ["Param", "Costs", "OpType", "conv_out"]

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of an op type.

    ``kind`` is ``int``, ``float``, ``bool`` or ``choice``. ``default`` of ``None`` means the
    parameter is required. ``feature`` says how featurize encodes it: ``log`` (log1p of the value),
    ``log_align`` (log1p of the value plus its power-of-two alignment, for channel counts), ``linear``,
    ``onehot`` (choices only) or ``none``. ``symbols`` are string values that
    :meth:`OpType.resolve` turns into numbers (``"same"`` padding, ``"depthwise"`` groups, ...).
    """

    name: str
    kind: str
    default: Any = None
    minimum: float | None = None
    choices: tuple[Any, ...] = ()
    feature: str = "log"
    symbols: tuple[str, ...] = ()
    tie: str | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is None and self.tie is None


@dataclass(frozen=True)
class Costs:
    """Analytic costs of one call, for the whole batch.

    ``flops`` counts a multiply-add as 2. ``weights`` is the parameter/buffer element count.
    ``in_elems``/``out_elems`` are activation elements read/written. ``weights_touched`` is how
    many weight elements one call reads when that differs from ``weights`` (embedding lookups).
    """

    flops: float
    weights: float
    in_elems: float
    out_elems: float
    weights_touched: float | None = None

    def bytes_moved(self, dtype: str) -> float:
        touched = self.weights if self.weights_touched is None else self.weights_touched
        return (self.in_elems + self.out_elems + touched) * dtype_bytes(dtype)

    def plus(self, per_sample: Costs, factor: float) -> Costs:
        """``self + factor * per_sample`` field by field: the costs at another batch size from a fixed and a
        per-sample part (a negative factor recovers the fixed part). ``None`` fields stay ``None``."""
        def f(k: str) -> float | None:
            x, y = getattr(self, k), getattr(per_sample, k)
            return None if x is None else x + factor * (y or 0.0)
        return Costs(flops=f("flops"), weights=f("weights"), in_elems=f("in_elems"), out_elems=f("out_elems"),
                     weights_touched=f("weights_touched"))


def conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length of a convolution/pooling window along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class OpType:
    """Base class of an op type. Subclasses declare ``name``, ``params`` and implement the hooks."""

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: module classes / functions an fx graph node maps to this op type (used by graph tracing)
    torch_targets: ClassVar[tuple[Any, ...]] = ()

    # -- parameters -------------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise SpecError(f"{self.name}: unknown parameter {name!r}; known: {list(self.param_names)}")

    def resolve(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Complete and validate raw parameters; returns concrete values.

        Fills defaults, converts symbolic values (:meth:`_resolve_symbols`), type-checks every
        parameter and runs the op's shape checks. Raises :class:`SpecError` naming the field.
        """
        unknown = set(raw) - set(self.param_names)
        if unknown:
            raise SpecError(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {list(self.param_names)}"
            )
        values: dict[str, Any] = {p.name: raw.get(p.name, p.default) for p in self.params}
        for p in self.params:  # concrete values first, so symbols resolve from checked numbers
            v = values[p.name]
            if not (v in p.symbols or (v is None and p.tie)):
                values[p.name] = self._check_type(p, v)
        for p in self.params:
            if values[p.name] is None and p.tie:
                values[p.name] = values[p.tie]
        values = self._resolve_symbols(values)
        for p in self.params:
            values[p.name] = self._check_type(p, values[p.name])
        self.check(values)
        return values

    def with_defaults(self, spec: ModuleSpec) -> ModuleSpec:
        """``spec`` with every parameter it lacks that has a default filled in: a spec stored before a
        parameter was added (e.g. ``inplace``) ran with that parameter's default."""
        missing = {p.name: p.default for p in self.params if p.name not in spec.params and p.default is not None}
        return replace(spec, params={**spec.params, **missing}) if missing else spec

    def _resolve_symbols(self, values: dict[str, Any]) -> dict[str, Any]:
        """Hook: replace symbolic values (``"same"``, ``"depthwise"``) and tied defaults."""
        return values

    def _check_type(self, p: Param, v: Any) -> Any:
        where = f"{self.name}.{p.name}"
        if v is None:
            raise SpecError(f"{where} is required")
        if p.kind == "int":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
                raise SpecError(f"{where} must be an integer, got {v!r}")
            v = int(v)
        elif p.kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SpecError(f"{where} must be a finite number, got {v!r}")
            v = float(v)
        elif p.kind == "bool":
            if not isinstance(v, bool):
                raise SpecError(f"{where} must be true or false, got {v!r}")
        elif p.kind == "choice":
            if v not in p.choices:
                raise SpecError(f"{where} must be one of {list(p.choices)}, got {v!r}")
        if p.minimum is not None and p.kind in ("int", "float") and v < p.minimum:
            raise SpecError(f"{where} must be >= {p.minimum:g}, got {v!r}")
        return v

    def check(self, values: Mapping[str, Any]) -> None:
        """Hook: cross-parameter checks (impossible shapes). Raise :class:`SpecError`."""

    def spec(self, batch_size: int = 1, dtype: str = "float32", utilization: float = 0.0,
             threads: int | None = None, extra: Mapping[str, Any] | None = None,
             **params: Any) -> ModuleSpec:
        """Build a resolved :class:`ModuleSpec` of this op type."""
        return ModuleSpec(self.name, self.resolve(params), batch_size=batch_size, dtype=dtype,
                          utilization=utilization, threads=threads, extra=extra or {})

    # -- building and running ---------------------------------------------------------------
    def build(self, spec: ModuleSpec) -> torch.nn.Module:
        """A fresh module (random weights, eval mode) for ``spec``."""
        raise NotImplementedError

    def input_shapes(self, spec: ModuleSpec) -> list[tuple[int, ...]]:
        """Shapes of the positional input tensors, batch dimension included."""
        raise NotImplementedError

    def output_shape(self, spec: ModuleSpec) -> tuple[int, ...]:
        raise NotImplementedError

    def make_inputs(self, spec: ModuleSpec, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Random input tensors for ``spec`` on ``device``."""
        dt = TORCH_DTYPES[spec.dtype]
        return tuple(torch.randn(s, dtype=dt, device=device) for s in self.input_shapes(spec))

    def costs(self, spec: ModuleSpec) -> Costs:
        raise NotImplementedError

    def instantiate(self, spec: ModuleSpec, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        """Module (eval mode, on ``device``, in ``spec.dtype``) and its inputs.

        The module is built directly on ``device`` (weights never pass through host memory), so a
        spec too large for the device fails there, with the device's own out-of-memory error.
        """
        spec = self.with_defaults(spec)
        with torch.device(device):
            module = self.build(spec)
        module = module.eval().to(device=device, dtype=TORCH_DTYPES[spec.dtype])
        return module, self.make_inputs(spec, device)

    def __repr__(self) -> str:
        return f"<op {self.name}>"


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
