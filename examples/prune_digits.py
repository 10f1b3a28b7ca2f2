"""Latency-aware pruning of a small CNN on scikit-learn's digits (8×8 images upsampled to 16×16).

    python examples/prune_digits.py --predictor latpred-out/predictor
    python examples/prune_digits.py --predictor latpred-out/predictor --quick    # smoke run (seconds)

1. trains a small residual CNN on ``sklearn.datasets.load_digits``;
2. searches per-group pruning ratios for the predicted-latency / accuracy-proxy Pareto front
   (:func:`partition.prune_problem.optimize_pruning`, Torch-Pruning dependency groups);
3. for each target latency reduction (``--targets``, predicted), takes the front's plan with the best
   accuracy proxy that meets it, prunes the model, fine-tunes it (distilled from the unpruned model
   unless ``--no-distill``) and prints predicted latency, measured latency
   (:meth:`latpred.profiling.devices.CpuDevice.measure_model`) and real test accuracy, against the
   unpruned model fine-tuned the same way (so the comparison is not flattered by extra training).

``--predictor`` must name a trained predictor directory (``latpred train``); the script stops with a
clear message when it is missing.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latpred.predictor import Predictor, PredictorFormatError
from latpred.profiling.devices import CpuDevice, TimingProtocol
from partition.prune_problem import optimize_pruning


class DigitsNet(nn.Module):
    """Stem, one residual block, a downsampling conv and a linear classifier."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = self.down(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_data(size_px: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as ``(N, 1, size_px, size_px)`` float tensors in [0, 1], split 75/25."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    X = F.interpolate(X, size=(size_px, size_px), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=seed, stratify=d.target)
    return X[idx_tr], y[idx_tr], X[idx_te], y[idx_te]


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
          teacher: nn.Module | None = None, temperature: float = 4.0) -> nn.Module:
    """Adam on cross-entropy; with a ``teacher``, plus knowledge distillation (KL divergence to the teacher's
    softened outputs, scaled by temperature²), the usual way to recover a pruned model."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if teacher is not None:
        teacher.eval()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            out = model(X[idx])
            loss = F.cross_entropy(out, y[idx])
            if teacher is not None:
                with torch.no_grad():
                    soft = F.log_softmax(teacher(X[idx]) / temperature, dim=1)
                loss = loss + F.kl_div(F.log_softmax(out / temperature, dim=1), soft, log_target=True,
                                       reduction="batchmean") * temperature ** 2
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.eval()(X).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", default="latpred-out/predictor", help="trained predictor directory")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, tiny search, 2 points")
    ap.add_argument("--targets", default="0.3,0.45,0.6",
                    help="predicted latency reductions to reach, comma-separated (default: %(default)s)")
    ap.add_argument("--finetune-epochs", type=int, default=8, help="fine-tuning epochs per model (default: %(default)s)")
    ap.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                    help="fine-tune with knowledge distillation from the unpruned model (default: on)")
    ap.add_argument("--batch-size", type=int, default=1, help="batch size of the latency prediction/measurement")
    ap.add_argument("--round-to", type=int, default=8, help="round kept channels to multiples of this (0: off)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        targets = [float(v) for v in args.targets.split(",")]
        if not targets or not all(0 < v < 1 for v in targets):
            raise ValueError
    except ValueError:
        print(f"error: --targets {args.targets!r}: expected reductions in (0, 1), e.g. 0.3,0.45,0.6", file=sys.stderr)
        return 2
    if not (Path(args.predictor) / "predictor.json").is_file():
        print(f"error: no trained predictor at {args.predictor!r}; train one with `latpred train` and pass "
              "--predictor PATH", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.load(args.predictor)
    except PredictorFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    epochs, finetune, pop, gens = (1, 1, 12, 3) if args.quick else (15, args.finetune_epochs, 64, 60)
    Xtr, ytr, Xte, yte = load_data(16, args.seed)
    model = train(DigitsNet(), Xtr, ytr, epochs, 3e-3, args.seed)
    print(f"trained: test accuracy {accuracy(model, Xte, yte):.3f}")

    example = Xte[: args.batch_size]
    t = time.perf_counter()
    res = optimize_pruning(model, example, predictor, pop_size=pop, n_gen=gens, seed=args.seed,
                           round_to=args.round_to or None)
    print(f"search: {len(res.analysis.groups)} groups, {len(res.plans)} plans on the front, {time.perf_counter() - t:.2f} s; "
          f"unpruned predicted {res.base_latency_ms:.3f} ms")

    picks = []
    for r in targets:
        try:
            plan = res.best(max_latency_ms=(1 - r) * res.base_latency_ms)
        except ValueError as e:
            print(f"target -{100 * r:.0f}%: {e}")
            continue
        if all(plan is not p for _, p in picks):
            picks.append((r, plan))
    protocol = TimingProtocol(warmup_ms=5.0, window_ms=20.0, repeats=3, min_repeats=3) if args.quick else None
    device = CpuDevice(protocol)
    teacher = model if args.distill else None
    base = train(copy.deepcopy(model), Xtr, ytr, finetune, 1e-3, args.seed, teacher=teacher)  # the same extra training
    base_ms = device.measure_model(base, (example,)).latency_ms
    base_acc = accuracy(base, Xte, yte)
    print(f"fine-tuning {finetune} epoch(s){' with distillation' if args.distill else ''}; batch {args.batch_size}")
    print(f"{'plan':>12} {'pred ms':>8} {'meas ms':>8} {'faster':>7} {'proxy':>6} {'params':>7} {'acc':>6} {'Δ pts':>6}")
    print(f"{'unpruned':>12} {res.base_latency_ms:8.3f} {base_ms:8.3f} {'':>7} {0.0:6.3f} "
          f"{sum(p.numel() for p in base.parameters()):7d} {base_acc:6.3f}")
    for r, plan in picks:
        pruned = train(plan.apply(model), Xtr, ytr, finetune, 1e-3, args.seed, teacher=teacher)
        meas = device.measure_model(pruned, (example,)).latency_ms
        acc = accuracy(pruned, Xte, yte)
        print(f"{f'target -{100 * r:.0f}%':>12} {plan.latency_ms:8.3f} {meas:8.3f} {100 * (1 - meas / base_ms):6.1f}% "
              f"{plan.proxy:6.3f} {sum(p.numel() for p in pruned.parameters()):7d} {acc:6.3f} {100 * (acc - base_acc):+6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
