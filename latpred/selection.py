"""Time/space-efficient auto-selection of one regression model per op type.

For every op type and every candidate family, k-fold cross-validation (grouped, so repeats of
one spec never straddle folds) gives out-of-fold predictions; the family is then refitted on all
data to measure its prediction time (µs/sample, batched and single) and serialized size. Per op,
among the candidates whose acc10 is within ``tolerance`` of the best, the one with the lowest
cost ``log(µs/sample) + log(bytes)`` is chosen; hard budgets (``max_predict_us``, ``max_bytes``)
exclude candidates first, then candidates whose CV MAPE is more than
``UNSTABLE_MAPE_FACTOR`` × the op's best MAPE + 10 points (rare, huge errors that acc10 does not
see). MEDN is trained once over all op types (multi-task) with the same folds.
The report also gives every single-family baseline (that family for all op types).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from .errors import SpecError
from .features import GENERIC_FEATURES, feature_names, featurize, optional_columns
from .metrics import accuracy_report, pass_noise_floor
from .predictor import Predictor
from .profiling.reference import CONSTANT_SCHEME
from .regressors import FAMILIES, candidate_table, make_regressor
from .regressors.fast import fast_predict
from .regressors.medn import MEDNRegressor
from .spec import ModuleSpec

__all__ = ["fit_generic", "TrainingData", "load_training_data", "TARGETS", "Candidate", "SelectionReport", "select", "choose",
           "condition_label", "DEFAULT_TOLERANCE", "UNSTABLE_MAPE_FACTOR"]

#: candidates whose acc10 is within this of the best are considered equally accurate
DEFAULT_TOLERANCE = 0.01
#: a candidate whose CV MAPE exceeds this factor times the op's best MAPE (+10 points) is not selected
UNSTABLE_MAPE_FACTOR = 2.0


@dataclass
class TrainingData:
    """Specs and measured latencies (ms) per op type, with the feature matrix of each."""

    specs: dict[str, list[ModuleSpec]]
    latency_ms: dict[str, np.ndarray]
    extra_names: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: per op, each sample's per-pass latencies in the order of ``specs`` (empty when the target has none)
    pass_ms: dict[str, list[tuple[float, ...]]] = field(default_factory=dict)

    def X(self, op: str) -> np.ndarray:
        return np.vstack([featurize(s, self.extra_names) for s in self.specs[op]])

    @property
    def ops(self) -> list[str]:
        return list(self.specs)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for op in sorted(self.specs):
            for s, y in zip(self.specs[op], self.latency_ms[op]):
                h.update(f"{s.key}={y:.6g};".encode())
        return h.hexdigest()[:16]

    def holdout_indices(self, fraction: float, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(held_out, rest)`` row indices per op: a seeded random ``fraction`` of each op's rows (at least one)
        held out, the rest in the same random order (so its prefixes are random subsets too)."""
        if not 0 < fraction < 1:
            raise SpecError(f"holdout fraction must lie in (0, 1), got {fraction!r}")
        rng = np.random.default_rng(seed)
        held, rest = {}, {}
        for op in self.ops:
            perm = rng.permutation(len(self.specs[op]))
            n_test = max(1, int(round(len(perm) * fraction)))
            held[op], rest[op] = perm[:n_test], perm[n_test:]
        return held, rest

    def subset(self, keep: Mapping[str, np.ndarray]) -> TrainingData:
        """The rows ``keep[op]`` (index arrays) of each op in ``keep``; ops left with no row are dropped."""
        idx = {op: np.asarray(rows, dtype=int) for op, rows in keep.items() if len(rows)}
        return TrainingData({op: [self.specs[op][i] for i in rows] for op, rows in idx.items()},
                            {op: self.latency_ms[op][rows] for op, rows in idx.items()}, self.extra_names,
                            self.metadata,
                            {op: [self.pass_ms[op][i] for i in rows] for op, rows in idx.items() if op in self.pass_ms})

    def conditions(self, op: str) -> list[str]:
        """Each row's measurement condition (:func:`condition_label`), in the order of ``specs[op]``."""
        return [condition_label(s) for s in self.specs[op]]

    def noise_floor(self) -> dict[str, Any] | None:
        """How well the store's passes of one spec agree (:func:`~latpred.metrics.pass_noise_floor`), per op, overall
        and per measurement condition (``per_condition``): the ceiling any regression model is read against; None
        when no sample holds two passes."""
        floor = pass_noise_floor(self.pass_ms)
        if floor is not None:
            groups: dict[str, list[tuple[float, ...]]] = {}
            for op, rows in self.pass_ms.items():
                for label, ms in zip(self.conditions(op), rows):
                    groups.setdefault(label, []).append(ms)
            floor["per_condition"] = pass_noise_floor(groups)["per_op"]
        return floor


