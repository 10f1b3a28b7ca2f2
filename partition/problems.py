"""pymoo problems over partition plans and :func:`optimize` (GA / NSGA-II seeded with exact plans).

Two encodings:

* :class:`PartitionProblem`: one integer variable (a device index) per free node (every node but
  inputs and outputs, which are pinned or follow their producers); plans are repaired with
  :func:`~partition.cost.repair` (by :class:`MonotoneRepair` in the algorithm, and again in
  ``_evaluate``, which is idempotent).
* :class:`CutPointProblem`: ``k - 1`` integer cut positions in topological order (one variable for two
  devices): nodes before the first cut on device 0, between cuts ``j`` and ``j + 1`` on device ``j+1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize

from .cost import CostModel, Plan
from .exact import best_single_cut, min_cut_partition

__all__ = ["OBJECTIVES", "CONSTRAINTS", "PartitionProblem", "CutPointProblem", "MonotoneRepair", "OptimizeResult", "exact_seeds",
           "optimize", "random_monotone_plans"]

#: objective name → :meth:`CostModel.evaluate` key
OBJECTIVES = {"latency": "latency_ms", "edge_memory": "edge_memory_bytes", "bytes": "bytes_transferred",
              "energy": "energy_j"}
#: constraint name → :meth:`CostModel.evaluate` key
CONSTRAINTS = {"max_edge_memory_bytes": "edge_memory_bytes", "max_latency_ms": "latency_ms"}


def _check_objectives(cost_model: CostModel, objectives: Sequence[str]) -> tuple[str, ...]:
    if isinstance(objectives, str):
        objectives = (objectives,)
    objs = tuple(objectives)
    if not objs:
        raise ValueError(f"objectives must name at least one of {sorted(OBJECTIVES)}")
    for o in objs:
        if o not in OBJECTIVES:
            raise ValueError(f"unknown objective {o!r}; allowed: {sorted(OBJECTIVES)}")
    if len(set(objs)) != len(objs):
        raise ValueError(f"duplicate objectives in {objs}")
    if "energy" in objs and cost_model.power_w is None:
        raise ValueError("objective 'energy' needs a CostModel built with power_w")
    return objs


def _check_constraints(constraints: Mapping[str, float | None] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, limit in (constraints or {}).items():
        if name not in CONSTRAINTS:
            raise ValueError(f"unknown constraint {name!r}; allowed: {sorted(CONSTRAINTS)}")
        if limit is None:
            continue
        limit = float(limit)
        if not limit > 0:
            raise ValueError(f"{name} must be > 0, got {limit!r}")
        out[name] = limit
    return out


class _PlanProblem(Problem):
    """Shared part: decoding to full repaired assignments, objectives and constraints."""

    def __init__(self, cost_model: CostModel, objectives: Sequence[str], constraints: Mapping[str, float | None] | None,
                 n_var: int, xl: Any, xu: Any) -> None:
        self.cost_model = cost_model
        self.objectives = _check_objectives(cost_model, objectives)
        self.constraints = _check_constraints(constraints)
        super().__init__(n_var=n_var, n_obj=len(self.objectives), n_ieq_constr=len(self.constraints), xl=xl, xu=xu,
                         vtype=int)

    def decode(self, X: Any) -> np.ndarray:
        """Repaired full assignments ``(pop, n_nodes)`` of decision vectors ``X``."""
        raise NotImplementedError

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        m = self.cost_model.evaluate(self.decode(X))
        out["F"] = np.column_stack([m[OBJECTIVES[o]] for o in self.objectives])
        if self.constraints:  # normalised: value / limit - 1 <= 0
            out["G"] = np.column_stack([m[CONSTRAINTS[c]] / lim - 1.0 for c, lim in self.constraints.items()])


class PartitionProblem(_PlanProblem):
    """One integer variable (device index ``0 .. k-1``) per free node of the cost model.

    Args:
        cost_model: the :class:`~partition.cost.CostModel`.
        objectives: names from :data:`OBJECTIVES` (``latency``, ``edge_memory``, ``bytes``, ``energy``).
        constraints: ``{"max_edge_memory_bytes": ..., "max_latency_ms": ...}`` (``None`` values ignored).
    """

    def __init__(self, cost_model: CostModel, objectives: Sequence[str] = ("latency",),
                 constraints: Mapping[str, float | None] | None = None) -> None:
        nf = len(cost_model.free_idx)
        if nf == 0:
            raise ValueError("the graph has no free node to place")
        super().__init__(cost_model, objectives, constraints, nf, 0, cost_model.k - 1)

    def decode(self, X: Any) -> np.ndarray:
        x = np.clip(np.rint(np.atleast_2d(np.asarray(X, dtype=float))), 0, self.cost_model.k - 1).astype(np.intp)
        return self.cost_model.repair(self.cost_model.expand(x))

    def encode(self, assign: Any) -> np.ndarray:
        """Decision vectors ``(pop, n_var)`` of full assignments ``(pop, n_nodes)``."""
        return np.atleast_2d(np.asarray(assign))[:, self.cost_model.free_idx].astype(np.intp)


class CutPointProblem(_PlanProblem):
    """``k - 1`` integer cut positions in ``[0, n_nodes]`` (one variable for 2 devices).

    Node ``j`` (topological position) goes to device ``#{cuts <= j}``; plans are then repaired
    (inputs/outputs pinned, constants next to their consumers). Arguments as :class:`PartitionProblem`.
    """

    def __init__(self, cost_model: CostModel, objectives: Sequence[str] = ("latency",),
                 constraints: Mapping[str, float | None] | None = None) -> None:
        super().__init__(cost_model, objectives, constraints, cost_model.k - 1, 0, cost_model.n_nodes)

    def decode(self, X: Any) -> np.ndarray:
        cm = self.cost_model
        c = np.sort(np.clip(np.rint(np.atleast_2d(np.asarray(X, dtype=float))), 0, cm.n_nodes).astype(np.intp), axis=1)
        pos = np.arange(cm.n_nodes)
        a = (pos[None, :, None] >= c[:, None, :]).sum(axis=2)
        return cm.repair(a)


class MonotoneRepair(Repair):
    """pymoo repair: decision vectors of a :class:`PartitionProblem` → those of their repaired plans."""

    def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        if isinstance(problem, PartitionProblem):
            return problem.encode(problem.decode(X))
        return np.clip(np.rint(X), problem.xl, problem.xu).astype(int)


@dataclass
class OptimizeResult:
    """What :func:`optimize` found.

    Attributes:
        assignments: int ``(m, n_nodes)``: the best plan (``m = 1``, single objective) or the Pareto set.
        objectives: ``(m, n_obj)`` objective values (units as in :data:`OBJECTIVES` keys).
        objective_names: the objective names, e.g. ``("latency", "edge_memory")``.
        metrics: every :meth:`CostModel.evaluate` metric of the returned plans, arrays ``(m,)``.
        seeds: the exact plans the initial population was seeded with (name → :class:`Plan`).
        n_evals: number of evaluated plans.
        node_names: node names aligned with the assignment columns.
    """

    assignments: np.ndarray
    objectives: np.ndarray
    objective_names: tuple[str, ...]
    metrics: dict[str, np.ndarray]
    seeds: dict[str, Plan] = field(default_factory=dict)
    n_evals: int = 0
    node_names: tuple[str, ...] = ()

    @property
    def best_index(self) -> int:
        """Index of the plan with the smallest first objective."""
        return int(np.argmin(self.objectives[:, 0]))

    @property
    def assignment(self) -> np.ndarray:
        """The plan with the smallest first objective, int ``(n_nodes,)``."""
        return self.assignments[self.best_index]

    @property
    def latency_ms(self) -> float:
        return float(self.metrics["latency_ms"][self.best_index])

    def plan(self, i: int | None = None) -> Plan:
        """Plan ``i`` (default: :attr:`best_index`) as a :class:`Plan`."""
        j = self.best_index if i is None else int(i)
        m = {key: (v[j].tolist() if np.ndim(v[j]) else float(v[j])) for key, v in self.metrics.items()}
        return Plan(self.assignments[j].copy(), m, "optimize", self.node_names)


def exact_seeds(cost_model: CostModel) -> dict[str, Plan]:
    """Plans to seed a population with: all on each device, and for every pair (0, d) the best single cut
    and the min-cut of the restricted two-device model (mapped back to device indices)."""
    cm = cost_model
    seeds: dict[str, Plan] = {}
    for d in range(cm.k):
        seeds[f"all_{d}"] = cm.plan(cm.repair(np.full((1, cm.n_nodes), d))[0], f"all_{d}")
    for d in range(1, cm.k):
        try:
            sub = cm if cm.k == 2 else cm.restrict((0, d))
        except ValueError:
            continue
        dev = np.array([0, d])
        for name, fn in (("single_cut", best_single_cut), ("min_cut", min_cut_partition)):
            try:
                p = fn(sub)
            except ValueError:
                continue
            key = name if cm.k == 2 else f"{name}_0_{d}"
            seeds[key] = cm.plan(dev[p.assignment], key, **p.info)
    return seeds


def random_monotone_plans(cm: CostModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random executable plans spread over the cut positions: device boundaries at random
    positions in topological order, a few nodes flipped, then repaired. Independent uniform devices
    per node would almost all repair to "everything after the first few nodes on the last device"
    (the running max), leaving a cold population of near-duplicates that pymoo stops after one
    generation."""
    k, N = cm.k, cm.n_nodes
    cuts = np.sort(rng.integers(0, N + 1, size=(n, k - 1)), axis=1)
    pos = np.arange(N)[None, :]
    a = (pos[:, :, None] >= cuts[:, None, :]).sum(axis=2)
    flip = rng.random((n, N)) < 2.0 / max(N, 1)
    a = np.where(flip, rng.integers(0, k, size=(n, N)), a)
    return cm.repair(a)


