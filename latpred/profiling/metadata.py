"""Facts about the device a profile was taken on, to store next to the samples.

A latency predictor belongs to a (host, device, software) triple: small-batch eager GPU latency
follows the host CPU as much as the GPU. :func:`device_metadata` records all three, as a
JSON-serialisable dict, with a short ``fingerprint`` that identifies the triple across runs and
containers (the hostname is recorded but not part of the fingerprint: containers change it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil

from latpred.errors import DeviceError

__all__ = ["device_metadata", "fingerprint", "IDENTITY_KEYS", "identity_differences", "check_same_machine"]

_FINGERPRINT_KEYS = ("kind", "cpu_model", "cpu_count_logical", "gpu_name", "torch_version")
#: facts that make two machines different devices for a latency predictor. The fingerprint keeps its
#: original keys (stores written before these facts were recorded keep their device ids), so these are
#: compared where a store or predictor meets a machine: a VM's ``model name`` ("AMD EPYC") can hide two
#: CPU generations with different vector units, and the kernels torch picks follow ``cpu_isa``
IDENTITY_KEYS = ("kind", "cpu_model", "cpu_family", "cpu_model_number", "cpu_isa", "cpu_simd_flags",
                 "cpu_count_logical", "gpu_name", "torch_version")
#: CPU flags that change which kernels run (vector width, fused multiply-add, matrix units)
_SIMD_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4")
_SMI_TIMEOUT_S = 5.0


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _cpu_identity() -> dict[str, Any]:
    """Family, model number, stepping and vector-unit flags of CPU 0 (``/proc/cpuinfo``; None when
    unknown), and the instruction set torch dispatches its CPU kernels for (``"AVX2"``, ``"AVX512"``)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            break  # CPU 0 only
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())

    def number(key: str) -> int | None:
        try:
            return int(fields[key])
        except (KeyError, ValueError):
            return None

    flags = fields.get("flags")
    simd = sorted({f for f in flags.split() if f.startswith(_SIMD_FLAG_PREFIXES)}) if flags is not None else None
    try:
        import torch

        isa = str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError, RuntimeError):
        isa = None
    return {"cpu_family": number("cpu family"), "cpu_model_number": number("model"), "cpu_stepping": number("stepping"),
            "cpu_simd_flags": " ".join(simd) if simd is not None else None, "cpu_isa": isa}


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: recorded -> current"`` for each :data:`IDENTITY_KEYS` fact both dicts record and that differs.

    Facts one side does not record (metadata written before they were) are not compared, so an empty
    list means "no known difference", not "the same machine".
    """
    out = []
    for key in IDENTITY_KEYS:
        a, b = recorded.get(key), current.get(key)
        if a is not None and b is not None and a != b:
            out.append(f"{key}: {a} -> {b}")
    return out


def check_same_machine(recorded: dict[str, Any], current: dict[str, Any], what: str) -> None:
    """Raise :class:`DeviceError` naming every differing identity fact when ``current`` is not the machine
    that ``recorded`` describes (``what``: the thing recorded there, e.g. "store x.sqlite, device 1")."""
    diffs = identity_differences(recorded, current)
    if diffs:
        raise DeviceError(f"{what} was measured on another machine than this one ({'; '.join(diffs)}): its "
                          f"samples and this machine's cannot be pooled; profile into a new store")


def _size_bytes(text: str) -> int | None:
    """Bytes of a sysfs cache size such as ``32768K`` or ``32M`` (None when unreadable)."""
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    number = t.rstrip("KMGB")
    if not number:
        return None
    try:
        return int(float(number) * mult)
    except ValueError:
        return None


def _cpu_cache_bytes(level: int | None = None) -> int | None:
    """Size of CPU 0's largest (last-level) data or unified cache, or of its cache of ``level`` (2: the
    private per-core L2), from sysfs; None when unknown."""
    sizes = []
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (d / "type").read_text().strip() in ("Data", "Unified") and (
                    level is None or (d / "level").read_text().strip() == str(level)):
                size = _size_bytes((d / "size").read_text())
                if size:
                    sizes.append(size)
        except OSError:
            continue
    return max(sizes) if sizes else None


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 quota (containers), or ``None`` when unlimited/unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _affinity_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return None


def _driver_version() -> str | None:
    """NVIDIA driver version: NVML if ``pynvml`` imports, else ``nvidia-smi``, else ``None``."""
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                version = pynvml.nvmlSystemGetDriverVersion()
            finally:
                pynvml.nvmlShutdown()
            return version.decode() if isinstance(version, bytes) else str(version)
        except Exception:  # pynvml.NVMLError: no usable NVML; try nvidia-smi
            pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [s.strip() for s in out.splitlines() if s.strip()]
    return lines[0] if lines else None


def _cuda_facts(index: int) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise DeviceError("device_metadata('cuda'): CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise DeviceError(f"device_metadata('cuda'): cuda:{index} does not exist ({count} device(s))")
    props = torch.cuda.get_device_properties(index)
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:
        cudnn = None
    return {
        "gpu_index": index,
        "gpu_count": count,
        "gpu_name": props.name,
        "gpu_memory_bytes": int(props.total_memory),
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_multiprocessors": int(props.multi_processor_count),
        "gpu_l2_cache_bytes": int(getattr(props, "L2_cache_size", 0)) or None,
        "cuda_runtime_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "driver_version": _driver_version(),
    }


def fingerprint(meta: dict[str, Any]) -> str:
    """Short stable id (sha256 hex, 16 chars) of kind, CPU model, logical cores, GPU name, torch version."""
    key = [meta.get(k) for k in _FINGERPRINT_KEYS]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def device_metadata(kind: str = "cpu", *, index: int = 0) -> dict[str, Any]:
    """JSON-serialisable facts about the host and, for ``kind='cuda'``, GPU ``index``.

    Keys: ``kind``, ``cpu_model``, ``cpu_family``, ``cpu_model_number``, ``cpu_stepping``, ``cpu_simd_flags``
    (the vector-unit flags, space-separated), ``cpu_isa`` (the instruction set torch's CPU kernels use),
    ``cpu_count_logical``, ``cpu_count_physical``, ``cpu_affinity``
    (CPUs this process may run on), ``cpu_quota`` (cgroup CPU limit or ``None``), ``cpu_cache_bytes``
    (the last-level cache, ``None`` when unknown), ``cpu_l2_cache_bytes`` (the private per-core L2),
    ``memory_bytes``,
    ``os``, ``os_release``, ``platform``, ``machine``, ``python_version``, ``torch_version``,
    ``numpy_version``, ``torch_num_threads``, ``torch_num_interop_threads``, ``mkl_available``,
    ``mkldnn_available``, ``openmp_available``, ``hostname``; for ``'cuda'`` also ``gpu_index``,
    ``gpu_count``, ``gpu_name``, ``gpu_memory_bytes``, ``gpu_capability`` (``"9.0"``),
    ``gpu_multiprocessors``, ``gpu_l2_cache_bytes``, ``cuda_runtime_version``, ``cudnn_version``, ``driver_version``
    (``None`` when unknown); and ``fingerprint`` (see :func:`fingerprint`; ``gpu_name`` is
    ``None`` for ``'cpu'``).

    Raises:
        ValueError: ``kind`` is not ``'cpu'`` or ``'cuda'``.
        DeviceError: ``kind='cuda'`` and CUDA or GPU ``index`` is not available.
    """
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown device kind {kind!r}; expected 'cpu' or 'cuda'")
    import numpy
    import torch

    meta: dict[str, Any] = {
        "kind": kind,
        "cpu_model": _cpu_model(),
        **_cpu_identity(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": _affinity_count(),
        "cpu_quota": _cgroup_cpu_limit(),
        "cpu_cache_bytes": _cpu_cache_bytes(),
        "cpu_l2_cache_bytes": _cpu_cache_bytes(2),
        "memory_bytes": int(psutil.virtual_memory().total),
        "os": platform.system(),
        "os_release": platform.release(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "mkl_available": bool(torch.backends.mkl.is_available()),
        "mkldnn_available": bool(torch.backends.mkldnn.is_available()),
        "openmp_available": bool(torch.backends.openmp.is_available()),
        "hostname": socket.gethostname(),
        "gpu_name": None,
    }
    if kind == "cuda":
        meta.update(_cuda_facts(int(index)))
    meta["fingerprint"] = fingerprint(meta)
    return meta
