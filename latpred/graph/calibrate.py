"""Calibrate the composition model on generated random networks, or on real models that are not
the ones evaluated (:func:`cases_from_validation`, scored by :func:`leave_one_model_out`).

:func:`random_network` draws a CNN (plain, residual, inverted-residual with squeeze-excitation, inception,
dense-concatenation and channel-shuffle blocks) or a small vision transformer (patch embedding,
``nn.MultiheadAttention`` or hand-written matmul/softmax attention or SDPA, GELU MLPs) with random
widths, depths, kernels, activations and resolutions, so the calibration set spans the structures
real models are made of without being any of them. :func:`calibrate` measures each network on a
device under several conditions, predicts the same cases with the predictor's isolated node
models, and fits :class:`~latpred.graph.compose.Composition` on the pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..profiling.reference import adopt_reference
from .compose import Composition
from .measure import ModelJob, check_passes, measure_in_passes, model_reference_exponent
from .predict import composition_caps, composition_features
from .trace import trace

__all__ = ["random_network", "RANDOM_NETWORK_VERSION", "calibrate", "refit", "CalibrationCase", "DEFAULT_CONDITIONS",
           "conditions_for", "composition_from_cases", "recompute_features", "cases_from_validation", "leave_one_model_out"]

#: the three regimes a calibration measures at every batch size: (utilization, threads); threads None = the
#: device default (the single-thread unloaded cases feed the composition's single_thread regime)
CALIBRATION_REGIMES: tuple[tuple[float, int | None], ...] = ((0.0, None), (0.5, 1), (0.0, 1))


def conditions_for(batch_sizes: Sequence[int]) -> tuple[tuple[int, float, int | None], ...]:
    """Calibration conditions: every batch size under each of :data:`CALIBRATION_REGIMES` (regime-major)."""
    sizes = list(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in sizes):
        raise SpecError(f"calibration batch sizes must be positive integers, got {sizes!r}")
    return tuple((int(b), u, t) for u, t in CALIBRATION_REGIMES for b in dict.fromkeys(sizes))


#: (batch size, utilization, threads) measured per network. Batch 32 is included: without it the
#: composition extrapolated to large batches (the zoo at batch 32 was over-predicted by 1.21x at the
#: median; with it 1.18x, and acc10 of the random-network composition on the zoo rose from 44.4% to
#: 49.2%, docs/benchmarks.md)
DEFAULT_CONDITIONS: tuple[tuple[int, float, int | None], ...] = conditions_for((1, 8, 32))
_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish, "gelu": nn.GELU}


def _act(rng: np.random.Generator) -> nn.Module:
    return _ACTS[str(rng.choice(list(_ACTS)))]()


def _cbr(cin: int, cout: int, k: int, stride: int, groups: int, act: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, c: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c, 3, 1, 1, _act(rng)), _cbr(c, c, 3, 1, 1, None))
        self.act = _act(rng)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)


class _SE(nn.Module):
    def __init__(self, c: int, rng: np.random.Generator) -> None:
        super().__init__()
        mid = max(8, c // 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)
        self.act = _act(rng)
        self.gate = nn.Sigmoid() if rng.random() < 0.5 else nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class _Inverted(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, rng: np.random.Generator) -> None:
        super().__init__()
        mid = cin * int(rng.choice([1, 3, 4, 6]))
        k = int(rng.choice([3, 5]))
        layers: list[nn.Module] = [] if mid == cin else [_cbr(cin, mid, 1, 1, 1, _act(rng))]
        layers.append(_cbr(mid, mid, k, stride, mid, _act(rng)))
        if rng.random() < 0.5:
            layers.append(_SE(mid, rng))
        layers.append(_cbr(mid, cout, 1, 1, 1, None))
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y + x if self.skip else y


class _Dense(nn.Module):
    def __init__(self, c: int, growth: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c), _act(rng), nn.Conv2d(c, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class _Shuffle(nn.Module):
    def __init__(self, c: int, rng: np.random.Generator) -> None:
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(_cbr(h, h, 1, 1, 1, _act(rng)), _cbr(h, h, 3, 1, h, None), _cbr(h, h, 1, 1, 1, _act(rng)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, hh, ww = y.size()
        return y.view(n, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(n, c, hh, ww)


class _Inception(nn.Module):
    """GoogLeNet's block: 1x1, 1x1-3x3, 1x1-kxk and 3x3 stride-1 max-pool-1x1 branches, concatenated to ``out``
    channels (``c``, or 32 for narrower inputs). Its max-pools read activations deep in the network (see
    :data:`RANDOM_NETWORK_VERSION`)."""

    def __init__(self, c: int, rng: np.random.Generator) -> None:
        super().__init__()
        w = [c // 4 // 8 * 8 or 8 for _ in range(3)]
        w.append(max(8, c - sum(w)))
        self.out = sum(w)
        k = int(rng.choice([3, 5]))
        self.branches = nn.ModuleList([
            _cbr(c, w[0], 1, 1, 1, _act(rng)),
            nn.Sequential(_cbr(c, max(8, w[1] // 2), 1, 1, 1, _act(rng)), _cbr(max(8, w[1] // 2), w[1], 3, 1, 1, _act(rng))),
            nn.Sequential(_cbr(c, max(8, w[2] // 4), 1, 1, 1, _act(rng)), _cbr(max(8, w[2] // 4), w[2], k, 1, 1, _act(rng))),
            nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=bool(rng.random() < 0.5)), _cbr(c, w[3], 1, 1, 1, _act(rng)))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


#: block kinds of :class:`_CNN` per generator version (the inception block from version 4)
_CNN_KINDS = ("plain", "residual", "inverted", "dense", "shuffle")


class _CNN(nn.Module):
    def __init__(self, rng: np.random.Generator, version: int = 1) -> None:
        super().__init__()
        c = int(rng.choice([16, 24, 32, 48, 64]))
        layers: list[nn.Module] = [_cbr(3, c, int(rng.choice([3, 5, 7])), 2, 1, _act(rng))]
        if rng.random() < 0.5:
            layers.append(nn.MaxPool2d(3, 2, 1) if rng.random() < 0.7 else nn.AvgPool2d(2))
        for _ in range(int(rng.integers(2, 5))):
            cout = min(512, int(c * rng.choice([1.5, 2.0])) // 8 * 8)
            kind = str(rng.choice(list(_CNN_KINDS) + (["inception"] if version >= 4 else [])))
            if kind == "inception":  # GoogLeNet's transition: a stride-2 max-pool deep in the network, then 1x1
                layers.append(nn.Sequential(nn.MaxPool2d(3, 2, 1, ceil_mode=bool(rng.random() < 0.5)),
                                            _cbr(c, cout, 1, 1, 1, _act(rng))))
            else:
                layers.append(_cbr(c, cout, 3, 2, 1, _act(rng)) if kind != "inverted" else _Inverted(c, cout, 2, rng))
            c = cout
            for _ in range(int(rng.integers(1, 4))):
                if kind == "plain":
                    layers.append(_cbr(c, c, int(rng.choice([1, 3, 5])), 1, 1, _act(rng)))
                elif kind == "residual":
                    layers.append(_Residual(c, rng))
                elif kind == "inverted":
                    layers.append(_Inverted(c, c, 1, rng))
                elif kind == "inception":
                    layers.append(_Inception(c, rng))
                    c = layers[-1].out
                elif kind == "dense":
                    g = int(rng.choice([16, 32]))
                    layers.append(_Dense(c, g, rng))
                    c += g
                else:
                    layers.append(_Shuffle(c, rng))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = int(rng.choice([0, 256, 512]))
        head: list[nn.Module] = [nn.Dropout(0.2)]
        if hidden:
            head += [nn.Linear(c, hidden), _act(rng)]
        head.append(nn.Linear(hidden or c, int(rng.choice([10, 100, 1000]))))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int, mode: str) -> None:
        super().__init__()
        self.heads, self.mode = heads, mode
        if mode == "mha":
            self.mha = nn.MultiheadAttention(d, heads, batch_first=True)
        else:
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "mha":
            return self.mha(x, x, x, need_weights=False)[0]
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.mode == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, mode: str, rng: np.random.Generator) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = _Attention(d, heads, mode)
        m = int(rng.choice([2, 4]))
        self.mlp = nn.Sequential(nn.Linear(d, m * d), nn.GELU(), nn.Dropout(0.1), nn.Linear(m * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _ViT(nn.Module):
    def __init__(self, res: int, rng: np.random.Generator, version: int = 1) -> None:
        super().__init__()
        if version == 1:
            patch = int(rng.choice([p for p in (4, 8, 16) if res // p >= 4]))
            d = int(rng.choice([64, 128, 192, 256, 384]))
            heads = int(rng.choice([h for h in (2, 4, 8) if d % h == 0]))
        else:  # real ViTs' token counts (17-785) and widths (head dim 32-64, up to ViT-B's 768)
            patch = int(rng.choice([p for p in (8, 16, 32) if 4 <= res // p <= 28]))
            d = int(rng.choice([128, 192, 256, 384, 512, 768]))
            heads = int(rng.choice([h for h in (2, 4, 8, 12) if d % h == 0 and 32 <= d // h <= 64]))
        self.embed = nn.Conv2d(3, d, patch, patch)
        tokens = (res // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, tokens, d))
        mode = str(rng.choice(["mha", "manual", "sdpa"]))
        self.blocks = nn.Sequential(*[_Block(d, heads, mode, rng) for _ in range(int(rng.integers(1, 5)))])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, int(rng.choice([10, 1000])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.ln(self.blocks(x))[:, 0])


#: the current :func:`random_network` generator. Version 1 drew vision transformers with patches of 4 (up to 3,137
#: tokens: attention matrices real ViTs never build), whose attention nodes taught the composition a gemm scale of
#: 0.52-0.60 that then under-predicted vit_b_16 by a third (docs/benchmarks.md); version 2 keeps real token
#: counts and widths. Version 3 is version 2's networks with each ReLU, ReLU6, SiLU and Hardswish made in place
#: (``inplace=True``, as torchvision's CNNs build them) with probability :data:`INPLACE_SHARE`, drawn from a
#: stream of its own: the composition charges an output's cost to out-of-place nodes only, and needs networks
#: with both kinds to fit it. Version 4 adds GoogLeNet's inception block (stride-1 max-pool branches, stride-2
#: max-pool transitions) to the CNNs' block kinds, and gives most CNNs one activation throughout
#: (:func:`_one_activation`): max-pooling ReLU outputs past the stem runs faster in a model than on the profiler's
#: random inputs (0.71-0.84x on googlenet's, at batch 8 on the dev VM: its compare-and-branch loop predicts the nearly
#: constant or all-zero planes such activations have; the same values shuffled, or SiLU outputs, 0.93-1.05x, see
#: :func:`~latpred.graph.compose.zero_clamped_inputs`), which the composition's ``maxpool`` class learns only from
#: max-pools of ReLU outputs deep in a network (after the stem, where version 3 put them, the input is still close to
#: the random image: 0.97-1.00x).
#: Stored calibration cases name the version they were measured with.
RANDOM_NETWORK_VERSION = 4
#: share of version 3's activations that run in place
INPLACE_SHARE = 0.5
_INPLACE_ACTS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish)


#: version 4: share of CNNs with one activation throughout (as real CNNs have), and the odds of each activation then
SINGLE_ACTIVATION_SHARE = 0.8
_SINGLE_ACTIVATION_ODDS = {"relu": 0.5, "relu6": 0.15, "silu": 0.15, "hardswish": 0.1, "gelu": 0.1}


def _one_activation(model: nn.Module, rng: np.random.Generator) -> None:
    """Version 4: with probability :data:`SINGLE_ACTIVATION_SHARE`, every activation of ``model`` becomes one type
    (ReLU most often, as in real CNNs); the networks keep the structure drawn. Max-pools over ReLU outputs compose
    apart from the others (:func:`~latpred.graph.compose.zero_clamped_inputs`), and a network that mixes five
    activations layer by layer almost never max-pools a concatenation of ReLU outputs as GoogLeNet does."""
    if rng.random() >= SINGLE_ACTIVATION_SHARE:
        return
    kind = _ACTS[str(rng.choice(list(_SINGLE_ACTIVATION_ODDS), p=list(_SINGLE_ACTIVATION_ODDS.values())))]
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, tuple(_ACTS.values())):
                setattr(parent, name, kind())


def random_network(seed: int, version: int = RANDOM_NETWORK_VERSION) -> tuple[nn.Module, tuple[int, int, int]]:
    """A random CNN (70%) or vision transformer (30%) and its per-sample input shape (3, res, res).

    ``version`` picks the generator (:data:`RANDOM_NETWORK_VERSION`); a seed gives the same network for a given
    version forever, so stored calibration cases can be re-traced."""
    if version not in (1, 2, 3, 4):
        raise SpecError(f"random network generator version must be 1, 2, 3 or 4, got {version!r}")
    rng = np.random.default_rng([seed, 7919])
    res = int(rng.choice([96, 128, 160, 192, 224]))  # real-model resolutions: feature maps stay >= 3x3
    with torch.no_grad():
        model: nn.Module = _CNN(rng, version) if rng.random() < 0.7 else _ViT(res, rng, min(version, 2))
    if version >= 4 and isinstance(model, _CNN):
        _one_activation(model, np.random.default_rng([seed, 7933]))
    if version >= 3:  # every activation follows a fresh tensor (a convolution, norm, sum or linear): safe in place
        flips = np.random.default_rng([seed, 7927])
        for m in model.modules():
            if isinstance(m, _INPLACE_ACTS):
                m.inplace = bool(flips.random() < INPLACE_SHARE)
    return model.eval(), (3, res, res)


@dataclass
class CalibrationCase:
    """One measured network under one condition, with its predicted isolated node latencies' features."""

    network: int
    batch_size: int
    utilization: float
    threads: int | None
    measured_ms: float
    features: list[float]
    gflops: float
    #: a model reference (:func:`~latpred.graph.load_model`) when the case is a real model; "" for a random network
    model: str = ""
    #: the :func:`random_network` generator version (1 for cases stored before versions existed)
    generator: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def group(self) -> str:
        """What the case measured: the model reference, or ``random<network>``."""
        return self.model or f"random{self.network}" + (f"v{self.generator}" if self.generator != 1 else "")


