"""Real split execution across two OS processes over gRPC: an edge (this process) and a cloud server.

How the cloud gets its stages without pickle: both sides rebuild the *same* model from a recipe,
a model reference (``torchvision:resnet18`` or ``package.module:factory``, see
:func:`latpred.graph.models.load_model`) plus a weight seed (``torch.manual_seed(seed)`` right
before building, so the random weights are identical), trace it with
:func:`latpred.graph.trace.trace` and split it along the same plan (``{node name: device}``, sent as
JSON). Every request carries a fingerprint of (recipe, plan); the server refuses a mismatch.

* Devices ``0`` run on the edge (:class:`EdgeRunner`), devices ``>= 1`` all run on the cloud
  (:class:`CloudServer`): a multi-tier plan collapses to edge | rest.
* Tensors travel in the safetensors-based format of :mod:`partition.transport` (never pickle).
* The link is emulated in the transport (:class:`~partition.transport.EmulatedLink`): the edge
  sleeps ``rtt_ms / 2 + request_bytes * 8 / bandwidth`` before sending a request, the cloud sleeps
  ``rtt_ms / 2 + reply_bytes * 8 / bandwidth`` before replying (the edge sends the link parameters
  with each request).
* Fault tolerance: if the cloud is unreachable, fails or the deadline (``timeout_s``) passes, the
  edge runs the cloud stages itself (it holds the whole model) and marks ``fallback=True``: no
  request is lost. Each request has a ``request_id``; the cloud caches recent replies by id, so a
  retried request is answered from the cache, not computed twice.
* Threads: ``torch.set_num_threads`` per side (``edge_threads`` is process-wide in the edge process;
  ``cloud_threads`` applies to the server process) to emulate a weak edge and a strong cloud.

Plan hot-swap: the cloud keeps every built split keyed by its plan fingerprint (LRU, ``max_plans``)
and builds a new one on demand from the plan JSON the edge sends once (``RegisterPlan`` RPC; it
reuses the traced module, nothing is rebuilt from the recipe). :meth:`EdgeRunner.set_plan` registers
the new plan, then switches between requests: each request snapshots the plan (and link) it started
with and carries that plan's fingerprint, so in-flight requests finish on the old plan and nothing is
dropped or computed twice. A request whose plan the cloud does not know (evicted, server restarted)
is answered ``NOT_FOUND``; the edge registers the plan and retries once.

Run a server by hand: ``python -m partition._serve`` reading one JSON config line from stdin
(see :class:`CloudServer`); it prints ``PARTITION_CLOUD_READY port=<port>`` and serves until stdin
closes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import torch

from latpred.blas import hold_single_threaded_blas
from latpred.profiling.allocator import REUSE, allocator_mode, check_allocator, pin_allocator
from latpred.profiling.reference import ReferenceProbe, check_exponent, parse_nominal

from .plan import SplitModel, placement_of, split_graph_module
from .transport import (
    GRPC_OPTIONS,
    METHOD_INFER,
    METHOD_PING,
    SERVICE,
    EmulatedLink,
    TensorCodecError,
    decode_message,
    encode_message,
)

__all__ = ["ModelRecipe", "BuiltSplit", "build_split", "CloudServer", "EdgeRunner", "SplitMeasurement", "measure_split",
           "serve", "READY_PREFIX", "METHOD_REGISTER", "METHOD_ECHO", "METHOD_REFERENCE", "MAX_PROBE_BYTES", "pin_process",
           "can_pin", "normalise_request"]

READY_PREFIX = "PARTITION_CLOUD_READY"
#: gRPC method of the plan registration (JSON ``{"recipe", "placement"}`` in, JSON ``{"fingerprint", ...}`` out)
METHOD_REGISTER = f"/{SERVICE}/RegisterPlan"
#: gRPC method of a link probe (``{"pad": bytes}`` + ``{"reply_bytes", "link"}`` in, ``reply_bytes`` of padding out)
METHOD_ECHO = f"/{SERVICE}/Echo"
#: gRPC method of a machine-speed reading: the cloud times the reference kernel (JSON ``{"reference_ms", "threads"}`` out)
METHOD_REFERENCE = f"/{SERVICE}/Reference"
#: largest probe, each way
MAX_PROBE_BYTES = 64 << 20


def can_pin(cores: int = 2) -> bool:
    """Whether processes can be pinned to cores here (Linux's ``os.sched_setaffinity``) and at least
    ``cores`` logical cores exist: one for the edge, the rest for the cloud."""
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= cores


def _check_cpus(cpus: Sequence[int] | None, what: str) -> set[int] | None:
    if cpus is None:
        return None
    n = os.cpu_count() or 1
    got = {int(c) for c in cpus}
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"{what}: pinning needs os.sched_setaffinity (Linux)")
    if not got or min(got) < 0 or max(got) >= n:
        raise ValueError(f"{what} must be logical core indices in [0, {n}), got {sorted(got)}")
    return got


def pin_process(pid: int, cpus: Sequence[int]) -> set[int]:
    """Pin every thread of process ``pid`` to ``cpus`` (``os.sched_setaffinity`` on a pid moves one thread
    only; threads started later inherit their creator's affinity). Returns the previous affinity of the
    process's main thread, for restoring."""
    import psutil

    got = _check_cpus(cpus, "cpus")
    if got is None:
        raise ValueError("pin_process needs the cores to pin to, got None")
    before = os.sched_getaffinity(pid)
    for th in psutil.Process(pid).threads():
        try:
            os.sched_setaffinity(th.id, got)
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    return before


# -- the shared recipe ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRecipe:
    """How both sides rebuild the same model: reference, weight seed, per-sample input shape, batch size."""

    model_ref: str
    seed: int = 0
    input_shape: tuple[int, ...] | None = None
    batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"model_ref": self.model_ref, "seed": int(self.seed),
                "input_shape": None if self.input_shape is None else [int(d) for d in self.input_shape],
                "batch_size": int(self.batch_size)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelRecipe:
        shape = d.get("input_shape")
        return cls(str(d["model_ref"]), int(d.get("seed", 0)), None if shape is None else tuple(int(x) for x in shape),
                   int(d.get("batch_size", 1)))


@dataclass
class BuiltSplit:
    """A model rebuilt from a :class:`ModelRecipe` and split along a plan."""

    recipe: ModelRecipe
    module: torch.nn.Module
    split: SplitModel
    placement: dict[str, int]
    input_shape: tuple[int, ...]
    fingerprint: str
    gm: Any = None

    def example_input(self, seed: int | None = None) -> torch.Tensor:
        """A random input of the recipe's batch size and input shape."""
        g = torch.Generator().manual_seed(self.recipe.seed if seed is None else seed)
        return torch.randn(self.recipe.batch_size, *self.input_shape, generator=g)

    def with_plan(self, plan: Any) -> BuiltSplit:
        """The same model (module, weights and traced ``gm`` shared, nothing rebuilt) split along another plan."""
        if self.gm is None:
            raise ValueError("this BuiltSplit has no traced GraphModule to re-split")
        return _split_built(self.recipe, self.module, self.gm, self.input_shape, placement_of(plan))


def _fingerprint(recipe: ModelRecipe, placement: Mapping[str, int]) -> str:
    doc = json.dumps({"recipe": recipe.to_dict(), "placement": sorted(placement.items())}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def build_split(model_ref: str, plan: Any, *, seed: int = 0, input_shape: Sequence[int] | None = None,
                batch_size: int = 1) -> BuiltSplit:
    """Rebuild the model of ``model_ref`` with weights seeded by ``seed``, trace it and split it along ``plan``.

    The model is traced with latpred's fx tracer (the one of :func:`latpred.graph.trace.trace`, so node
    names match the plan's) without running it; ``input_shape`` and ``batch_size`` only set the
    example input (:meth:`BuiltSplit.example_input`) and the fingerprint.

    ``plan`` is a :class:`~partition.plan.PartitionPlan`, a :class:`~partition.cost.Plan` or a
    ``{node name: device}`` mapping; its node names must be those of the traced model.
    """
    from latpred.graph.models import load_model
    from latpred.graph.trace import _symbolic_trace

    recipe = ModelRecipe(model_ref, int(seed), None if input_shape is None else tuple(int(d) for d in input_shape), int(batch_size))
    placement = placement_of(plan)
    torch.manual_seed(recipe.seed)
    ref = load_model(model_ref, recipe.input_shape) if recipe.input_shape is not None else load_model(model_ref)
    shape = tuple(ref.input_shape)
    # the tracer of latpred.graph.trace.trace without its shape pass: the same fx graph, the same node names
    gm, _ = _symbolic_trace(ref.module.eval())
    return _split_built(recipe, ref.module, gm, shape, placement)


def _split_built(recipe: ModelRecipe, module: torch.nn.Module, gm: Any, shape: tuple[int, ...],
                 placement: dict[str, int]) -> BuiltSplit:
    names = {n.name for n in gm.graph.nodes}
    unknown = sorted(set(placement) - names)
    missing = sorted(n.name for n in gm.graph.nodes if n.op.startswith("call_") and n.name not in placement)
    if unknown or missing:
        raise ValueError(f"the plan does not fit model {recipe.model_ref!r}: unknown node(s) {unknown[:5]}, unplaced node(s) "
                         f"{missing[:5]}; was it made for another model?")
    split = split_graph_module(gm, placement)
    return BuiltSplit(recipe, module, split, placement, shape, _fingerprint(recipe, placement), gm)


# -- the cloud side ---------------------------------------------------------------------------------
class _ServedPlan:
    """One plan the cloud serves: its split and the values crossing the edge | cloud boundary."""

    def __init__(self, built: BuiltSplit) -> None:
        self.built = built
        self.send, self.recv = built.split.boundary(1)
        self.remote = [d for d in built.split.devices if d >= 1]
        self.n_computed = 0


class _CloudService:
    """Request handlers of the cloud server (raw bytes in, raw bytes out).

    Serves every plan registered for its recipe (built splits keyed by fingerprint, the least
    recently used evicted beyond ``max_plans``); the plan it was started with is registered first.
    """

    def __init__(self, built: BuiltSplit, cache_size: int = 64, max_plans: int = 16) -> None:
        self.built = built  # the plan the server was started with (and the module every other plan re-splits)
        self.recipe = built.recipe
        self.plans: OrderedDict[str, _ServedPlan] = OrderedDict({built.fingerprint: _ServedPlan(built)})
        self.max_plans = max(1, int(max_plans))
        self.lock = threading.Lock()  # one request computed at a time
        self.plans_lock = threading.Lock()  # plan table and builds (serving continues while a plan is built)
        self.cache: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self.cache_size = int(cache_size)
        self.n_computed = 0
        self.n_registered = 1
        self._probe: ReferenceProbe | None = None

    def _plan(self, fingerprint: Any) -> _ServedPlan | None:
        with self.plans_lock:
            sp = self.plans.get(str(fingerprint)) if fingerprint is not None else None
            if sp is not None:
                self.plans.move_to_end(sp.built.fingerprint)
            return sp

    def register(self, request: bytes, context: Any) -> bytes:
        import grpc

        try:
            doc = json.loads(bytes(request).decode("utf-8"))
            recipe = ModelRecipe.from_dict(doc["recipe"])
            placement = {str(k): int(v) for k, v in dict(doc["placement"]).items()}
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad plan registration: {type(e).__name__}: {e}")
        if recipe != self.recipe:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"model/plan mismatch: the cloud serves recipe {self.recipe.to_dict()}, the plan was registered for "
                          f"{recipe.to_dict()} (same model_ref, seed, input_shape, batch_size on both sides?)")
        fp = _fingerprint(recipe, placement)
        with self.plans_lock:
            known = fp in self.plans
            if known:
                self.plans.move_to_end(fp)
            else:
                try:
                    built = self.built.with_plan(placement)
                except ValueError as e:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"plan {fp} cannot be built: {e}")
                self.plans[fp] = _ServedPlan(built)
                self.n_registered += 1
                while len(self.plans) > self.max_plans:
                    self.plans.popitem(last=False)
            n = len(self.plans)
        return json.dumps({"fingerprint": fp, "known": known, "n_plans": n}).encode()

    def infer(self, request: bytes, context: Any) -> bytes:
        import grpc

        try:
            values, meta = decode_message(request)
        except TensorCodecError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {e}")
        sp = self._plan(meta.get("fingerprint"))
        if sp is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"unknown plan fingerprint {meta.get('fingerprint')!r}: register the plan first (RegisterPlan); "
                          f"the cloud serves {len(self.plans)} plan(s) of recipe {self.recipe.to_dict()}")
        rid = str(meta.get("request_id", ""))
        missing = [n for n in sp.send if n not in values]
        if missing:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request {rid}: missing value(s) {missing}")
        duplicate = False
        with self.lock:  # one request at a time; a retry waits for the first try and is then served from the cache
            if rid and rid in self.cache:
                outputs, _ = self.cache[rid]
                cloud_ms = 0.0  # nothing computed for this try
                self.cache.move_to_end(rid)
                duplicate = True
            else:
                t = time.perf_counter()
                try:
                    with torch.inference_mode():
                        env = sp.built.split.run_stages(dict(values), sp.remote)
                except Exception as e:  # report any model error to the edge (it falls back)
                    context.abort(grpc.StatusCode.INTERNAL, f"request {rid}: cloud stages failed: {type(e).__name__}: {e}")
                cloud_ms = (time.perf_counter() - t) * 1e3
                outputs = {n: env[n] for n in sp.recv}
                self.n_computed += 1
                sp.n_computed += 1
                if rid:
                    self.cache[rid] = (outputs, cloud_ms)
                    while len(self.cache) > self.cache_size:
                        self.cache.popitem(last=False)
        reply = encode_message(outputs, {"request_id": rid, "cloud_ms": cloud_ms, "duplicate": duplicate,
                                         "fingerprint": sp.built.fingerprint})
        EmulatedLink.from_meta(meta.get("link", {})).send(len(reply))
        return reply

    def echo(self, request: bytes, context: Any) -> bytes:
        """A link probe: ``reply_bytes`` of padding back, after the emulated link delay; no model work."""
        import grpc

        try:
            _, meta = decode_message(request)
            n = meta.get("reply_bytes", 0)
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_PROBE_BYTES:
                raise ValueError(f"reply_bytes must be an integer in [0, {MAX_PROBE_BYTES}], got {n!r}")
            link = EmulatedLink.from_meta(meta.get("link", {}))
        except (TensorCodecError, ValueError, TypeError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad probe: {e}")
        reply = encode_message({"pad": torch.zeros(n, dtype=torch.uint8)}, {"probe": True})
        link.send(len(reply))
        return reply

    def reference(self, request: bytes, context: Any) -> bytes:
        """Time the reference kernel on the server's threads (between requests, never during one)."""
        with self.lock:
            if self._probe is None:
                self._probe = ReferenceProbe()
            threads = torch.get_num_threads()
            ms = self._probe.probe(threads)
        return json.dumps({"reference_ms": ms, "threads": threads}).encode()

    def ping(self, request: bytes, context: Any) -> bytes:
        with self.plans_lock:
            by_plan = {fp: sp.n_computed for fp, sp in self.plans.items()}
        return json.dumps({"fingerprint": self.built.fingerprint, "n_computed": self.n_computed, "pid": os.getpid(),
                           "threads": torch.get_num_threads(), "n_plans": len(by_plan), "n_registered": self.n_registered,
                           "n_computed_by_plan": by_plan, "allocator": allocator_mode()}).encode()


def serve(config: Mapping[str, Any]) -> tuple[Any, int, _CloudService]:
    """Start a cloud gRPC server in this process; returns ``(grpc server, port, service)``.

    ``config``: ``recipe`` (:meth:`ModelRecipe.to_dict`), ``placement`` (``{node name: device}``),
    optional ``threads``, ``cpus`` (pin this process to these cores first, so every thread it starts
    inherits them), ``allocator`` (``reuse``, the default, or ``system``: the C allocator mode of
    :func:`latpred.profiling.allocator.pin_allocator`, as latency predictions assume), ``host`` (default
    ``127.0.0.1``), ``port`` (0: any free port), ``cache_size`` (replies kept for deduplication), ``max_plans``
    (built plans kept for hot-swap).
    """
    import grpc

    if config.get("cpus"):
        pin_process(os.getpid(), config["cpus"])
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    pin_allocator(config.get("allocator") or REUSE)
    hold_single_threaded_blas()  # for the process's life: no spinning BLAS thread beside the timed stages (latpred.blas)
    recipe = ModelRecipe.from_dict(config["recipe"])
    built = build_split(recipe.model_ref, dict(config["placement"]), seed=recipe.seed, input_shape=recipe.input_shape,
                        batch_size=recipe.batch_size)
    service = _CloudService(built, int(config.get("cache_size", 64)), int(config.get("max_plans", 16)))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    handlers = {"Infer": grpc.unary_unary_rpc_method_handler(service.infer),
                "Ping": grpc.unary_unary_rpc_method_handler(service.ping),
                "Echo": grpc.unary_unary_rpc_method_handler(service.echo),
                "Reference": grpc.unary_unary_rpc_method_handler(service.reference),
                "RegisterPlan": grpc.unary_unary_rpc_method_handler(service.register)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{config.get('host', '127.0.0.1')}:{int(config.get('port', 0))}")
    if not port:
        raise RuntimeError(f"cannot bind {config.get('host', '127.0.0.1')}:{config.get('port', 0)}")
    server.start()
    return server, port, service


def _serve_main() -> int:
    line = sys.stdin.readline()
    if not line:
        print("no config on stdin", file=sys.stderr)
        return 2
    server, port, _ = serve(json.loads(line))
    print(f"{READY_PREFIX} port={port}", flush=True)
    for _ in sys.stdin:  # serve until the parent closes stdin (or dies)
        pass
    server.stop(0)
    return 0


class CloudServer:
    """The cloud side as a separate OS process (``python -m partition._serve``).

    Args:
        model_ref: model reference (``torchvision:NAME`` or ``package.module:factory``).
        plan: :class:`~partition.plan.PartitionPlan`, :class:`~partition.cost.Plan` or ``{node: device}``.
        seed: weight seed (the edge must use the same).
        input_shape: per-sample input shape (``None``: the reference's default).
        batch_size: batch size the model is traced at.
        threads: ``torch.set_num_threads`` of the server process (``None``: torch's default).
        cpus: logical cores the server process is pinned to (``None``: not pinned), e.g. to emulate a
            separate cloud machine beside an edge process pinned to other cores.
        host, port: where to listen (port 0: a free port, read back from the process).
        startup_timeout_s: how long :meth:`start` waits for the server to be ready.
        cache_size: replies kept for request deduplication.
        max_plans: built plans kept for hot-swap (least recently used evicted; the edge re-registers on demand).
        cwd: working directory of the process (default: this one; factories must be importable there).
        allocator: C allocator mode of the server process (``reuse``: memory reused from call to call, what
            the predictors' profiles ran under; ``system``: left alone). See :mod:`latpred.profiling.allocator`.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. :attr:`address` is
    ``host:port`` once started.
    """

    def __init__(self, model_ref: str, plan: Any, *, seed: int = 0, input_shape: Sequence[int] | None = None,
                 batch_size: int = 1, threads: int | None = None, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout_s: float = 120.0, cache_size: int = 64, max_plans: int = 16,
                 cwd: str | None = None, cpus: Sequence[int] | None = None, allocator: str = REUSE) -> None:
        recipe = ModelRecipe(model_ref, int(seed), None if input_shape is None else tuple(int(d) for d in input_shape), int(batch_size))
        pinned = _check_cpus(cpus, "cpus")
        self.config = {"recipe": recipe.to_dict(), "placement": placement_of(plan), "threads": threads, "host": host,
                       "port": int(port), "cache_size": int(cache_size), "max_plans": int(max_plans),
                       "cpus": None if pinned is None else sorted(pinned), "allocator": check_allocator(allocator)}
        self.host = host
        self.startup_timeout_s = float(startup_timeout_s)
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self._stderr: Any = None
        self._lines: queue.Queue[str | None] | None = None
        self._deadline = 0.0

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the cloud server is not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> CloudServer:
        """Start the process; with ``wait``, also :meth:`wait_ready`. Returns ``self``."""
        if self.is_alive():
            return self.wait_ready() if wait else self
        self.stop()  # a process that died (or was killed): start afresh
        self.port = None
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "partition._serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=self.cwd)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(self.config) + "\n")
        self.proc.stdin.flush()
        self._lines = lines = queue.Queue()
        out = self.proc.stdout

        def pump() -> None:
            for ln in out:
                lines.put(ln)
            lines.put(None)
        threading.Thread(target=pump, daemon=True).start()
        self._deadline = time.monotonic() + self.startup_timeout_s
        return self.wait_ready() if wait else self

    def wait_ready(self) -> CloudServer:
        """Wait until the started process serves (up to ``startup_timeout_s`` after :meth:`start`);
        raises ``RuntimeError`` with its stderr when it exits or is not ready in time."""
        if self.port is not None:
            return self
        if self.proc is None or self._lines is None:
            raise RuntimeError("the cloud server is not started")
        while True:
            try:
                ln = self._lines.get(timeout=max(0.05, self._deadline - time.monotonic()))
            except queue.Empty:
                ln = ""
            if ln and ln.startswith(READY_PREFIX):
                self.port = int(ln.split("port=", 1)[1])
                return self
            if ln is None or time.monotonic() > self._deadline:
                err = self._stderr_tail()
                self.stop()
                why = "exited" if ln is None else f"was not ready after {self.startup_timeout_s:g} s"
                raise RuntimeError(f"the cloud server {why}; stderr:\n{err}")

    def _stderr_tail(self, n: int = 3000) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-n:]
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), e.g. to test the edge's fallback."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the process: close its stdin (it stops serving), then terminate / kill if it lingers."""
        p = self.proc
        if p is not None:
            if p.poll() is None:
                try:
                    if p.stdin is not None:
                        p.stdin.close()
                    p.wait(timeout_s)
                except (subprocess.TimeoutExpired, OSError, BrokenPipeError):
                    p.terminate()
                    try:
                        p.wait(timeout_s)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(timeout_s)
            for f in (p.stdin, p.stdout):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> CloudServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- the edge side ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _EdgePlan:
    """The plan an edge request runs on (snapshotted at the request's start)."""

    built: BuiltSplit
    send_names: tuple[str, ...]
    recv_names: tuple[str, ...]
    local_devices: tuple[int, ...]
    remote_devices: tuple[int, ...]

    @classmethod
    def of(cls, built: BuiltSplit) -> _EdgePlan:
        send, recv = built.split.boundary(1)
        return cls(built, tuple(send), tuple(recv), tuple(d for d in built.split.devices if d < 1),
                   tuple(d for d in built.split.devices if d >= 1))