def condition_label(spec: ModuleSpec) -> str:
    """``unloaded, 2 threads`` / ``loaded 0.5, 1 thread``: the regime a sample was measured in (noise differs by it)."""
    load = "unloaded" if spec.utilization == 0 else f"loaded {spec.utilization:g}"
    t = spec.threads
    return f"{load}, {'default threads' if t is None else f'{t} thread' + ('s' if t != 1 else '')}"


#: ops that launch no kernel in eval mode: their ``gpu_ms`` is the bare replay overhead of a CUDA graph
KERNEL_LESS_OPS = ("flatten", "dropout")
#: what a predictor can learn from a store: the latency, or a per-stage figure of CUDA samples
TARGETS = ("latency_ms", "host_ms", "gpu_ms")


def load_training_data(store: Any, device_id: int | None = None, ops: Sequence[str] | None = None,
                       min_samples: int = 10, target: str = "latency_ms") -> TrainingData:
    """Successful samples of one device from a :class:`~latpred.ProfileStore`, grouped by op type.

    ``target`` is what the regressors learn (one of :data:`TARGETS`): ``latency_ms`` (the measured
    latency), or a per-stage figure the device stored with each sample — CUDA's ``host_ms`` (issuing
    one call) and ``gpu_ms`` (the GPU's time for it), which :mod:`latpred.graph.overlap` composes.
    Samples without the figure are left out. Host times that carry a host-speed probe
    (``host_probe_ms``) are brought to one speed, the store's median probe
    (``metadata['host_probe_nominal_ms']``): ``host_ms * nominal / probe``. For ``gpu_ms`` the median
    of the unloaded :data:`KERNEL_LESS_OPS` samples is kept as ``metadata['gpu_replay_overhead_ms']``:
    replaying a captured call costs that much even when it launches nothing, and nodes inside one
    model do not pay it (:class:`~latpred.graph.overlap.OverlapPredictor` subtracts it per node).
    """
    if target not in TARGETS:
        raise SpecError(f"unknown training target {target!r}; expected one of {', '.join(TARGETS)}")
    devices = store.devices()
    if not devices:
        raise SpecError(f"profile store {store.path} holds no device; profile first")
    if device_id is None:
        if len(devices) > 1:
            listing = ", ".join(f"{d['id']} ({d['kind']} {d['fingerprint']})" for d in devices)
            raise SpecError(f"profile store {store.path} holds several devices ({listing}); choose one with device_id")
        device_id = devices[0]["id"]
    device = store.device(device_id)
    specs: dict[str, list[ModuleSpec]] = {}
    lat: dict[str, list[float]] = {}
    passes: dict[str, list[tuple[float, ...]]] = {}
    extras: set[str] = set()
    lacking = 0
    probes: dict[str, list[float]] = {}
    empty: list[float] = []
    for s in store.samples(device_id=device_id):
        if ops and s.spec.op not in ops:
            continue
        y = s.latency_ms if target == "latency_ms" else s.extra.get(target)
        if not isinstance(y, (int, float)) or not y > 0:
            lacking += 1
            continue
        specs.setdefault(s.spec.op, []).append(s.spec)
        lat.setdefault(s.spec.op, []).append(float(y))
        if target == "latency_ms":  # the passes a stored latency pools: its repeatability
            passes.setdefault(s.spec.op, []).append(tuple(float(v) for v in s.pass_latency_ms))
        if target == "gpu_ms" and s.spec.op in KERNEL_LESS_OPS and s.spec.utilization == 0:
            empty.append(float(y))
        if target == "host_ms":
            probe = s.extra.get("host_probe_ms")
            probes.setdefault(s.spec.op, []).append(float(probe) if isinstance(probe, (int, float)) and probe > 0 else np.nan)
        extras |= set(s.spec.extra)
    if not specs and lacking:
        raise SpecError(f"no sample of device {device_id} in {store.path} has a positive {target!r}; "
                        f"{'CudaDevice stores host_ms and gpu_ms' if target != 'latency_ms' else 'profile first'}")
    too_few = [op for op, v in specs.items() if len(v) < min_samples]
    for op in too_few:
        del specs[op], lat[op]
        passes.pop(op, None)
    if not specs:
        raise SpecError(f"no op type has at least {min_samples} successful samples for device {device_id}")
    meta = {"device": device.get("metadata", {}), "device_fingerprint": device.get("fingerprint"),
            "store": str(store.path), "skipped_ops_too_few_samples": too_few, "target": target}
    if lacking:
        meta["samples_without_target"] = lacking
    seen = np.concatenate([np.asarray(v) for v in probes.values()]) if probes else np.array([])
    if np.isfinite(seen).any():  # host times at one host speed: the store's median probe
        host_nominal = float(np.nanmedian(seen))
        for op in specs:
            pr = np.asarray(probes[op])
            lat[op] = list(np.where(np.isfinite(pr), np.asarray(lat[op]) * host_nominal / pr, lat[op]))
        meta["host_probe_nominal_ms"] = host_nominal
        meta["host_normalised_samples"] = int(np.isfinite(seen).sum())
    if empty:  # the GPU stage of a call that launches nothing: the replay overhead every gpu_ms carries
        meta["gpu_replay_overhead_ms"] = float(np.median(empty))
    nominal = store.reference_nominal(device_id)
    if nominal:  # the unit of the unloaded latencies: whole models measured for this predictor adopt it
        meta["reference_nominal_ms"] = {str(k): v for k, v in sorted(nominal.items())}
        meta["reference_scheme"] = store.reference_scheme(device_id) or CONSTANT_SCHEME
    return TrainingData(specs, {k: np.asarray(v) for k, v in lat.items()}, sorted(extras), meta, passes)


