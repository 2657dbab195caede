"""The one place that chooses the array module (NumPy or CuPy) and the torch device.

Each MPI rank binds ``cuda:(local_rank % n_visible_gpus)``: ranks on a node share its GPUs
round-robin, and GPUs are never hidden per task (that breaks CUDA IPC for GPU-aware MPI).
"""

from __future__ import annotations

import cmath
import functools
import logging
import math
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpc_adept.errors import ConfigError

log = logging.getLogger(__name__)


def cuda_device_count() -> int:
    """Number of CUDA devices torch can use (0 when torch has no CUDA or none is visible)."""
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except RuntimeError:  # a broken driver counts as no GPU
        return 0


def cuda_kernel_problem(device: Any) -> str | None:
    """Why torch cannot compute on the CUDA ``device`` (one FFT and one element-wise kernel
    are run: a device count alone passes with a broken cuFFT or driver), or None."""
    import torch

    try:
        x = torch.arange(16, dtype=torch.float32, device=device).reshape(4, 4)
        value = float(torch.fft.fft2(x * 2.0 + 1.0).abs().sum())
    except Exception as exc:  # noqa: BLE001 - any failure of the first kernels: unusable
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None if math.isfinite(value) else "a test FFT gave a non-finite value"


def select_torch_device(requested: str, local_rank: int = 0) -> Any:
    """Torch device of this rank.

    Parameters
    ----------
    requested : {'auto', 'cpu', 'cuda'}
        ``auto`` takes a GPU when one is usable, else the CPU (with a warning when a GPU is
        seen but its first kernels fail); ``cuda`` a GPU or an error.
    local_rank : int
        Rank within the node; GPU index = local_rank % number of visible GPUs.

    Raises
    ------
    ConfigError
        ``cuda`` was requested and no GPU is usable (none seen, or its kernels fail).
    """
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"runtime.device must be auto, cpu or cuda, got {requested!r}")
    n_gpus = 0 if requested == "cpu" else cuda_device_count()
    if requested == "cuda" and n_gpus == 0:
        raise ConfigError("runtime.device is 'cuda' but no CUDA device is usable here")
    if n_gpus == 0:
        return torch.device("cpu")
    device = torch.device("cuda", local_rank % n_gpus)
    problem = cuda_kernel_problem(device)
    if problem is not None:
        if requested == "cuda":
            raise ConfigError(f"runtime.device is 'cuda' but torch cannot compute on "
                              f"{device}: {problem}")
        log.warning("runtime.device auto: %s is seen but unusable (%s): using the CPU",
                    device, problem)
        return torch.device("cpu")
    torch.cuda.set_device(device)
    return device


@functools.lru_cache(maxsize=8)
def cupy_problem(index: int = 0) -> str | None:
    """Why CuPy cannot compute on GPU ``index``, or None.

    Not installed, no such device, or its first FFT or compiled element-wise kernel fails (a
    CuPy without NVRTC or cuFFT passes the device count and crashes on its first kernel).
    With ``ADEPT_DISABLE_CUPY`` set there is always a problem.
    """
    if os.environ.get("ADEPT_DISABLE_CUPY"):
        return "ADEPT_DISABLE_CUPY is set"
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - ImportError, or a CUDA library failing to load
        return f"CuPy is not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    try:
        if cupy.cuda.runtime.getDeviceCount() <= index:
            return f"CuPy sees no GPU {index}"
        with cupy.cuda.Device(index):
            x = cupy.arange(16, dtype=cupy.complex64).reshape(4, 4)
            value = complex(cupy.fft.fft2(x * 2 + 1).sum().get())  # cuFFT + an NVRTC kernel
    except Exception as exc:  # noqa: BLE001 - any failure of the first kernels: unusable
        return f"CuPy cannot compute on GPU {index} ({type(exc).__name__}: {exc})".splitlines()[0]
    return None if cmath.isfinite(value) else "CuPy's test FFT gave a non-finite value"


def _cupy_usable(index: int = 0) -> bool:
    return cupy_problem(index) is None


