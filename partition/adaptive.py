"""Adaptive runtime loop: observe conditions, detect real changes, re-plan fast, hot-swap the plan.

* :class:`ChangeDetector`: per-condition thresholds (absolute, relative or any change), hysteresis
  (a change must persist for ``confirm`` consecutive observations; optionally a large one, ``fast_factor``
  times its threshold, is taken at once) and a minimum interval between re-plans: no flapping on noise.
* :class:`AdaptiveController`: on a confirmed change, re-predicts node latencies under the new
  conditions (vectorised :meth:`latpred.Predictor.predict_graph`, cached per condition; see
  :meth:`AdaptiveController.precompute`), rebuilds the :class:`~partition.cost.CostModel`, re-optimises
  with a warm start (previous plan and Pareto set plus cheap exact seeds) within ``time_budget_s`` and
  hands a better plan to the running split runtime (e.g. :meth:`partition.runtime.EdgeRunner.set_plan`).
  ``step(observation)`` for a synchronous loop, ``start()`` / ``stop()`` for a background thread.
* :class:`Decision`: one re-plan, logged as a JSON line; :func:`plot_timeline` draws conditions, plan
  changes and predicted vs measured latency.

Conditions (keys of observations, see :mod:`partition.observers`): ``utilization`` (edge CPU, [0, 1)),
``batch_size``, ``bandwidth_mbps``, ``rtt_ms``, optionally ``cloud_utilization`` and ``gpu_utilization``
(reported, not used by the cost model unless a callable node-ms source uses it).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.termination import get_termination

from latpred.graph.model_graph import ModelGraph
from latpred.plots import save_figure

from .cost import CostModel, Link
from .exact import single_cut_assignments
from .plan import PartitionPlan, _scalar_metrics
from .problems import (
    CONSTRAINTS,
    OBJECTIVES,
    MonotoneRepair,
    OptimizeResult,
    PartitionProblem,
    _check_constraints,
    _check_objectives,
    _non_dominated,
    exact_seeds,
    random_monotone_plans,
)

__all__ = ["Threshold", "DEFAULT_THRESHOLDS", "Change", "ChangeDetector", "Decision", "AdaptiveController", "reoptimize",
           "ReoptimizeInfo", "plan_summary", "plot_timeline", "read_decision_log"]

#: a node-ms source: a latpred Predictor, a fixed per-node ms array, or ``f(conditions) -> per-node ms``
NodeMsSource = Any


# -- change detection -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Threshold:
    """When a condition counts as changed: ``|new - ref| > abs`` or ``|new - ref| > rel * |ref|`` or (``any``) ``new != ref``.

    Several criteria: any one is enough. Units are the condition's own (utilization: fraction, so
    ``abs=0.1`` is 10 points; bandwidth: relative, ``rel=0.3`` is ±30 %).
    """

    abs: float | None = None
    rel: float | None = None
    any: bool = False

    def score(self, ref: Any, new: Any) -> float:
        """How far ``new`` is from ``ref`` in units of this threshold (> 1: changed; ``any``: 0 or 1.5)."""
        if ref is None or new is None:
            return 0.0
        if self.any:
            return 1.5 if new != ref else 0.0
        d = abs(float(new) - float(ref))
        s = 0.0
        if self.abs is not None and self.abs > 0:
            s = max(s, d / self.abs)
        if self.rel is not None and self.rel > 0:
            s = max(s, d / (self.rel * abs(float(ref))) if float(ref) != 0 else (math.inf if d > 0 else 0.0))
        return s


#: default thresholds: utilization ±0.1 absolute, bandwidth ±30 %, RTT ±5 ms, any batch-size change
DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    "utilization": Threshold(abs=0.1),
    "cloud_utilization": Threshold(abs=0.1),
    "gpu_utilization": Threshold(abs=0.1),
    "bandwidth_mbps": Threshold(rel=0.3),
    "rtt_ms": Threshold(abs=5.0),
    "batch_size": Threshold(any=True),
    "edge_scale": Threshold(rel=0.3),
}


@dataclass
class Change:
    """A confirmed change: the new reference ``conditions``, the ``changed`` keys (old, new) and their scores."""

    t_s: float
    conditions: dict[str, Any]
    changed: dict[str, tuple[Any, Any]]
    scores: dict[str, float]
    n_observations: int


class ChangeDetector:
    """Decides when observed conditions differ enough, for long enough, to re-plan.

    Args:
        thresholds: condition name → :class:`Threshold` (default :data:`DEFAULT_THRESHOLDS`; conditions
            without a threshold are tracked but never trigger).
        confirm: consecutive deviating observations needed (hysteresis; 1 = none).
        min_interval_s: minimum time between two confirmed changes (a change confirmed earlier waits).
        fast_factor: a deviation of at least ``fast_factor`` times its threshold is confirmed at once
            (``None``: never).

    :meth:`update` returns a :class:`Change` when one is confirmed and then takes its conditions as
    the new reference (the median of the confirming observations for numbers, the latest otherwise).
    """

    def __init__(self, thresholds: Mapping[str, Threshold] | None = None, confirm: int = 2, min_interval_s: float = 1.0,
                 fast_factor: float | None = None, reference: Mapping[str, Any] | None = None) -> None:
        if int(confirm) < 1:
            raise ValueError(f"confirm must be >= 1, got {confirm!r}")
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s!r}")
        self.thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
        self.confirm = int(confirm)
        self.min_interval_s = float(min_interval_s)
        self.fast_factor = None if fast_factor is None else float(fast_factor)
        self.reference: dict[str, Any] = {k: v for k, v in dict(reference or {}).items() if v is not None}
        self.last_change_s: float | None = None
        self._pending: list[dict[str, Any]] = []
        self.n_suppressed = 0  # confirmed but held back by min_interval_s

    def reset(self, reference: Mapping[str, Any], now_s: float | None = None) -> None:
        """Set the reference conditions (those of the current plan) and forget pending deviations."""
        self.reference = {k: v for k, v in dict(reference).items() if v is not None}
        self._pending.clear()
        if now_s is not None:
            self.last_change_s = float(now_s)

    def scores(self, observation: Mapping[str, Any]) -> dict[str, float]:
        """Deviation of every thresholded condition of ``observation`` from the reference (> 1: changed)."""
        return {k: th.score(self.reference.get(k), observation.get(k)) for k, th in self.thresholds.items()
                if observation.get(k) is not None and self.reference.get(k) is not None}

    def update(self, observation: Mapping[str, Any], now_s: float) -> Change | None:
        """Feed one observation taken at ``now_s`` (seconds); returns a confirmed :class:`Change` or ``None``."""
        obs = {k: v for k, v in observation.items() if v is not None}
        for k, v in obs.items():  # first sight of a condition: it becomes the reference, not a change
            self.reference.setdefault(k, v)
        sc = self.scores(obs)
        if not any(s > 1.0 for s in sc.values()):
            self._pending.clear()
            return None
        self._pending.append(obs)
        if len(self._pending) > max(self.confirm, 8):
            self._pending.pop(0)
        fast = self.fast_factor is not None and max(sc.values()) >= self.fast_factor
        if len(self._pending) < self.confirm and not fast:
            return None
        if self.last_change_s is not None and now_s - self.last_change_s < self.min_interval_s:
            self.n_suppressed += 1
            return None
        window = self._pending[-(1 if fast and len(self._pending) < self.confirm else self.confirm):]
        new = dict(self.reference)
        for k in {k for o in window for k in o}:
            vals = [o[k] for o in window if k in o]
            th = self.thresholds.get(k)
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
            new[k] = statistics.median(vals) if numeric and not (th is not None and th.any) else vals[-1]
        changed = {k: (self.reference.get(k), new[k]) for k, s in self.scores(new).items() if s > 1.0}
        if not changed:  # the median fell back inside the thresholds: noise
            self._pending.clear()
            return None
        change = Change(float(now_s), new, changed, {k: float(v) for k, v in sc.items()}, len(window))
        self.reset(new, now_s)
        return change


# -- time-budgeted, warm-started optimisation -------------------------------------------------------
@dataclass
class ReoptimizeInfo:
    """How a :func:`reoptimize` run went: ``n_evals``, ``n_gen``, ``stop`` (``"n_gen"``, ``"time"``,
    ``"stall"``, ``"target"``), ``elapsed_ms``, ``n_seeds`` and ``trace`` [(evaluations, best first
    objective)] after the seeds and after every generation."""

    n_evals: int = 0
    n_gen: int = 0
    stop: str = ""
    elapsed_ms: float = 0.0
    n_seeds: int = 0
    trace: list[tuple[int, float]] = field(default_factory=list)


def _fast_exact_seeds(cm: CostModel) -> list[np.ndarray]:
    """All on each device, and (two devices) the best single cut: one vectorised evaluation."""
    out = [cm.repair(np.full((1, cm.n_nodes), d))[0] for d in range(cm.k)]
    if cm.k == 2:
        A = single_cut_assignments(cm)
        out.append(A[int(np.argmin(cm.evaluate(A)["latency_ms"]))])
    return out


def reoptimize(cost_model: CostModel, objectives: Sequence[str] = ("latency",), constraints: Mapping[str, float | None] | None = None,
               *, seeds: Any = None, exact: str = "fast", pop_size: int = 40, n_gen: int = 100, time_budget_s: float | None = None,
               patience: int | None = None, target: float | None = None, seed: int = 0,
               max_mating_iterations: int = 3,
               on_generation: Callable[[int, np.ndarray], Any] | None = None) -> tuple[OptimizeResult, ReoptimizeInfo]:
    """GA (one objective) / NSGA-II (several) over node placements, seeded and stopped early.

    Like :func:`partition.problems.optimize` but: ``seeds`` (full assignments, e.g. the previous plan and
    Pareto set: the warm start) come first in the initial population together with the exact seeds
    (``exact="fast"``: all-edge, all-cloud, best single cut; ``"full"``: :func:`~partition.problems.exact_seeds`
    with min-cut; ``"none"``); the run stops after ``n_gen`` generations, when ``time_budget_s`` is
    spent (checked after each generation), when the best first objective has not improved for
    ``patience`` generations, or when it is ``<= target`` (benchmarks). ``max_mating_iterations``
    bounds pymoo's re-mating when repaired offspring are duplicates (pymoo's default, 100, makes one
    generation cost up to 100 matings). ``on_generation(n_evals, F)`` is called after every
    generation with the objective values of the population's feasible members (e.g. to track
    hypervolume in benchmarks).

    Returns:
        ``(OptimizeResult, ReoptimizeInfo)``; the result holds the best plan (one objective) or the
        Pareto set, as in :func:`~partition.problems.optimize`.
    """
    t0 = time.perf_counter()
    cm = cost_model
    objs = _check_objectives(cm, objectives)
    cons = _check_constraints(constraints)
    problem = PartitionProblem(cm, objs, cons)
    seed_list: list[np.ndarray] = []
    if seeds is not None:
        extra = np.atleast_2d(np.asarray(seeds))
        if extra.size:
            if extra.shape[1] != cm.n_nodes:
                raise ValueError(f"seeds must have shape (m, {cm.n_nodes}), got {extra.shape}")
            seed_list.extend(cm.repair(extra))
    if exact == "fast":
        seed_list.extend(_fast_exact_seeds(cm))
    elif exact == "full":
        seed_list.extend(p.assignment for p in exact_seeds(cm).values())
    elif exact != "none":
        raise ValueError(f"exact must be 'fast', 'full' or 'none', got {exact!r}")
    rng = np.random.default_rng(seed)
    x0 = np.unique(problem.encode(np.array(seed_list)), axis=0) if seed_list else np.zeros((0, problem.n_var), dtype=np.intp)
    n_rand = max(pop_size - len(x0), 0)
    x_rand = problem.encode(random_monotone_plans(cm, n_rand, rng)) if n_rand else np.zeros((0, problem.n_var), dtype=np.intp)
    X0 = np.vstack([x0, x_rand]) if n_rand else x0
    ops = dict(sampling=X0, crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
               mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), repair=MonotoneRepair(), eliminate_duplicates=True)
    algo = GA(pop_size=max(pop_size, len(x0)), **ops) if len(objs) == 1 else NSGA2(pop_size=max(pop_size, len(x0)), **ops)
    # repaired offspring are often duplicates; pymoo would re-mate up to 100 times per generation to fill
    # the offspring set, which dominates the run time: a few tries, then fewer offspring
    algo.mating.n_max_iterations = int(max_mating_iterations)
    algo.setup(problem, termination=get_termination("n_gen", n_gen + 1), seed=seed, verbose=False)
    info = ReoptimizeInfo(n_seeds=len(x0))
    best = math.inf
    stall = 0
    info.stop = "n_gen"
    while algo.has_next():
        algo.next()
        F = np.atleast_2d(algo.pop.get("F"))
        CV = algo.pop.get("CV")
        ok = np.ones(len(F), dtype=bool) if CV is None else (np.asarray(CV).reshape(-1) <= 0)
        cur = float(F[ok, 0].min()) if ok.any() else math.inf
        stall = stall + 1 if cur >= best - 1e-12 else 0
        best = min(best, cur)
        info.trace.append((int(algo.evaluator.n_eval), best))
        if on_generation is not None:
            on_generation(int(algo.evaluator.n_eval), F[ok])
        gens = len(info.trace) - 1  # the first step evaluates the initial population
        if target is not None and best <= target:
            info.stop = "target"
            break
        if gens >= n_gen:
            break
        if time_budget_s is not None and time.perf_counter() - t0 >= time_budget_s:
            info.stop = "time"
            break
        if patience is not None and stall >= patience:
            info.stop = "stall"
            break
    info.n_gen = max(0, len(info.trace) - 1)
    info.n_evals = int(algo.evaluator.n_eval)
    cand = np.vstack([problem.decode(np.atleast_2d(algo.pop.get("X"))), *([np.array(seed_list)] if seed_list else [])])
    A = np.unique(cand, axis=0)
    m = cm.evaluate(A)
    F = np.column_stack([m[OBJECTIVES[o]] for o in objs])
    ok = np.ones(len(A), dtype=bool)
    for c, lim in cons.items():
        ok &= m[CONSTRAINTS[c]] <= lim * (1 + 1e-12)
    if not ok.any():
        raise ValueError(f"no plan found that satisfies the constraints {cons}")
    A, F, m = A[ok], F[ok], {k: v[ok] for k, v in m.items()}
    keep = _non_dominated(F) if len(objs) > 1 else np.arange(len(F)) == int(np.argmin(F[:, 0]))
    A, F, m = A[keep], F[keep], {k: v[keep] for k, v in m.items()}
    order = np.lexsort(F.T[::-1])
    A, F, m = A[order], F[order], {k: v[order] for k, v in m.items()}
    info.elapsed_ms = (time.perf_counter() - t0) * 1e3
    return OptimizeResult(A, F, objs, m, {}, info.n_evals, cm.node_names), info


# -- decisions ---------------------------------------------------------------------------------------
def plan_summary(cm: CostModel, assignment: Any, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A short JSON-safe description of a plan: ``id`` (hash of the assignment), compute nodes per device,
    the cut (nodes whose output leaves their device, up to 6), predicted latency and bytes sent."""
    a = np.asarray(assignment, dtype=np.intp)
    comp = cm.kinds == "compute"
    m = cm.evaluate(a[None, :]) if metrics is None else metrics
    cut = [cm.node_names[v] for v in range(cm.n_nodes) if len(cm.succs[v]) and (a[cm.succs[v]] != a[v]).any()
           and cm.kinds[v] not in ("constant",)]
    return {"id": hashlib.sha1(a.tobytes()).hexdigest()[:10],
            "compute_nodes_per_device": [int((comp & (a == d)).sum()) for d in range(cm.k)],
            "cut": cut[:6], "n_cut": len(cut),
            "latency_ms": float(np.asarray(m["latency_ms"]).reshape(-1)[0]),
            "bytes_transferred": float(np.asarray(m["bytes_transferred"]).reshape(-1)[0])}