@dataclass
class Candidate:
    """One op x family cell of the selection table."""

    op: str
    family: str
    metrics: dict[str, float]
    predict_us_batch: float
    predict_us_single: float
    size_bytes: int
    train_s: float
    selected: bool = False
    excluded: str | None = None


@dataclass
class SelectionReport:
    candidates: list[Candidate]
    overall: dict[str, dict[str, float]]
    per_op_choice: dict[str, str]
    settings: dict[str, Any]
    #: every fitted (op, family) model and the shared MEDN (not serialized): for baselines
    models: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    medn: Any = field(default=None, repr=False)
    #: the store's own repeatability (:meth:`TrainingData.noise_floor`): overall and per op; None without passes
    noise_floor: dict[str, Any] | None = None
    #: per measurement condition (:func:`condition_label`): auto-selection's cross-validated n, acc10 and MAPE, and
    #: how often two passes agree within ±10% there (``pass_within10``, None without passes)
    per_condition: dict[str, dict[str, Any]] = field(default_factory=dict)

    def family_predictor(self, family: str, base: Predictor) -> Predictor:
        """A predictor that uses ``family`` for every op type (a single-family baseline)."""
        ops = list(self.per_op_choice)
        if family == "medn":
            return Predictor({op: "medn" for op in ops}, {}, self.medn, ops, base.extra_names, base.metadata,
                             schemas=dict(base.schemas))
        return Predictor({op: family for op in ops}, {op: self.models[op, family] for op in ops}, None, [],
                         base.extra_names, base.metadata, schemas=dict(base.schemas))

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": [asdict(c) for c in self.candidates], "overall": self.overall,
                "per_op_choice": self.per_op_choice, "settings": self.settings, "noise_floor": self.noise_floor,
                "per_condition": self.per_condition}

    def table(self) -> str:
        """Plain-text table: op x family with acc10, R², µs/sample, bytes; '*' marks the choice."""
        lines = [f"{'op':20s} {'family':6s} {'acc10':>6s} {'MAPE%':>7s} {'R2log':>6s} {'us/smp':>8s} {'bytes':>9s}"]
        for c in sorted(self.candidates, key=lambda c: (c.op, -c.metrics['acc10'])):
            mark = "*" if c.selected else ("x" if c.excluded else " ")
            lines.append(f"{c.op:20s} {c.family:6s} {c.metrics['acc10']:6.1%} {c.metrics['mape']:7.2f} "
                         f"{c.metrics['r2_log']:6.3f} {c.predict_us_batch:8.2f} {c.size_bytes:9d} {mark}")
        lines.append("")
        lines.append(f"{'overall (sample-weighted)':32s} {'acc10':>6s} {'MAPE%':>7s} {'R2log':>6s}")
        for name, m in self.overall.items():
            lines.append(f"{name:32s} {m['acc10']:6.1%} {m['mape']:7.2f} {m['r2_log']:6.3f}")
        lines.append("")
        if self.noise_floor is None:
            lines.append("noise floor: unknown (no sample holds two measurement passes)")
        else:
            o = self.noise_floor["overall"]
            lines.append(f"noise floor: two passes of one spec agree within ±10% for {o['within10']:.1%} of "
                         f"{o['n_pairs']} pairs ({o['n_specs']} specs; MAPE {o['mape']:.2f}%); per op: "
                         + ", ".join(f"{op} {m['within10']:.0%}" for op, m in sorted(self.noise_floor["per_op"].items())))
        if self.per_condition:
            lines.append(f"{'per condition':32s} {'acc10':>6s} {'MAPE%':>7s} {'passes within 10%':>18s}")
            for c, m in self.per_condition.items():
                floor = "—" if m["pass_within10"] is None else f"{m['pass_within10']:.1%}"
                lines.append(f"{c:32s} {m['acc10']:6.1%} {m['mape']:7.2f} {floor:>18s}")
        return "\n".join(lines)


