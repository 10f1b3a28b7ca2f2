"""ParameterSpace: a user-configurable space of module specs and runtime conditions.

A space is data (a TOML file or a dict); see ``docs/space-format.md`` and the built-in spaces in
``latpred/spaces/``. Values of a parameter can be:

* a scalar: fixed (``kernel_size = 3``);
* a list: uniform choice (``kernel_size = [1, 3, 5]``);
* ``{choices = [...], weights = [...]}``: weighted choice (real-model priors);
* ``{range = [lo, hi]}`` / ``{log_range = [lo, hi]}``: uniform / log-uniform, integer when the
  parameter is; optional ``multiple_of`` rounds, optional ``num`` sets the grid resolution;
* ``"@other"``: copy another parameter's value (``out_channels = "@in_channels"``).

Each op may also have weighted ``variants`` (sub-tables overriding some parameters), e.g. a
depthwise variant of conv2d. Random sampling is deterministic per (seed, op), so restricting the
ops or the limit never changes the specs drawn for the others, and a re-run resumes exactly.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import tomllib
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpaceError, SpecError
from ..ops import REGISTRY, get_op
from ..spec import DTYPES, ModuleSpec

__all__ = ["Dist", "OpSpace", "ParameterSpace", "builtin_spaces", "load_space"]

RUNTIME_KEYS = ("batch_size", "utilization", "threads", "dtype")
_RUNTIME_KIND = {"batch_size": "int", "utilization": "float", "threads": "int", "dtype": "choice"}
_MAX_GRID = 1_000_000


@dataclass(frozen=True)
class Dist:
    """How one parameter is drawn: ``fixed``, ``choice``, ``range`` or ``log_range``."""

    kind: str
    values: tuple[Any, ...] = ()
    weights: tuple[float, ...] | None = None
    lo: float = 0.0
    hi: float = 0.0
    integer: bool = False
    multiple_of: float | None = None
    num: int = 5

    @classmethod
    def parse(cls, raw: Any, where: str, integer: bool) -> Dist:
        """Parse a TOML/dict value; ``where`` names the field in errors."""
        if isinstance(raw, (list, tuple)):
            if not raw:
                raise SpaceError(f"{where}: empty list of choices")
            return cls("choice", tuple(raw))
        if isinstance(raw, Mapping):
            keys = set(raw)
            if "choices" in keys:
                extra = keys - {"choices", "weights"}
                if extra:
                    raise SpaceError(f"{where}: unknown key(s) {sorted(extra)} next to 'choices'")
                values = raw["choices"]
                if not isinstance(values, (list, tuple)) or not values:
                    raise SpaceError(f"{where}.choices must be a non-empty list")
                weights = raw.get("weights")
                if weights is not None:
                    if not isinstance(weights, (list, tuple)) or len(weights) != len(values):
                        raise SpaceError(f"{where}.weights must be a list as long as choices ({len(values)})")
                    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights) \
                            or sum(weights) <= 0:
                        raise SpaceError(f"{where}.weights must be non-negative numbers with a positive sum")
                    weights = tuple(float(w) for w in weights)
                return cls("choice", tuple(values), weights)
            kinds = keys & {"range", "log_range"}
            if len(kinds) != 1:
                raise SpaceError(f"{where}: a table needs exactly one of 'choices', 'range', 'log_range'; got {sorted(keys)}")
            kind = kinds.pop()
            extra = keys - {kind, "multiple_of", "num"}
            if extra:
                raise SpaceError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {kind}, multiple_of, num")
            bounds = raw[kind]
            if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                    or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in bounds)):
                raise SpaceError(f"{where}.{kind} must be [low, high] numbers, got {bounds!r}")
            lo, hi = float(bounds[0]), float(bounds[1])
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise SpaceError(f"{where}.{kind}: low {bounds[0]} must not exceed high {bounds[1]}")
            if kind == "log_range" and lo <= 0:
                raise SpaceError(f"{where}.log_range needs a positive low bound, got {bounds[0]}")
            mult = raw.get("multiple_of")
            if mult is not None and (isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult <= 0):
                raise SpaceError(f"{where}.multiple_of must be a positive number, got {mult!r}")
            num = raw.get("num", 5)
            if isinstance(num, bool) or not isinstance(num, int) or num < 1:
                raise SpaceError(f"{where}.num must be a positive integer, got {num!r}")
            if integer and mult is None:
                mult = 1
            if mult is not None and math.ceil(lo / mult) * mult > hi:
                raise SpaceError(f"{where}: no multiple of {mult:g} lies in [{bounds[0]}, {bounds[1]}]")
            return cls(kind, lo=lo, hi=hi, integer=integer, multiple_of=mult, num=num)
        return cls("fixed", (raw,))

    def _round(self, x: float) -> Any:
        if self.multiple_of is not None:
            m = self.multiple_of
            x = min(max(round(x / m) * m, math.ceil(self.lo / m) * m), math.floor(self.hi / m) * m)
        return int(round(x)) if self.integer else float(x)

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            p = None if self.weights is None else np.asarray(self.weights) / sum(self.weights)
            return self.values[int(rng.choice(len(self.values), p=p))]
        if self.kind == "range":
            return self._round(rng.uniform(self.lo, self.hi))
        return self._round(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))

    def grid(self) -> list[Any]:
        """Grid points: the choices, or ``num`` points spread over the range (deduplicated)."""
        if self.kind in ("fixed", "choice"):
            return list(self.values)
        if self.kind == "range":
            pts = np.linspace(self.lo, self.hi, self.num)
        else:
            pts = np.exp(np.linspace(math.log(self.lo), math.log(self.hi), self.num))
        return list(dict.fromkeys(self._round(float(x)) for x in pts))

    def neighbour(self, value: Any, rng: np.random.Generator, scale: float) -> Any:
        """A value near ``value`` inside this distribution (adaptive sampling)."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            if value not in self.values:
                return self.sample(rng)
            i = self.values.index(value) + int(rng.integers(-1, 2))
            return self.values[min(max(i, 0), len(self.values) - 1)]
        x = float(value) * math.exp(rng.normal(0.0, scale)) if self.kind == "log_range" \
            else float(value) + rng.normal(0.0, scale * (self.hi - self.lo))
        return self._round(min(max(x, self.lo), self.hi))

    def to_raw(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return list(self.values) if self.weights is None else {"choices": list(self.values), "weights": list(self.weights)}
        out: dict[str, Any] = {self.kind: [self.lo, self.hi], "num": self.num}
        if self.multiple_of not in (None, 1) or (self.multiple_of is not None and not self.integer):
            out["multiple_of"] = self.multiple_of
        return out


@dataclass(frozen=True)
class OpSpace:
    """The space of one op type: parameter distributions, optional weighted variants, sample count."""

    op: str
    params: Mapping[str, Dist]
    samples: int
    variants: tuple[tuple[str, float, Mapping[str, Dist]], ...] = ()

    def variant_params(self) -> list[tuple[str, float, dict[str, Dist]]]:
        if not self.variants:
            return [("base", 1.0, dict(self.params))]
        return [(name, w, {**self.params, **over}) for name, w, over in self.variants]


def _param_integer(op: str, name: str) -> bool:
    try:
        return get_op(op).param(name).kind == "int"
    except SpecError:
        return False


def _resolve_refs(values: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(values)
    for k, v in values.items():
        if isinstance(v, str) and v.startswith("@"):
            ref = v[1:]
            if ref not in values:
                raise SpaceError(f"{where}.{k}: reference {v!r} names no parameter of this op")
            target = values[ref]
            if isinstance(target, str) and target.startswith("@"):
                raise SpaceError(f"{where}.{k}: reference {v!r} points at another reference")
            out[k] = target
    return out


@dataclass
class ParameterSpace:
    """A space of specs: per-op parameter distributions plus runtime conditions.

    Build with :meth:`from_dict`, :meth:`from_toml` or :meth:`builtin`; draw with :meth:`specs`.
    """

    name: str
    ops: dict[str, OpSpace]
    runtime: dict[str, Dist]
    extra: dict[str, Dist] = field(default_factory=dict)
    seed: int = 0
    strategy: str = "random"
    source: dict[str, Any] = field(default_factory=dict, repr=False)
    #: weighted runtime variants (name, weight, overriding dists), e.g. "under load, one thread"
    runtime_variants: tuple[tuple[str, float, dict[str, Dist]], ...] = ()

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> ParameterSpace:
        """Parse and validate a space from its dict form (what a TOML file holds)."""
        data = copy.deepcopy(dict(data))
        allowed = {"name", "seed", "strategy", "samples", "runtime", "extra", "ops", "description"}
        unknown = set(data) - allowed
        if unknown:
            raise SpaceError(f"space: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        sname = name or data.get("name") or "custom"
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpaceError(f"space.seed must be a non-negative integer, got {seed!r}")
        strategy = data.get("strategy", "random")
        if strategy not in ("random", "grid"):
            raise SpaceError(f"space.strategy must be 'random' or 'grid', got {strategy!r}")
        default_n = data.get("samples", 20)
        _check_count(default_n, "space.samples")

        rt_raw = data.get("runtime", {})
        if not isinstance(rt_raw, Mapping):
            raise SpaceError("space.runtime must be a table")
        bad = set(rt_raw) - set(RUNTIME_KEYS) - {"variants"}
        if bad:
            raise SpaceError(f"runtime: unknown key(s) {sorted(bad)}; runtime keys are {list(RUNTIME_KEYS)} "
                             "(put user-defined conditions under [extra])")
        runtime = {k: Dist.parse(rt_raw.get(k, default), f"runtime.{k}", _RUNTIME_KIND[k] == "int")
                   for k, default in (("batch_size", 1), ("utilization", 0.0), ("threads", "all"),
                                      ("dtype", "float32"))}
        extra_raw = data.get("extra", {})
        if not isinstance(extra_raw, Mapping):
            raise SpaceError("space.extra must be a table")
        extra = {}
        for k, v in extra_raw.items():
            if k in RUNTIME_KEYS:
                raise SpaceError(f"extra.{k}: {k!r} is a built-in runtime key; put it under [runtime]")
            ints = all(isinstance(x, int) for x in (v if isinstance(v, list) else [v]))
            extra[k] = Dist.parse(v, f"extra.{k}", ints and not isinstance(v, Mapping))
        ops_raw = data.get("ops")
        if not isinstance(ops_raw, Mapping) or not ops_raw:
            raise SpaceError("space.ops must be a non-empty table of op types, e.g. [ops.conv2d]")
        ops: dict[str, OpSpace] = {}
        for op_name, body in ops_raw.items():
            if op_name not in REGISTRY:
                raise SpaceError(f"ops.{op_name}: unknown op type; known: {', '.join(REGISTRY)}")
            if not isinstance(body, Mapping):
                raise SpaceError(f"ops.{op_name} must be a table")
            ops[op_name] = _parse_op(op_name, body, default_n)
        variants = []
        vraw = rt_raw.get("variants", {})
        if not isinstance(vraw, Mapping):
            raise SpaceError("runtime.variants must be a table of named variants")
        for vname, vbody in vraw.items():
            where = f"runtime.variants.{vname}"
            if not isinstance(vbody, Mapping):
                raise SpaceError(f"{where} must be a table")
            bad = set(vbody) - set(RUNTIME_KEYS) - {"weight"}
            if bad:
                raise SpaceError(f"{where}: unknown key(s) {sorted(bad)}; allowed: weight, {', '.join(RUNTIME_KEYS)}")
            weight = vbody.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise SpaceError(f"{where}.weight must be a positive number, got {weight!r}")
            over = {k: Dist.parse(v, f"{where}.{k}", _RUNTIME_KIND[k] == "int") for k, v in vbody.items() if k != "weight"}
            variants.append((vname, float(weight), over))
        _check_not_lone(variants, "runtime")
        space = cls(sname, ops, runtime, extra, seed, strategy, source=data, runtime_variants=tuple(variants))
        space.validate()
        return space

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> ParameterSpace:
        """Read a space from a TOML file (errors name the file and the field)."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpaceError(f"space file {str(p)!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise SpaceError(f"space file {str(p)!r} is not valid TOML: {e}") from None
        try:
            return cls.from_dict(data, name=data.get("name") or p.stem)
        except SpaceError as e:
            raise SpaceError(f"{p}: {e}") from None

    @classmethod
    def builtin(cls, name: str) -> ParameterSpace:
        """A built-in space: ``quick`` (CI, demos) or ``default`` (enough data for accurate models)."""
        names = builtin_spaces()
        if name not in names:
            raise SpaceError(f"unknown built-in space {name!r}; built-in: {names}")
        text = resources.files("latpred.spaces").joinpath(f"{name}.toml").read_text(encoding="utf-8")
        return cls.from_dict(tomllib.loads(text), name=name)

    def to_dict(self) -> dict[str, Any]:
        """The dict form (round-trips through :meth:`from_dict`)."""
        ops = {}
        for name, o in self.ops.items():
            body: dict[str, Any] = {"samples": o.samples, **{k: d.to_raw() for k, d in o.params.items()}}
            if o.variants:
                body["variants"] = {vn: {"weight": w, **{k: d.to_raw() for k, d in over.items()}}
                                    for vn, w, over in o.variants}
            ops[name] = body
        return {"name": self.name, "seed": self.seed, "strategy": self.strategy,
                "runtime": {**{k: d.to_raw() for k, d in self.runtime.items()},
                            **({"variants": {n: {"weight": w, **{k: d.to_raw() for k, d in o.items()}}
                                             for n, w, o in self.runtime_variants}} if self.runtime_variants else {})},
                "extra": {k: d.to_raw() for k, d in self.extra.items()}, "ops": ops}

    # -- restriction (CLI overrides) -------------------------------------------------------
    def restricted(self, ops: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None,
                   utilization: Sequence[float] | None = None, threads: Sequence[int] | None = None,
                   dtypes: Sequence[str] | None = None, samples: int | None = None,
                   seed: int | None = None) -> ParameterSpace:
        """A copy with fewer ops and/or overridden runtime choices (validated). ``seed`` draws another
        sample of the same space (e.g. more training data for a store that holds the seed-0 draw)."""
        data = self.to_dict()
        if seed is not None:
            data["seed"] = seed  # checked by from_dict
        if ops:
            unknown = [o for o in ops if o not in self.ops]
            if unknown:
                known = [o for o in unknown if o in REGISTRY]
                hint = f" (not in space {self.name!r}: {known})" if known else f"; known: {', '.join(REGISTRY)}"
                raise SpaceError(f"--ops: unknown op type(s) {unknown}{hint}")
            data["ops"] = {k: v for k, v in data["ops"].items() if k in ops}
        for key, vals in (("batch_size", batch_sizes), ("utilization", utilization), ("threads", threads),
                          ("dtype", dtypes)):
            if vals:
                data["runtime"][key] = list(vals)
                for body in data["runtime"].get("variants", {}).values():
                    body.pop(key, None)
        if samples is not None:
            _check_count(samples, "samples")
            for body in data["ops"].values():
                body["samples"] = samples
        return ParameterSpace.from_dict(data, name=self.name)

    # -- validation and drawing --------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; raise :class:`SpaceError` naming the first problem.

        Runtime values are checked one by one; for each op, trial draws must yield valid specs
        (an impossible shape such as a kernel larger than the padded input is reported with the
        op's own message).
        """
        named = [("runtime", self.runtime)] + [(f"runtime.variants.{n}", o) for n, _, o in self.runtime_variants]
        for prefix, dists in named:
            for key, d in dists.items():
                for v in _support(d):
                    _check_runtime(key, v, prefix)
        for k, d in self.extra.items():
            for v in _support(d):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise SpaceError(f"extra.{k}: value {v!r} is not a number; extra conditions must be numeric")
        for name, o in self.ops.items():
            self._draw_op(name, o, probe=True)

    def specs(self, limit: int | None = None) -> list[ModuleSpec]:
        """All specs of the space, interleaved round-robin across ops; ``limit`` caps the total."""
        if limit is not None:
            _check_count(limit, "limit")
        per_op = [self._draw_op(name, o) for name, o in self.ops.items()]
        out: list[ModuleSpec] = []
        for group in itertools.zip_longest(*per_op):
            out.extend(s for s in group if s is not None)
        return out if limit is None else out[:limit]

    def _rng(self, op: str, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(op.encode()), salt])

    def _runtime_sets(self) -> list[dict[str, Dist]]:
        """Runtime dists of each variant (the base alone when there are no variants)."""
        if not self.runtime_variants:
            return [self.runtime]
        return [{**self.runtime, **over} for _, _, over in self.runtime_variants]

    def _runtime_grid(self) -> list[dict[str, Any]]:
        grid: dict[str, dict[str, Any]] = {}
        for rt in self._runtime_sets():
            keys = list(rt) + [f"extra.{k}" for k in self.extra]
            dists = list(rt.values()) + list(self.extra.values())
            for combo in itertools.product(*(d.grid() for d in dists)):
                cond = dict(zip(keys, combo))
                grid.setdefault(json.dumps(cond, sort_keys=True), cond)
        return list(grid.values())

    def _make_spec(self, op: str, raw: dict[str, Any], cond: Mapping[str, Any], where: str) -> ModuleSpec:
        params = get_op(op).resolve(_resolve_refs(raw, where))
        threads = cond["threads"]
        return ModuleSpec(op, params, batch_size=cond["batch_size"], dtype=cond["dtype"],
                          utilization=float(cond["utilization"]),
                          threads=os.cpu_count() or 1 if threads == "all" else threads,
                          extra={k[6:]: v for k, v in cond.items() if k.startswith("extra.")})

    def _draw_op(self, name: str, o: OpSpace, probe: bool = False) -> list[ModuleSpec]:
        where = f"ops.{name}"
        reasons: Counter[str] = Counter()
        seen: dict[str, ModuleSpec] = {}
        variants = o.variant_params()
        if self.strategy == "grid":
            cond_grid = self._runtime_grid()
            for _vname, _, dists in variants:
                keys = list(dists)
                size = math.prod(len(dists[k].grid()) for k in keys) * len(cond_grid)
                if size > _MAX_GRID:
                    raise SpaceError(f"{where}: grid of {size:,} points is too large (max {_MAX_GRID:,}); "
                                     "use strategy = 'random' or fewer grid points")
                for combo in itertools.product(*(dists[k].grid() for k in keys)):
                    for cond in cond_grid:
                        try:
                            s = self._make_spec(name, dict(zip(keys, combo, strict=False)), cond, where)
                        except SpecError as e:
                            reasons[str(e)] += 1
                            continue
                        seen.setdefault(s.key, s)
        else:
            rng = self._rng(name)
            vw = np.asarray([w for _, w, _ in variants], dtype=float)
            rt_sets = self._runtime_sets()
            rw = np.asarray([w for _, w, _ in self.runtime_variants] or [1.0], dtype=float)
            rw = rw / rw.sum()
            target = 8 if probe else o.samples
            attempts = 0
            max_attempts = max(200, 50 * target)
            while len(seen) < target and attempts < max_attempts:
                attempts += 1
                _, _, dists = variants[int(rng.choice(len(variants), p=vw / vw.sum()))]
                raw = {k: d.sample(rng) for k, d in dists.items()}
                rt = rt_sets[int(rng.choice(len(rt_sets), p=rw))] if len(rt_sets) > 1 else rt_sets[0]
                cond = {k: d.sample(rng) for k, d in rt.items()}
                cond.update({f"extra.{k}": d.sample(rng) for k, d in self.extra.items()})
                try:
                    s = self._make_spec(name, raw, cond, where)
                except SpecError as e:
                    reasons[str(e)] += 1
                    continue
                seen.setdefault(s.key, s)
            rejected = sum(reasons.values())
            if probe and seen and rejected > 0.95 * attempts:
                top = reasons.most_common(1)[0][0]
                raise SpaceError(f"{where}: {rejected} of {attempts} draws are impossible specs, e.g. {top}")
        if not seen:
            top = reasons.most_common(1)[0][0] if reasons else "no combinations"
            raise SpaceError(f"{where}: the space contains no valid spec: {top}")
        return [] if probe else list(seen.values())

    def neighbours(self, spec: ModuleSpec, n: int, scale: float = 0.25, seed: int = 0) -> list[ModuleSpec]:
        """Adaptive-sampling hook: up to ``n`` valid specs near ``spec`` inside this space.

        Each numeric parameter moves by a log-normal factor (``scale`` = sigma) or a step along
        its choices; runtime conditions are kept. Use it to densify where a model errs, as
        nn-Meter's adaptive sampling does: ``store`` the neighbours of the worst-predicted specs.
        """
        if spec.op not in self.ops:
            raise SpaceError(f"op {spec.op!r} is not in space {self.name!r}")
        _check_count(n, "n")
        rng = np.random.default_rng([self.seed, zlib.crc32(spec.key.encode()), seed])
        dists = self.ops[spec.op].variant_params()[0][2]
        cond = {"batch_size": spec.batch_size, "dtype": spec.dtype, "utilization": spec.utilization,
                "threads": spec.threads, **{f"extra.{k}": v for k, v in spec.extra.items()}}
        out: dict[str, ModuleSpec] = {}
        for _ in range(20 * n):
            if len(out) >= n:
                break
            raw = {k: (dists[k].neighbour(v, rng, scale) if k in dists else v) for k, v in spec.params.items()}
            try:
                s = self._make_spec(spec.op, raw, cond, f"ops.{spec.op}")
            except SpecError:
                continue
            if s != spec:
                out.setdefault(s.key, s)
        return list(out.values())

    def describe(self) -> str:
        rt = ", ".join(f"{k}={d.to_raw()}" for k, d in self.runtime.items())
        ops = ", ".join(f"{n}:{o.samples}" for n, o in self.ops.items())
        return f"space {self.name!r} ({self.strategy}, seed {self.seed}) | {rt} | ops {ops}"


def _check_count(v: Any, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpaceError(f"{where} must be a positive integer, got {v!r}")


def _support(d: Dist) -> list[Any]:
    if d.kind in ("fixed", "choice"):
        return list(d.values)
    return [d._round(d.lo), d._round(d.hi)]


def _check_runtime(key: str, v: Any, prefix: str = "runtime") -> None:
    where = f"{prefix}.{key}"
    if key == "batch_size":
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpaceError(f"{where}: {v!r} is not a positive integer")
    elif key == "utilization":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise SpaceError(f"{where}: {v!r} is outside [0, 1) (a fraction of the device, not a percentage)")
    elif key == "threads":
        if v != "all" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SpaceError(f"{where}: {v!r} is not a positive integer or 'all'")
    elif key == "dtype" and v not in DTYPES:
        raise SpaceError(f"{where}: unknown dtype {v!r}; expected one of {sorted(DTYPES)}")


def _check_not_lone(variants: list[tuple[str, float, Any]], where: str) -> None:
    """Variants partition the draws: the base table is never drawn as such, only inherited.

    So one variant alone takes every draw and its weight means nothing, which is never what a
    space author wants (the default space drew no linear layer with tokens for that reason).
    """
    if len(variants) == 1:
        name = variants[0][0]
        raise SpaceError(
            f"{where}.variants has one variant ({name!r}): variants partition the draws and the base table "
            f"is only inherited, so every spec would be drawn from {name!r} and its weight would mean "
            f"nothing; add a second variant for the base draws (e.g. [{where}.variants.base] with a "
            f"weight) or move {name!r}'s values into [{where}]")


def _parse_op(op_name: str, body: Mapping[str, Any], default_n: int) -> OpSpace:
    where = f"ops.{op_name}"
    op = get_op(op_name)
    samples = body.get("samples", default_n)
    _check_count(samples, f"{where}.samples")

    def parse_params(tbl: Mapping[str, Any], w: str) -> dict[str, Dist]:
        out = {}
        for k, v in tbl.items():
            if k not in op.param_names:
                raise SpaceError(f"{w}.{k}: unknown parameter of {op_name}; known: {list(op.param_names)}")
            out[k] = Dist.parse(v, f"{w}.{k}", _param_integer(op_name, k))
        return out

    params = parse_params({k: v for k, v in body.items() if k not in ("samples", "variants")}, where)
    variants = []
    vraw = body.get("variants", {})
    if not isinstance(vraw, Mapping):
        raise SpaceError(f"{where}.variants must be a table of named variants")
    for vname, vbody in vraw.items():
        if not isinstance(vbody, Mapping):
            raise SpaceError(f"{where}.variants.{vname} must be a table")
        weight = vbody.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise SpaceError(f"{where}.variants.{vname}.weight must be a positive number, got {weight!r}")
        over = parse_params({k: v for k, v in vbody.items() if k != "weight"}, f"{where}.variants.{vname}")
        variants.append((vname, float(weight), over))
    _check_not_lone(variants, where)
    missing = [p.name for p in op.params if p.required and p.name not in params
               and not (variants and all(p.name in over for _, _, over in variants))]
    if missing:
        raise SpaceError(f"{where}: required parameter(s) {missing} have no values")
    return OpSpace(op_name, params, samples, tuple(variants))


def builtin_spaces() -> list[str]:
    """Names of the built-in spaces."""
    return sorted(p.name[:-5] for p in resources.files("latpred.spaces").iterdir() if p.name.endswith(".toml"))


def load_space(name_or_path: str | os.PathLike[str]) -> ParameterSpace:
    """A built-in space by name, or a TOML file by path."""
    s = str(name_or_path)
    if s in builtin_spaces():
        return ParameterSpace.builtin(s)
    if s.endswith(".toml") or os.path.sep in s or Path(s).exists():
        return ParameterSpace.from_toml(s)
    raise SpaceError(f"unknown space {s!r}: not a built-in ({', '.join(builtin_spaces())}) nor a .toml file")
