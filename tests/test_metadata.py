"""Device metadata recorded with every profile."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import torch

from latpred.errors import DeviceError
from latpred.profiling.metadata import check_same_machine, device_metadata, fingerprint, identity_differences

CPU_KEYS = {
    "kind", "cpu_model", "cpu_family", "cpu_model_number", "cpu_stepping", "cpu_simd_flags", "cpu_isa",
    "cpu_count_logical", "cpu_count_physical", "cpu_affinity", "cpu_quota", "cpu_cache_bytes", "cpu_l2_cache_bytes",
    "memory_bytes",
    "os", "os_release", "platform", "machine", "python_version", "torch_version", "numpy_version",
    "torch_num_threads", "torch_num_interop_threads", "mkl_available", "mkldnn_available", "openmp_available",
    "hostname", "gpu_name", "fingerprint",
}
CUDA_KEYS = CPU_KEYS | {
    "gpu_index", "gpu_count", "gpu_memory_bytes", "gpu_capability", "gpu_multiprocessors", "gpu_l2_cache_bytes",
    "cuda_runtime_version", "cudnn_version", "driver_version",
}


def test_cpu_metadata_keys_and_values():
    meta = device_metadata()
    assert set(meta) == CPU_KEYS
    assert meta["kind"] == "cpu" and meta["gpu_name"] is None
    assert isinstance(meta["cpu_model"], str) and meta["cpu_model"]
    assert meta["cpu_count_logical"] == psutil.cpu_count(logical=True)
    assert meta["memory_bytes"] == psutil.virtual_memory().total
    assert meta["torch_version"] == torch.__version__
    assert meta["torch_num_threads"] == torch.get_num_threads()
    assert isinstance(meta["mkldnn_available"], bool)
    assert len(meta["fingerprint"]) == 16 and int(meta["fingerprint"], 16) >= 0
    # the last-level cache, as sysfs reports it (this machine exposes it; None only where it cannot be read)
    if Path("/sys/devices/system/cpu/cpu0/cache/index0/size").exists():
        assert isinstance(meta["cpu_cache_bytes"], int) and meta["cpu_cache_bytes"] >= 256 * 1024
        l2 = meta["cpu_l2_cache_bytes"]  # the private per-core cache: no larger than the last level
        assert l2 is None or (isinstance(l2, int) and 0 < l2 <= meta["cpu_cache_bytes"])


def test_cache_sizes_parse_as_sysfs_writes_them():
    from latpred.profiling.metadata import _size_bytes

    assert _size_bytes("32768K\n") == 32 << 20 and _size_bytes("1M") == 1 << 20 and _size_bytes("512") == 512
    assert _size_bytes("") is None and _size_bytes("big") is None


def test_metadata_is_json_serialisable():
    meta = device_metadata("cpu")
    assert json.loads(json.dumps(meta)) == meta


def test_fingerprint_is_stable_and_ignores_hostname():
    a, b = device_metadata(), device_metadata()
    assert a["fingerprint"] == b["fingerprint"]
    assert fingerprint({**a, "hostname": "elsewhere", "memory_bytes": 1}) == a["fingerprint"]
    assert fingerprint({**a, "torch_version": "0.0.0"}) != a["fingerprint"]
    assert fingerprint({**a, "kind": "cuda"}) != a["fingerprint"]


def test_unknown_kind_raises():
    with pytest.raises(ValueError):
        device_metadata("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_raises():
    with pytest.raises(DeviceError):
        device_metadata("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_metadata():
    meta = device_metadata("cuda")
    assert set(meta) == CUDA_KEYS
    assert json.loads(json.dumps(meta)) == meta
    assert meta["gpu_name"] == torch.cuda.get_device_name(0)
    assert meta["gpu_memory_bytes"] > 0 and meta["gpu_count"] == torch.cuda.device_count()
    major, minor = torch.cuda.get_device_capability(0)
    assert meta["gpu_capability"] == f"{major}.{minor}"
    assert meta["cuda_runtime_version"] == torch.version.cuda
    assert meta["fingerprint"] != device_metadata("cpu")["fingerprint"]
    assert meta["fingerprint"] == device_metadata("cuda")["fingerprint"]
    with pytest.raises(DeviceError):
        device_metadata("cuda", index=torch.cuda.device_count())


def test_cpu_identity_names_the_vector_units_torch_uses():
    meta = device_metadata()
    assert meta["cpu_isa"] == str(torch.backends.cpu.get_cpu_capability())
    text = Path("/proc/cpuinfo").read_text()
    cpu0 = text.split("\n\n")[0]
    if "cpu family" in cpu0:  # x86 Linux: family and model number read from CPU 0
        fields = dict(line.split(":", 1) for line in cpu0.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        assert meta["cpu_family"] == int(fields["cpu family"]) and meta["cpu_model_number"] == int(fields["model"])
        flags = set(fields["flags"].split())
        assert set(meta["cpu_simd_flags"].split()) == {f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4"))}
        assert ("avx512f" in flags) == ("avx512f" in meta["cpu_simd_flags"].split())


def test_identity_differences_compare_only_what_both_record():
    now = device_metadata()
    assert identity_differences(now, dict(now)) == []
    other = {**now, "cpu_isa": "AVX512", "cpu_model_number": 17}
    diffs = identity_differences(other, now)
    assert f"cpu_isa: AVX512 -> {now['cpu_isa']}" in diffs and any(d.startswith("cpu_model_number: 17") for d in diffs)
    # metadata written before these facts were recorded: nothing to compare, no difference claimed
    legacy = {k: v for k, v in now.items() if k not in ("cpu_isa", "cpu_family", "cpu_model_number", "cpu_simd_flags")}
    assert identity_differences({**legacy, "cpu_model": now["cpu_model"]}, now) == []
    assert fingerprint(legacy) == now["fingerprint"]  # stores written before keep their device ids
    with pytest.raises(DeviceError, match=r"store s\.sqlite.*cpu_isa: AVX512 ->"):
        check_same_machine(other, now, "store s.sqlite")
    check_same_machine(legacy, now, "store s.sqlite")