def array_module(device: Any, required: bool = False) -> types.ModuleType:
    """Array module for kernels running on ``device``: CuPy on a usable GPU, else NumPy.

    CuPy is bound to the same GPU index as the torch device.

    Parameters
    ----------
    device : torch.device
    required : bool
        On a CUDA ``device``, refuse to fall back to NumPy (``runtime.device: cuda``): a
        ConfigError names why CuPy cannot run. Otherwise the fallback is a logged warning.
    """
    if getattr(device, "type", str(device)) != "cuda":
        return np
    index = device.index or 0
    problem = cupy_problem(index)
    if problem is None:
        import cupy

        cupy.cuda.Device(index).use()
        return cupy
    if required:
        raise ConfigError(f"runtime.device is 'cuda' but the array kernels (LSQ-ML) cannot "
                          f"use the GPU: {problem}; install cupy-cuda12x, or set "
                          f"runtime.device: auto to run them with NumPy")
    _warn_numpy_fallback(problem)
    return np


@functools.lru_cache(maxsize=4)
def _warn_numpy_fallback(problem: str) -> None:
    log.warning("array kernels (LSQ-ML) run on the host with NumPy: %s", problem)


def get_array_module(array: Any) -> types.ModuleType:
    """NumPy or CuPy, whichever owns ``array``."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_numpy(array: Any) -> np.ndarray:
    """Host NumPy copy of a NumPy, CuPy or torch array."""
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def cpu_has_native_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX); None if unknown.

    Read from the CPU flags in ``cpuinfo_path`` (Linux); torch exposes no such query.
    """
    try:
        with open(cpuinfo_path, encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return None


#: cuBLAS' workspace setting that makes its GEMMs reproducible (NVIDIA's documented value).
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


def configure_determinism(enabled: bool) -> None:
    """Switch torch's reproducibility settings (``runtime.deterministic``), the one place.

    On: ``torch.use_deterministic_algorithms`` (warn-only: an operation without a
    deterministic implementation, such as ``grid_sample``'s CUDA backward that the torch
    projector's adjoint uses, warns once instead of failing), cuDNN deterministic and not
    autotuned, and ``CUBLAS_WORKSPACE_CONFIG`` (set before CUDA's first GEMM unless the user
    set it). Off: torch's defaults. Measured cost on CPU: none beyond noise (the CPU kernels
    are the same; see profiling/determinism.py).
    """
    import torch

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False


def cuda_sync_sites(function: Callable[[], object]) -> list[str]:
    """Where ``function`` made the host wait for the GPU, as torch's sync debug mode reports
    it: one ``"file:line"`` per synchronisation, followed by ``" <- file:line"`` of the
    innermost frame of this package when torch itself warned (a debugging aid for the
    benchmarks and the GPU tests; costs nothing on other devices)."""
    import traceback
    import warnings

    import torch

    package = str(Path(__file__).resolve().parent)
    sites: list[str] = []
    forward = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message).lower():
            forward(message, category, filename, lineno, file, line)  # not ours to keep
            return
        ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(package)]
        origin = f" <- {ours[-1].filename}:{ours[-1].lineno}" if ours and not str(
            filename).startswith(package) else ""
        sites.append(f"{filename}:{lineno}{origin}")

    # switched on outside the recording: torch warns once per process on switching it on
    # (that warning mentions synchronising operations too; seen with torch 2.11 on an H200)
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            function()
    finally:
        torch.cuda.set_sync_debug_mode(before)
    return sites


