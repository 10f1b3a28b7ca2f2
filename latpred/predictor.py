"""Predictor: one chosen regression model per op type, vectorised prediction, safe persistence.

Files (a directory): ``predictor.json`` (format name and version, metadata, per-op entries with
each model file's SHA-256), ``rm_<op>.skops`` for scikit-learn models (skops: no pickle; only
scikit-learn/numpy types are trusted on load) and ``medn.safetensors`` for the shared MEDN
network (tensors only). Each op entry also holds its model's training range
(:class:`~latpred.domain.Domain`): predictions outside it are kept near the generic model's
(:func:`~latpred.domain.guard_log`), and its best FLOP and byte rates (:class:`~latpred.roofline.Roofline`): rows
inside that range are never predicted faster. Loading checks the format version and every hash before reading
a model, so a tampered or foreign file fails with a clear error and never executes code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .blas import single_threaded_blas
from .domain import Domain, above_profiled_load, guard_log_many
from .errors import LatpredError, SpecError, UnknownOpError
from .features import RUNTIME, feature_names, featurize
from .roofline import Roofline, generic_tail, table_of
from .spec import ModuleSpec

__all__ = ["Predictor", "PredictorFormatError", "FORMAT", "FORMAT_VERSION", "load_predictor", "is_predictor"]

FORMAT = "latpred-predictor"
FORMAT_VERSION = 1
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.")
#: our own estimator classes a skops file may hold (plain attribute containers: loading runs no code of the file)
_TRUSTED_TYPES = frozenset({"latpred.regressors.residual.ResidualRegressor"})


class PredictorFormatError(LatpredError, ValueError):
    """A predictor directory is missing, foreign, tampered with, or of an unknown version."""


@dataclass
class Predictor:
    """Per-op latency models. ``models[op]`` predicts log(latency ms) from ``featurize(spec)``.

    ``medn`` (optional) is a shared multi-task network; ops whose ``families[op] == "medn"`` use
    it, with task index ``medn_tasks.index(op)`` and features NaN-padded to its width.
    """

    families: dict[str, str]
    models: dict[str, Any] = field(default_factory=dict)
    medn: Any = None
    medn_tasks: list[str] = field(default_factory=list)
    extra_names: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: op-agnostic model over :data:`~latpred.features.GENERIC_FEATURES` for graph nodes no op type covers
    generic: Any = None
    #: how isolated node latencies compose into a model latency (identity until calibrated)
    composition: Any = None
    #: per op, the feature columns its model was trained on when they are not this latpred's full
    #: :func:`~latpred.features.feature_names` (a predictor trained before a feature was added reads a subset)
    schemas: dict[str, list[str]] = field(default_factory=dict)
    #: per op, the box of its model's training rows (its own columns): rows outside it are guarded by the generic
    #: model (:func:`~latpred.domain.guard_log`); predictors trained before domains existed have none (unguarded)
    domains: dict[str, Domain] = field(default_factory=dict)
    #: per op, the best FLOP and byte rates its training samples reached: rows inside its domain are never predicted
    #: faster (:mod:`latpred.roofline`); predictors written before rooflines existed have none (no floor)
    rooflines: dict[str, Roofline] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.composition is None:
            from .graph.compose import Composition

            self.composition = Composition()

    @property
    def ops(self) -> list[str]:
        return list(self.families)

    def covers(self, op: str) -> bool:
        return op in self.families

    # -- prediction ---------------------------------------------------------------------------
    def _features(self, specs: Sequence[ModuleSpec]) -> np.ndarray:
        return np.vstack([featurize(s, self.extra_names) for s in specs])

    def feature_names(self, op: str) -> list[str]:
        """The feature columns ``op``'s model reads (this latpred's full schema unless trained on an older one)."""
        return list(self.schemas.get(op) or feature_names(op, self.extra_names))

    def _columns(self, op: str, X: np.ndarray) -> np.ndarray:
        """``X`` (rows in this latpred's full schema) reduced to the columns ``op``'s model was trained on."""
        names = self.schemas.get(op)
        if not names:
            return X
        width, cols = _column_index(op, tuple(self.extra_names), tuple(names))
        # rows of the full schema are reduced; any other width is left for the model's own width check
        return X[:, cols] if X.ndim == 2 and X.shape[1] == width else X

    def predict_log(self, op: str, X: np.ndarray) -> np.ndarray:
        """log(latency ms) for feature rows ``X`` of op type ``op`` (this latpred's :func:`~latpred.features.featurize`
        columns; a model trained on fewer columns reads its own). Rows outside the op model's training range are
        clamped near the generic model, and rows above its profiled utilization never read below the line through
        its profiled loads (:mod:`latpred.domain`)."""
        return self.predict_log_many([(op, X)])[0]

    def _raw_log(self, op: str, X: np.ndarray) -> np.ndarray:
        """The op model's own prediction for rows ``X`` (already reduced to its columns), not guarded."""
        from .regressors.fast import fast_predict

        model = self.models[op]
        width = getattr(model, "n_features_in_", X.shape[1])
        if X.ndim != 2 or X.shape[1] != width:
            raise SpecError(f"{op}: feature rows of shape {X.shape} do not match the model's {width} features")
        # the runtime conditions (utilization, threads, extras) close every feature row: a hint that lets a GP
        # factor its kernel when rows are specs x conditions
        return fast_predict(model, X, condition_tail=len(RUNTIME) - RUNTIME.index("utilization") + len(self.extra_names))

    def _domain(self, op: str, X: np.ndarray) -> Domain | None:
        """``op``'s recorded training range when it matches the width of ``X`` (rows in ``op``'s own columns)."""
        dom = self.domains.get(op)
        return dom if dom is not None and X.ndim == 2 and dom.width == X.shape[1] else None

    def out_of_domain(self, op: str, X: np.ndarray) -> np.ndarray:
        """Mask of the feature rows ``X`` (this latpred's full schema) outside ``op``'s training range (all False
        without a recorded domain)."""
        X = self._columns(op, X)
        dom = self._domain(op, X)
        return np.zeros(len(X), dtype=bool) if dom is None else dom.outside(X)

    def fit_domains(self, X: Mapping[str, np.ndarray]) -> None:
        """Record each op's training range from its training rows ``X[op]`` (in the columns its model reads, as
        :func:`~latpred.selection.select` fits them, or this latpred's full schema, reduced here)."""
        for op, rows in X.items():
            if op in self.families:
                rows = np.asarray(rows, dtype=float)
                rows = self._columns(op, rows) if rows.shape[1] == len(feature_names(op, self.extra_names)) else rows
                # the highest load profiled per thread count: a loaded CPU on more threads than were profiled loaded
                # is outside even inside the box
                u, t = self._runtime_column(op, "utilization"), self._runtime_column(op, "threads")
                ok = u is not None and t is not None and rows.shape[1] == len(self.feature_names(op))
                self.domains[op] = Domain.of(rows, load_columns=(u, t) if ok else None)  # type: ignore[arg-type]

    def fit_rooflines(self, X: Mapping[str, np.ndarray], latency_ms: Mapping[str, np.ndarray]) -> None:
        """Record each op's best FLOP and byte rates (:class:`~latpred.roofline.Roofline`) from its training rows
        ``X[op]`` (its model's columns or this latpred's full schema: both end in the op-agnostic columns) and their
        measured ``latency_ms[op]``."""
        for op, rows in X.items():
            if op in self.families:
                self.rooflines[op] = Roofline.of(generic_tail(np.asarray(rows, dtype=float), len(self.extra_names)),
                                                 latency_ms[op])

    def fit_rooflines_from_store(self, store: Any) -> int:
        """:meth:`fit_rooflines` from the samples of the device this predictor was trained on in ``store`` (a
        :class:`~latpred.ProfileStore`, e.g. the one it was trained from; samples added since only raise a best rate,
        which loosens the floor). For predictors written before rooflines existed. Returns how many samples it read."""
        from .selection import load_training_data

        want = self.metadata.get("device_fingerprint")
        devices = store.devices()
        match = [d["id"] for d in devices if d["fingerprint"] == want] if want else [d["id"] for d in devices]
        if len(match) != 1:
            raise SpecError(f"profile store {store.path} holds {'no' if not match else 'several'} device(s) matching this "
                            f"predictor's ({want or 'unrecorded'}); its rates would bound another device's predictions")
        data = load_training_data(store, device_id=match[0], ops=self.ops, min_samples=1,
                                  target=self.metadata.get("target", "latency_ms"))
        if data.extra_names != sorted(self.extra_names):
            raise SpecError(f"profile store {store.path} varies extra conditions {data.extra_names}, the predictor "
                            f"{sorted(self.extra_names)}: not the store it was trained from")
        self.fit_rooflines({op: data.X(op) for op in data.ops}, data.latency_ms)
        return sum(len(v) for v in data.latency_ms.values())

    def predict_log_many(self, groups: Sequence[tuple[str, np.ndarray]],
                         outside: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """:meth:`predict_log` of several (op, X) groups: every MEDN group goes through one network call, and every
        group's out-of-domain rows through one call of the generic model (a graph's cost is calls, not rows).
        ``outside``, when given a list, receives each group's out-of-domain row mask."""
        for op, _ in groups:
            if op not in self.families:
                raise UnknownOpError(f"predictor has no model for op type {op!r}; it covers {', '.join(self.families)}")
        with single_threaded_blas():  # no BLAS thread left spinning beside MEDN's torch threads (latpred.blas)
            return self._predict_log_many(groups, outside)

    def _predict_log_many(self, groups: Sequence[tuple[str, np.ndarray]], outside: list[np.ndarray] | None) -> list[np.ndarray]:
        cols = [self._columns(op, X) for op, X in groups]
        doms = [self._domain(op, X) for (op, _), X in zip(groups, cols)]
        # rows above the profiled utilization are also predicted at the profiled loads: the line through those is
        # their floor (latpred.domain.above_profiled_load)
        loads = [above_profiled_load(X, d, self._runtime_column(op, "utilization")) for (op, _), X, d in zip(groups, cols, doms)]
        rows = [X if a is None else a[0] for X, a in zip(cols, loads)]
        raw: list[np.ndarray | None] = [None] * len(groups)
        medn = [i for i, (op, _) in enumerate(groups) if self.families[op] == "medn"]
        for i, (op, _) in enumerate(groups):
            if i not in medn:
                raw[i] = self._raw_log(op, rows[i])
        if medn:
            width = self.medn.n_features_in_
            sizes = [len(rows[i]) for i in medn]
            padded = np.full((sum(sizes), width), np.nan)
            tasks = np.empty(sum(sizes), dtype=np.int64)
            row = 0
            for i in medn:
                op, X = groups[i][0], rows[i]
                if X.ndim != 2 or X.shape[1] > width:
                    raise SpecError(f"{op}: feature rows of shape {X.shape} exceed MEDN's width {width}")
                padded[row:row + len(X), :X.shape[1]] = X
                tasks[row:row + len(X)] = self.medn_tasks.index(op)
                row += len(X)
            for i, part in zip(medn, np.split(self.medn.predict(padded, tasks), np.cumsum(sizes)[:-1])):
                raw[i] = part
        masks: list[np.ndarray] = []
        ys = guard_log_many(raw, rows, doms, self.predict_generic if self.generic is not None else None,  # type: ignore[arg-type]
                            len(self.extra_names), outside=masks)
        if outside is not None:
            outside.extend(m if a is None else a[1].mask(m) for m, a in zip(masks, loads))
        ys = self._roofline_floors(groups, rows, ys, masks)
        return [y if a is None else a[1].combine(y) for y, a in zip(ys, loads)]

    def _roofline_floors(self, groups: Sequence[tuple[str, np.ndarray]], rows: Sequence[np.ndarray],
                         ys: list[np.ndarray], outside: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``ys`` (log ms of each group's ``rows``) lifted to their op's roofline floor where the rows are inside its
        domain (``outside`` False), every group in one pass."""
        idx = [k for k, (op, _) in enumerate(groups) if op in self.rooflines and len(rows[k])]
        if not idx:
            return ys
        table = table_of(self.rooflines)
        sizes = [len(rows[k]) for k in idx]
        tail = np.concatenate([generic_tail(rows[k], len(self.extra_names)) for k in idx])
        floor = table.floor_log(np.repeat([table.ops.index(groups[k][0]) for k in idx], sizes), tail)
        y = np.concatenate([ys[k] for k in idx])
        lift = (floor > y) & ~np.concatenate([outside[k] for k in idx])
        if not lift.any():
            return ys
        out = list(ys)
        for k, part in zip(idx, np.split(np.where(lift, floor, y), np.cumsum(sizes)[:-1])):
            out[k] = part
        return out

    def _runtime_column(self, op: str, name: str) -> int | None:
        """Where runtime column ``name`` (``utilization``, ``threads``) sits in the columns ``op``'s model reads (None
        if it reads none)."""
        return _column_position(op, tuple(self.extra_names), tuple(self.schemas.get(op) or ()), name)

    def predict(self, specs: Sequence[ModuleSpec]) -> np.ndarray:
        """Predicted latency (ms) of each spec; mixed op types are grouped, one call per type."""
        specs = list(specs)
        out = np.empty(len(specs))
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(specs):
            groups.setdefault(s.op, []).append(i)
        logs = self.predict_log_many([(op, self._features([specs[i] for i in idx])) for op, idx in groups.items()])
        for idx, y in zip(groups.values(), logs):
            out[idx] = np.exp(y)
        return out

    def predict_one(self, spec: ModuleSpec) -> float:
        return float(self.predict([spec])[0])

    def predict_generic(self, X: np.ndarray) -> np.ndarray:
        """log(latency ms) of op-agnostic feature rows (:func:`~latpred.features.cost_features`)."""
        if self.generic is None:
            raise UnknownOpError("this predictor has no generic fallback model; retrain it with `latpred train`")
        from .regressors.fast import fast_predict

        return fast_predict(self.generic, X)

    @property
    def default_threads(self) -> int:
        """Thread count that ``threads=None`` means: the profiled device's default (0 when unknown)."""
        if "default_threads" in self.metadata:
            return int(self.metadata["default_threads"])
        dev = self.metadata.get("device", {})
        if isinstance(dev, dict) and dev.get("kind") == "cpu":
            return int(dev.get("cpu_affinity") or dev.get("cpu_count_logical") or 0)
        return 0

    @property
    def cache_mib(self) -> float | None:
        """The profiled device's last-level cache in MiB (a CPU's largest cache, a GPU's L2), from the
        metadata; None when unknown (predictors profiled before it was recorded). ``metadata["cache_mib"]``
        overrides it (``latpred calibrate --cache-mib``; 0 = no cap); without either, the cap the current
        composition was fitted with. The composition caps each node's cold-weight cost at it
        (:class:`~latpred.graph.compose.Composition`)."""
        if "cache_mib" in self.metadata:
            v = self.metadata["cache_mib"]
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None
        dev = self.metadata.get("device", {})
        size = None
        if isinstance(dev, dict):
            size = dev.get("gpu_l2_cache_bytes") if dev.get("kind") == "cuda" else dev.get("cpu_cache_bytes")
        if isinstance(size, (int, float)) and size > 0:
            return float(size) / 2**20
        return self.composition.weight_cache_mib

    @property
    def activation_cap_mib(self) -> float | None:
        """The profiled CPU's private per-core cache (L2) in MiB, from the metadata: the composition caps each
        node's activation cost at it (:class:`~latpred.graph.compose.Composition`). ``metadata["activation_cap_mib"]``
        overrides it (``latpred calibrate --activation-cap-mib``; 0 = no cap); without either, the cap the current
        composition was fitted with (None for GPUs and for predictors profiled before the L2 was recorded)."""
        if "activation_cap_mib" in self.metadata:
            v = self.metadata["activation_cap_mib"]
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None
        dev = self.metadata.get("device", {})
        size = dev.get("cpu_l2_cache_bytes") if isinstance(dev, dict) and dev.get("kind") == "cpu" else None
        if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0:
            return float(size) / 2**20
        return self.composition.activation_cap_mib

    def predict_graph(self, graph: Any, batch_size: Any = None, utilization: Any = 0.0, threads: Any = None,
                      **extra: Any) -> Any:
        """Per-node and total latency of a :class:`~latpred.graph.ModelGraph` under one or many conditions;
        see :func:`latpred.graph.predict.predict_graph`."""
        from .graph.predict import predict_graph

        return predict_graph(self, graph, batch_size, utilization, threads, **extra)

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the predictor directory (created if needed); returns its path."""
        import skops.io as sio
        from safetensors.numpy import save_file

        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        entries: dict[str, Any] = {}
        for op, family in self.families.items():
            entry: dict[str, Any] = {"family": family, "feature_names": self.feature_names(op)}
            entry.update(self._range_entry(op))
            if family != "medn":
                name = f"rm_{op}.skops"
                (d / name).write_bytes(sio.dumps(self.models[op]))
                entry.update(file=name, sha256=_sha(d / name))
            entries[op] = entry
        generic_entry = None
        if self.generic is not None:
            (d / "rm__generic.skops").write_bytes(sio.dumps(self.generic))
            generic_entry = {"file": "rm__generic.skops", "sha256": _sha(d / "rm__generic.skops")}
        medn_entry = None
        if self.medn is not None:
            config, arrays = self.medn.to_state()
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(d / "medn.safetensors"))
            medn_entry = {"file": "medn.safetensors", "sha256": _sha(d / "medn.safetensors"), "config": config,
                          "tasks": self.medn_tasks}
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "environment": _environment(),
               "extra_names": self.extra_names, "metadata": self.metadata, "ops": entries, "medn": medn_entry,
               "generic": generic_entry, "composition": self.composition.to_dict()}
        (d / "predictor.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return d

    def _range_entry(self, op: str) -> dict[str, Any]:
        """What ``op``'s entry in ``predictor.json`` holds of its training range and roofline (those it has)."""
        entry: dict[str, Any] = {}
        if op in self.domains:
            entry["domain"] = self.domains[op].to_dict()
        if op in self.rooflines:
            entry["roofline"] = self.rooflines[op].to_dict()
        return entry

    def save_composition(self, path: str | Path) -> Path:
        """Rewrite only the composition (and the op models' training ranges and rooflines) of the predictor saved at ``path``
        (the same op models): the model
        files stay byte for byte as they are (skops archives differ on every save), so a recalibration
        changes one small JSON file."""
        d = Path(path)
        index = d / "predictor.json"
        try:
            doc = json.loads(index.read_text())
        except (OSError, ValueError) as e:
            raise PredictorFormatError(f"{index}: cannot update the composition of a predictor that is not there ({e}); "
                                       "use Predictor.save") from None
        if doc.get("format") != FORMAT or sorted(doc.get("ops", {})) != sorted(self.families):
            raise PredictorFormatError(f"{index} holds other op models than this predictor; save it whole with Predictor.save")
        doc["composition"] = self.composition.to_dict()
        for op in self.families:
            doc["ops"][op].update(self._range_entry(op))
        tmp = index.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
        tmp.replace(index)
        return d

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Read a predictor directory written by :meth:`save`; refuses anything it cannot trust."""

        d = Path(path)
        index = d / "predictor.json" if d.is_dir() else d
        d = index.parent
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PredictorFormatError(f"no predictor at {str(d)!r} (missing predictor.json)") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PredictorFormatError(f"{index} is not a predictor index (invalid JSON: {e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PredictorFormatError(f"{index} is not a latpred predictor (format {doc.get('format')!r})"
                                       if isinstance(doc, dict) else f"{index} is not a latpred predictor")
        version = doc.get("version")
        if version != FORMAT_VERSION:
            raise PredictorFormatError(f"{index}: predictor format version {version!r} is not supported by this "
                                       f"latpred (reads version {FORMAT_VERSION}); retrain with `latpred train`")
        families: dict[str, str] = {}
        models: dict[str, Any] = {}
        extra_names = list(doc.get("extra_names", []))
        schemas: dict[str, list[str]] = {}
        domains: dict[str, Domain] = {}
        rooflines: dict[str, Roofline] = {}
        for op, entry in doc.get("ops", {}).items():
            family = entry.get("family")
            families[op] = family
            stored = entry.get("feature_names")
            full = feature_names(op, extra_names)
            if stored != full:
                # a model trained before a feature column was added reads its own columns, in its order
                if not isinstance(stored, list) or not stored or not set(stored) <= set(full) or len(set(stored)) != len(stored):
                    missing = sorted(set(stored or []) - set(full)) if isinstance(stored, list) else stored
                    raise PredictorFormatError(f"{index}: the feature schema of {op!r} differs from this latpred's "
                                               f"(columns it lacks: {missing}); retrain the predictor")
                schemas[op] = list(stored)
            if entry.get("domain") is not None:
                try:
                    domains[op] = Domain.from_dict(entry["domain"])
                except SpecError as e:
                    raise PredictorFormatError(f"{index}: the training range of {op!r} is damaged ({e})") from None
                if domains[op].width != len(schemas.get(op) or full):
                    raise PredictorFormatError(f"{index}: the training range of {op!r} has {domains[op].width} columns, "
                                               f"its model reads {len(schemas.get(op) or full)}")
            if entry.get("roofline") is not None:
                try:
                    rooflines[op] = Roofline.from_dict(entry["roofline"])
                except SpecError as e:
                    raise PredictorFormatError(f"{index}: the roofline of {op!r} is damaged ({e})") from None
            if family == "medn":
                continue
            models[op] = _load_skops(_checked(d, entry))
        medn = None
        medn_tasks: list[str] = []
        if doc.get("medn"):
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            from .regressors.medn import MEDNRegressor

            entry = doc["medn"]
            f = _checked(d, entry)
            try:
                arrays = load_file(str(f))
                medn = MEDNRegressor.from_state(entry["config"], arrays)
            except (SafetensorError, KeyError, RuntimeError, ValueError) as e:
                raise PredictorFormatError(f"{f}: not a valid MEDN weight file ({type(e).__name__}: {e})") from None
            medn_tasks = list(entry["tasks"])
        generic = _load_skops(_checked(d, doc["generic"])) if doc.get("generic") else None
        from .graph.compose import Composition

        try:
            composition = Composition.from_dict(doc["composition"]) if doc.get("composition") else Composition()
        except (SpecError, KeyError, TypeError, ValueError) as e:
            # the op models are still good: load them, compose by plain sum, and say how to recalibrate
            warnings.warn(f"{index}: composition not usable by this latpred ({e}); composing by plain sum until "
                          "`latpred calibrate` is run again", stacklevel=2)
            composition = Composition(info={"stale": str(e)})
        return cls(families, models, medn, medn_tasks, extra_names, dict(doc.get("metadata", {})), generic, composition,
                   schemas, domains, rooflines)


@functools.lru_cache(maxsize=256)
def _column_index(op: str, extra_names: tuple[str, ...], names: tuple[str, ...]) -> tuple[int, np.ndarray]:
    """Width of this latpred's full schema of ``op`` and the positions of ``names`` in it."""
    full = feature_names(op, list(extra_names))
    return len(full), np.array([full.index(n) for n in names], dtype=int)


@functools.lru_cache(maxsize=256)
def _column_position(op: str, extra_names: tuple[str, ...], schema: tuple[str, ...], name: str) -> int | None:
    """Position of column ``name`` among ``schema`` (or this latpred's full schema of ``op`` when empty)."""
    names = list(schema) or feature_names(op, list(extra_names))
    return names.index(name) if name in names else None


def load_predictor(path: str | Path) -> Any:
    """A predictor directory of either kind: a :class:`Predictor`, or an
    :class:`~latpred.graph.overlap.OverlapPredictor` (a directory holding ``overlap.json``)."""
    if (Path(path) / "overlap.json").is_file():
        from .graph.overlap import OverlapPredictor

        return OverlapPredictor.load(path)
    return Predictor.load(path)


def is_predictor(obj: Any) -> bool:
    """Whether ``obj`` predicts whole graphs (a :class:`Predictor` or an overlap predictor)."""
    from .graph.overlap import OverlapPredictor

    return isinstance(obj, (Predictor, OverlapPredictor))


def _load_skops(f: Path) -> Any:
    """A scikit-learn model from a skops file, refusing any type outside :data:`_TRUSTED_PREFIXES` and :data:`_TRUSTED_TYPES`."""
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=str(f))
    except Exception as e:  # not a skops archive (a pickle, garbage, ...): never unpickled
        raise PredictorFormatError(f"{f}: cannot be read as a skops model ({type(e).__name__}: {e})") from None
    bad = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES) and t not in _TRUSTED_TYPES]
    if bad:
        raise PredictorFormatError(f"{f}: refusing to load untrusted type(s) {bad}")
    try:
        return sio.load(str(f), trusted=untrusted)
    except Exception as e:  # skops raises many kinds for a corrupt file
        raise PredictorFormatError(f"{f}: cannot be read as a skops model ({type(e).__name__}: {e})") from None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checked(d: Path, entry: Mapping[str, Any]) -> Path:
    name = entry.get("file", "")
    f = d / name
    if not name or Path(name).name != name:
        raise PredictorFormatError(f"{d}: bad model file name {name!r}")
    if not f.is_file():
        raise PredictorFormatError(f"{d}: model file {name!r} is missing")
    if _sha(f) != entry.get("sha256"):
        raise PredictorFormatError(f"{f}: SHA-256 does not match predictor.json (file changed or tampered with)")
    return f


def _environment() -> dict[str, str]:
    import sklearn
    import torch

    from . import __version__

    return {"latpred": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "sklearn": sklearn.__version__, "torch": torch.__version__}