def _folds(n: int, k: int, seed: int, groups: Sequence[str]) -> np.ndarray:
    """Fold index per row; rows sharing a group share a fold."""
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    fold_of = {g: int(perm[i] % k) for i, g in enumerate(uniq)}
    return np.array([fold_of[g] for g in groups])


def _group_key(spec: ModuleSpec, group_by: str) -> str:
    if group_by == "spec":
        return spec.key
    return f"{spec.op}|{sorted(spec.params.items())}"  # "module": the module across runtime conditions


def _size_bytes(model: Any) -> int:
    if isinstance(model, MEDNRegressor):
        config, arrays = model.to_state()
        return int(sum(a.nbytes for a in arrays.values())) + len(str(config))
    import skops.io as sio

    return len(sio.dumps(model))


def _time_predict(fn: Callable[[np.ndarray], Any], X: np.ndarray) -> tuple[float, float]:
    """µs per sample for a batch of 1000 rows, and for one row at a time."""
    batch = X[np.arange(1000) % len(X)]
    fn(batch)
    t = time.perf_counter()
    fn(batch)
    per_batch = (time.perf_counter() - t) / 1000 * 1e6
    one = X[:1]
    t = time.perf_counter()
    for _ in range(20):
        fn(one)
    return per_batch, (time.perf_counter() - t) / 20 * 1e6


