"""Validation harness: predicted vs measured whole-model latency under the same conditions.

For every model × batch size × utilization the model is traced once (batch 1), predicted under all
conditions in one vectorised call, then measured on the device with the same protocol and background
load as profiling. The report gives per-case errors, acc10 / MAPE / Spearman overall and per model,
and (optionally) a predicted-vs-measured plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import SpecError
from ..profiling.reference import adopt_reference
from .measure import ModelJob, check_passes, measure_in_passes, model_reference_exponent, pass_agreement
from .models import ModelRef, load_model
from .trace import trace

__all__ = ["ValidationCase", "ValidationReport", "validate_models", "COMPONENTS"]

#: per-stage figures a device may report for a whole model (kept with each validation case)
COMPONENTS = ("host_ms", "gpu_ms", "single_ms", "kernel_ms", "host_probe_ms")


@dataclass
class ValidationCase:
    model: str
    batch_size: int
    utilization: float
    threads: int | None
    predicted_ms: float
    measured_ms: float | None
    isolated_sum_ms: float
    coverage: float
    error: str = ""
    #: each measurement pass's own figure (``measured_ms`` pools the windows of all passes)
    pass_ms: list[float] = field(default_factory=list)
    #: the device's stage timings of the whole model, median over passes (CUDA: ``host_ms``, ``gpu_ms``,
    #: ``single_ms``; see :meth:`latpred.profiling.devices.CudaDevice._components`); empty where it has none
    components: dict[str, float] = field(default_factory=dict)
    #: an overlap predictor's prediction with the host at the speed the device's probe read while the case
    #: was measured (``components['host_probe_ms']``; :meth:`~latpred.graph.overlap.OverlapPredictor.host_scale_for`)
    predicted_at_probe_ms: float | None = None
    #: CPU: the raw windows and the reference reading after each, per pass, and the exponent they were
    #: normalised with (:mod:`latpred.profiling.reference`), so the case can be re-normalised later
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def rel_error(self) -> float | None:
        return None if not self.measured_ms else self.predicted_ms / self.measured_ms - 1


@dataclass
class ValidationReport:
    cases: list[ValidationCase]
    settings: dict[str, Any] = field(default_factory=dict)

    def measured(self) -> list[ValidationCase]:
        return [c for c in self.cases if c.measured_ms]

    @staticmethod
    def _metrics(cases: Sequence[ValidationCase]) -> dict[str, float]:
        from scipy.stats import spearmanr

        if not cases:
            return {"n": 0}
        p = np.array([c.predicted_ms for c in cases])
        m = np.array([c.measured_ms for c in cases])
        s = np.array([c.isolated_sum_ms for c in cases])
        rel = np.abs(p / m - 1)
        out = {"n": len(cases), "acc5": float(np.mean(rel <= 0.05)), "acc10": float(np.mean(rel <= 0.10)),
               "acc15": float(np.mean(rel <= 0.15)), "mape": float(np.mean(rel) * 100),
               "max_ape": float(rel.max() * 100), "sum_ratio_median": float(np.median(s / m)),
               "sum_acc10": float(np.mean(np.abs(s / m - 1) <= 0.10))}
        out["spearman"] = float(spearmanr(p, m).statistic) if len(cases) > 2 else float("nan")
        probed = [c for c in cases if c.predicted_at_probe_ms]
        if probed:  # predicted at the host speed read during each case's measurement (overlap predictors)
            rp = np.abs(np.array([c.predicted_at_probe_ms / c.measured_ms for c in probed]) - 1)
            out.update(probe_n=len(probed), probe_acc10=float(np.mean(rp <= 0.10)), probe_mape=float(np.mean(rp) * 100))
        agree = pass_agreement([c.pass_ms for c in cases])
        if agree is not None:  # the measurement's own repeatability: what a perfect predictor could score
            out["pass_within10"] = agree
        return out

    def metrics(self) -> dict[str, float]:
        return self._metrics(self.measured())

    def per_model(self) -> dict[str, dict[str, float]]:
        names = list(dict.fromkeys(c.model for c in self.cases))
        return {n: self._metrics([c for c in self.measured() if c.model == n]) for n in names}

    def table(self) -> str:
        lines = [f"{'model':<20} {'batch':>5} {'util':>5} {'thr':>4} {'predicted':>11} {'measured':>11} {'error':>8}"]
        for c in self.cases:
            meas = f"{c.measured_ms:9.2f}ms" if c.measured_ms else "   failed  "
            err = f"{100 * c.rel_error:+7.1f}%" if c.rel_error is not None else c.error[:20]
            lines.append(f"{c.model:<20} {c.batch_size:>5} {c.utilization:>5.2f} {c.threads or '-':>4} "
                         f"{c.predicted_ms:9.2f}ms {meas} {err}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "metrics": self.metrics(), "per_model": self.per_model(),
                "cases": [{**asdict(c), "rel_error": c.rel_error} for c in self.cases]}

    def plot(self, path: str) -> None:
        """Predicted vs measured scatter (log-log) with the ±10% band, one colour per model."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..plots import save_figure

        cases = self.measured()
        if not cases:
            raise SpecError("nothing measured to plot")
        fig, ax = plt.subplots(figsize=(7, 6))
        names = list(dict.fromkeys(c.model for c in cases))
        cmap = plt.get_cmap("tab20")
        for i, n in enumerate(names):
            cs = [c for c in cases if c.model == n]
            ax.scatter([c.measured_ms for c in cs], [c.predicted_ms for c in cs], s=22, color=cmap(i % 20), label=n,
                       marker="o" if i < 20 else "x")
        lo = min(min(c.measured_ms, c.predicted_ms) for c in cases) * 0.8
        hi = max(max(c.measured_ms, c.predicted_ms) for c in cases) * 1.25
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", lw=1)
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="grey", alpha=0.2, label="±10%")
        ax.set(xscale="log", yscale="log", xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
               xlim=(lo, hi), ylim=(lo, hi))
        m = self.metrics()
        ax.set_title(f"whole-model latency: acc10 {100 * m['acc10']:.0f}%, MAPE {m['mape']:.1f}%, "
                     f"Spearman {m['spearman']:.3f} (n={m['n']})", fontsize=10)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
        plt.close(fig)


