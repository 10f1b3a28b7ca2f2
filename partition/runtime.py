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

Run a server by hand: ``python -m partition._serve`` reading one JSON config line from stdin
(see :class:`CloudServer`); it prints ``PARTITION_CLOUD_READY port=<port>`` and serves until stdin
closes.
"""

from __future__ import annotations

import hashlib
import json
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
           "serve", "READY_PREFIX"]

READY_PREFIX = "PARTITION_CLOUD_READY"


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

    def example_input(self, seed: int | None = None) -> torch.Tensor:
        """A random input of the recipe's batch size and input shape."""
        g = torch.Generator().manual_seed(self.recipe.seed if seed is None else seed)
        return torch.randn(self.recipe.batch_size, *self.input_shape, generator=g)


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
    names = {n.name for n in gm.graph.nodes}
    unknown = sorted(set(placement) - names)
    missing = sorted(n.name for n in gm.graph.nodes if n.op.startswith("call_") and n.name not in placement)
    if unknown or missing:
        raise ValueError(f"the plan does not fit model {model_ref!r}: unknown node(s) {unknown[:5]}, unplaced node(s) {missing[:5]}; "
                         "was it made for another model?")
    split = split_graph_module(gm, placement)
    return BuiltSplit(recipe, ref.module, split, placement, shape, _fingerprint(recipe, placement))


# -- the cloud side ---------------------------------------------------------------------------------
class _CloudService:
    """Request handlers of the cloud server (raw bytes in, raw bytes out)."""

    def __init__(self, built: BuiltSplit, cache_size: int = 64) -> None:
        self.built = built
        self.send, self.recv = built.split.boundary(1)
        self.remote = [d for d in built.split.devices if d >= 1]
        self.lock = threading.Lock()
        self.cache: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self.cache_size = int(cache_size)
        self.n_computed = 0

    def infer(self, request: bytes, context: Any) -> bytes:
        import grpc

        try:
            values, meta = decode_message(request)
        except TensorCodecError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {e}")
        if meta.get("fingerprint") != self.built.fingerprint:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"model/plan mismatch: the cloud serves fingerprint {self.built.fingerprint}, the request has "
                          f"{meta.get('fingerprint')!r} (same model_ref, seed, input_shape, batch_size and plan on both sides?)")
        rid = str(meta.get("request_id", ""))
        missing = [n for n in self.send if n not in values]
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
                        env = self.built.split.run_stages(dict(values), self.remote)
                except Exception as e:  # report any model error to the edge (it falls back)
                    context.abort(grpc.StatusCode.INTERNAL, f"request {rid}: cloud stages failed: {type(e).__name__}: {e}")
                cloud_ms = (time.perf_counter() - t) * 1e3
                outputs = {n: env[n] for n in self.recv}
                self.n_computed += 1
                if rid:
                    self.cache[rid] = (outputs, cloud_ms)
                    while len(self.cache) > self.cache_size:
                        self.cache.popitem(last=False)
        reply = encode_message(outputs, {"request_id": rid, "cloud_ms": cloud_ms, "duplicate": duplicate})
        EmulatedLink.from_meta(meta.get("link", {})).send(len(reply))
        return reply

    def ping(self, request: bytes, context: Any) -> bytes:
        return json.dumps({"fingerprint": self.built.fingerprint, "n_computed": self.n_computed, "pid": os.getpid(),
                           "threads": torch.get_num_threads()}).encode()


