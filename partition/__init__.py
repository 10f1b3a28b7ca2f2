"""Deployment optimizers: partition a :class:`~latpred.graph.model_graph.ModelGraph` over edge → … → cloud devices.

* :mod:`partition.cost`: :class:`Link`, :class:`CostModel` (vectorised latency / edge memory / traffic /
  energy of plans), :func:`repair` (make plans executable edge → … → cloud).
* :mod:`partition.exact`: :func:`best_single_cut` (Neurosurgeon), :func:`min_cut_partition` (DADS),
  :func:`brute_force` (tiny graphs).
* :mod:`partition.problems`: pymoo :class:`PartitionProblem`, :class:`CutPointProblem`,
  :class:`MonotoneRepair` and :func:`optimize` (GA / NSGA-II seeded with the exact plans).
"""

from .cost import METRICS, CostModel, Link, Plan, repair
from .exact import best_single_cut, brute_force, min_cut_partition
from .problems import (
    CONSTRAINTS,
    OBJECTIVES,
    CutPointProblem,
    MonotoneRepair,
    OptimizeResult,
    PartitionProblem,
    exact_seeds,
    optimize,
)

__all__ = [
    "Link",
    "CostModel",
    "Plan",
    "METRICS",
    "repair",
    "best_single_cut",
    "min_cut_partition",
    "brute_force",
    "OBJECTIVES",
    "CONSTRAINTS",
    "PartitionProblem",
    "CutPointProblem",
    "MonotoneRepair",
    "OptimizeResult",
    "exact_seeds",
    "optimize",
]