def validate_models(predictor: Any, device: Any, refs: Sequence[str], batch_sizes: Sequence[int] = (1, 8, 32),
                    utilizations: Sequence[float] = (0.0, 0.5), threads: int | None | Sequence[int | None] = None,
                    loaded_threads: int | None = 1, measure: bool = True, passes: int = 3,
                    progress: Callable[[str], None] | None = None) -> ValidationReport:
    """Predict and measure each model under every (batch size, utilization); see :class:`ValidationReport`.

    Unloaded cases run with ``threads`` (None: the device default; a list measures every listed
    count), loaded ones (utilization > 0) with ``loaded_threads`` — as the built-in spaces profile
    them. Every case is measured in ``passes`` passes over all cases (:func:`measure_in_passes`), as
    the profiler measures specs; the report keeps each pass's figure and their agreement.
    """
    say = progress or (lambda _m: None)
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise SpecError(f"batch sizes must be positive, got {list(batch_sizes)}")
    if not utilizations or any(not 0 <= u < 1 for u in utilizations):
        raise SpecError(f"utilizations must be in [0, 1), got {list(utilizations)}")
    check_passes(passes)
    unloaded_threads = list(dict.fromkeys(threads)) if isinstance(threads, Sequence) else [threads]
    if not unloaded_threads or any(t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1)
                                   for t in unloaded_threads):
        raise SpecError(f"threads must be positive integers (or None for the device default), got {threads!r}")
    models = [load_model(r) for r in refs]  # resolve every reference before measuring anything
    ref_of = {m.name: r.strip() for m, r in zip(models, refs)}
    cases: list[ValidationCase] = []
    jobs: list[tuple[ValidationCase, ModelJob]] = []
    t0 = time.perf_counter()
    graphs = {}
    for ref in models:
        graph = graphs[ref.name] = graph_of(ref)
        cov = graph.coverage(predictor.ops).node_share
        conds = [(b, u, t) for u in utilizations for t in (unloaded_threads if u == 0 else [loaded_threads])
                 for b in batch_sizes]
        b = np.array([c[0] for c in conds])
        u = np.array([c[1] for c in conds])
        t = np.array([predictor.default_threads if c[2] is None else c[2] for c in conds])
        lat = predictor.predict_graph(graph, batch_size=b, utilization=u, threads=t)
        for i, (bb, uu, tt) in enumerate(conds):
            case = ValidationCase(ref.name, bb, uu, tt, float(lat.total_ms[i]), None, float(lat.isolated_ms[i].sum()), cov)
            cases.append(case)
            if measure and ref.module is not None:
                beta = model_reference_exponent(graph, lat.isolated_ms[i], bb)
                jobs.append((case, ModelJob(ref.module, lambda r=ref, n=bb: (r.example_input(n),), uu, tt, beta)))
            elif measure:
                case.error = "ONNX file: predicted only (measure the PyTorch model instead)"
            else:
                say(f"{ref.name} batch {bb} util {uu:g}: predicted {case.predicted_ms:.2f} ms")
    if jobs:
        import torch

        say(adopt_reference(device, predictor))

        def report(p: int, i: int, job: ModelJob, ms: float | None) -> None:
            case = jobs[i][0]
            got = f"{ms:.2f} ms ({100 * (case.predicted_ms / ms - 1):+.1f}%)" if ms else "failed"
            say(f"pass {p + 1}/{passes}: {case.model} batch {case.batch_size} util {case.utilization:g} threads "
                f"{case.threads or '-'}: predicted {case.predicted_ms:.2f} ms, measured {got}")

        with torch.inference_mode():
            pooled = measure_in_passes(device, [j for _, j in jobs], passes, report)
        for (case, _), res in zip(jobs, pooled):
            case.measured_ms, case.pass_ms = res.latency_ms, res.pass_ms
            case.components = {k: v for k in COMPONENTS if (v := res.component(k)) is not None}
            raw = [e for e in res.pass_extra if "raw_timings_ms" in e]
            if raw:
                case.reference = {"raw_timings_ms": [e["raw_timings_ms"] for e in raw], "reference_ms": [e["reference_ms"] for e in raw],
                                  "nominal_ms": raw[0].get("reference_nominal_ms"), "scheme": raw[0].get("reference_scheme"),
                                  "exponent": raw[0].get("reference_exponent")}
            probe = case.components.get("host_probe_ms")
            if probe and getattr(predictor, "host_nominal_ms", None):
                case.predicted_at_probe_ms = float(predictor.predict_graph(
                    graphs[case.model], batch_size=[case.batch_size], utilization=[case.utilization],
                    threads=[predictor.default_threads if case.threads is None else case.threads],
                    host_scale=predictor.host_scale_for(probe)).total_ms[0])
            if res.latency_ms is None:
                case.error = "; ".join(res.errors)
    settings = {"models": [m.name for m in models], "refs": ref_of, "batch_sizes": list(batch_sizes), "utilizations": list(utilizations),
                "threads": threads if not isinstance(threads, Sequence) else unloaded_threads, "loaded_threads": loaded_threads,
                "passes": passes, "elapsed_s": round(time.perf_counter() - t0, 1), "composition": predictor.composition.describe(),
                "reference": reference.settings() if (reference := getattr(device, "reference", None)) else None,
                "allocator": getattr(device, "allocator", None)}
    return ValidationReport(cases, settings)


def graph_of(ref: ModelRef) -> Any:
    """The :class:`~latpred.graph.ModelGraph` of a resolved model (ONNX import or fx trace at batch 1)."""
    if ref.onnx_path is not None:
        from .onnx import from_onnx

        return from_onnx(ref.onnx_path)
    return trace(ref.module, ref.example_input(1), name=ref.name)
