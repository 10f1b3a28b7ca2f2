"""Adaptive split runtime demo: a request stream through a real edge | cloud split while conditions change.

A cloud server process serves the model; this process is the edge (one thread). A background
:class:`~latpred.profiling.load.CpuLoad` steps the edge utilization 0 -> 0.5 -> 0.9 while the emulated bandwidth
changes (default phases ``0:10,0.5:10,0.9:1000,0.9:10``, UTIL:MBPS). An
:class:`~partition.adaptive.AdaptiveController` observes the edge CPU (psutil, our own process excluded) and the
link (real transfers, and :class:`~partition.observers.LinkProber` probes while the plan sends nothing),
and corrects the edge predictions with the requests' measured edge compute (the ``edge_scale`` condition of
:meth:`~partition.adaptive.AdaptiveController.record_request`), re-plans on confirmed changes and hot-swaps
the plan of the adaptive edge runner. A second edge runner keeps the initial plan (static). Per phase, the
measured median latency of both and their ratio are printed; the decision log (JSON lines) and a timeline PNG
are written.

Edge and "cloud" share this machine. With ``--pin`` (the default on Linux with >= 2 cores) the edge process and
the load are pinned to core 0 and the cloud server to the other cores, so the load slows the edge only, as it
would on a real edge device; the cloud's node times are then this CPU's predictions at zero load
(``--cloud-speedup`` 1). Without pinning the load slows both sides and the cloud's node times are the zero-load
predictions divided by ``--cloud-speedup`` (default 4).

Usage: ``python examples/adaptive_runtime.py --predictor latpred-out/predictor [--model torchvision:resnet18] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from partition import CloudServer, EdgeRunner, Link, can_pin, pin_process  # noqa: E402
from partition.adaptive import AdaptiveController, ChangeDetector, plot_timeline  # noqa: E402
from partition.observers import CompositeObserver, CpuObserver, LinkObserver, LinkProber  # noqa: E402


class _PhaseObserver:
    """``--scripted``: reports the phase's nominal utilization instead of measuring the CPU."""

    def __init__(self) -> None:
        self.utilization = 0.0

    def observe(self) -> dict:
        return {"utilization": self.utilization}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default="latpred-out/predictor", help="latpred predictor directory of the edge device")
    ap.add_argument("--model", default="torchvision:resnet18")
    ap.add_argument("--input-size", type=int, default=None, help="input height/width (default 224, 64 with --quick)")
    ap.add_argument("--phase-s", type=float, default=None, help="seconds of requests per phase (default 20, 3 with --quick)")
    ap.add_argument("--cloud-speedup", type=float, default=None,
                    help="cloud node times = edge predictions at zero load / this (default: 1 with --pin, else 4)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                    help="pin edge + load to core 0 and the cloud to the other cores (default: on with >= 2 cores on Linux)")
    ap.add_argument("--rtt-ms", type=float, default=5.0)
    ap.add_argument("--out-dir", default="latpred-out/adaptive")
    ap.add_argument("--scripted", action="store_true", help="no background load: observe the phases' nominal utilization")
    ap.add_argument("--phases", default="0:10,0.5:10,0.9:1000,0.9:10", help="UTIL:MBPS per phase (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="a few seconds: small input, short phases, one load worker")
    args = ap.parse_args(argv)

    from latpred.graph.models import load_model
    from latpred.graph.trace import trace
    from latpred.predictor import Predictor
    from latpred.profiling.load import CpuLoad

    pdir = Path(args.predictor)
    if not (pdir / "predictor.json").is_file() and not pdir.is_file():
        sys.exit(f"error: no predictor at {args.predictor!r} (missing predictor.json); train one with `latpred train` "
                 "or pass --predictor PATH")
    pred = Predictor.load(pdir)
    size = args.input_size or (64 if args.quick else 224)
    phase_s = args.phase_s or (3.0 if args.quick else 20.0)
    interval_s = 0.5 if args.quick else 1.0
    try:  # (edge utilization, bandwidth Mbit/s) per phase
        phases = [(float(u), float(bw)) for u, bw in (p.split(":") for p in args.phases.split(","))]
    except ValueError:
        sys.exit(f"error: --phases {args.phases!r}: expected UTIL:MBPS,UTIL:MBPS,... e.g. 0:50,0.5:500,0.9:5")
    shape, seed = (3, size, size), 0
    torch.set_num_threads(1)
    n_cores = os.cpu_count() or 1
    pin = can_pin() if args.pin is None else args.pin
    if pin and not can_pin():
        sys.exit("error: --pin needs Linux (os.sched_setaffinity) and at least 2 cores")
    speedup = args.cloud_speedup or (1.0 if pin else 4.0)
    if pin:
        pin_process(os.getpid(), [0])

    torch.manual_seed(seed)
    ref = load_model(args.model, shape)
    graph = trace(ref.module, ref.example_input())
    cloud_ms = np.asarray(pred.predict_graph(graph, utilization=0.0, threads=1).node_ms) / speedup
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "decisions.jsonl"
    log.unlink(missing_ok=True)
    ctl = AdaptiveController(graph, pred, cloud_ms, Link(phases[0][1], rtt_ms=args.rtt_ms), log_path=log,
                             detector=ChangeDetector(confirm=2, min_interval_s=2 * interval_s, fast_factor=2.0),
                             observe_interval_s=interval_s, edge_threads=1)
    ctl.precompute()
    first = ctl.initialize({"utilization": 0.0, "bandwidth_mbps": phases[0][1], "rtt_ms": args.rtt_ms})
    static_plan = ctl.plan
    print(f"initial plan: {first.new_plan['compute_nodes_per_device']} compute nodes edge/cloud, cut {first.new_plan['cut']}, "
          f"predicted {first.predicted_new_ms:.1f} ms; "
          + ("edge + load pinned to core 0, cloud to the others" if pin else f"not pinned, cloud speedup {speedup:g}"))

    load = CpuLoad(0.0, workers=1 if args.quick or pin else None)
    rows = []
    with CloudServer(args.model, static_plan, seed=seed, input_shape=shape, threads=1, cwd=str(ROOT),
                     cpus=range(1, n_cores) if pin else None) as srv, \
            EdgeRunner(args.model, static_plan, srv.address, phases[0][1], args.rtt_ms, seed=seed, input_shape=shape) as edge, \
            EdgeRunner(args.model, static_plan, srv.address, phases[0][1], args.rtt_ms, seed=seed, input_shape=shape) as static:
        link_obs = LinkObserver(rtt_ms=args.rtt_ms)
        phase_obs = _PhaseObserver()
        cpu = phase_obs if args.scripted else CpuObserver(exclude_pids=[srv.pid] if srv.pid else [], cpus=[0] if pin else None)
        prober = LinkProber(edge, link_obs, idle_s=2 * interval_s)
        ctl.observer = CompositeObserver(cpu, prober)
        ctl.runtime = edge
        x = edge.example_input()
        if not args.scripted:
            load.start()
            if pin:
                for pid in load.pids:
                    pin_process(pid, {0})
        cpu.observe()  # start the first window now: the load workers' start-up (unpinned) is not edge load
        ctl.start()
        try:
            n_seen = 1
            for u, bw in phases:
                phase_obs.utilization = u
                if load.running:
                    load.set_target(u)
                    load.reset_window()
                edge.set_link(bw, args.rtt_ms)
                static.set_link(bw, args.rtt_ms)
                ad, st = [], []
                t_end = time.monotonic() + phase_s
                while time.monotonic() < t_end:
                    first_static = len(ad) % 2 == 1  # alternate which runner goes first: no order bias
                    if first_static:
                        st.append(static.infer(x)[1]["total_ms"])
                    _, tm = edge.infer(x)
                    link_obs.record(tm)
                    ctl.record_request(tm)  # measured latency + edge feedback
                    ad.append(tm["total_ms"])
                    if not first_static:
                        st.append(static.infer(x)[1]["total_ms"])
                for d in ctl.decisions[n_seen:]:
                    print(f"  re-plan at {d.t_s:6.2f} s: conditions u={d.conditions.get('utilization', 0):.2f} "
                          f"bw={d.conditions.get('bandwidth_mbps', 0):.1f} Mbps edge x{d.conditions.get('edge_scale', 1):.2f} "
                          f"-> {'swap' if d.swapped else 'keep'} "
                          f"{d.new_plan['compute_nodes_per_device']} (predicted {d.predicted_old_ms:.1f} -> {d.predicted_new_ms:.1f} ms, "
                          f"decided in {d.decision_ms:.0f} ms, {d.n_evals} evals)")
                n_seen = len(ctl.decisions)
                a, s = statistics.median(ad), statistics.median(st)
                measured_u = load.window_utilization() if load.running else None
                if measured_u is not None and pin:
                    measured_u *= n_cores  # the workers' share of core 0, not of the machine
                rows.append((u, bw, len(ad), a, s))
                print(f"phase u={u:.1f} bw={bw:g} Mbps ({len(ad)} requests each, load measured "
                      f"{'n/a' if measured_u is None else f'{measured_u:.2f}'}): adaptive {a:.1f} ms, static {s:.1f} ms, "
                      f"ratio adaptive/static {a / s:.2f}")
        finally:
            ctl.stop()
            load.stop()
    png = plot_timeline(out / "timeline.png", ctl.history, ctl.decisions, ctl.measurements, title=f"adaptive {args.model}")
    print(f"{len(ctl.decisions) - 1} re-plan(s), {edge.n_swaps} swap(s), {prober.n_probes} link probe(s) "
          f"({prober.n_failed} failed); decision log {log}; timeline {png}")
    if ctl.errors:
        print(f"controller errors: {ctl.errors[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
