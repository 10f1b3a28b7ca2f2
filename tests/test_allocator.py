"""The allocator pin: a CPU device makes ops reuse memory instead of page-faulting by process history."""

import json
import subprocess
import sys

import pytest

from latpred.errors import SpecError
from latpred.profiling.allocator import check_allocator

_PROBE = r"""
import json, resource, sys, torch
from latpred.profiling.devices import CpuDevice
dev = CpuDevice(threads=1, allocator=sys.argv[1])
n = 12 * 2**20  # 48 MiB of float32: above glibc's largest dynamic mmap threshold (32 MiB)
for _ in range(4):  # warm-up: the heap grows until the block has a place of its own
    torch.empty(n).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(n).fill_(1.0)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"mode": dev.allocator, "settings": dev.settings()["allocator"], "faults": faults, "pages": n * 4 / 4096}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reuse pin needs glibc")
def test_reuse_mode_stops_a_large_tensor_from_faulting_on_every_call():
    reuse = _probe("reuse")
    assert reuse["mode"] == reuse["settings"] == "reuse"
    assert reuse["faults"] < 0.02 * reuse["pages"]  # a fresh 48 MiB block every call would fault ~12,000 pages
    system = _probe("system")
    assert system["mode"] == system["settings"] == "system"


def test_unknown_allocator_mode_is_a_clear_error():
    assert check_allocator("reuse") == "reuse"
    with pytest.raises(SpecError, match="unknown allocator mode 'jemalloc'"):
        check_allocator("jemalloc")
    from latpred.profiling.devices import CpuDevice

    with pytest.raises(SpecError, match="allocator mode"):
        CpuDevice(allocator="jemalloc")