def fit_generic(X: Mapping[str, np.ndarray], ylog: Mapping[str, np.ndarray], n_extra: int, seed: int = 0,
                table: Mapping[str, Any] | None = None) -> Any:
    """The generic fallback: one gradient-boosting model over the op-agnostic columns
    (:data:`~latpred.features.GENERIC_FEATURES`) of every op type's rows, for graph nodes no op type covers."""
    width = len(GENERIC_FEATURES)
    cols = [x[:, x.shape[1] - n_extra - width: x.shape[1] - n_extra] for x in X.values()]
    est = make_regressor("gbdt", None, seed=seed, table=table)
    return est.fit(np.vstack(cols), np.concatenate(list(ylog.values())))


def _varied_columns(op: str, X: np.ndarray) -> list[int] | None:
    """Indices of the feature columns ``op``'s models train on when some optional hyper-parameter never varies
    in its data (None: all of them). A model cannot learn what an option it never saw changed does; without
    the column it predicts such a spec as for the value it saw, instead of extrapolating along a dimension
    it knows nothing of (e.g. ``inplace`` from a store profiled before in-place specs existed)."""
    constant = {i for i in optional_columns(op) if len(X) and np.all(X[:, i] == X[0, i])}
    return [i for i in range(X.shape[1]) if i not in constant] if constant else None


def _ms(log_ms: np.ndarray) -> np.ndarray:
    """Milliseconds from out-of-fold log predictions; a wildly extrapolating family (log > 40) is
    clipped instead of overflowing, and scored as the huge error it is."""
    return np.exp(np.clip(log_ms, -40.0, 40.0))


