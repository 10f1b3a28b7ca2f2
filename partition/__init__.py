"""Deployment optimizers: partition a :class:`~latpred.graph.model_graph.ModelGraph` over edge → … → cloud devices.

* :mod:`partition.cost`: :class:`Link`, :class:`CostModel` (vectorised latency / edge memory / traffic /
  energy of plans), :func:`repair` (make plans executable edge → … → cloud).
* :mod:`partition.exact`: :func:`best_single_cut` (Neurosurgeon), :func:`min_cut_partition` (DADS),
  :func:`brute_force` (tiny graphs).
* :mod:`partition.problems`: pymoo :class:`PartitionProblem`, :class:`CutPointProblem`,
  :class:`MonotoneRepair` and :func:`optimize` (GA / NSGA-II seeded with the exact plans).
* :mod:`partition.plan`: :class:`PartitionPlan`, :func:`optimize_partition` (predictors → plan) and
  :func:`split_graph_module` / :class:`SplitModel` (run a plan's stages in-process).
* :mod:`partition.pruning` / :mod:`partition.prune_problem`: latency-aware structured pruning (Torch-Pruning
  dependency groups, per-node latency tables, pymoo search, joint pruning + edge-cloud cut).
* :mod:`partition.adaptive` / :mod:`partition.observers`: observers, change detection with hysteresis, the
  warm-started :class:`AdaptiveController` that re-plans and hot-swaps the running split.
* :mod:`partition.runtime` / :mod:`partition.transport`: real split execution edge | cloud over gRPC
  (:class:`CloudServer`, :class:`EdgeRunner`, :func:`measure_split`), no-pickle tensor messages.
"""

from .adaptive import (
    AdaptiveController,
    Change,
    ChangeDetector,
    Decision,
    Threshold,
    plot_timeline,
    read_decision_log,
    reoptimize,
)
from .cost import METRICS, CostModel, Link, Plan, repair
from .exact import best_single_cut, brute_force, min_cut_partition
from .observers import (
    BatchSizeObserver,
    CompositeObserver,
    CpuObserver,
    GpuObserver,
    LinkObserver,
    LinkProber,
    Observer,
    ScriptedObserver,
)
from .plan import PartitionPlan, SplitModel, Stage, optimize_partition, placement_of, split_graph_module
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
from .prune_problem import (
    PRUNING_OBJECTIVES,
    JointPlan,
    JointPruningProblem,
    JointResult,
    PruningProblem,
    PruningResult,
    joint_metrics,
    optimize_joint,
    optimize_pruning,
)
from .pruning import (
    DEFAULT_LEVELS,
    IMPORTANCES,
    LatencyTable,
    PruneGroup,
    PruningAnalysis,
    PruningError,
    PruningPlan,
    analyze_pruning,
    kept_channels,
)
from .runtime import (
    METHOD_REGISTER,
    BuiltSplit,
    CloudServer,
    EdgeRunner,
    ModelRecipe,
    SplitMeasurement,
    build_split,
    can_pin,
    measure_split,
    normalise_request,
    pin_process,
)
from .transport import EmulatedLink, TensorCodecError, decode_message, encode_message

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
    # partition.plan
    "PartitionPlan",
    "Stage",
    "SplitModel",
    "split_graph_module",
    "optimize_partition",
    "placement_of",
    # partition.pruning / partition.prune_problem
    "PruningError", "PruneGroup", "PruningAnalysis", "LatencyTable", "PruningPlan", "analyze_pruning", "kept_channels",
    "DEFAULT_LEVELS", "IMPORTANCES", "PRUNING_OBJECTIVES", "PruningProblem", "PruningResult", "optimize_pruning",
    "JointPruningProblem", "JointPlan", "JointResult", "optimize_joint", "joint_metrics",
    # partition.adaptive / partition.observers
    "AdaptiveController", "ChangeDetector", "Threshold", "Decision", "Change", "reoptimize", "plot_timeline",
    "read_decision_log", "Observer", "CpuObserver", "GpuObserver", "BatchSizeObserver", "LinkObserver", "LinkProber", "ScriptedObserver",
    "CompositeObserver", "METHOD_REGISTER",
    # partition.runtime
    "ModelRecipe",
    "BuiltSplit",
    "build_split",
    "CloudServer",
    "EdgeRunner",
    "SplitMeasurement",
    "measure_split",
    "normalise_request",
    "can_pin",
    "pin_process",
    # partition.transport
    "TensorCodecError",
    "EmulatedLink",
    "encode_message",
    "decode_message",
]