def serve(config: Mapping[str, Any]) -> tuple[Any, int, _CloudService]:
    """Start a cloud gRPC server in this process; returns ``(grpc server, port, service)``.

    ``config``: ``recipe`` (:meth:`ModelRecipe.to_dict`), ``placement`` (``{node name: device}``),
    optional ``threads``, ``host`` (default ``127.0.0.1``), ``port`` (0: any free port),
    ``cache_size`` (replies kept for deduplication).
    """
    import grpc

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    recipe = ModelRecipe.from_dict(config["recipe"])
    built = build_split(recipe.model_ref, dict(config["placement"]), seed=recipe.seed, input_shape=recipe.input_shape,
                        batch_size=recipe.batch_size)
    service = _CloudService(built, int(config.get("cache_size", 64)))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    handlers = {"Infer": grpc.unary_unary_rpc_method_handler(service.infer),
                "Ping": grpc.unary_unary_rpc_method_handler(service.ping)}
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
        host, port: where to listen (port 0: a free port, read back from the process).
        startup_timeout_s: how long :meth:`start` waits for the server to be ready.
        cache_size: replies kept for request deduplication.
        cwd: working directory of the process (default: this one; factories must be importable there).

    Use as a context manager, or call :meth:`start` / :meth:`stop`. :attr:`address` is
    ``host:port`` once started.
    """

    def __init__(self, model_ref: str, plan: Any, *, seed: int = 0, input_shape: Sequence[int] | None = None,
                 batch_size: int = 1, threads: int | None = None, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout_s: float = 120.0, cache_size: int = 64, cwd: str | None = None) -> None:
        recipe = ModelRecipe(model_ref, int(seed), None if input_shape is None else tuple(int(d) for d in input_shape), int(batch_size))
        self.config = {"recipe": recipe.to_dict(), "placement": placement_of(plan), "threads": threads, "host": host,
                       "port": int(port), "cache_size": int(cache_size)}
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
        seed, input_shape, batch_size: the model recipe (same as the server's).
        retries: extra tries after a failed RPC (same ``request_id``; the cloud deduplicates).
    """

    def __init__(self, model_ref: str, plan: Any, server_address: str | None, bandwidth_mbps: float | None = None,
                 rtt_ms: float = 0.0, timeout_s: float = 10.0, edge_threads: int | None = None, *, seed: int = 0,
                 input_shape: Sequence[int] | None = None, batch_size: int = 1, retries: int = 1) -> None:
        import grpc

        if edge_threads:
            torch.set_num_threads(int(edge_threads))
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.link = EmulatedLink(None if bandwidth_mbps is None else float(bandwidth_mbps), float(rtt_ms))
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.built = build_split(model_ref, plan, seed=seed, input_shape=input_shape, batch_size=batch_size)
        self.split = self.built.split
        self.send_names, self.recv_names = self.split.boundary(1)
        self.local_devices = [d for d in self.split.devices if d < 1]
        self.remote_devices = [d for d in self.split.devices if d >= 1]
        self.server_address = server_address
        self._channel = grpc.insecure_channel(server_address, options=GRPC_OPTIONS) if server_address else None
        self._infer = None if self._channel is None else self._channel.unary_unary(
            METHOD_INFER, request_serializer=None, response_deserializer=None)
        self._ping = None if self._channel is None else self._channel.unary_unary(
            METHOD_PING, request_serializer=None, response_deserializer=None)

    @property
    def module(self) -> torch.nn.Module:
        """The whole (unsplit) model, as rebuilt from the recipe."""
        return self.built.module

    def example_input(self, seed: int | None = None) -> torch.Tensor:
        return self.built.example_input(seed)

    def ping(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """The server's status (``fingerprint``, ``n_computed``, ``pid``, ``threads``), or ``None`` if unreachable."""
        import grpc

        if self._ping is None:
            return None
        try:
            return json.loads(self._ping(b"", timeout=timeout_s))
        except grpc.RpcError:
            return None

    def infer(self, *inputs: Any, request_id: str | None = None) -> tuple[Any, dict[str, Any]]:
        """Run one request split edge | cloud.

        Returns:
            ``(output, timings)``; timings (ms unless named otherwise): ``edge_ms`` (compute on the
            edge, the fallback's included), ``transfer_ms`` (time of the cloud round trip minus the
            cloud's compute: emulated link delays, encoding, gRPC; on fallback, the time lost on the
            failed tries), ``cloud_ms`` (compute on the cloud), ``total_ms`` (wall time),
            ``fallback`` (bool), ``request_id``, ``bytes_sent``, ``bytes_received``, ``attempts``,
            ``duplicate`` (the cloud answered from its cache), ``error`` (last RPC error or ``None``).

        Raises:
            RuntimeError: the cloud serves another model/plan (fingerprint mismatch) or rejects the
                request as malformed: a configuration error, not an outage.
        """
        import grpc

        rid = request_id or uuid.uuid4().hex
        t0 = time.perf_counter()
        tm: dict[str, Any] = {"edge_ms": 0.0, "transfer_ms": 0.0, "cloud_ms": 0.0, "total_ms": 0.0, "fallback": False,
                              "request_id": rid, "bytes_sent": 0, "bytes_received": 0, "attempts": 0, "duplicate": False,
                              "error": None}
        with torch.inference_mode():
            values = self.split.run_stages(self.split.inputs_to_values(*inputs), self.local_devices)
        tm["edge_ms"] = (time.perf_counter() - t0) * 1e3
        if self.remote_devices:
            reply = None
            t1 = time.perf_counter()
            if self._infer is not None:
                payload = encode_message({n: values[n] for n in self.send_names},
                                         {"request_id": rid, "fingerprint": self.built.fingerprint, "link": self.link.to_meta()})
                deadline = t1 + self.timeout_s
                for _ in range(1 + self.retries):
                    if time.perf_counter() >= deadline:
                        tm["error"] = tm["error"] or "deadline passed"
                        break
                    tm["attempts"] += 1
                    tm["bytes_sent"] += len(payload)
                    self.link.send(len(payload))
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
                    self.split.run_stages(values, self.remote_devices)
                tm["edge_ms"] += (time.perf_counter() - t2) * 1e3
        out = self.split.build_output(values)
        tm["total_ms"] = (time.perf_counter() - t0) * 1e3
        return out, tm

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._infer = self._ping = None

    def __enter__(self) -> EdgeRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- measurement ------------------------------------------------------------------------------------
@dataclass
class SplitMeasurement:
    """Result of :func:`measure_split` (medians over the measured requests, in ms).

    ``float(m)`` is :attr:`median_ms`, the median end-to-end latency.
    """

    median_ms: float
    edge_ms: float
    transfer_ms: float
    cloud_ms: float
    n_requests: int
    n_fallback: int
    samples: list[dict[str, Any]] = field(default_factory=list)

    def __float__(self) -> float:
        return float(self.median_ms)


def measure_split(model_ref: str, plan: Any, *, bandwidth_mbps: float | None = None, rtt_ms: float = 0.0, n_requests: int = 20,
                  warmup: int = 2, edge_threads: int | None = None, cloud_threads: int | None = None, seed: int = 0,
                  input_shape: Sequence[int] | None = None, batch_size: int = 1, timeout_s: float = 30.0,
                  server_address: str | None = None) -> SplitMeasurement:
    """Measure a plan for real: start a :class:`CloudServer` process (unless ``server_address`` is given
    or the plan runs all on the edge), run ``warmup + n_requests`` requests through an
    :class:`EdgeRunner` and return the median timings (:class:`SplitMeasurement`; ``median_ms`` is
    the median end-to-end latency in ms)."""
    if n_requests < 1:
        raise ValueError(f"n_requests must be >= 1, got {n_requests}")
    placement = placement_of(plan)
    remote = any(d >= 1 for d in placement.values())
    server = None
    try:
        if remote and server_address is None:
            server = CloudServer(model_ref, placement, seed=seed, input_shape=input_shape, batch_size=batch_size,
                                 threads=cloud_threads).start()
            server_address = server.address
        with EdgeRunner(model_ref, placement, server_address if remote else None, bandwidth_mbps, rtt_ms, timeout_s,
                        edge_threads, seed=seed, input_shape=input_shape, batch_size=batch_size) as edge:
            x = edge.example_input()
            samples = []
            for i in range(warmup + n_requests):
                _, tm = edge.infer(x)
                if i >= warmup:
                    samples.append(tm)
    finally:
        if server is not None:
            server.stop()

    def med(key: str) -> float:
        return float(statistics.median(s[key] for s in samples))
    return SplitMeasurement(med("total_ms"), med("edge_ms"), med("transfer_ms"), med("cloud_ms"), len(samples),
                            sum(bool(s["fallback"]) for s in samples), samples)

