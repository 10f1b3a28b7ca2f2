"""Time every node of a traced model *in context*: inside the running model, not alone.

Profiling times each module alone, back to back with itself, its weights and inputs hot in cache.
Inside a model the same node runs after other nodes, with whatever they left in the caches. The
difference is what the composition model (:mod:`latpred.graph.compose`) has to learn, and whole-model
measurements show only its sum. :func:`time_in_context` runs the fx ``GraphModule`` of a
:class:`~latpred.graph.model_graph.ModelGraph` node by node through an fx ``Interpreter`` that reads the
clock around every node, ``runs`` times, and reduces each node's readings (the minimum by default, as
the profiler reduces unloaded windows). It also times the plain module call the same number of times,
interleaved, so the interpreter's own cost per node can be read off.

This is for synchronous devices (the CPU): a node's wall time is its execution time. On an eager GPU a
node's host time is what the clock would read; use the CUDA stage timings there
(:mod:`latpred.graph.overlap`).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import MeasurementError, SpecError
from ..profiling.devices import robust_stat

__all__ = ["InContextTiming", "time_in_context", "node_ratio_summary"]


@dataclass
class InContextTiming:
    """Per-node in-context ms (fx node name -> ms), the interpreted run's total and the plain module's ms.

    ``node_ms`` covers every fx node (placeholders and the output included: their time is interpreter
    cost); ``runs_ms`` keeps every run's reading per node. ``interpreted_ms`` is the statistic over runs of
    the interpreted total, ``module_ms`` that of the plain call ``gm(*inputs)``; their difference spread
    over the nodes is :attr:`overhead_per_node_ms`.
    """

    node_ms: dict[str, float]
    interpreted_ms: float
    module_ms: float
    runs: int
    statistic: str
    threads: int
    runs_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def overhead_per_node_ms(self) -> float:
        """Interpreter cost per node: (interpreted total - plain call) / nodes, at least 0."""
        return max(0.0, (self.interpreted_ms - self.module_ms) / max(1, len(self.node_ms)))

    def to_dict(self) -> dict[str, Any]:
        return {"node_ms": self.node_ms, "interpreted_ms": self.interpreted_ms, "module_ms": self.module_ms,
                "runs": self.runs, "statistic": self.statistic, "threads": self.threads,
                "overhead_per_node_ms": self.overhead_per_node_ms}


class _NodeTimer(fx.Interpreter):
    """An fx Interpreter that records each node's wall time (ms) in ``self.readings``."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.readings: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        clock = time.perf_counter
        t = clock()
        out = super().run_node(n)
        self.readings[n.name] = (clock() - t) * 1e3
        return out


def time_in_context(gm: Any, inputs: tuple[Any, ...], runs: int = 20, threads: int | None = None,
                    statistic: str = "min", warmup: int = 2) -> InContextTiming:
    """Time every node of ``gm`` (a torch.fx ``GraphModule``) inside ``runs`` interpreted runs on ``inputs``.

    ``threads`` sets torch's intra-op threads for the measurement (None keeps the current setting);
    ``statistic`` (min, median, mean, trimmed) reduces each node's runs. Raises :class:`SpecError` for
    bad arguments and :class:`MeasurementError` when the model fails to run.
    """
    if not isinstance(gm, fx.GraphModule):
        raise SpecError(f"time_in_context needs a torch.fx GraphModule (ModelGraph.gm of a traced model), got "
                        f"{type(gm).__name__}; ONNX graphs have none")
    for name, v, lo in (("runs", runs, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise SpecError(f"{name} must be an integer >= {lo}, got {v!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise SpecError(f"threads must be a positive integer or None, got {threads!r}")
    robust_stat([1.0], statistic)  # names a bad statistic before any work
    timer = _NodeTimer(gm)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    per_node: dict[str, list[float]] = {n.name: [] for n in gm.graph.nodes}
    interpreted: list[float] = []
    plain: list[float] = []
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            gm.eval()
            for i in range(warmup + runs):
                t = clock()
                timer.run(*inputs)
                total = (clock() - t) * 1e3
                t = clock()
                gm(*inputs)
                direct = (clock() - t) * 1e3
                if i < warmup:
                    continue
                interpreted.append(total)
                plain.append(direct)
                for k, v in timer.readings.items():
                    per_node[k].append(v)
    except (RuntimeError, ValueError, MemoryError, TypeError) as e:
        raise MeasurementError(f"in-context timing failed: {type(e).__name__}: {e}") from e
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(before)
    node_ms = {k: robust_stat(v, statistic) for k, v in per_node.items() if v}
    return InContextTiming(node_ms, robust_stat(interpreted, statistic), robust_stat(plain, statistic), runs, statistic,
                           used, {k: list(map(float, v)) for k, v in per_node.items()})


def node_ratio_summary(measured: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Median, 10th and 90th percentile of measured / reference over nodes with both positive."""
    m, r = np.asarray(measured, float), np.asarray(reference, float)
    ok = (m > 0) & (r > 0)
    if not ok.any():
        return {"median": float("nan"), "p10": float("nan"), "p90": float("nan"), "n": 0}
    q = m[ok] / r[ok]
    return {"median": float(np.median(q)), "p10": float(np.quantile(q, 0.1)), "p90": float(np.quantile(q, 0.9)),
            "n": int(ok.sum())}