@dataclass
class Decision:
    """One (re-)plan: what was observed, which plan ran and which runs now, and what it cost.

    Times in seconds since the controller started (``t_s``) or in ms (``*_ms``). ``predicted_old_ms``
    is the old plan's predicted latency under the *new* conditions, ``gain_ms = predicted_old_ms -
    predicted_new_ms``; ``swapped`` says whether the new plan was handed to the runtime;
    ``decision_ms`` is the time from the confirmed change to the new plan (prediction, cost model,
    optimisation), ``handoff_ms`` the runtime's hot-swap call.
    """

    t_s: float
    reason: str
    conditions: dict[str, Any]
    changed: dict[str, Any]
    old_plan: dict[str, Any] | None
    new_plan: dict[str, Any]
    predicted_old_ms: float | None
    predicted_new_ms: float
    gain_ms: float | None
    gain_ratio: float | None
    swapped: bool
    decision_ms: float
    optimize_ms: float
    handoff_ms: float
    n_evals: int
    n_gen: int
    stop: str
    n_seeds: int
    warm: bool

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


def read_decision_log(path: str | Path) -> list[dict[str, Any]]:
    """The decisions of a JSON-lines decision log."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


# -- the controller ----------------------------------------------------------------------------------
class AdaptiveController:
    """Keeps a split deployment's plan right for the current conditions.

    Args:
        graph: the model graph (:func:`latpred.graph.trace.trace`; node names = the runtime's fx names).
        edge_predictor, cloud_predictor: node-ms sources: a :class:`latpred.Predictor` (edge: predicted at
            the observed ``utilization``; cloud: at ``cloud_utilization``, default 0), a fixed per-node ms
            array, or a callable ``f(conditions) -> per-node ms`` (conditions: ``utilization``,
            ``batch_size``, ...).
        link: the initial :class:`~partition.cost.Link`; observed ``bandwidth_mbps`` / ``rtt_ms`` replace
            its fields (``serialize_ms_per_mb`` is kept).
        objectives, constraints: as in :func:`partition.problems.optimize` (the plan handed over is the
            best by the first objective; latency gains are in ``latency_ms``).
        runtime: what runs the plan: an object with ``set_plan(PartitionPlan)`` (e.g.
            :class:`~partition.runtime.EdgeRunner`) or a callable taking the plan; ``None``: nothing.
        observer: for :meth:`start` / :meth:`run`: an object with ``observe() -> dict``.
        detector: a :class:`ChangeDetector` (default: default thresholds, ``confirm=2``, ``min_interval_s=1``).
        time_budget_s: wall-time budget of one re-plan (prediction + optimisation); generations stop when spent.
        pop_size, n_gen, patience: GA settings of a re-plan (``patience``: stop after that many
            generations without improvement).
        initial_n_gen: generations of the first (cold, full exact seeds) optimisation.
        min_gain: hand over a new plan only when it is predicted at least this fraction faster.
        observe_interval_s: period of the :meth:`run` loop.
        edge_threads, cloud_threads: ``threads`` condition passed to predictors.
        utilization_step: utilization is rounded to this step before prediction (the cache key).
        feedback_window, feedback_min: latency feedback (:meth:`record_request`): the ``edge_scale``
            condition is the median of the last ``feedback_window`` ratios of measured to predicted edge
            compute, reported once ``feedback_min`` requests computed on the edge (0: no feedback).
        log_path: JSON-lines decision log (appended).
        device_names: names in the handed-over :class:`~partition.plan.PartitionPlan`.
        clock: seconds (default ``time.monotonic``); decision times are relative to construction.
    """

    def __init__(self, graph: ModelGraph, edge_predictor: NodeMsSource, cloud_predictor: NodeMsSource, link: Link,
                 objectives: Sequence[str] = ("latency",), constraints: Mapping[str, float | None] | None = None, *,
                 runtime: Any = None, observer: Any = None, detector: ChangeDetector | None = None,
                 time_budget_s: float = 0.05, pop_size: int = 40, n_gen: int = 30, patience: int | None = 3,
                 initial_n_gen: int = 60, min_gain: float = 0.02, observe_interval_s: float = 1.0,
                 edge_threads: int | None = None, cloud_threads: int | None = None, utilization_step: float = 0.01,
                 log_path: str | Path | None = None, device_names: Sequence[str] = ("edge", "cloud"),
                 clock: Callable[[], float] | None = None, seed: int = 0, feedback_window: int = 8,
                 feedback_min: int = 3) -> None:
        if not isinstance(link, Link):
            raise ValueError(f"link must be a partition.Link, got {type(link).__name__}")
        self.graph = graph
        self.sources = (edge_predictor, cloud_predictor)
        self.base_link = link
        self.objectives = tuple((objectives,) if isinstance(objectives, str) else objectives)
        self.constraints = dict(constraints or {})
        self.runtime = runtime
        self.observer = observer
        self.detector = detector or ChangeDetector()
        self.time_budget_s = float(time_budget_s)
        self.pop_size, self.n_gen, self.patience, self.initial_n_gen = int(pop_size), int(n_gen), patience, int(initial_n_gen)
        self.min_gain = float(min_gain)
        self.observe_interval_s = float(observe_interval_s)
        self.threads = (edge_threads, cloud_threads)
        self.utilization_step = float(utilization_step)
        self.log_path = None if log_path is None else Path(log_path)
        self.device_names = tuple(device_names)
        self.seed = int(seed)
        self._clock = clock or time.monotonic
        self._t0 = self._clock()
        self._graphs: dict[int, ModelGraph] = {graph.batch_size: graph}
        self._node_ms_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self.n_cache_hits = 0
        self.n_cache_misses = 0
        self.conditions: dict[str, Any] = {"utilization": 0.0, "batch_size": graph.batch_size,
                                           "bandwidth_mbps": link.bandwidth_mbps, "rtt_ms": link.rtt_ms, "edge_scale": 1.0}
        self.feedback_min = int(feedback_min)
        self._edge_ratios: collections.deque[float] = collections.deque(maxlen=max(1, int(feedback_window)))
        self._handover_t = -math.inf  # controller time of the last plan hand-over
        self.assignment: np.ndarray | None = None
        self.pareto: np.ndarray | None = None
        self.plan: PartitionPlan | None = None
        self.cost_model: CostModel | None = None
        self.decisions: list[Decision] = []
        self.history: list[tuple[float, dict[str, Any]]] = []
        self.measurements: list[tuple[float, float, float]] = []  # (t_s, measured ms, predicted ms)
        self.last_seeds: np.ndarray | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    # -- time ------------------------------------------------------------------------------------
    def now_s(self) -> float:
        """Seconds since the controller was built (its clock)."""
        return self._clock() - self._t0

    # -- predictions ------------------------------------------------------------------------------
    def graph_at(self, batch_size: int) -> ModelGraph:
        b = int(batch_size)
        if b not in self._graphs:
            self._graphs[b] = self.graph.with_batch_size(b)
        return self._graphs[b]

    def _round_u(self, u: Any) -> float:
        u = min(0.99, max(0.0, float(u or 0.0)))
        return round(round(u / self.utilization_step) * self.utilization_step, 6)

    def _key(self, device: int, conditions: Mapping[str, Any]) -> tuple[Any, ...]:
        """Cache key: (device, batch size, rounded utilization); a callable source may read both
        utilizations, so its key holds both."""
        b = int(conditions.get("batch_size") or self.graph.batch_size)
        u_edge, u_cloud = self._round_u(conditions.get("utilization")), self._round_u(conditions.get("cloud_utilization"))
        if hasattr(self.sources[device], "predict_graph"):
            return device, b, u_edge if device == 0 else u_cloud
        return device, b, u_edge, u_cloud

    def precompute(self, utilizations: Sequence[float] = tuple(np.arange(0.0, 0.96, 0.01)), batch_sizes: Sequence[int] | None = None,
                   devices: Sequence[int] = (0,)) -> int:
        """Fill the node-ms cache for a grid of utilizations × batch sizes with one vectorised
        ``predict_graph`` call per (device, batch size); returns the number of cached conditions."""
        n = 0
        for d in devices:
            src = self.sources[d]
            for b in (batch_sizes or [self.graph.batch_size]):
                us = sorted({self._round_u(u) for u in utilizations})
                g = self.graph_at(int(b))
                if hasattr(src, "predict_graph"):
                    lat = src.predict_graph(g, batch_size=g.batch_size, utilization=np.asarray(us), threads=self.threads[d])
                    rows = np.asarray(lat.node_ms, dtype=float).reshape(len(us), -1)
                else:
                    key = "utilization" if d == 0 else "cloud_utilization"
                    rows = np.stack([self._call_source(src, g, {**self.conditions, key: u, "batch_size": int(b)}) for u in us])
                for u, row in zip(us, rows):
                    key = "utilization" if d == 0 else "cloud_utilization"
                    self._node_ms_cache[self._key(d, {**self.conditions, key: u, "batch_size": int(b)})] = row
                    n += 1
        return n

    def _call_source(self, src: Any, g: ModelGraph, cond: Mapping[str, Any]) -> np.ndarray:
        if callable(src) and not hasattr(src, "predict_graph"):
            return np.asarray(src(dict(cond)), dtype=float)
        return np.asarray(src, dtype=float)

    def node_ms(self, device: int, conditions: Mapping[str, Any]) -> np.ndarray:
        """Per-node ms of ``device`` (0 edge, 1 cloud) under ``conditions`` (cached per condition)."""
        key = self._key(device, conditions)
        hit = self._node_ms_cache.get(key)
        if hit is not None:
            self.n_cache_hits += 1
            return hit
        self.n_cache_misses += 1
        src = self.sources[device]
        g = self.graph_at(key[1])
        if hasattr(src, "predict_graph"):
            arr = np.asarray(src.predict_graph(g, batch_size=g.batch_size, utilization=key[2], threads=self.threads[device]).node_ms,
                             dtype=float)
        else:
            arr = self._call_source(src, g, {**conditions, "batch_size": key[1], "utilization": key[2], "cloud_utilization": key[3]})
        if arr.shape != (len(g.nodes),):
            raise ValueError(f"device {device}: node ms must have shape ({len(g.nodes)},), got {arr.shape}")
        self._node_ms_cache[key] = arr
        return arr

    def link_for(self, conditions: Mapping[str, Any]) -> Link:
        bw = conditions.get("bandwidth_mbps") or self.base_link.bandwidth_mbps
        rtt = conditions.get("rtt_ms")
        return Link(float(bw), float(self.base_link.rtt_ms if rtt is None else rtt), self.base_link.serialize_ms_per_mb)

    def build_cost_model(self, conditions: Mapping[str, Any]) -> CostModel:
        """The :class:`CostModel` of the graph under ``conditions``."""
        g = self.graph_at(int(conditions.get("batch_size") or self.graph.batch_size))
        scale = float(conditions.get("edge_scale") or 1.0)
        edge = self.node_ms(0, conditions)
        return CostModel(g, [edge * scale if scale != 1.0 else edge, self.node_ms(1, conditions)], self.link_for(conditions))

    # -- planning ----------------------------------------------------------------------------------
    def _partition_plan(self, cm: CostModel, res: OptimizeResult) -> PartitionPlan:
        i = res.best_index
        metrics = _scalar_metrics({k: v[i] for k, v in res.metrics.items()})
        chosen = {o: float(res.objectives[i, j]) for j, o in enumerate(res.objective_names)}
        pareto: tuple = ()
        if len(res.objective_names) > 1:
            pareto = tuple((tuple(int(x) for x in res.assignments[r]), {o: float(res.objectives[r, j])
                                                                       for j, o in enumerate(res.objective_names)})
                           for r in range(len(res.assignments)))
        return PartitionPlan(tuple(int(x) for x in res.assignments[i]), cm.node_names, self.device_names, {**chosen, **metrics},
                             pareto, "adaptive", self.graph.name)

    def _hand_over(self, plan: PartitionPlan) -> float:
        t = time.perf_counter()
        if self.runtime is not None:
            (self.runtime.set_plan if hasattr(self.runtime, "set_plan") else self.runtime)(plan)
        return (time.perf_counter() - t) * 1e3

    def initialize(self, conditions: Mapping[str, Any] | None = None) -> Decision:
        """Make the first plan (cold: full exact seeds, ``initial_n_gen`` generations) and hand it over."""
        with self._lock:
            self.conditions.update({k: v for k, v in dict(conditions or {}).items() if v is not None})
            d = self._replan(dict(self.conditions), "initial", {}, cold=True)
            self.detector.reset(self.conditions)
            return d

    def replan(self, conditions: Mapping[str, Any], reason: str = "manual") -> Decision:
        """Re-plan for ``conditions`` now (no change detection)."""
        with self._lock:
            if self.assignment is None:
                return self.initialize(conditions)
            self.conditions.update({k: v for k, v in conditions.items() if v is not None})
            d = self._replan(dict(self.conditions), reason, {})
            self.detector.reset(self.conditions, self.now_s())
            return d

    def _replan(self, cond: dict[str, Any], reason: str, changed: dict[str, Any], cold: bool = False) -> Decision:
        t0 = time.perf_counter()
        cm = self.build_cost_model(cond)
        old = self.assignment
        same_graph = self.cost_model is not None and self.cost_model.n_nodes == cm.n_nodes
        seeds = []
        if old is not None and same_graph:
            seeds.append(old)
            if self.pareto is not None:
                seeds.extend(self.pareto)
        self.last_seeds = np.array(seeds) if seeds else None
        if cold:
            res, info = reoptimize(cm, self.objectives, self.constraints, seeds=self.last_seeds, exact="full",
                                   pop_size=self.pop_size, n_gen=self.initial_n_gen, seed=self.seed)
        else:
            budget = max(0.0, self.time_budget_s - (time.perf_counter() - t0))
            res, info = reoptimize(cm, self.objectives, self.constraints, seeds=self.last_seeds, exact="fast",
                                   pop_size=self.pop_size, n_gen=self.n_gen, time_budget_s=budget, patience=self.patience,
                                   seed=self.seed + len(self.decisions))
        new = res.assignment
        new_ms = float(res.latency_ms)
        old_ms = float(cm.evaluate(old[None, :])["latency_ms"][0]) if old is not None and same_graph else None
        better = old_ms is None or (new_ms < old_ms * (1 - self.min_gain) and not np.array_equal(new, old))
        decision_ms = (time.perf_counter() - t0) * 1e3
        old_summary = plan_summary(cm, old) if old_ms is not None else None
        handoff_ms = 0.0
        if better:
            self.assignment = new.copy()
            self.plan = self._partition_plan(cm, res)
            handoff_ms = self._hand_over(self.plan)
            self._handover_t = self.now_s()
        self.pareto = res.assignments.copy()
        self.cost_model = cm
        self.conditions = dict(cond)
        cur = self.assignment if self.assignment is not None else new
        d = Decision(round(self.now_s(), 6), reason, dict(cond), changed, old_summary, plan_summary(cm, cur),
                     old_ms, new_ms if better else (old_ms if old_ms is not None else new_ms),
                     None if old_ms is None else old_ms - new_ms, None if not old_ms else (old_ms - new_ms) / old_ms,
                     bool(better), decision_ms, info.elapsed_ms, handoff_ms, info.n_evals, info.n_gen, info.stop, info.n_seeds,
                     bool(seeds))
        self.decisions.append(d)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as f:
                f.write(d.to_json() + "\n")
        return d

    def predicted_ms(self, conditions: Mapping[str, Any] | None = None) -> float:
        """Predicted latency of the current plan under ``conditions`` (default: the current ones)."""
        if self.assignment is None:
            raise RuntimeError("no plan yet: call initialize() or step()")
        cm = self.build_cost_model({**self.conditions, **dict(conditions or {})})
        return float(cm.evaluate(self.assignment[None, :])["latency_ms"][0])

    # -- the loop ---------------------------------------------------------------------------------
    def step(self, observation: Mapping[str, Any], now_s: float | None = None) -> Decision | None:
        """Feed one observation; returns the :class:`Decision` when a confirmed change led to a re-plan
        (first call: the initial plan), else ``None``."""
        with self._lock:
            t = self.now_s() if now_s is None else float(now_s)
            obs = {k: v for k, v in observation.items() if v is not None}
            self.history.append((t, dict(obs)))
            if self.assignment is None:
                d = self.initialize(obs)
                self.detector.reset(self.conditions, t)
                return d
            if self.feedback_min > 0 and "edge_scale" not in obs:
                obs.update(self.feedback())
            last_change_s = self.detector.last_change_s
            change = self.detector.update(obs, t)
            if change is None:
                return None
            cond = {**self.conditions, **change.conditions}
            u_old, u_new = change.changed.get("utilization", (None, None))
            if u_old is not None and u_new is not None and u_new < u_old:
                # the load went down: the correction measured under the heavier load would keep work off an edge
                # that may be fast again (and with no edge work, no request would tell): start over from the
                # predictor's own figures. A heavier load keeps it: it is then, if anything, an under-correction
                # (and moving work off the edge itself raises the load others put on the edge's core).
                cond["edge_scale"] = 1.0
                self._edge_ratios.clear()
            d = self._replan(cond, "change", {k: list(v) for k, v in change.changed.items()})
            # min_interval_s guards against flapping plans: a re-plan that kept the plan does not hold back the next one
            self.detector.reset(self.conditions, t if d.swapped else last_change_s)
            return d

    def record_measurement(self, total_ms: float, t_s: float | None = None) -> None:
        """Record a measured end-to-end latency (for :func:`plot_timeline`), next to the current prediction."""
        with self._lock:
            pred = self.decisions[-1].predicted_new_ms if self.decisions else math.nan
            self.measurements.append((self.now_s() if t_s is None else float(t_s), float(total_ms), float(pred)))

    def record_request(self, timings: Mapping[str, Any], t_s: float | None = None) -> float | None:
        """Feed one answered request (:meth:`partition.runtime.EdgeRunner.infer`'s timings): records its
        ``total_ms`` (:meth:`record_measurement`) and, when it computed on the edge with the current plan
        (not a fallback, started after the last hand-over), the ratio of its measured ``edge_ms`` to the
        predicted edge compute of the plan under the current conditions. The median of recent ratios is
        observed as the ``edge_scale`` condition (it multiplies the edge's predicted node latencies), so a
        load the predictor under-estimates (another core layout, a noisy neighbour, thermal throttling)
        still leads to a re-plan. A confirmed drop of the utilization resets it to 1. Returns the ratio,
        or ``None`` when the request gave none."""
        t = self.now_s() if t_s is None else float(t_s)
        total = float(timings.get("total_ms", math.nan))
        self.record_measurement(total, t)
        with self._lock:
            if self.assignment is None or timings.get("fallback") or t - total / 1e3 < self._handover_t:
                return None
            predicted = float(self.node_ms(0, self.conditions)[self.assignment == 0].sum())
            measured = float(timings.get("edge_ms", 0.0))
            if predicted < 0.05 or not measured > 0:  # (almost) nothing computed on the edge
                return None
            ratio = measured / predicted
            self._edge_ratios.append(ratio)
            return ratio

    def feedback(self) -> dict[str, float]:
        """``{"edge_scale": median of recent ratios}`` once ``feedback_min`` were recorded, else ``{}``."""
        with self._lock:
            if self.feedback_min <= 0 or len(self._edge_ratios) < self.feedback_min:
                return {}
            return {"edge_scale": float(statistics.median(self._edge_ratios))}

    def run(self, stop: threading.Event | None = None, max_steps: int | None = None) -> None:
        """Observe every ``observe_interval_s`` and :meth:`step` until ``stop`` (or :meth:`stop`) is set."""
        if self.observer is None:
            raise ValueError("run() needs an observer (an object with observe() -> dict)")
        ev = stop or self._stop
        n = 0
        next_t = time.monotonic()
        while not ev.is_set() and (max_steps is None or n < max_steps):
            try:
                self.step(self.observer.observe())
            except Exception as e:  # keep the loop alive; the runtime keeps its current plan
                self.errors.append(f"{type(e).__name__}: {e}")
            n += 1
            next_t += self.observe_interval_s
            ev.wait(max(0.0, next_t - time.monotonic()))

    def start(self) -> AdaptiveController:
        """Run :meth:`run` in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="adaptive-controller", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> AdaptiveController:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- timeline ---------------------------------------------------------------------------------------
def plot_timeline(path: str | Path, history: Sequence[tuple[float, Mapping[str, Any]]], decisions: Sequence[Decision | Mapping[str, Any]],
                  measurements: Sequence[tuple[float, float, float]] = (), title: str = "adaptive runtime") -> Path:
    """A PNG: conditions over time (utilization, bandwidth), plan changes as vertical lines, predicted vs
    measured latency. ``history`` is ``[(t_s, conditions)]``, ``measurements`` ``[(t_s, measured_ms, predicted_ms)]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = [d.to_dict() if isinstance(d, Decision) else dict(d) for d in decisions]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    t = [h[0] for h in history]
    for key, ax, label in (("utilization", axes[0], "edge CPU utilization"), ("bandwidth_mbps", axes[1], "bandwidth (Mbit/s)")):
        ys = [h[1].get(key) for h in history]
        pts = [(a, b) for a, b in zip(t, ys) if b is not None]
        if pts:
            ax.plot(*zip(*pts), ".-", ms=3, label="observed")
        ax.set_ylabel(label)
    if measurements:
        mt, mm, mp = zip(*measurements)
        axes[2].plot(mt, mm, ".", ms=3, alpha=0.6, label="measured")
        axes[2].plot(mt, mp, "-", label="predicted (current plan)")
    axes[2].set_ylabel("latency (ms)")
    axes[2].set_xlabel("time (s)")
    for d in ds:
        if d.get("swapped") and d.get("reason") != "initial":
            for ax in axes:
                ax.axvline(d["t_s"], color="red", ls="--", lw=1)
    axes[0].set_title(title + " (red: plan swaps)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    p = Path(path)
    save_figure(fig, p, dpi=100)
    plt.close(fig)
    return p