def optimize(cost_model: CostModel, objectives: Sequence[str] = ("latency",),
             constraints: Mapping[str, float | None] | None = None, *, pop_size: int = 50, n_gen: int = 100,
             seed: int = 0, seeds: Any = None, encoding: str = "nodes", verbose: bool = False,
             seed_exact: bool = True) -> OptimizeResult:
    """Search partition plans with a GA (one objective) or NSGA-II (several), seeded with exact plans.

    Args:
        cost_model: the :class:`~partition.cost.CostModel`.
        objectives: names from :data:`OBJECTIVES` (``latency``, ``edge_memory``, ``bytes``, ``energy``).
        constraints: ``{"max_edge_memory_bytes": ..., "max_latency_ms": ...}``.
        pop_size: population size (>= 2).
        n_gen: number of generations.
        seed: random seed of the algorithm.
        seeds: extra full assignments ``(m, n_nodes)`` for the initial population.
        encoding: ``"nodes"`` (:class:`PartitionProblem`) or ``"cut"`` (:class:`CutPointProblem`).
        verbose: print pymoo progress.
        seed_exact: seed with the exact plans (best single cut, min-cut); False keeps only the
            all-on-one-device plans, to measure what the search finds on its own.

    The initial population is the exact plans of :func:`exact_seeds` (all-edge, all-cloud, best single
    cut, min-cut), ``seeds``, then uniformly random genes; integer SBX crossover and polynomial mutation
    with rounding, plus :class:`MonotoneRepair`.

    Returns:
        :class:`OptimizeResult`: the best plan (single objective) or the Pareto set (assignments and
        objective values), feasible under the constraints.

    Raises:
        ValueError: unknown objective/constraint/encoding, or no plan found that satisfies the
            constraints (the message names the binding constraint and the smallest value found).
    """
    objs = _check_objectives(cost_model, objectives)
    cons = _check_constraints(constraints)
    if pop_size < 2 or n_gen < 1:
        raise ValueError(f"pop_size must be >= 2 and n_gen >= 1, got {pop_size}, {n_gen}")
    cm = cost_model
    if encoding == "nodes":
        problem: _PlanProblem = PartitionProblem(cm, objs, cons)
    elif encoding == "cut":
        problem = CutPointProblem(cm, objs, cons)
    else:
        raise ValueError(f"encoding must be 'nodes' or 'cut', got {encoding!r}")

    exact = exact_seeds(cm)
    if not seed_exact:
        exact = {k: v for k, v in exact.items() if k.startswith("all_")}
    seed_assign = [p.assignment for p in exact.values()]
    if len(objs) > 1 and cm.k == 2 and seed_exact:  # every single cut point: the classic front, refined by the search
        from .exact import single_cut_assignments

        seed_assign.extend(np.unique(single_cut_assignments(cm), axis=0))
    if seeds is not None:
        extra = np.atleast_2d(np.asarray(seeds))
        if extra.shape[1] != cm.n_nodes:
            raise ValueError(f"seeds must have shape (m, {cm.n_nodes}), got {extra.shape}")
        seed_assign.extend(cm.repair(extra))
    rng = np.random.default_rng(seed)
    if isinstance(problem, PartitionProblem):
        x0 = problem.encode(np.array(seed_assign))
    else:
        x0 = np.array([[p.info["cut"]] for p in exact.values() if "cut" in p.info and cm.k == 2], dtype=np.intp)
        x0 = x0.reshape(-1, problem.n_var)
    x0 = np.unique(x0, axis=0)
    n_rand = max(pop_size - len(x0), 0)
    # uniform random genes (most repair to near-duplicates of the seeds): tried random_monotone_plans here too, which
    # found the same optima on the 112 bench cases but kept pymoo's mating busy, 0.4 s -> 2.3 s for resnet50
    x_rand = rng.integers(problem.xl, np.asarray(problem.xu) + 1, size=(n_rand, problem.n_var))
    X0 = np.vstack([x0, x_rand]) if n_rand else x0

    ops = dict(sampling=X0, crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
               mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), repair=MonotoneRepair(),
               eliminate_duplicates=True)
    algo = GA(pop_size=pop_size, **ops) if len(objs) == 1 else NSGA2(pop_size=pop_size, **ops)
    # The monotone repair maps many offspring onto the same plan; pymoo would re-mate up to 100 times per
    # generation looking for unique ones (most of the run time). A few tries keep diversity at a fraction of the cost.
    algo.mating.n_max_iterations = 5
    res = minimize(problem, algo, ("n_gen", n_gen), seed=seed, verbose=verbose)

    pop_X = np.atleast_2d(res.pop.get("X"))
    cand = np.vstack([problem.decode(pop_X), np.array(seed_assign)])
    if res.X is None or (res.CV is not None and np.any(np.asarray(res.CV) > 0)):
        raise ValueError(_infeasible_message(cm, cons, cand))
    X = np.atleast_2d(res.X)
    A = np.unique(np.vstack([problem.decode(X), cm.repair(np.array(seed_assign))]), axis=0)
    m = cm.evaluate(A)
    F = np.column_stack([m[OBJECTIVES[o]] for o in objs])
    if cons:  # the rounding/repair round-trip cannot make a plan infeasible, but be safe
        ok = np.all([m[CONSTRAINTS[c]] <= lim * (1 + 1e-12) for c, lim in cons.items()], axis=0)
        A, F, m = A[ok], F[ok], {key: v[ok] for key, v in m.items()}
    if len(objs) > 1:
        keep = _non_dominated(F)
        A, F, m = A[keep], F[keep], {key: v[keep] for key, v in m.items()}
    else:
        i = int(np.argmin(F[:, 0]))
        A, F, m = A[i:i + 1], F[i:i + 1], {key: v[i:i + 1] for key, v in m.items()}
    order = np.lexsort(F.T[::-1])
    A, F, m = A[order], F[order], {key: v[order] for key, v in m.items()}
    return OptimizeResult(A, F, objs, m, exact, int(res.algorithm.evaluator.n_eval), cm.node_names)