def calibrate(predictor: Any, device: Any, n_networks: int = 30, seed: int = 0,
              conditions: Sequence[tuple[int, float, int | None]] = DEFAULT_CONDITIONS,
              max_gflops: float = 30.0, passes: int = 3,
              progress: Callable[[str], None] | None = None,
              generator: int = RANDOM_NETWORK_VERSION) -> tuple[Composition, list[CalibrationCase]]:
    """Measure ``n_networks`` random networks on ``device`` under ``conditions`` and fit the composition.

    Every case is measured in ``passes`` passes over all cases (:func:`~latpred.graph.measure_in_passes`,
    as the profiler measures specs); one pass costs about ``max(0.1 s, 8 × model latency)`` per case.
    Conditions whose batch would exceed ``max_gflops`` of work per call are skipped for that network.
    Returns the fitted composition (not yet set on the predictor) and the cases (keep them to refit
    or to report).
    """
    if n_networks < 2:
        raise SpecError(f"n_networks must be at least 2, got {n_networks}")
    check_passes(passes)  # before tracing the networks
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    todo: list[tuple[int, Any, int, float, int | None, Any]] = []  # (network, graph, batch, utilization, threads, prediction)
    jobs: list[ModelJob] = []
    for k in range(n_networks):
        model, shape = random_network(seed * 100_003 + k, generator)
        graph = trace(model, torch.randn(1, *shape), name=f"random{k}")
        for b, u, t in conditions:
            if graph.total_flops * b / 1e9 > max_gflops:
                continue
            lat = predictor.predict_graph(graph, batch_size=b, utilization=u, threads=t)
            todo.append((k, graph, b, u, t, lat))
            jobs.append(ModelJob(model, lambda n=b, s=shape: (torch.randn(n, *s),), u, t,
                                 model_reference_exponent(graph, lat.isolated_ms, b)))

    def report(p: int, i: int, job: ModelJob, ms: float | None) -> None:
        k, graph, b, u, _t, _lat = todo[i]
        say(f"pass {p + 1}/{passes}: network {k} ({graph.summary().split(':')[0]}) batch {b} util {u:g}: "
            + (f"measured {ms:.2f} ms" if ms else "measurement failed"))

    say(adopt_reference(device, predictor))
    pooled = measure_in_passes(device, jobs, passes, report)
    cases: list[CalibrationCase] = []
    for (k, graph, b, u, t, lat), res in zip(todo, pooled):
        if res.latency_ms is None:
            say(f"network {k} batch {b}: every measurement failed ({'; '.join(res.errors)}); skipped")
            continue
        feats = composition_features(predictor, graph, lat.isolated_ms, b)
        cases.append(CalibrationCase(k, b, u, t, res.latency_ms, feats.tolist(), graph.total_flops * b / 1e9,
                                     generator=generator))
    comp = composition_from_cases(cases, {"networks": n_networks, "seed": seed, "conditions": [list(c) for c in conditions],
                                          "passes": passes, "generator": generator,
                                          "calibration_s": round(time.perf_counter() - t0, 1),
                                          "source": "generated random networks (latpred.graph.calibrate.random_network)"},
                                  default_threads=predictor.default_threads, **composition_caps(predictor))
    return comp, cases