def _quiet_convergence(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Silence scikit-learn's ConvergenceWarning inside ``fn``: a GP kernel parameter at its bound or an
    MLP out of iterations is routine in cross-validation, and the CV score is what judges the fit."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fn(*args, **kwargs)
    return wrapper


def choose(candidates: Sequence[Candidate], tolerance: float = DEFAULT_TOLERANCE, max_predict_us: float | None = None,
           max_bytes: int | None = None) -> Candidate:
    """The selection rule for one op type's candidates (marks the ones it excludes, and why).

    Budgets exclude first; then candidates whose CV MAPE exceeds :data:`UNSTABLE_MAPE_FACTOR` × the
    best MAPE + 10 points (rare, huge errors, e.g. an extrapolating GP or polynomial, that acc10
    does not see); among the rest within ``tolerance`` of the best acc10, the cheapest in
    ``log(µs/sample) + log(bytes)`` wins.
    """
    op = candidates[0].op if candidates else "?"
    for c in candidates:
        if c.excluded is not None:
            continue
        if max_predict_us is not None and c.predict_us_batch > max_predict_us:
            c.excluded = f"predict {c.predict_us_batch:.1f} us/sample > max_predict_us {max_predict_us:g}"
        elif max_bytes is not None and c.size_bytes > max_bytes:
            c.excluded = f"size {c.size_bytes} bytes > max_bytes {max_bytes}"
    ok = [c for c in candidates if c.excluded is None]
    if not ok:
        raise SpecError(f"{op}: no candidate meets the budgets (max_predict_us={max_predict_us}, "
                        f"max_bytes={max_bytes}); the cheapest needs "
                        f"{min(c.predict_us_batch for c in candidates):.1f} us/sample and "
                        f"{min(c.size_bytes for c in candidates)} bytes")
    low = min(c.metrics["mape"] for c in ok)
    for c in ok:
        if c.metrics["mape"] > UNSTABLE_MAPE_FACTOR * low + 10.0:
            c.excluded = f"unstable: CV MAPE {c.metrics['mape']:.1f}% > {UNSTABLE_MAPE_FACTOR:g} x the best {low:.1f}% + 10"
    ok = [c for c in ok if c.excluded is None]
    best = max(c.metrics["acc10"] for c in ok)
    near = [c for c in ok if c.metrics["acc10"] >= best - tolerance]
    return min(near, key=lambda c: (math.log(max(c.predict_us_batch, 1e-3)) + math.log(max(c.size_bytes, 1)),
                                    -c.metrics["acc10"]))


@_quiet_convergence
def select(data: TrainingData, *, families: Sequence[str] | None = None, cv: int = 5,
           tolerance: float = DEFAULT_TOLERANCE, max_predict_us: float | None = None, max_bytes: int | None = None,
           seed: int = 0, group_by: str = "spec", table: Mapping[str, Any] | None = None,
           progress: Callable[[str], None] | None = None) -> tuple[Predictor, SelectionReport]:
    """Cross-validate every family on every op type, pick per op, fit the :class:`Predictor`."""
    families = list(families or FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SpecError(f"unknown regressor famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                        f"known: {', '.join(FAMILIES)}")
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise SpecError(f"cv must be an integer >= 2, got {cv!r}")
    if group_by not in ("spec", "module"):
        raise SpecError(f"group_by must be 'spec' or 'module', got {group_by!r}")
    for name, v in (("max_predict_us", max_predict_us), ("max_bytes", max_bytes)):
        if v is not None and not v > 0:
            raise SpecError(f"{name} must be positive, got {v!r}")
    table = candidate_table() if table is None else table
    say = progress or (lambda _msg: None)
    ops = data.ops
    X = {op: data.X(op) for op in ops}
    schemas: dict[str, list[str]] = {}
    for op in ops:
        keep = _varied_columns(op, X[op])
        if keep is not None:
            full = feature_names(op, data.extra_names)
            schemas[op] = [full[i] for i in keep]
            X[op] = X[op][:, keep]
    ylog = {op: np.log(data.latency_ms[op]) for op in ops}
    folds = {op: _folds(len(ylog[op]), cv, seed, [_group_key(s, group_by) for s in data.specs[op]]) for op in ops}
    oof: dict[tuple[str, str], np.ndarray] = {}
    fitted: dict[tuple[str, str], Any] = {}
    cands: list[Candidate] = []

    for family in [f for f in families if f != "medn"]:
        for op in ops:
            say(f"{family} / {op}")
            est = make_regressor(family, op, seed=seed, table=table)
            pred = np.empty(len(ylog[op]))
            t0 = time.perf_counter()
            try:
                for k in range(cv):
                    tr, te = folds[op] != k, folds[op] == k
                    if te.any():
                        pred[te] = clone(est).fit(X[op][tr], ylog[op][tr]).predict(X[op][te])
                model = clone(est).fit(X[op], ylog[op])
            except ValueError as e:  # e.g. an MLP's early-stopping split on a handful of samples
                # the family cannot be fitted on this op's data: excluded, and its single-family baseline
                # predicts the op's mean for these rows
                oof[op, family] = np.full(len(ylog[op]), ylog[op].mean())
                cands.append(Candidate(op, family, accuracy_report(_ms(oof[op, family]), data.latency_ms[op]),
                                       float("inf"), float("inf"), 0, 0.0, excluded=f"cannot be fitted: {e}"))
                continue
            train_s = (time.perf_counter() - t0) / (cv + 1)
            oof[op, family], fitted[op, family] = pred, model
            batch_us, single_us = _time_predict(lambda x, m=model: fast_predict(m, x), X[op])
            cands.append(Candidate(op, family, accuracy_report(_ms(pred), data.latency_ms[op]), batch_us, single_us,
                                   _size_bytes(model), train_s))

    medn_model = None
    if "medn" in families:
        say("medn (all op types, multi-task)")
        width = max(x.shape[1] for x in X.values())
        Xp = np.full((sum(len(v) for v in ylog.values()), width), np.nan)
        rows, tasks, ys, fs = 0, [], [], []
        for i, op in enumerate(ops):
            n = len(ylog[op])
            Xp[rows:rows + n, :X[op].shape[1]] = X[op]
            rows += n
            tasks.append(np.full(n, i))
            ys.append(ylog[op])
            fs.append(folds[op])
        T, Y, F = np.concatenate(tasks), np.concatenate(ys), np.concatenate(fs)
        est = make_regressor("medn", None, seed=seed, table=table)
        pred = np.empty(len(Y))
        t0 = time.perf_counter()
        for k in range(cv):
            tr, te = F != k, F == k
            if te.any():
                pred[te] = clone(est).fit(Xp[tr], Y[tr], tasks=T[tr]).predict(Xp[te], tasks=T[te])
        medn_model = clone(est).fit(Xp, Y, tasks=T)
        train_s = (time.perf_counter() - t0) / (cv + 1)
        size = _size_bytes(medn_model)
        for i, op in enumerate(ops):
            m = T == i
            oof[op, "medn"] = pred[m]
            batch_us, single_us = _time_predict(lambda x, i=i: medn_model.predict(x, np.full(len(x), i)), Xp[m])
            cands.append(Candidate(op, "medn", accuracy_report(_ms(pred[m]), data.latency_ms[op]), batch_us,
                                   single_us, size, train_s))

    choice: dict[str, str] = {}
    for op in ops:
        pick = choose([c for c in cands if c.op == op], tolerance, max_predict_us, max_bytes)
        pick.selected = True
        choice[op] = pick.family

    true = np.concatenate([data.latency_ms[op] for op in ops])
    auto = _ms(np.concatenate([oof[op, choice[op]] for op in ops]))
    overall = {"auto-selection": accuracy_report(auto, true)}
    for family in families:
        overall[f"{family}-only"] = accuracy_report(_ms(np.concatenate([oof[op, family] for op in ops])), true)

    noise = data.noise_floor()
    label = np.concatenate([data.conditions(op) for op in ops])
    per_condition = {}
    for c in sorted(set(label)):
        k = label == c
        m = accuracy_report(auto[k], true[k])
        per_condition[c] = {"n": m["n"], "acc10": m["acc10"], "mape": m["mape"],
                            "pass_within10": ((noise or {}).get("per_condition", {}).get(c) or {}).get("within10")}
    say("generic fallback (all op types, op-agnostic features)")
    generic = fit_generic(X, ylog, len(data.extra_names), seed=seed, table=table)
    uses_medn = "medn" in choice.values()
    predictor = Predictor(
        families=dict(choice),
        models={op: fitted[op, fam] for op, fam in choice.items() if fam != "medn"},
        medn=medn_model if uses_medn else None,
        medn_tasks=list(ops) if uses_medn else [],
        extra_names=list(data.extra_names),
        generic=generic,
        schemas=schemas,
        metadata={**data.metadata, "dataset_fingerprint": data.fingerprint(),
                  "n_samples": {op: len(ylog[op]) for op in ops}, "cv": cv, "tolerance": tolerance,
                  "cv_acc10": {op: next(c.metrics["acc10"] for c in cands if c.selected and c.op == op)
                               for op in ops},
                  **({"noise_floor_within10": noise["overall"]["within10"]} if noise else {})},
    )
    predictor.fit_domains(X)  # each op model's training range: specs outside it are guarded by the generic model
    predictor.fit_rooflines(X, data.latency_ms)  # and its best rates: specs inside it never predicted faster
    settings = {"families": families, "cv": cv, "tolerance": tolerance, "max_predict_us": max_predict_us,
                "max_bytes": max_bytes, "seed": seed, "group_by": group_by}
    return predictor, SelectionReport(cands, overall, choice, settings, fitted, medn_model, noise, per_condition)
