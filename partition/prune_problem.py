"""pymoo problems and searches for latency-aware pruning, alone or jointly with the edge–cloud cut.

* :class:`PruningProblem`: one integer variable per prunable group (its ratio level); objectives
  predicted latency (table lookups, :class:`~partition.pruning.LatencyTable`) and the accuracy proxy
  (optionally FLOPs and parameter bytes); constraint ``latency_ms <= max_latency_ms``.
* :func:`optimize_pruning`: NSGA-II over it → :class:`PruningResult` (the Pareto set as
  :class:`~partition.pruning.PruningPlan`), optionally re-scored with a real ``evaluate(model)``.
* :class:`JointPruningProblem` / :func:`optimize_joint`: the same ratio variables plus one cut
  position in topological order (the chain single-cut encoding of
  :class:`~partition.problems.CutPointProblem`): nodes before the cut run on the edge, the rest in
  the cloud. End-to-end latency = edge compute of the pruned nodes before the cut + transfer of the
  (pruned) tensors crossing the cut over the :class:`~partition.cost.Link` + cloud compute after it
  (+ the result's return to the edge), following :class:`~partition.cost.CostModel`'s rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize
from torch import nn

from .cost import CostModel, Link
from .problems import _non_dominated
from .pruning import DEFAULT_LEVELS, LatencyTable, PruningAnalysis, PruningPlan, _check_levels, analyze_pruning

__all__ = ["PRUNING_OBJECTIVES", "PruningProblem", "PruningResult", "optimize_pruning", "JointPruningProblem",
           "JointPlan", "JointResult", "optimize_joint"]

#: objective names of :class:`PruningProblem` (``latency`` and ``proxy`` always come first)
PRUNING_OBJECTIVES = ("latency", "proxy", "flops", "param_bytes")


def _objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    objs = tuple(objectives)
    bad = [o for o in objs if o not in PRUNING_OBJECTIVES]
    if bad or len(set(objs)) != len(objs) or objs[:2] != ("latency", "proxy"):
        raise ValueError(f"objectives must be ('latency', 'proxy', ...) with optional 'flops', 'param_bytes'; got {objs}")
    return objs


class PruningProblem(Problem):
    """One integer ratio-level variable per group; objectives latency (ms) and accuracy proxy (+ flops, param bytes).

    Args:
        table: the latency table (:meth:`~partition.pruning.PruningAnalysis.latency_table`).
        objectives: ``("latency", "proxy")`` plus optionally ``"flops"``, ``"param_bytes"``.
        max_latency_ms: latency budget (a constraint ``latency / budget - 1 <= 0``), or ``None``.
    """

    def __init__(self, table: LatencyTable, objectives: Sequence[str] = ("latency", "proxy"),
                 max_latency_ms: float | None = None) -> None:
        self.table = table
        self.analysis: PruningAnalysis = table.analysis
        self.objectives = _objectives(objectives)
        self.max_latency_ms = None if max_latency_ms is None else float(max_latency_ms)
        n = self.analysis.n_groups
        if n == 0:
            raise ValueError("the model has no prunable group")
        super().__init__(n_var=n, n_obj=len(self.objectives), n_ieq_constr=int(self.max_latency_ms is not None), xl=0,
                         xu=len(table.levels) - 1, vtype=int)

    def decode(self, X: Any) -> np.ndarray:
        """Level indices ``(pop, n_groups)`` of decision vectors."""
        return np.clip(np.rint(np.atleast_2d(np.asarray(X, dtype=float))), 0, len(self.table.levels) - 1).astype(np.int64)

    def metrics(self, X: Any) -> dict[str, np.ndarray]:
        """``latency``, ``proxy``, ``flops``, ``param_bytes`` arrays ``(pop,)`` of decision vectors."""
        L = self.decode(X)
        out = {"latency": self.table.latency_ms(L), "proxy": self.analysis.proxy(L, self.table.levels)}
        if "flops" in self.objectives:
            out["flops"] = self.table.flops(L)
        if "param_bytes" in self.objectives:
            out["param_bytes"] = self.table.param_bytes(L)
        return out

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        m = self.metrics(X)
        out["F"] = np.column_stack([m[o] for o in self.objectives])
        if self.max_latency_ms is not None:
            out["G"] = (m["latency"] / self.max_latency_ms - 1.0)[:, None]


@dataclass
class PruningResult:
    """What :func:`optimize_pruning` found.

    Attributes:
        plans: the Pareto set, sorted by predicted latency (fastest first).
        base_latency_ms: predicted latency of the unpruned model (same conditions).
        analysis: groups and node dependencies.
        table: the latency table the search used.
        search_s: wall time of the whole search (analysis, table, NSGA-II) in seconds.
        n_evals: evaluated plans.
        reference_scale: the factor every predicted latency was multiplied by (``reference_ms`` / the
            predicted unpruned latency; 1.0 without ``reference_ms``).
    """

    plans: list[PruningPlan]
    base_latency_ms: float
    analysis: PruningAnalysis
    table: LatencyTable
    search_s: float = 0.0
    n_evals: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    reference_scale: float = 1.0

    def best(self, max_latency_ms: float | None = None) -> PruningPlan:
        """The plan with the best accuracy (when evaluated) or lowest proxy within ``max_latency_ms``."""
        cand = [p for p in self.plans if max_latency_ms is None or p.latency_ms <= max_latency_ms]
        if not cand:
            raise ValueError(f"no plan of the front meets max_latency_ms={max_latency_ms:g}; fastest is "
                             f"{min(p.latency_ms for p in self.plans):.4g} ms")
        if all(p.accuracy is not None for p in cand):
            return max(cand, key=lambda p: p.accuracy)  # type: ignore[arg-type,return-value]
        return min(cand, key=lambda p: p.proxy)

    def to_dict(self) -> dict[str, Any]:
        return {"base_latency_ms": self.base_latency_ms, "reference_scale": self.reference_scale, "search_s": self.search_s,
                "n_evals": self.n_evals,
                "groups": [g.name for g in self.analysis.groups], "plans": [p.to_dict() for p in self.plans]}


def _seeds(n_groups: int, L: int, pop_size: int, rng: np.random.Generator) -> np.ndarray:
    uniform = np.repeat(np.arange(L)[:, None], n_groups, axis=1)
    n_rand = max(pop_size - len(uniform), 0)
    X = np.vstack([uniform, rng.integers(0, L, size=(n_rand, n_groups))])
    return np.unique(X, axis=0)


def _run_nsga2(problem: Problem, X0: np.ndarray, pop_size: int, n_gen: int, seed: int) -> Any:
    algo = NSGA2(pop_size=pop_size, sampling=X0, crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=True)
    return minimize(problem, algo, ("n_gen", n_gen), seed=seed, verbose=False)


def optimize_pruning(model: nn.Module, example_input: Any, predictor: Any, *, conditions: Mapping[str, Any] | None = None,
                     levels: Sequence[float] = DEFAULT_LEVELS, latency_budget_ms: float | None = None,
                     objectives: Sequence[str] = ("latency", "proxy"), importance: str = "l1", round_to: int | None = None,
                     ignored_layers: Sequence[str] = (), pop_size: int = 64, n_gen: int = 60, seed: int = 0,
                     evaluate: Callable[[nn.Module], float] | None = None,
                     analysis: PruningAnalysis | None = None, reference_ms: float | None = None) -> PruningResult:
    """Search per-group pruning ratios for the latency / accuracy-proxy Pareto front (NSGA-II).

    Args:
        model: the model to prune (not modified).
        example_input: its example input (batch size = the graph's).
        predictor: a :class:`latpred.Predictor` of the target device.
        conditions: scalar prediction conditions (``batch_size``, ``utilization``, ``threads``, extras).
        levels: ratio levels each group may take (sorted, starting at 0.0).
        latency_budget_ms: keep only plans predicted at or below this latency (``None``: no budget).
        objectives: ``("latency", "proxy")`` plus optionally ``"flops"`` and ``"param_bytes"``.
        importance, round_to, ignored_layers: see :func:`~partition.pruning.analyze_pruning`.
        pop_size, n_gen, seed: NSGA-II settings.
        evaluate: optional ``evaluate(pruned_model) -> accuracy``; each front plan's ``accuracy`` is set.
        analysis: reuse an analysis of ``model`` (skips the dependency analysis).
        reference_ms: the unpruned model's measured latency on the target device under ``conditions``.
            Every predicted latency (the table, the budget check, the plans) is then multiplied by
            ``reference_ms`` / the predicted unpruned latency: one real measurement removes the
            model-level offset of the whole-model prediction (its composition error, a device that drifted
            since profiling), and what remains is the predictor's error on the *change* pruning makes.
            The reference's own measurement error scales every prediction too: use a measurement pooled
            over several passes on a quiet device (see docs/partition.md for when it pays).

    Returns:
        :class:`PruningResult` with the Pareto set sorted by latency.

    Raises:
        ValueError: the budget is infeasible (the message names the budget and the smallest predicted
            latency reachable), or bad arguments.
    """
    t0 = time.perf_counter()
    objs = _objectives(objectives)
    lv = _check_levels(levels)
    if latency_budget_ms is not None and not latency_budget_ms > 0:
        raise ValueError(f"latency_budget_ms must be > 0, got {latency_budget_ms!r}")
    if reference_ms is not None and (isinstance(reference_ms, bool) or not isinstance(reference_ms, (int, float, np.number))
                                     or not float(reference_ms) > 0 or not np.isfinite(float(reference_ms))):
        raise ValueError(f"reference_ms must be a positive, finite measured latency in ms, got {reference_ms!r}")
    if pop_size < 2 or n_gen < 1:
        raise ValueError(f"pop_size must be >= 2 and n_gen >= 1, got {pop_size}, {n_gen}")
    if analysis is None:
        analysis = analyze_pruning(model, example_input, importance=importance, round_to=round_to,
                                   ignored_layers=ignored_layers)
    t1 = time.perf_counter()
    table = analysis.latency_table(predictor, lv, conditions)
    t2 = time.perf_counter()
    n, L = analysis.n_groups, len(lv)
    base = float(table.latency_ms(np.zeros((1, n), dtype=np.int64))[0])
    scale = 1.0
    if reference_ms is not None:
        scale = float(reference_ms) / base
        table = replace(table, entry_ms=table.entry_ms * scale)
        base = float(reference_ms)
    problem = PruningProblem(table, objs, latency_budget_ms)
    rng = np.random.default_rng(seed)
    X0 = _seeds(n, L, pop_size, rng)
    if latency_budget_ms is not None:
        lb = table.lower_bound_ms()
        if latency_budget_ms < lb:
            most = float(table.latency_ms(np.full((1, n), L - 1))[0])
            raise ValueError(f"latency budget latency_budget_ms={latency_budget_ms:g} ms is infeasible: no plan is predicted "
                             f"below {lb:.4g} ms (the most pruned plan: {most:.4g} ms, unpruned {base:.4g} ms)")
    res = _run_nsga2(problem, X0, pop_size, n_gen, seed)
    pop_X = problem.decode(res.pop.get("X"))
    cand = np.unique(np.vstack([pop_X, X0]), axis=0)
    cand, m, order = _front(cand, problem.metrics(cand), "latency", list(objs), latency_budget_ms,
                            f"the smallest predicted latency found is {{:.4g}} ms (unpruned {base:.4g} ms)")
    t3 = time.perf_counter()
    plans = [_plan(analysis, table, cand[i]) for i in order]
    if evaluate is not None:
        plans = [replace(p, accuracy=float(evaluate(p.apply(model)))) for p in plans]
    timings = {"analysis_s": t1 - t0, "table_s": t2 - t1, "search_s": t3 - t2}
    return PruningResult(plans, base, analysis, table, time.perf_counter() - t0, int(res.algorithm.evaluator.n_eval),
                         timings, scale)


def _plan(analysis: PruningAnalysis, table: LatencyTable, x: np.ndarray) -> PruningPlan:
    X = np.asarray(x, dtype=np.int64)[None, :]
    return PruningPlan(tuple(float(r) for r in table.ratios(X)[0]), tuple(g.name for g in analysis.groups),
                       float(table.latency_ms(X)[0]), float(analysis.proxy(X, table.levels)[0]), float(table.flops(X)[0]),
                       float(table.param_bytes(X)[0]), None, analysis)


# -- joint pruning + edge/cloud cut ------------------------------------------------------------------
class JointPruningProblem(Problem):
    """Ratio levels per group plus one cut position ``c`` in ``[0, n_nodes]`` (nodes ``>= c`` on the cloud).

    Objectives: end-to-end latency (ms) and the accuracy proxy (optionally ``bytes``: bytes sent).
    Plans are repaired like :class:`~partition.problems.CutPointProblem` (inputs pinned to the edge,
    the output returned to ``output_to``, constants next to their consumers).
    """

    def __init__(self, edge: LatencyTable, cloud: LatencyTable, link: Link, *, output_to: int | None = 0,
                 objectives: Sequence[str] = ("latency", "proxy"), max_latency_ms: float | None = None) -> None:
        if edge.analysis is not cloud.analysis or not np.array_equal(edge.levels, cloud.levels):
            raise ValueError("edge and cloud tables must come from one analysis with the same levels")
        objs = tuple(objectives)
        if objs[:2] != ("latency", "proxy") or any(o not in ("latency", "proxy", "bytes") for o in objs):
            raise ValueError(f"objectives must be ('latency', 'proxy'[, 'bytes']), got {objs}")
        self.edge, self.cloud, self.objectives = edge, cloud, objs
        self.analysis = edge.analysis
        g = self.analysis.graph
        zeros = np.zeros(len(g.nodes))
        self.cost_model = CostModel(g, [zeros, zeros], link, output_to=output_to)
        self.max_latency_ms = None if max_latency_ms is None else float(max_latency_ms)
        n = self.analysis.n_groups
        xu = np.array([len(edge.levels) - 1] * n + [len(g.nodes)])
        super().__init__(n_var=n + 1, n_obj=len(objs), n_ieq_constr=int(self.max_latency_ms is not None), xl=0, xu=xu,
                         vtype=int)

    def decode(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(level indices ``(pop, n_groups)``, repaired assignments ``(pop, n_nodes)``)."""
        x = np.clip(np.rint(np.atleast_2d(np.asarray(X, dtype=float))), self.xl, self.xu).astype(np.int64)
        cm = self.cost_model
        pos = np.arange(cm.n_nodes)
        a = (pos[None, :] >= x[:, -1:]).astype(np.intp)
        return x[:, :-1], cm.repair(a)

    def metrics(self, X: Any) -> dict[str, np.ndarray]:
        """``latency_ms``, ``edge_ms``, ``cloud_ms``, ``transfer_ms``, ``bytes_transferred``, ``proxy``."""
        L, a = self.decode(X)
        return joint_metrics(self.cost_model, self.edge.node_ms(L), self.cloud.node_ms(L), self.edge.out_bytes(L), a) | {
            "proxy": self.analysis.proxy(L, self.edge.levels)}

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        m = self.metrics(X)
        key = {"latency": "latency_ms", "proxy": "proxy", "bytes": "bytes_transferred"}
        out["F"] = np.column_stack([m[key[o]] for o in self.objectives])
        if self.max_latency_ms is not None:
            out["G"] = (m["latency_ms"] / self.max_latency_ms - 1.0)[:, None]


def joint_metrics(cm: CostModel, edge_ms: np.ndarray, cloud_ms: np.ndarray, out_bytes: np.ndarray,
                  assign: np.ndarray) -> dict[str, np.ndarray]:
    """Latency of two-device plans whose node times and tensor sizes differ per plan (pruned graphs).

    Same rules as :meth:`CostModel.evaluate` (each tensor sent once per destination device), with
    ``edge_ms``, ``cloud_ms`` and ``out_bytes`` of shape ``(pop, n_nodes)``.
    """
    a = cm.pin(assign)
    comp = np.where(a == 0, edge_ms, cloud_ms)
    edge = np.where(a == 0, edge_ms, 0.0).sum(axis=1)
    cloud = np.where(a == 1, cloud_ms, 0.0).sum(axis=1)
    tx = np.zeros(len(a))
    nbytes = np.zeros(len(a))
    for u in range(cm.n_nodes):
        s = cm.succs[u]
        if s.size == 0:
            continue
        src = a[:, u]
        for d in range(cm.k):
            recv = (a[:, s] == d).any(axis=1) & (src != d)
            if recv.any():
                tx += np.where(recv, cm.transfer_fixed_ms[src, d] + cm.transfer_ms_per_byte[src, d] * out_bytes[:, u], 0.0)
                nbytes += recv * out_bytes[:, u]
    return {"latency_ms": comp.sum(axis=1) + tx, "edge_ms": edge, "cloud_ms": cloud, "transfer_ms": tx,
            "bytes_transferred": nbytes}


@dataclass(frozen=True)
class JointPlan:
    """A pruning plan plus an edge → cloud cut.

    Attributes:
        pruning: the pruning plan (its ``latency_ms`` is the whole pruned model on the edge).
        cut: topological position of the cut (nodes ``>= cut`` run in the cloud, before repair).
        assignment: device (0 edge, 1 cloud) of every node after repair.
        latency_ms, edge_ms, cloud_ms, transfer_ms: end-to-end latency and its parts.
        bytes_transferred: bytes sent over the link (pruned tensors).
    """

    pruning: PruningPlan
    cut: int
    assignment: tuple[int, ...]
    latency_ms: float
    edge_ms: float
    cloud_ms: float
    transfer_ms: float
    bytes_transferred: float

    @property
    def proxy(self) -> float:
        return self.pruning.proxy

    def to_dict(self) -> dict[str, Any]:
        return {"pruning": self.pruning.to_dict(), "cut": self.cut, "latency_ms": self.latency_ms, "edge_ms": self.edge_ms,
                "cloud_ms": self.cloud_ms, "transfer_ms": self.transfer_ms, "bytes_transferred": self.bytes_transferred}


@dataclass
class JointResult:
    """What :func:`optimize_joint` found: the Pareto set (sorted by end-to-end latency) and the tables."""

    plans: list[JointPlan]
    problem: JointPruningProblem
    search_s: float = 0.0
    n_evals: int = 0

    def evaluate(self, level_idx: Any, cut: int) -> dict[str, float]:
        """Metrics of one (level indices, cut) pair."""
        x = np.append(np.asarray(level_idx, dtype=np.int64), int(cut))[None, :]
        return {k: float(v[0]) for k, v in self.problem.metrics(x).items()}


def optimize_joint(model: nn.Module, example_input: Any, edge_predictor: Any, cloud_predictor: Any, link: Link, *,
                   edge_conditions: Mapping[str, Any] | None = None, cloud_conditions: Mapping[str, Any] | None = None,
                   levels: Sequence[float] = DEFAULT_LEVELS, latency_budget_ms: float | None = None, output_to: int | None = 0,
                   objectives: Sequence[str] = ("latency", "proxy"), importance: str = "l1", round_to: int | None = None,
                   ignored_layers: Sequence[str] = (), pop_size: int = 64, n_gen: int = 60, seed: int = 0,
                   analysis: PruningAnalysis | None = None) -> JointResult:
    """Optimise pruning ratios and the edge → cloud cut together (NSGA-II).

    End-to-end latency = edge compute (pruned specs, ``edge_predictor``) of the nodes before the cut
    + transfer of the pruned tensors that cross it over ``link`` + cloud compute (``cloud_predictor``)
    of the rest + returning the result to ``output_to``. Pruning layers before the cut shrinks both
    the edge time and the tensor sent. Arguments otherwise as :func:`optimize_pruning`.
    """
    t0 = time.perf_counter()
    lv = _check_levels(levels)
    if analysis is None:
        analysis = analyze_pruning(model, example_input, importance=importance, round_to=round_to,
                                   ignored_layers=ignored_layers)
    edge = analysis.latency_table(edge_predictor, lv, edge_conditions)
    cloud = analysis.latency_table(cloud_predictor, lv, cloud_conditions)
    problem = JointPruningProblem(edge, cloud, link, output_to=output_to, objectives=objectives,
                                  max_latency_ms=latency_budget_ms)
    n, L, N = analysis.n_groups, len(lv), len(analysis.graph.nodes)
    rng = np.random.default_rng(seed)
    lvl = _seeds(n, L, pop_size, rng)
    cuts = rng.integers(0, N + 1, size=len(lvl))
    cuts[: min(len(lvl), 2)] = [0, N][: min(len(lvl), 2)]
    X0 = np.column_stack([lvl, cuts])
    extra = np.column_stack([np.zeros((N + 1, n), dtype=np.int64), np.arange(N + 1)])  # every cut, unpruned
    X0 = np.unique(np.vstack([X0, extra]), axis=0)
    res = _run_nsga2(problem, X0, max(pop_size, 2), n_gen, seed)
    pop_X = np.clip(np.rint(np.atleast_2d(np.asarray(res.pop.get("X"), dtype=float))), problem.xl, problem.xu)
    cand = np.unique(np.vstack([pop_X.astype(np.int64), X0]), axis=0)
    key = {"latency": "latency_ms", "proxy": "proxy", "bytes": "bytes_transferred"}
    cand, m, order = _front(cand, problem.metrics(cand), "latency_ms", [key[o] for o in problem.objectives],
                            latency_budget_ms, "the smallest end-to-end latency found is {:.4g} ms")
    _, assign = problem.decode(cand)
    plans = []
    for i in order:
        plans.append(JointPlan(_plan(analysis, edge, cand[i, :-1]), int(cand[i, -1]), tuple(int(d) for d in assign[i]),
                               float(m["latency_ms"][i]), float(m["edge_ms"][i]), float(m["cloud_ms"][i]),
                               float(m["transfer_ms"][i]), float(m["bytes_transferred"][i])))
    return JointResult(plans, problem, time.perf_counter() - t0, int(res.algorithm.evaluator.n_eval))


def _front(cand: np.ndarray, m: dict[str, np.ndarray], latency: str, objectives: list[str], budget_ms: float | None,
           best_msg: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Candidates within the latency budget, then their non-dominated set on ``objectives``, with the
    order that sorts it by ``m[latency]``. No candidate within the budget raises a ValueError ending in
    ``best_msg`` formatted with the smallest latency found."""
    if budget_ms is not None:
        ok = m[latency] <= budget_ms
        if not ok.any():
            raise ValueError(f"latency budget latency_budget_ms={budget_ms:g} ms is infeasible: "
                             + best_msg.format(float(m[latency].min())))
        cand, m = cand[ok], {k: v[ok] for k, v in m.items()}
    keep = _non_dominated(np.column_stack([m[o] for o in objectives]))
    cand, m = cand[keep], {k: v[keep] for k, v in m.items()}
    return cand, m, np.argsort(m[latency], kind="stable")