def refit(predictor: Any, cases: Sequence[CalibrationCase], seed: int = 0, info: dict[str, Any] | None = None) -> Composition:
    """Refit the composition from earlier measurements with another predictor, without measuring again:
    each case's network is rebuilt from its seed, traced, and predicted under the case's condition."""
    if not cases:
        raise SpecError("no calibration case to refit from")
    return composition_from_cases(recompute_features(predictor, cases, seed), {**(info or {}), "refit_from_cases": len(cases)},
                                  default_threads=predictor.default_threads, **composition_caps(predictor))


def recompute_features(predictor: Any, cases: Sequence[CalibrationCase], seed: int = 0) -> list[CalibrationCase]:
    """The cases with their composition features recomputed by ``predictor``: each random network is
    rebuilt from its seed, each real model loaded from its reference, traced once, and predicted
    under the case's condition (threads None = the predictor's default)."""
    from .models import load_model
    from .validate import graph_of

    graphs: dict[str, Any] = {}
    out = []
    for c in cases:
        if c.group not in graphs:
            if c.model:
                graphs[c.group] = graph_of(load_model(c.model))
            else:
                model, shape = random_network(seed * 100_003 + c.network, c.generator)
                graphs[c.group] = trace(model, torch.randn(1, *shape), name=c.group)
        g = graphs[c.group]
        t = predictor.default_threads if c.threads is None else c.threads
        lat = predictor.predict_graph(g, batch_size=c.batch_size, utilization=c.utilization, threads=t)
        out.append(CalibrationCase(c.network, c.batch_size, c.utilization, c.threads, c.measured_ms,
                                   composition_features(predictor, g, lat.isolated_ms, c.batch_size).tolist(), c.gflops,
                                   c.model, c.generator))
    return out