def _non_dominated(F: np.ndarray) -> np.ndarray:
    """Bool mask of the rows of ``F`` no other row dominates (minimisation); duplicates keep the first."""
    le = (F[:, None, :] <= F[None, :, :]).all(axis=2)
    lt = (F[:, None, :] < F[None, :, :]).any(axis=2)
    dominated = (le & lt).any(axis=0)
    _, first = np.unique(F, axis=0, return_index=True)
    keep = np.zeros(len(F), dtype=bool)
    keep[first] = True
    return ~dominated & keep


def _infeasible_message(cm: CostModel, cons: dict[str, float], cand: np.ndarray) -> str:
    m = cm.evaluate(cand)
    parts = []
    for c, lim in cons.items():
        best = float(m[CONSTRAINTS[c]].min())
        if best > lim:
            what = "edge memory" if c == "max_edge_memory_bytes" else "latency"
            unit = " bytes" if c == "max_edge_memory_bytes" else " ms"
            parts.append(f"no plan satisfies {c}={lim:g}; the smallest {what} found is {best:g}{unit}")
    if parts:
        return "; ".join(parts)
    return (f"no plan found that satisfies all constraints together ({', '.join(f'{c}={v:g}' for c, v in cons.items())}); "
            f"each alone is reachable: relax one")