class EdgeRunner:
    """The edge: runs device-0 stages, sends the cut tensors to the cloud, falls back locally on failure.

    Args:
        model_ref: model reference (same as the server's).
        plan: :class:`~partition.plan.PartitionPlan`, :class:`~partition.cost.Plan` or ``{node: device}``.
        server_address: ``host:port`` of the :class:`CloudServer` (``None``: always run locally).
        bandwidth_mbps: emulated link bandwidth in Mbit/s (``None``: no bandwidth delay).
        rtt_ms: emulated round-trip time in ms.
        timeout_s: deadline of the cloud part of one request (all tries); then the edge falls back.
        edge_threads: ``torch.set_num_threads`` for this process (process-wide; ``None``: unchanged).
        allocator: C allocator mode pinned in this process (process-wide; ``reuse`` as the predictors assume,
            ``system`` leaves it alone; see :mod:`latpred.profiling.allocator`).
        seed, input_shape, batch_size: the model recipe (same as the server's).
        retries: extra tries after a failed RPC (same ``request_id``; the cloud deduplicates).

    Hot-swap: :meth:`set_plan` switches to another plan between requests (thread-safe; requests in
    flight finish on the plan they started with); :meth:`set_link` changes the emulated link the same
    way. :meth:`infer` may be called from several threads at once.
    """

    def __init__(self, model_ref: str, plan: Any, server_address: str | None, bandwidth_mbps: float | None = None,
                 rtt_ms: float = 0.0, timeout_s: float = 10.0, edge_threads: int | None = None, *, seed: int = 0,
                 input_shape: Sequence[int] | None = None, batch_size: int = 1, retries: int = 1,
                 allocator: str = REUSE) -> None:
        import grpc

        if edge_threads:
            torch.set_num_threads(int(edge_threads))
        pin_allocator(allocator)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.link = EmulatedLink(None if bandwidth_mbps is None else float(bandwidth_mbps), float(rtt_ms))
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self._plan = _EdgePlan.of(build_split(model_ref, plan, seed=seed, input_shape=input_shape, batch_size=batch_size))
        self._swap_lock = threading.Lock()
        self._registered: set[str] = set()
        self.n_swaps = 0
        self.server_address = server_address
        self._channel = grpc.insecure_channel(server_address, options=GRPC_OPTIONS) if server_address else None
        self._infer = None if self._channel is None else self._channel.unary_unary(
            METHOD_INFER, request_serializer=None, response_deserializer=None)
        self._ping = None if self._channel is None else self._channel.unary_unary(
            METHOD_PING, request_serializer=None, response_deserializer=None)
        self._register = None if self._channel is None else self._channel.unary_unary(
            METHOD_REGISTER, request_serializer=None, response_deserializer=None)
        self._echo = None if self._channel is None else self._channel.unary_unary(
            METHOD_ECHO, request_serializer=None, response_deserializer=None)
        self._reference = None if self._channel is None else self._channel.unary_unary(
            METHOD_REFERENCE, request_serializer=None, response_deserializer=None)
        self._probe: ReferenceProbe | None = None
        # numpy's BLAS on one thread until close: an optimizer's numpy work in this process would otherwise
        # leave BLAS threads spinning beside the edge stages being timed (latpred.blas)
        self._release_blas = hold_single_threaded_blas()

    # -- the current plan (what a new request starts with) -------------------------------------
    @property
    def built(self) -> BuiltSplit:
        return self._plan.built

    @property
    def split(self) -> SplitModel:
        return self._plan.built.split

    @property
    def send_names(self) -> tuple[str, ...]:
        return self._plan.send_names

    @property
    def recv_names(self) -> tuple[str, ...]:
        return self._plan.recv_names

    @property
    def local_devices(self) -> list[int]:
        return list(self._plan.local_devices)

    @property
    def remote_devices(self) -> list[int]:
        return list(self._plan.remote_devices)

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the current plan (the one new requests start with)."""
        return self._plan.built.fingerprint

    @property
    def module(self) -> torch.nn.Module:
        """The whole (unsplit) model, as rebuilt from the recipe."""
        return self._plan.built.module

    def example_input(self, seed: int | None = None) -> torch.Tensor:
        return self._plan.built.example_input(seed)

    # -- hot-swap -------------------------------------------------------------------------------
    def register_plan(self, plan: Any = None, timeout_s: float | None = None) -> str:
        """Register a plan (default: the current one) with the cloud, which builds its split once.

        Returns the plan's fingerprint. Raises ``RuntimeError`` when the cloud serves another recipe or
        cannot build the plan (configuration errors) and ``grpc.RpcError`` when it is unreachable.
        """
        import grpc

        built = self._plan.built if plan is None else (plan if isinstance(plan, BuiltSplit) else self._plan.built.with_plan(plan))
        if self._register is None:
            return built.fingerprint
        doc = json.dumps({"recipe": built.recipe.to_dict(), "placement": built.placement}).encode()
        try:
            reply = json.loads(self._register(doc, timeout=self.timeout_s if timeout_s is None else timeout_s))
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                raise RuntimeError(f"the cloud at {self.server_address} rejected plan {built.fingerprint}: {e.details()}") from None
            raise
        if reply.get("fingerprint") != built.fingerprint:
            raise RuntimeError(f"the cloud fingerprinted plan {built.fingerprint} as {reply.get('fingerprint')!r} "
                               "(different runtime versions on the two sides?)")
        self._registered.add(built.fingerprint)
        return built.fingerprint

    def set_plan(self, plan: Any, register: bool = True) -> str:
        """Switch to ``plan`` between requests; returns its fingerprint.

        The split is rebuilt from the traced model already held (no re-tracing, same weights). With
        ``register`` the plan is first registered with the cloud (so the first request on it does not
        pay the cloud's build); when the cloud is unreachable it is registered on first use instead.
        Requests already running finish on the plan they started with.
        """
        import grpc

        with self._swap_lock:
            built = self._plan.built.with_plan(plan)
            if built.fingerprint == self._plan.built.fingerprint:
                return built.fingerprint
            new = _EdgePlan.of(built)
            if register and new.remote_devices and self._register is not None and built.fingerprint not in self._registered:
                try:
                    self.register_plan(built)
                except grpc.RpcError:
                    pass  # unreachable now: registered on first use (NOT_FOUND), or the requests fall back
            self._plan = new  # one reference assignment: a request sees the old plan or the new one, never a mix
            self.n_swaps += 1
            return built.fingerprint

    def set_link(self, bandwidth_mbps: float | None, rtt_ms: float = 0.0) -> None:
        """Change the emulated link for the next requests (running ones keep theirs)."""
        self.link = EmulatedLink(None if bandwidth_mbps is None else float(bandwidth_mbps), float(rtt_ms))

    def ping(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """The server's status (``fingerprint``, ``n_computed``, ``pid``, ``threads``, ``n_plans``,
        ``n_computed_by_plan``, ``allocator``: the server process's allocator mode), or ``None`` if unreachable."""
        import grpc

        if self._ping is None:
            return None
        try:
            return json.loads(self._ping(b"", timeout=timeout_s))
        except grpc.RpcError:
            return None

    def probe_link(self, size_bytes: int, reply_bytes: int = 0, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """Measure the link with one round trip that carries no model work: ``size_bytes`` of padding to
        the cloud and ``reply_bytes`` back, each way through the emulated link like a request.

        Returns timings shaped like :meth:`infer`'s (``bytes_sent``, ``bytes_received``, ``transfer_ms``,
        ``attempts`` = 1, ``fallback`` = False, ``probe`` = True), ready for
        :meth:`partition.observers.LinkObserver.record`; ``None`` if the cloud is unreachable or the call
        timed out. Use it to keep the bandwidth estimate current while no request crosses the link
        (an all-edge plan sends nothing).
        """
        import grpc

        for name, v in (("size_bytes", size_bytes), ("reply_bytes", reply_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_PROBE_BYTES:
                raise ValueError(f"{name} must be an integer in [0, {MAX_PROBE_BYTES}], got {v!r}")
        if self._echo is None:
            return None
        link = self.link
        payload = encode_message({"pad": torch.zeros(size_bytes, dtype=torch.uint8)},
                                 {"reply_bytes": reply_bytes, "link": link.to_meta()})
        t0 = time.perf_counter()
        link.send(len(payload))
        try:
            reply = self._echo(payload, timeout=timeout_s)
        except grpc.RpcError:
            return None
        return {"bytes_sent": len(payload), "bytes_received": len(reply), "transfer_ms": (time.perf_counter() - t0) * 1e3,
                "attempts": 1, "fallback": False, "duplicate": False, "probe": True}

    def read_speed(self, cloud: bool = True, timeout_s: float = 2.0) -> dict[str, Any]:
        """Read both machines' speed now: the reference kernel (:mod:`latpred.profiling.reference`) timed
        on the edge's torch threads and, with ``cloud``, on the cloud's (one ``Reference`` RPC).

        Call it between requests (right after one, the machines are still in the same speed episode).
        Returns ``{"edge_reference_ms", "edge_threads", "cloud_reference_ms", "cloud_threads"}``; the
        cloud's entries are ``None`` when not asked for, without a cloud, or when it did not answer.
        """
        import grpc

        if self._probe is None:
            self._probe = ReferenceProbe()
        threads = torch.get_num_threads()
        out: dict[str, Any] = {"edge_reference_ms": self._probe.probe(threads), "edge_threads": threads,
                               "cloud_reference_ms": None, "cloud_threads": None}
        if cloud and self._reference is not None:
            try:
                doc = json.loads(self._reference(b"", timeout=timeout_s))
                out["cloud_reference_ms"], out["cloud_threads"] = float(doc["reference_ms"]), int(doc["threads"])
            except grpc.RpcError:
                pass
        return out

    def infer(self, *inputs: Any, request_id: str | None = None) -> tuple[Any, dict[str, Any]]:
        """Run one request split edge | cloud, on the plan current when it starts.

        Returns:
            ``(output, timings)``; timings (ms unless named otherwise): ``edge_ms`` (compute on the
            edge, the fallback's included), ``transfer_ms`` (time of the cloud round trip minus the
            cloud's compute: emulated link delays, encoding, gRPC; on fallback, the time lost on the
            failed tries), ``cloud_ms`` (compute on the cloud), ``total_ms`` (wall time),
            ``fallback`` (bool), ``request_id``, ``bytes_sent``, ``bytes_received``, ``attempts``,
            ``duplicate`` (the cloud answered from its cache), ``error`` (last RPC error or ``None``),
            ``fingerprint`` (the plan the request ran on), ``registered`` (the plan was registered
            on the fly because the cloud did not know it).

        Raises:
            RuntimeError: the cloud serves another model/plan (fingerprint mismatch) or rejects the
                request as malformed: a configuration error, not an outage.
        """
        import grpc

        st = self._plan  # snapshot: the whole request runs on this plan and link
        link = self.link
        split = st.built.split
        rid = request_id or uuid.uuid4().hex
        t0 = time.perf_counter()
        tm: dict[str, Any] = {"edge_ms": 0.0, "transfer_ms": 0.0, "cloud_ms": 0.0, "total_ms": 0.0, "fallback": False,
                              "request_id": rid, "bytes_sent": 0, "bytes_received": 0, "attempts": 0, "duplicate": False,
                              "error": None, "fingerprint": st.built.fingerprint, "registered": False}
        with torch.inference_mode():
            values = split.run_stages(split.inputs_to_values(*inputs), st.local_devices)
        tm["edge_ms"] = (time.perf_counter() - t0) * 1e3
        if st.remote_devices:
            reply = None
            t1 = time.perf_counter()
            if self._infer is not None:
                payload = encode_message({n: values[n] for n in st.send_names},
                                         {"request_id": rid, "fingerprint": st.built.fingerprint, "link": link.to_meta()})
                deadline = t1 + self.timeout_s
                tries_left = 1 + self.retries
                while tries_left > 0:
                    tries_left -= 1
                    if time.perf_counter() >= deadline:
                        tm["error"] = tm["error"] or "deadline passed"
                        break
                    tm["attempts"] += 1
                    tm["bytes_sent"] += len(payload)
                    link.send(len(payload))
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        tm["error"] = "deadline passed while sending"
                        break
                    try:
                        reply = self._infer(payload, timeout=remaining)
                        break
                    except grpc.RpcError as e:
                        code = e.code() if hasattr(e, "code") else None
                        detail = e.details() if hasattr(e, "details") else str(e)
                        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                            raise RuntimeError(f"the cloud at {self.server_address} rejected request {rid}: {detail}") from None
                        tm["error"] = f"{code.name if code is not None else 'error'}: {detail}"
                        if code == grpc.StatusCode.NOT_FOUND and not tm["registered"]:
                            # the cloud does not know this plan (evicted, restarted): register it, retry once more
                            tm["registered"] = True
                            try:
                                self.register_plan(st.built, timeout_s=max(0.05, deadline - time.perf_counter()))
                            except grpc.RpcError as e2:
                                tm["error"] = f"registering plan {st.built.fingerprint} failed: {e2.code().name}"
                                continue
                            tries_left += 1
            if reply is not None:
                out_values, meta = decode_message(reply)
                tm["bytes_received"] = len(reply)
                tm["cloud_ms"] = float(meta.get("cloud_ms", 0.0))
                tm["duplicate"] = bool(meta.get("duplicate", False))
                tm["transfer_ms"] = max(0.0, (time.perf_counter() - t1) * 1e3 - tm["cloud_ms"])
                values.update(out_values)
            else:
                tm["transfer_ms"] = (time.perf_counter() - t1) * 1e3
                tm["fallback"] = True
                if self._infer is None:
                    tm["error"] = "no cloud address: the cloud stages run on the edge"
                t2 = time.perf_counter()
                with torch.inference_mode():
                    split.run_stages(values, st.remote_devices)
                tm["edge_ms"] += (time.perf_counter() - t2) * 1e3
        out = split.build_output(values)
        tm["total_ms"] = (time.perf_counter() - t0) * 1e3
        return out, tm

    def close(self) -> None:
        self._release_blas()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._infer = self._ping = self._register = self._echo = self._reference = None

    def __enter__(self) -> EdgeRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- measurement ------------------------------------------------------------------------------------
@dataclass
class SplitMeasurement:
    """Result of :func:`measure_split` (medians over the measured requests, in ms).

    ``float(m)`` is :attr:`median_ms`, the median end-to-end latency (wall time). When the
    measurement was normalised (``nominal_ms``), :attr:`normalised_ms` is the median of the requests'
    latencies at the nominal machine speed and :attr:`edge_slowdown` / :attr:`cloud_slowdown` the
    median reference reading over the nominal (1.0: the machine at its fastest; ``None``: that side
    was not normalised). :attr:`latency_ms` is the normalised figure when there is one, else the raw.
    """

    median_ms: float
    edge_ms: float
    transfer_ms: float
    cloud_ms: float
    n_requests: int
    n_fallback: int
    samples: list[dict[str, Any]] = field(default_factory=list)
    normalised_ms: float | None = None
    edge_slowdown: float | None = None
    cloud_slowdown: float | None = None

    @property
    def latency_ms(self) -> float:
        return float(self.median_ms if self.normalised_ms is None else self.normalised_ms)

    def __float__(self) -> float:
        return float(self.median_ms)


def _check_nominals(nominal_ms: Any) -> tuple[Any, Any]:
    """``(edge, cloud)`` with each side ``None``, a float or a ``{threads: ms}`` dict; clear errors otherwise."""
    if not isinstance(nominal_ms, (tuple, list)) or len(nominal_ms) != 2:
        raise ValueError(f"nominal_ms must be (edge, cloud), got {nominal_ms!r}")
    out = []
    for side, nominal in zip(("edge", "cloud"), nominal_ms):
        if nominal is None or isinstance(nominal, Mapping):
            out.append(parse_nominal(nominal, f"{side} reference nominal") or None)
        elif isinstance(nominal, bool) or not isinstance(nominal, (int, float)) or not math.isfinite(nominal) or nominal <= 0:
            raise ValueError(f"{side} reference nominal must be a positive number of ms or a {{threads: ms}} mapping, "
                             f"got {nominal!r}")
        else:
            out.append(float(nominal))
    return out[0], out[1]


def _check_exponents(exponents: Any) -> tuple[float, float]:
    """``(edge, cloud)`` reference exponents, each in [0, 1]; clear errors otherwise."""
    if not isinstance(exponents, (tuple, list)) or len(exponents) != 2:
        raise ValueError(f"reference_exponents must be (edge, cloud), got {exponents!r}")
    return check_exponent(exponents[0], "edge reference exponent"), check_exponent(exponents[1], "cloud reference exponent")


def normalise_request(timings: Mapping[str, Any], speed: Mapping[str, Any],
                      nominal_ms: tuple[Any, Any], exponents: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
    """One request's end-to-end latency at the nominal machine speed.

    The compute of each side (``edge_ms``, ``cloud_ms`` of :meth:`EdgeRunner.infer`) is multiplied by
    that side's nominal over its reference reading (:meth:`EdgeRunner.read_speed`) to the power of that
    side's exponent (``exponents``: ``(edge, cloud)``, 1 under the constant scheme; under the working-set
    scheme the side's nodes' time-weighted exponent, :func:`latpred.graph.measure.model_reference_exponent`),
    as the profiler normalises module timings; the link's share (emulated delays, encoding, gRPC) is left as measured.
    ``nominal_ms``: ``(edge, cloud)``, each a ``{threads: ms}`` mapping (a predictor's
    ``metadata["reference_nominal_ms"]``), a number of ms, or ``None`` (that side stays raw). A side
    whose nominal or reading is missing stays raw too.

    Returns ``{"normalised_ms", "edge_slowdown", "cloud_slowdown"}`` (slowdown: reading / nominal, or
    ``None`` for a side left raw).
    """
    total = float(timings["total_ms"])
    out: dict[str, Any] = {"edge_slowdown": None, "cloud_slowdown": None}
    betas = dict(zip(("edge", "cloud"), _check_exponents(exponents)))
    for side, nominal in zip(("edge", "cloud"), _check_nominals(nominal_ms)):
        threads, ref = speed.get(f"{side}_threads"), speed.get(f"{side}_reference_ms")
        nom = nominal.get(int(threads)) if isinstance(nominal, dict) and threads is not None else nominal
        if nom is None or not ref:
            continue
        slowdown = float(ref) / nom
        out[f"{side}_slowdown"] = slowdown
        total += float(timings.get(f"{side}_ms", 0.0)) * (slowdown ** -betas[side] - 1.0)
    out["normalised_ms"] = total
    return out


def measure_split(model_ref: str, plan: Any, *, bandwidth_mbps: float | None = None, rtt_ms: float = 0.0, n_requests: int = 20,
                  warmup: int = 2, edge_threads: int | None = None, cloud_threads: int | None = None, seed: int = 0,
                  input_shape: Sequence[int] | None = None, batch_size: int = 1, timeout_s: float = 30.0,
                  server_address: str | None = None, edge_cpus: Sequence[int] | None = None,
                  cloud_cpus: Sequence[int] | None = None, nominal_ms: tuple[Any, Any] | None = None,
                  reference_exponents: tuple[float, float] = (1.0, 1.0)) -> SplitMeasurement:
    """Measure a plan for real: start a :class:`CloudServer` process (unless ``server_address`` is given
    or the plan runs all on the edge), run ``warmup + n_requests`` requests through an
    :class:`EdgeRunner` and return the median timings (:class:`SplitMeasurement`; ``median_ms`` is
    the median end-to-end latency in ms). ``edge_cpus`` pins this process for the measurement (restored
    after) and ``cloud_cpus`` the server process, so that one machine can stand in for an edge and a
    cloud that do not share cores.

    ``nominal_ms`` (``(edge, cloud)``, see :func:`normalise_request`; e.g. both predictors'
    ``metadata["reference_nominal_ms"]``): after every measured request both sides time the reference
    kernel (outside the request's wall time) and the result carries :attr:`SplitMeasurement.normalised_ms`,
    the latency in the units of predictors trained on reference-normalised profiles. Each sample then
    also holds the readings and its ``normalised_ms``. ``reference_exponents``: each side's exponent
    (:func:`normalise_request`; 1 for predictors of the constant scheme)."""
    if n_requests < 1:
        raise ValueError(f"n_requests must be >= 1, got {n_requests}")
    _check_cpus(edge_cpus, "edge_cpus")
    if nominal_ms is not None:
        nominal_ms = _check_nominals(nominal_ms)  # before anything starts
    reference_exponents = _check_exponents(reference_exponents)
    placement = placement_of(plan)
    remote = any(d >= 1 for d in placement.values())
    server = None
    restore = pin_process(os.getpid(), edge_cpus) if edge_cpus is not None else None
    try:
        if remote and server_address is None:
            server = CloudServer(model_ref, placement, seed=seed, input_shape=input_shape, batch_size=batch_size,
                                 threads=cloud_threads, cpus=cloud_cpus).start()
            server_address = server.address
        with EdgeRunner(model_ref, placement, server_address if remote else None, bandwidth_mbps, rtt_ms, timeout_s,
                        edge_threads, seed=seed, input_shape=input_shape, batch_size=batch_size) as edge:
            x = edge.example_input()
            samples = []
            for i in range(warmup + n_requests):
                _, tm = edge.infer(x)
                if i >= warmup:
                    if nominal_ms is not None:
                        speed = edge.read_speed(cloud=remote, timeout_s=min(timeout_s, 5.0))
                        tm.update(speed)
                        tm.update(normalise_request(tm, speed, nominal_ms, reference_exponents))
                    samples.append(tm)
    finally:
        if server is not None:
            server.stop()
        if restore is not None:
            pin_process(os.getpid(), restore)

    def med(key: str) -> float | None:
        values = [s[key] for s in samples if s.get(key) is not None]
        return float(statistics.median(values)) if values else None
    return SplitMeasurement(med("total_ms"), med("edge_ms"), med("transfer_ms"), med("cloud_ms"), len(samples),
                            sum(bool(s["fallback"]) for s in samples), samples, med("normalised_ms"),
                            med("edge_slowdown"), med("cloud_slowdown"))

