"""Adaptive runtime: change detection, re-planning with warm start, decision log, plan hot-swap exactly once."""

import json
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

grpc = pytest.importorskip("grpc")

from latpred.graph.trace import trace  # noqa: E402
from partition import CloudServer, EdgeRunner, Link, can_pin  # noqa: E402
from partition.adaptive import AdaptiveController, ChangeDetector, Threshold, plot_timeline, read_decision_log  # noqa: E402
from partition.observers import BatchSizeObserver, CompositeObserver, LinkObserver, LinkProber, ScriptedObserver  # noqa: E402

MODEL = "tests.test_partition_adaptive:tiny_cnn"
SHAPE = (3, 32, 32)
SEED = 5


def tiny_cnn() -> torch.nn.Module:
    """A tiny CNN (the model of the hot-swap test; importable by the server process)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(SEED)
    return trace(tiny_cnn(), torch.randn(1, *SHAPE))


def _weights(graph):
    return np.array([(10.0 if nd.op in ("conv2d", "linear") else 1.0) if nd.kind == "compute" else 0.0 for nd in graph.nodes])


# -- change detection -----------------------------------------------------------------------------
def test_detector_ignores_noise():
    rng = random.Random(0)
    det = ChangeDetector(confirm=2, min_interval_s=0.0, reference={"utilization": 0.3, "bandwidth_mbps": 50.0, "batch_size": 1})
    for i in range(300):
        obs = {"utilization": 0.3 + rng.uniform(-0.05, 0.05), "bandwidth_mbps": 50.0 * rng.uniform(0.8, 1.2), "batch_size": 1}
        assert det.update(obs, float(i)) is None
    # single spikes do not persist: no change either
    for i in range(300, 320):
        assert det.update({"utilization": 0.9 if i % 2 else 0.3}, float(i)) is None


def test_detector_confirms_steps_and_takes_the_median():
    det = ChangeDetector(confirm=2, min_interval_s=0.0, reference={"utilization": 0.0, "batch_size": 1, "bandwidth_mbps": 100.0})
    assert det.update({"utilization": 0.52}, 1.0) is None  # first sight of the step: pending
    ch = det.update({"utilization": 0.48}, 2.0)
    assert ch is not None and set(ch.changed) == {"utilization"} and ch.conditions["utilization"] == pytest.approx(0.5)
    assert det.reference["utilization"] == pytest.approx(0.5)
    assert det.update({"utilization": 0.55}, 3.0) is None  # within the threshold of the new reference
    assert det.update({"batch_size": 4}, 4.0) is None
    ch = det.update({"batch_size": 4}, 5.0)
    assert ch is not None and ch.changed["batch_size"] == (1, 4)
    assert det.update({"bandwidth_mbps": 60.0}, 6.0) is None
    ch = det.update({"bandwidth_mbps": 60.0}, 7.0)
    assert ch is not None and "bandwidth_mbps" in ch.changed  # -40 % > 30 %
    # a large step is taken at once with fast_factor
    fast = ChangeDetector(confirm=3, min_interval_s=0.0, fast_factor=2.0, reference={"utilization": 0.0})
    assert fast.update({"utilization": 0.15}, 1.0) is None
    assert fast.update({"utilization": 0.5}, 2.0) is not None


def test_detector_respects_min_interval():
    det = ChangeDetector(confirm=1, min_interval_s=10.0, reference={"utilization": 0.0})
    assert det.update({"utilization": 0.5}, 0.0) is not None
    assert det.update({"utilization": 0.9}, 3.0) is None and det.n_suppressed == 1
    assert det.update({"utilization": 0.9}, 9.9) is None
    ch = det.update({"utilization": 0.9}, 10.0)
    assert ch is not None and ch.conditions["utilization"] == pytest.approx(0.9)
    assert Threshold(rel=0.3).score(10.0, 12.0) < 1 < Threshold(rel=0.3).score(10.0, 14.0)


def test_observers():
    link = LinkObserver(alpha=1.0)
    for size in (10_000, 40_000, 10_000, 40_000):  # rtt 2 ms, 8 Mbit/s: 1 ms per 1000 bytes
        link.record({"bytes_sent": size, "bytes_received": 0, "transfer_ms": 2.0 + size / 1000, "fallback": False, "attempts": 1})
    obs = link.observe()
    assert obs["rtt_ms"] == pytest.approx(2.0, abs=0.01) and obs["bandwidth_mbps"] == pytest.approx(8.0, rel=0.01)
    link.record({"fallback": True, "transfer_ms": 1e6, "bytes_sent": 1})
    assert link.observe()["bandwidth_mbps"] == pytest.approx(8.0, rel=0.01)
    bs = BatchSizeObserver()
    assert bs.observe() == {"batch_size": None}
    for b in (1, 4, 4, 2):
        bs.record(b)
    sc = ScriptedObserver([(0.0, {"utilization": 0.0}), (2.0, {"utilization": 0.5, "bandwidth_mbps": 5.0})], step_s=1.0)
    got = [sc.observe()["utilization"] for _ in range(4)]
    assert got == [0.0, 0.0, 0.5, 0.5]
    merged = CompositeObserver(sc, bs, link).observe()
    assert merged["batch_size"] == 4 and merged["utilization"] == 0.5 and merged["bandwidth_mbps"] == pytest.approx(8.0, rel=0.01)
    # a step to 80 Mbit/s whose first sample is a small transfer lost in the RTT's noise (it implies 1,000 Mbit/s):
    # the estimate jumps at most 4x per sample, then settles on the real rate
    link.record_transfer(1000, 2.0 + 0.008)
    assert link.observe()["bandwidth_mbps"] == pytest.approx(32.0)
    for _ in range(3):
        link.record_transfer(40_000, 2.0 + 40_000 * 8 / 80e3)
    assert link.observe()["bandwidth_mbps"] == pytest.approx(80.0, rel=0.01)
    link.record_transfer(40_000, 2.0 + 40_000 * 8 / 1e3)  # down to 1 Mbit/s: a long transfer is believed at once
    assert link.observe()["bandwidth_mbps"] == pytest.approx(1.0, rel=0.01)


@pytest.mark.skipif(not can_pin(), reason="needs Linux and 2 cores")
def test_cpu_observer_on_chosen_cores():
    """A busy process pinned to the last core: the observer of that core sees it, unless it is excluded."""
    from partition.observers import CpuObserver

    core = (os.cpu_count() or 2) - 1
    code = f"import os, time; os.sched_setaffinity(0, {{{core}}}); t = time.time()\nwhile time.time() - t < 2.0: pass"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.3)  # let it pin itself
        seen, hidden = CpuObserver(cpus=[core]), CpuObserver(cpus=[core], exclude_pids=[child.pid])
        time.sleep(0.8)
        u_seen, u_hidden = seen.observe()["utilization"], hidden.observe()["utilization"]
    finally:
        child.kill()
        child.wait()
    assert u_seen >= 0.6 and u_hidden <= u_seen - 0.3, (u_seen, u_hidden)
    with pytest.raises(ValueError, match="cpus"):
        CpuObserver(cpus=[os.cpu_count() or 1])


class _FakeLinkRunner:
    """probe_link over an ideal link: rtt_ms + bytes * 8 / bandwidth (no sleeping); None while down."""

    def __init__(self, mbps: float, rtt_ms: float = 2.0) -> None:
        self.mbps, self.rtt_ms, self.down, self.sizes = mbps, rtt_ms, False, []

    def probe_link(self, size_bytes: int, reply_bytes: int = 0, timeout_s: float = 2.0):
        self.sizes.append(size_bytes)
        if self.down:
            return None
        return {"bytes_sent": size_bytes, "bytes_received": reply_bytes, "attempts": 1, "fallback": False, "probe": True,
                "transfer_ms": self.rtt_ms + (size_bytes + reply_bytes) * 8 / (self.mbps * 1e3)}


def test_link_prober_probes_only_while_the_link_is_idle():
    runner, link = _FakeLinkRunner(8.0), LinkObserver(alpha=1.0)
    prober = LinkProber(runner, link, idle_s=0.5, target_ms=20.0, spread=4.0)
    first = prober.observe()  # nothing seen yet: a pair of probes, 16 KiB and 64 KiB
    # two samples: too few to fit the RTT apart (it counts as wire time), hence a little low
    assert runner.sizes == [16384, 65536] and first["bandwidth_mbps"] == pytest.approx(8.0, rel=0.05)
    assert prober.observe() == first and len(runner.sizes) == 2  # a fresh sample: no probe
    link.last_sample_s -= 1.0  # idle for longer than idle_s: probe again, sized to ~20 ms at 8 Mbit/s
    second = prober.observe()  # four samples of two sizes: RTT and bandwidth fitted apart
    assert runner.sizes[3] == pytest.approx(20000, rel=0.05) and runner.sizes[2] == int(runner.sizes[3] / 4)
    assert second["bandwidth_mbps"] == pytest.approx(8.0, rel=0.01) and second["rtt_ms"] == pytest.approx(2.0, abs=0.05)
    runner.mbps = 80.0  # the link got faster while nothing crossed it: a step change, the estimate restarts
    link.last_sample_s -= 1.0
    got = prober.observe()
    assert runner.sizes[5] == pytest.approx(20000, rel=0.01)  # sized for the 8 Mbit/s estimate of before
    assert got["bandwidth_mbps"] == pytest.approx(80.0, rel=0.05) and got["rtt_ms"] == pytest.approx(2.0, abs=0.1)
    runner.down = True  # an unreachable cloud: probes fail, the last estimate stays
    link.last_sample_s -= 1.0
    assert prober.observe()["bandwidth_mbps"] == pytest.approx(got["bandwidth_mbps"]) and prober.n_failed == 2
    with pytest.raises(TypeError, match="probe_link"):
        LinkProber(object(), link)
    with pytest.raises(ValueError, match="spread"):
        LinkProber(runner, link, spread=1.0)


# -- the controller ---------------------------------------------------------------------------------
def test_controller_replans_when_the_edge_gets_slower(graph, tmp_path):
    w = _weights(graph)
    handed = []
    log = tmp_path / "decisions.jsonl"
    ctl = AdaptiveController(graph, lambda c: w * (1 + 20 * c["utilization"]), w * 0.1, Link(100.0, rtt_ms=30.0),
                             runtime=handed.append, detector=ChangeDetector(confirm=2, min_interval_s=0.0), log_path=log,
                             time_budget_s=1.0, initial_n_gen=20)
    d0 = ctl.step({"utilization": 0.0}, now_s=0.0)
    assert d0.reason == "initial" and d0.swapped and len(handed) == 1
    assert d0.new_plan["compute_nodes_per_device"][1] == 0  # fast idle edge, 30 ms RTT: all on the edge
    assert ctl.step({"utilization": 0.03}, now_s=1.0) is None  # noise
    assert ctl.step({"utilization": 0.9}, now_s=2.0) is None  # pending (confirm=2)
    d1 = ctl.step({"utilization": 0.9}, now_s=3.0)
    assert d1 is not None and d1.swapped and d1.warm and len(handed) == 2
    assert d1.new_plan["compute_nodes_per_device"][1] > 0 and d1.new_plan["id"] != d0.new_plan["id"]
    assert d1.predicted_new_ms < d1.predicted_old_ms and d1.gain_ms > 0
    assert handed[1].assignment != handed[0].assignment and set(handed[1].node_names) == {n.name for n in graph.nodes}
    # warm start: the previous plan was among the seeds
    assert any(np.array_equal(s, np.array(handed[0].assignment)) for s in ctl.last_seeds)
    lines = read_decision_log(log)
    assert len(lines) == 2 and lines[1]["swapped"] and lines[1]["conditions"]["utilization"] == pytest.approx(0.9)
    for ln in log.read_text().splitlines():
        rec = json.loads(ln)
        assert {"t_s", "conditions", "old_plan", "new_plan", "predicted_old_ms", "predicted_new_ms", "gain_ms", "optimize_ms",
                "n_evals"} <= set(rec)
    ctl.record_measurement(12.0, 3.5)
    png = plot_timeline(tmp_path / "timeline.png", ctl.history, ctl.decisions, ctl.measurements)
    assert png.stat().st_size > 1000


def test_latency_feedback_corrects_an_underestimated_edge(graph):
    """The predictor says the edge is fast; requests say it is 20x slower (a load it does not model). The
    measured/predicted edge ratio becomes the edge_scale condition and moves work to the cloud; a heavier
    load keeps the correction, a lighter one starts it over."""
    w = _weights(graph)
    ctl = AdaptiveController(graph, w, w * 0.1, Link(100.0, rtt_ms=30.0), detector=ChangeDetector(confirm=2, min_interval_s=0.0),
                             time_budget_s=1.0, initial_n_gen=20, feedback_window=4, feedback_min=3)
    d0 = ctl.step({"utilization": 0.0}, now_s=0.0)
    assert d0.new_plan["compute_nodes_per_device"][1] == 0 and ctl.feedback() == {}
    predicted_edge = float(w.sum())
    assert ctl.record_request({"total_ms": 1.0, "edge_ms": predicted_edge, "fallback": False}, t_s=0.5) == pytest.approx(1.0)
    assert ctl.record_request({"total_ms": 1.0, "edge_ms": 5.0, "fallback": True}, t_s=0.6) is None  # fallbacks say nothing
    for i in range(3):
        ctl.record_request({"total_ms": 1.0, "edge_ms": 20 * predicted_edge, "fallback": False}, t_s=1.0 + i / 10)
    assert ctl.feedback()["edge_scale"] == pytest.approx(20.0)  # median of the last 4 ratios: 1, 20, 20, 20
    assert ctl.step({"utilization": 0.0}, now_s=2.0) is None  # pending (confirm=2)
    d1 = ctl.step({"utilization": 0.0}, now_s=3.0)
    assert d1 is not None and "edge_scale" in d1.changed and d1.conditions["edge_scale"] == pytest.approx(20.0)
    assert d1.swapped and d1.new_plan["compute_nodes_per_device"][1] > 0
    assert ctl.predicted_ms() == pytest.approx(d1.predicted_new_ms)
    # a request that started before the hand-over ran the old plan: not a sample of the new one
    assert ctl.record_request({"total_ms": 2000.0, "edge_ms": 1.0, "fallback": False}, t_s=3.5) is None
    # a heavier load keeps the correction (the work stays on the cloud) ...
    ctl.step({"utilization": 0.5}, now_s=4.0)
    d2 = ctl.step({"utilization": 0.5}, now_s=5.0)
    assert d2 is not None and d2.conditions["edge_scale"] == pytest.approx(20.0) and not d2.swapped
    # ... a lighter one voids it: edge_scale restarts at 1 and the edge is fast again
    ctl.step({"utilization": 0.0}, now_s=6.0)
    d3 = ctl.step({"utilization": 0.0}, now_s=7.0)
    assert d3 is not None and d3.conditions["edge_scale"] == 1.0 and ctl.feedback() == {}
    assert d3.swapped and d3.new_plan["compute_nodes_per_device"][1] == 0


def test_a_kept_plan_does_not_start_the_min_interval(graph):
    """min_interval_s spaces out plan *changes*: a re-plan that kept the plan (a change that did not matter)
    must not delay the reaction to the next one."""
    w = _weights(graph)
    ctl = AdaptiveController(graph, lambda c: w * (1 + 20 * c["utilization"]), w * 0.1, Link(100.0, rtt_ms=30.0),
                             detector=ChangeDetector(confirm=1, min_interval_s=10.0), time_budget_s=1.0, initial_n_gen=20)
    ctl.step({"utilization": 0.0, "rtt_ms": 30.0}, now_s=0.0)
    d1 = ctl.step({"utilization": 0.0, "rtt_ms": 40.0}, now_s=11.0)  # all on the edge: the RTT does not matter
    assert d1 is not None and not d1.swapped
    d2 = ctl.step({"utilization": 0.9, "rtt_ms": 40.0}, now_s=12.0)  # 1 s later: not held back
    assert d2 is not None and d2.swapped
    assert ctl.step({"utilization": 0.0, "rtt_ms": 40.0}, now_s=13.0) is None  # a swap does start it
    assert ctl.detector.n_suppressed == 1


def test_warm_start_keeps_the_previous_plan_when_nothing_better(graph):
    w = _weights(graph)
    ctl = AdaptiveController(graph, lambda c: w * (1 + 20 * c["utilization"]), w * 0.1, Link(100.0, rtt_ms=30.0),
                             detector=ChangeDetector(confirm=1, min_interval_s=0.0), n_gen=1, time_budget_s=0.0)
    ctl.step({"utilization": 0.9}, now_s=0.0)
    first = ctl.assignment.copy()
    d = ctl.step({"utilization": 0.75}, now_s=1.0)  # same optimum: one generation, seeded with the previous plan
    assert d is not None and d.warm and d.n_seeds >= 2
    assert d.predicted_new_ms <= d.predicted_old_ms + 1e-9 and np.array_equal(ctl.assignment, first) and not d.swapped


def test_controller_run_loop_with_scripted_observer(graph):
    w = _weights(graph)
    obs = ScriptedObserver([(0.0, {"utilization": 0.0}), (3.0, {"utilization": 0.9})], step_s=1.0)
    ctl = AdaptiveController(graph, lambda c: w * (1 + 20 * c["utilization"]), w * 0.1, Link(100.0, rtt_ms=30.0), observer=obs,
                             detector=ChangeDetector(confirm=2, min_interval_s=0.0), observe_interval_s=0.001, time_budget_s=0.5)
    ctl.run(max_steps=7)
    assert not ctl.errors and [d.reason for d in ctl.decisions] == ["initial", "change"] and ctl.decisions[1].swapped


# -- hot swap ----------------------------------------------------------------------------------------
def _cut_ms(graph, u):
    """Edge/cloud node ms that force the cut to a utilization-dependent position (the optimum moves)."""
    compute = [i for i, nd in enumerate(graph.nodes) if nd.kind == "compute"]
    p = compute[1] if u < 0.3 else (compute[2] if u < 0.7 else compute[4])  # last node on the edge
    edge = np.array([0.0 if i <= p else 1000.0 for i in range(len(graph.nodes))])
    cloud = np.array([1000.0 if (i <= p and i in compute) else 0.0 for i in range(len(graph.nodes))])
    return edge, cloud


def test_hot_swap_answers_every_request_exactly_once(graph):
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache = {}

    def edge_ms(c):
        return cache.setdefault(("e", c["utilization"]), _cut_ms(graph, c["utilization"])[0])

    def cloud_ms(c):
        return cache.setdefault(("c", c["utilization"]), _cut_ms(graph, c["utilization"])[1])

    ctl = AdaptiveController(graph, edge_ms, cloud_ms, Link(1000.0), detector=ChangeDetector(confirm=1, min_interval_s=0.0),
                             time_budget_s=1.0, initial_n_gen=10)
    ctl.initialize({"utilization": 0.0})
    plan0 = ctl.plan
    srv = CloudServer(MODEL, plan0, seed=SEED, input_shape=SHAPE, threads=1, cache_size=1024)
    n_threads, per_thread = 3, 100
    results: dict[str, list] = {}
    lock = threading.Lock()
    errors = []
    try:
        srv.start()
        with EdgeRunner(MODEL, plan0, srv.address, seed=SEED, input_shape=SHAPE, timeout_s=20.0) as edge:
            ctl.runtime = edge
            xs = [edge.example_input(seed=i) for i in range(4)]
            with torch.no_grad():
                ys = [edge.module(x) for x in xs]
            before = edge.ping()["n_computed"]
            done = threading.Semaphore(0)

            def client(k):
                try:
                    for i in range(per_thread):
                        rid = f"r{k}-{i}"
                        out, tm = edge.infer(xs[i % 4], request_id=rid)
                        with lock:
                            results.setdefault(rid, []).append((out, tm, i % 4))
                        done.release()
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))

            threads = [threading.Thread(target=client, args=(k,)) for k in range(n_threads)]
            for t in threads:
                t.start()
            for j, u in enumerate((0.5, 0.9, 0.0)):  # three re-plans while requests flow
                for _ in range(60):
                    done.acquire(timeout=30)
                d = ctl.step({"utilization": u}, now_s=float(j + 1))
                assert d is not None and d.swapped
            for t in threads:
                t.join(60)
            stats = edge.ping()
            n_swaps = edge.n_swaps
    finally:
        srv.stop()
        torch.set_num_threads(old_threads)
    assert not errors
    assert n_swaps == 3
    assert len(results) == n_threads * per_thread and all(len(v) == 1 for v in results.values())
    fps = set()
    for out, tm, xi in (v[0] for v in results.values()):
        assert not tm["fallback"] and not tm["duplicate"] and tm["error"] is None
        assert torch.allclose(out, ys[xi], atol=1e-5)
        fps.add(tm["fingerprint"])
    assert len(fps) == 3  # plans 0 -> A -> B -> plan 0 again: three distinct splits served
    assert stats["n_computed"] - before == n_threads * per_thread  # each computed exactly once on the cloud
    assert sum(stats["n_computed_by_plan"].values()) == stats["n_computed"]
