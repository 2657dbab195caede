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


# --- runtime.device: cuda means the GPU or one clear error (issue 22) ---------------------

class _BrokenCupy:
    """A CuPy that counts a GPU but whose first kernel fails (no NVRTC / cuFFT)."""

    class cuda:  # noqa: N801 - mirrors cupy.cuda
        class runtime:  # noqa: N801
            @staticmethod
            def getDeviceCount() -> int:  # noqa: N802
                return 1

        class Device:
            def __init__(self, index: int = 0) -> None:
                self.index = index

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def use(self) -> None:
                pass

    complex64 = "complex64"

    @staticmethod
    def arange(*args, **kwargs):
        raise RuntimeError("CUDA_ERROR_FILE_NOT_FOUND: libnvrtc.so.12 not found\nmore lines")


@pytest.fixture
def broken_cupy(monkeypatch):
    import hpc_adept.backend as backend

    monkeypatch.setitem(sys.modules, "cupy", _BrokenCupy)
    monkeypatch.delenv("ADEPT_DISABLE_CUPY", raising=False)
    backend.cupy_problem.cache_clear()
    yield
    backend.cupy_problem.cache_clear()


def test_cupy_that_counts_a_gpu_but_cannot_compute_is_unusable(broken_cupy):
    from hpc_adept.backend import cupy_problem

    problem = cupy_problem(0)
    assert problem is not None and "libnvrtc" in problem and "\n" not in problem


def test_cuda_requested_refuses_the_numpy_fallback(broken_cupy):
    import numpy as np
    import torch

    from hpc_adept.backend import array_module
    from hpc_adept.errors import ConfigError

    with pytest.raises(ConfigError, match="runtime.device is 'cuda' but the array kernels"):
        array_module(torch.device("cuda", 0), required=True)
    assert array_module(torch.device("cuda", 0)) is np  # auto: falls back, with a warning
    assert array_module(torch.device("cpu"), required=True) is np


def test_cuda_requested_with_unusable_torch_kernels_is_one_error(monkeypatch, caplog):
    import torch

    import hpc_adept.backend as backend
    from hpc_adept.errors import ConfigError

    monkeypatch.setattr(backend, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(backend, "cuda_kernel_problem",
                        lambda device: "RuntimeError: cuFFT error: CUFFT_INTERNAL_ERROR")
    with pytest.raises(ConfigError, match="torch cannot compute on cuda:0: RuntimeError"):
        backend.select_torch_device("cuda", local_rank=0)
    assert backend.select_torch_device("auto", local_rank=0) == torch.device("cpu")
    assert "unusable" in caplog.text


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a CPU-only torch")
def test_torch_kernel_probe_reports_a_missing_cuda():
    import torch

    from hpc_adept.backend import cuda_kernel_problem

    problem = cuda_kernel_problem(torch.device("cuda", 0))
    assert problem is not None and "\n" not in problem
    assert cuda_kernel_problem(torch.device("cpu")) is None


@pytest.mark.parametrize(("omp", "slurm", "affinity", "local_size", "expected"), [
    ("3", "8", 16, 2, 3),       # the launch script's OMP_NUM_THREADS wins
    (None, "8", 16, 4, 8),      # then SLURM's cores per task
    (None, None, 16, 4, 4),     # else the allowed cores shared by the node's ranks
    (None, None, 4, 8, 1),      # at least one
    ("0", None, 6, 2, 3),       # not a usable count: ignored
    ("two", None, 6, 1, 6),
    ("\u00b2", None, 6, 1, 6),  # a digit to str.isdigit, not to int
    ("99999", None, 6, 1, 4096),  # at most MAX_THREADS
])
def test_default_torch_threads_follow_the_allocation(monkeypatch, omp, slurm, affinity,
                                                     local_size, expected):
    from hpc_adept import backend

    for name, value in (("OMP_NUM_THREADS", omp), ("SLURM_CPUS_PER_TASK", slurm)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(backend.os, "sched_getaffinity", lambda pid: set(range(affinity)),
                        raising=False)
    monkeypatch.setattr(backend.os, "cpu_count", lambda: 128)  # the node: not ours to use
    assert backend.default_torch_threads(local_size) == expected