def _env_count(name: str) -> int | None:
    """A positive thread count from environment variable ``name``, or None."""
    try:
        value = int(os.environ.get(name, "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


def default_torch_threads(local_size: int) -> int:
    """Threads per rank when ``runtime.torch_threads`` is not set.

    ``OMP_NUM_THREADS`` when the environment sets it (launch scripts set it to the cores
    per task), else SLURM's ``SLURM_CPUS_PER_TASK``, else an even share among the node's
    ranks of the cores this process may run on (its CPU affinity, not the whole node's);
    at most ``MAX_THREADS``. Oversubscribed cores are costly: one 2-thread rank beside
    another busy process on 2 cores ran a DIP step in 10 s instead of 1.2 s
    (profiling/RESULTS.md, issue 21).

    Parameters
    ----------
    local_size : int
        Ranks on this node.

    Returns
    -------
    int
        Threads, >= 1.
    """
    from hpc_adept.config import MAX_THREADS

    threads = _env_count("OMP_NUM_THREADS") or _env_count("SLURM_CPUS_PER_TASK")
    if threads is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # no affinity call (macOS)
            cores = os.cpu_count() or 1
        threads = cores // max(1, local_size)
    return min(max(1, threads), MAX_THREADS)


def set_torch_threads(threads: int | None, local_size: int) -> int:
    """Set torch's CPU threads: ``threads``, or :func:`default_torch_threads`."""
    import torch

    if threads is None:
        threads = default_torch_threads(local_size)
    torch.set_num_threads(threads)
    return threads


# Host peak with runtime.keep_host_memory (freed blocks kept, some fragmented) over the peak
# without: 2709 / 2007 MiB measured (bench_dip speed, 64 x 96 x 96, reference network).
KEPT_HOST_MEMORY_FACTOR = 1.4

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_host_memory() -> bool:
    """Let freed host memory stay in the process instead of going back to the OS.

    glibc serves blocks above 32 MiB with ``mmap`` and unmaps them on free, so every
    iteration's large temporaries (feature maps, projections) arrive as fresh pages that
    the kernel must fault in and zero, which costs more than the arithmetic on them (CPU DIP
    step: 20 % of its time). With ``mmap`` off and trimming off, freed blocks are reused.
    The process keeps its peak footprint until it ends, which a batch rank does anyway.

    Returns
    -------
    bool
        True when the C library accepted the settings (glibc); False elsewhere (musl,
        macOS), where nothing changes.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("host memory: no mallopt in the C library, allocator left as it is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(_M_TRIM_THRESHOLD, -1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1  # -1: never
    if not ok:
        log.debug("host memory: mallopt refused the settings")
    return ok


def peak_memory_bytes(estimate: int, device: Any, keep_host_memory: bool) -> int:
    """A memory estimate made for a fresh-allocation peak, as the rank will see it: on a CPU
    that keeps freed memory (:func:`keep_freed_host_memory`) the peak RSS is higher."""
    if getattr(device, "type", "cpu") == "cpu" and keep_host_memory:
        return int(estimate * KEPT_HOST_MEMORY_FACTOR)
    return int(estimate)


#: The end of the memory guards' error lines (runtime.memory_guard; the DIP has its own).
MEMORY_GUARD_HINT = " (runtime.memory_guard: false skips this check)"
#: The memory guards refuse a run that needs more than this fraction of what is available.
MEMORY_HEADROOM = 0.9


def memory_shortfall(what: str, need_bytes: int, device: Any,
                     ranks_on_node: int = 1) -> str | None:
    """The memory guards' test: None when ``need_bytes`` fits in :data:`MEMORY_HEADROOM` of
    what this rank can use on ``device`` (:func:`available_memory_bytes`), else the start of
    the error line, ``"<what>: needs about N GiB per rank but <where> is M GiB"``, to which
    the caller adds what to change."""
    free, where = available_memory_bytes(device, ranks_on_node)
    if need_bytes <= MEMORY_HEADROOM * free:
        return None
    return (f"{what}: needs about {need_bytes / 2**30:.3g} GiB per rank but {where} is "
            f"{free / 2**30:.1f} GiB")


def available_memory_bytes(device: Any, ranks_on_node: int = 1) -> tuple[int, str]:
    """Memory one rank can still use on ``device``, and a phrase saying what it is.

    CUDA: the device's free memory, shared by the node's ranks that use it (ranks take
    ``cuda:(local_rank % GPUs)``, so with more ranks than GPUs several share one). CPU:
    ``MemAvailable`` of /proc/meminfo shared by the ranks of the node (a very large value
    where /proc is missing).
    """
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        free = int(torch.cuda.mem_get_info(device)[0])
        sharing = -(-max(ranks_on_node, 1) // max(cuda_device_count(), 1))
        if sharing == 1:
            return free, f"free memory of {device}"
        return free // sharing, f"this rank's share of the free memory of {device} " \
                                f"({sharing} ranks on it)"
    available = 1 << 50
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    share = available // max(ranks_on_node, 1)
    return share, f"this rank's share of the host's available memory ({ranks_on_node} rank(s))"
