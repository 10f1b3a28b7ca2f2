"""Wire format and emulated link of the split runtime (:mod:`partition.runtime`). Never uses pickle.

**Message format** (:func:`encode_message` / :func:`decode_message`)::

    b"LPTM1\\n" | header length (8 bytes, little-endian uint64) | header (UTF-8 JSON) | safetensors blob

The JSON header holds ``meta`` (request id, plan fingerprint, timings, ...), ``values`` (name → an
encoded value) and ``blob`` (the safetensors blob's length in bytes). Tensors live in the
safetensors blob (``safetensors.torch.save`` / ``load``: a JSON header plus raw buffers, no code);
a value refers to one as ``{"tensor": key}``. Other values stage boundaries may carry (shape ints,
``torch.Size``, tuples, lists, dicts with string keys, ``None``, bools, floats, strings, dtypes)
are encoded as tagged JSON. Anything else is refused with :class:`TensorCodecError`; so is any
payload without the magic prefix (a pickle or ``torch.save`` stream is named as such).

**Emulated link** (:class:`EmulatedLink`): the *sender* of a message sleeps ``rtt_ms / 2 +
size_bytes * 8 / (bandwidth_mbps * 1e6) * 1e3`` ms before sending it (1 Mbps = 1e6 bit/s). A
request and its reply thus cost one RTT plus both messages' serialisation over the bandwidth,
which matches one transfer of :class:`partition.cost.Link` per direction (the cost model charges
``rtt_ms`` per tensor sent; here one message carries every tensor that crosses the cut, so the
runtime pays ``rtt_ms`` once per round trip). Real loopback time (gRPC, encoding) comes on top.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MAGIC", "TensorCodecError", "encode_message", "decode_message", "EmulatedLink", "SERVICE", "METHOD_INFER",
           "METHOD_PING", "GRPC_OPTIONS"]

MAGIC = b"LPTM1\n"
_LEN = struct.Struct("<Q")
#: gRPC service and method paths of the cloud server (raw-bytes generic handlers, no protoc)
SERVICE = "latpred.partition.SplitCloud"
METHOD_INFER = f"/{SERVICE}/Infer"
METHOD_PING = f"/{SERVICE}/Ping"
#: channel/server options: no message size limit (intermediate activations can be tens of MB)
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
                                                      torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
                                                      torch.complex64)}


class TensorCodecError(ValueError):
    """A message cannot be encoded (unsupported value) or decoded (not a latpred tensor message)."""


# -- encoding ---------------------------------------------------------------------------------------
def _encode_value(v: Any, tensors: dict[str, torch.Tensor], seen: set[int], path: str) -> Any:
    if isinstance(v, torch.Tensor):
        key = f"t{len(tensors)}"
        t = v.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        try:
            ptr = t.untyped_storage().data_ptr()
            whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        except (RuntimeError, NotImplementedError):
            ptr, whole = -1, False
        if ptr in seen or not whole:  # safetensors refuses shared or partial storages: send a compact copy
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        tensors[key] = t
        return {"tensor": key}
    if v is None or isinstance(v, (bool, str)):
        return {"v": v}
    if isinstance(v, int):
        return {"v": int(v)}
    if isinstance(v, float):
        return {"v": v} if math.isfinite(v) else {"float": str(v)}
    if isinstance(v, torch.Size):
        return {"size": [int(d) for d in v]}
    if isinstance(v, torch.dtype):
        name = str(v).removeprefix("torch.")
        if name not in _DTYPES:
            raise TensorCodecError(f"{path}: dtype {v} is not supported on the wire")
        return {"dtype": name}
    if isinstance(v, tuple):
        return {"tuple": [_encode_value(x, tensors, seen, f"{path}[{i}]") for i, x in enumerate(v)]}
    if isinstance(v, list):
        return {"list": [_encode_value(x, tensors, seen, f"{path}[{i}]") for i, x in enumerate(v)]}
    if isinstance(v, Mapping):
        if not all(isinstance(k, str) for k in v):
            raise TensorCodecError(f"{path}: only dicts with string keys can be sent")
        return {"dict": {k: _encode_value(x, tensors, seen, f"{path}[{k!r}]") for k, x in v.items()}}
    raise TensorCodecError(f"{path}: cannot send a {type(v).__name__} (tensors, numbers, strings, None, torch.Size, "
                           "dtypes and tuples/lists/dicts of them only)")


def encode_message(values: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> bytes:
    """Encode named values (tensors and plain data) plus JSON metadata into one message (no pickle)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    enc = {str(k): _encode_value(v, tensors, seen, str(k)) for k, v in values.items()}
    blob = save(tensors) if tensors else b""
    try:
        header = json.dumps({"meta": dict(meta or {}), "values": enc, "blob": len(blob)}, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise TensorCodecError(f"message metadata is not JSON-safe: {e}") from None
    return b"".join((MAGIC, _LEN.pack(len(header)), header, blob))


# -- decoding ---------------------------------------------------------------------------------------
def _not_ours(data: bytes) -> str:
    head = bytes(data[:8])
    if head[:1] == b"\x80":
        return f"the payload looks like a pickle stream ({head!r}...); pickle is never accepted (it can run code)"
    if head[:2] == b"PK":
        return f"the payload looks like a torch.save/zip archive ({head!r}...); it is not accepted (it holds pickle)"
    return f"the payload is not a latpred tensor message (bad magic {head!r}, expected {MAGIC!r})"


def _decode_value(v: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if not isinstance(v, dict) or len(v) != 1:
        raise TensorCodecError(f"malformed encoded value {str(v)[:80]!r}")
    (tag, x), = v.items()
    if tag == "tensor":
        if x not in tensors:
            raise TensorCodecError(f"the message refers to a missing tensor {x!r}")
        return tensors[x]
    if tag == "v":
        return x
    if tag == "float":
        return float(x)
    if tag == "size":
        return torch.Size(int(d) for d in x)
    if tag == "dtype":
        if x not in _DTYPES:
            raise TensorCodecError(f"unknown dtype {x!r}")
        return _DTYPES[x]
    if tag == "tuple":
        return tuple(_decode_value(y, tensors) for y in x)
    if tag == "list":
        return [_decode_value(y, tensors) for y in x]
    if tag == "dict":
        return {k: _decode_value(y, tensors) for k, y in x.items()}
    raise TensorCodecError(f"unknown value tag {tag!r}")


def decode_message(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decode a message of :func:`encode_message`: returns ``(values, meta)``.

    Raises:
        TensorCodecError: not a latpred message (a pickle payload is named as such), truncated, or
            malformed.
    """
    from safetensors.torch import load

    data = bytes(data)
    if not data.startswith(MAGIC):
        raise TensorCodecError(_not_ours(data))
    off = len(MAGIC)
    if len(data) < off + _LEN.size:
        raise TensorCodecError("truncated message (no header length)")
    (hlen,) = _LEN.unpack_from(data, off)
    off += _LEN.size
    if hlen > len(data) - off:
        raise TensorCodecError(f"truncated message (header of {hlen} bytes, {len(data) - off} left)")
    try:
        header = json.loads(data[off:off + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TensorCodecError(f"malformed message header: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("values"), dict) or not isinstance(header.get("blob"), int):
        raise TensorCodecError("malformed message header (needs values and blob)")
    blob = data[off + hlen:]
    if len(blob) != header["blob"]:
        raise TensorCodecError(f"truncated message (tensor blob of {len(blob)} bytes, header says {header['blob']})")
    try:
        tensors = load(blob) if blob else {}
    except Exception as e:  # safetensors raises its own SafetensorError
        raise TensorCodecError(f"malformed safetensors blob: {e}") from None
    values = {k: _decode_value(v, tensors) for k, v in header["values"].items()}
    meta = header.get("meta") or {}
    if not isinstance(meta, dict):
        raise TensorCodecError("malformed message metadata")
    return values, meta


# -- emulated link ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmulatedLink:
    """An emulated network link: the sender of ``size_bytes`` sleeps :meth:`delay_ms` before sending.

    Attributes:
        bandwidth_mbps: megabits per second (1e6 bit/s); ``None`` or ``inf``: no bandwidth delay.
        rtt_ms: round-trip time in ms; each direction pays half.
    """

    bandwidth_mbps: float | None = None
    rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        bw = self.bandwidth_mbps
        if bw is not None and (isinstance(bw, bool) or not isinstance(bw, (int, float)) or math.isnan(bw) or bw <= 0):
            raise ValueError(f"bandwidth_mbps must be > 0 (or None for no limit), got {bw!r}")
        if isinstance(self.rtt_ms, bool) or not isinstance(self.rtt_ms, (int, float)) or not math.isfinite(self.rtt_ms) \
                or self.rtt_ms < 0:
            raise ValueError(f"rtt_ms must be a finite number >= 0, got {self.rtt_ms!r}")

    def delay_ms(self, size_bytes: int) -> float:
        """One-way delay in ms of a message of ``size_bytes``: ``rtt_ms / 2 + size_bytes * 8 / bandwidth``."""
        bw = self.bandwidth_mbps
        wire = 0.0 if bw is None or math.isinf(bw) else size_bytes * 8 / (bw * 1e6) * 1e3
        return self.rtt_ms / 2 + wire

    def send(self, size_bytes: int) -> float:
        """Sleep the one-way delay of a message of ``size_bytes``; returns the delay in ms."""
        d = self.delay_ms(size_bytes)
        if d > 0:
            time.sleep(d / 1e3)
        return d

    def to_meta(self) -> dict[str, Any]:
        return {"bandwidth_mbps": self.bandwidth_mbps, "rtt_ms": self.rtt_ms}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> EmulatedLink:
        bw = meta.get("bandwidth_mbps")
        return cls(None if bw is None else float(bw), float(meta.get("rtt_ms", 0.0)))