def cases_from_validation(predictor: Any, validation: Mapping[str, Any]) -> list[CalibrationCase]:
    """Calibration cases from real-model measurements: the measured cases of a validation report
    (``latpred validate --json FILE`` or ``ValidationReport.to_dict()``), with ``predictor``'s
    composition features. Use them to fit the composition on a calibration set of real models that
    are *not* the ones you deploy, or to cross-validate it with :func:`leave_one_model_out`."""
    try:
        rows = list(validation["cases"])
        refs = dict(validation.get("settings", {}).get("refs", {}))
    except (KeyError, TypeError, AttributeError) as e:
        raise SpecError(f"not a validation report (needs 'cases' and 'settings'): {e}") from None
    names = sorted({r["model"] for r in rows if r.get("measured_ms")})
    if not names:
        raise SpecError("the validation report holds no measured case")
    cases = []
    for r in rows:
        if not r.get("measured_ms"):
            continue
        ref = refs.get(r["model"], f"torchvision:{r['model']}")  # reports written before refs were recorded
        cases.append(CalibrationCase(names.index(r["model"]), int(r["batch_size"]), float(r["utilization"]), r["threads"],
                                     float(r["measured_ms"]), [], 0.0, ref))
    return recompute_features(predictor, cases)


def leave_one_model_out(cases: Sequence[CalibrationCase], extra: Sequence[CalibrationCase] = (),
                        default_threads: int | None = None) -> np.ndarray:
    """Composed latency (ms) of every case, predicted by a composition fitted on the *other* models'
    cases (plus ``extra``, e.g. random-network cases), so no model is evaluated with a composition
    that saw it (``extra`` cases of the held-out model are left out too). Rows align with ``cases``; their
    features must be current (:func:`recompute_features`)."""
    groups = np.array([c.group for c in cases])
    if len(set(groups)) < 2:
        raise SpecError("leave-one-model-out needs cases of at least two models")
    F = np.array([c.features for c in cases])
    out = np.empty(len(cases))
    for g in sorted(set(groups)):
        train = [c for c, gg in zip(cases, groups) if gg != g] + [c for c in extra if c.group != g]  # extra may hold g too
        comp = composition_from_cases(train, default_threads=default_threads)
        mine = groups == g
        u = np.array([c.utilization for c in cases])[mine]
        out[mine] = (F[mine] * comp.matrix(u, [c.threads for c, m in zip(cases, mine) if m], default_threads)).sum(axis=1)
    return out


def composition_from_cases(cases: Sequence[CalibrationCase], info: dict[str, Any] | None = None,
                           default_threads: int | None = None, weight_cache_mib: float | None = None,
                           activation_cap_mib: float | None = None, spill_cap_mib: float | None = None) -> Composition:
    """Fit a :class:`Composition` from calibration cases (``default_threads``: the device's default thread
    count, which decides whether a 1-thread case is the single-thread regime; None: it is).
    ``weight_cache_mib``, ``activation_cap_mib`` and ``spill_cap_mib`` must be the caps the cases' features were
    computed with (:func:`~latpred.graph.predict.composition_caps` of the predictor)."""
    if not cases:
        raise SpecError("no calibration case was measured")
    F_ = np.array([c.features for c in cases])
    y = np.array([c.measured_ms for c in cases])
    u = np.array([c.utilization for c in cases])
    return Composition.fit(F_, y, u, info, min_rows=min(8, len(cases)), threads=[c.threads for c in cases],
                           default_threads=default_threads, weight_cache_mib=weight_cache_mib,
                           activation_cap_mib=activation_cap_mib, spill_cap_mib=spill_cap_mib)


