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
import psutil
from latpred.profiling.allocator import release_free_memory
big = torch.empty(8 * n).fill_(1.0)  # 384 MiB, then freed: a reuse heap keeps it until released
del big
held = psutil.Process().memory_info().rss
released = release_free_memory()
after = psutil.Process().memory_info().rss
huge = torch.empty(26 * n).fill_(1.0)  # 1.2 GiB freed at the heap top: glibc's trim threshold would hand it back
del huge
huge_held = psutil.Process().memory_info().rss
release_free_memory()
print(json.dumps({"mode": dev.allocator, "settings": dev.settings()["allocator"], "faults": faults, "pages": n * 4 / 4096,
                  "released": released, "held_mib": held / 2**20, "after_mib": after / 2**20,
                  "huge_held_mib": huge_held / 2**20}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reuse pin needs glibc")
def test_reuse_mode_stops_a_large_tensor_from_faulting_on_every_call():
    reuse = _probe("reuse")
    assert reuse["mode"] == reuse["settings"] == "reuse"
    assert reuse["faults"] < 0.02 * reuse["pages"]  # a fresh 48 MiB block every call would fault ~12,000 pages
    # the freed 384 MiB stays in the process until release_free_memory() hands it back (as devices do between specs)
    assert reuse["released"] and reuse["held_mib"] - reuse["after_mib"] > 300
    # no automatic trim, however large the free heap top: vgg16 at batch 32 faulted 1.6 GiB back in every call
    # when more than 1 GiB freed at the top was trimmed
    assert reuse["huge_held_mib"] - reuse["after_mib"] > 1100
    system = _probe("system")
    assert system["mode"] == system["settings"] == "system" and not system["released"]


def test_unknown_allocator_mode_is_a_clear_error():
    assert check_allocator("reuse") == "reuse"
    with pytest.raises(SpecError, match="unknown allocator mode 'jemalloc'"):
        check_allocator("jemalloc")
    from latpred.profiling.devices import CpuDevice

    with pytest.raises(SpecError, match="allocator mode"):
        CpuDevice(allocator="jemalloc")
