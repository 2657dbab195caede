"""The device / host-memory choices of hpc_adept.backend."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from hpc_adept.config import load_config

from .conftest import REPO

# Allocate and touch 256 MiB, free it, and print the resident size before and after the free.
_PROBE = """
import sys
sys.path.insert(0, {repo!r})
from hpc_adept.backend import keep_freed_host_memory
import numpy as np

def rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2**20

if {keep}:
    assert keep_freed_host_memory()
block = np.ones(256 * 2**20 // 8)
held = rss_mib()
del block
print(held, rss_mib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("keep", [True, False])
def test_keep_freed_host_memory_keeps_pages(keep):
    # Kept: the freed block stays resident for the next allocation. Not kept (glibc's
    # default): a block this large is unmapped on free and its pages go back to the OS.
    out = subprocess.run([sys.executable, "-c", _PROBE.format(repo=str(REPO), keep=keep)],
                         capture_output=True, text=True, check=True)
    held, after = map(float, out.stdout.split())
    assert held > 256
    if keep:
        assert after > held - 16
    else:
        assert after < held - 200


def test_keep_host_memory_is_a_runtime_setting():
    assert load_config(None).runtime.keep_host_memory is True
    assert load_config(None, ["runtime.keep_host_memory=false"]).runtime.keep_host_memory is False


def test_peak_memory_counts_kept_host_memory_on_cpu_only():
    import torch

    from hpc_adept.backend import KEPT_HOST_MEMORY_FACTOR, peak_memory_bytes

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert peak_memory_bytes(1000, cpu, True) == int(1000 * KEPT_HOST_MEMORY_FACTOR) > 1000
    assert peak_memory_bytes(1000, cpu, False) == 1000
    assert peak_memory_bytes(1000, gpu, True) == 1000  # device memory has its own allocator


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from hpc_adept.backend import cpu_has_native_bf16

    with_bf16 = tmp_path / "a"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    without = tmp_path / "b"
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16x\n")
    assert cpu_has_native_bf16(str(with_bf16)) is True
    assert cpu_has_native_bf16(str(without)) is False
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(("ranks", "gpus", "share"), [(1, 1, 8), (4, 1, 2), (4, 4, 8),
                                                       (3, 2, 4)])
def test_free_gpu_memory_is_shared_by_the_ranks_on_that_gpu(monkeypatch, ranks, gpus, share):
    import torch

    from hpc_adept import backend

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 * 2**30, 16 * 2**30))
    monkeypatch.setattr(backend, "cuda_device_count", lambda: gpus)
    free, where = backend.available_memory_bytes(torch.device("cuda", 0), ranks)
    assert free == share * 2**30
    assert ("ranks on it" in where) == (share < 8)
