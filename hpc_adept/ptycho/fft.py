"""Batched 2-D FFTs for the ptychography kernels: the one place NumPy and CuPy differ.

On the host the transforms run through :mod:`torch.fft` on zero-copy views of the NumPy
arrays (MKL's FFT in the x86 wheels): 1.4-2x faster than :mod:`scipy.fft` on batches of
128^2-512^2 complex64 frames on the development machine (profiling/RESULTS.md, "Host FFTs"),
and like it complex64 stays complex64. Its threads are torch's intra-op threads
(``runtime.torch_threads``; :func:`hpc_adept.backend.default_torch_threads`); results do
not depend on the thread count or the batch size (checked bit for bit), so ranks agree with
one process.
:mod:`scipy.fft` stays available (``library="scipy"``, ``workers`` threads per transform:
1 by default) for side-by-side checks. On the GPU, ``cupy.fft`` (cuFFT with CuPy's plan
cache) is used.

All transforms act on the last two axes with ``norm="ortho"`` (DESIGN section 4), so
``sum |x|^2 == sum |fft2(x)|^2`` and the inverse is the adjoint.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpc_adept.config import FftLibrary

__all__ = ["HOST_FFT_LIBRARIES", "Fft2", "make_fft2"]


@dataclass(frozen=True)
class Fft2:
    """Orthonormal forward and inverse 2-D FFTs over the last two axes.

    Attributes
    ----------
    forward, inverse : callable
        ``f(x, overwrite=False) -> y`` with ``x`` complex ``[..., N, N]`` of the array
        module the pair was made for; ``overwrite=True`` lets the transform reuse ``x``'s
        memory (the caller promises not to read ``x`` again).
    name : str
        Which library does the work (for logs and benchmarks).
    """

    forward: Callable[..., Any]
    inverse: Callable[..., Any]
    name: str


HOST_FFT_LIBRARIES: tuple[str, ...] = typing.get_args(FftLibrary)  # ptycho.fft_library


def make_fft2(xp: types.ModuleType, workers: int | None = None,
              library: str = "torch") -> Fft2:
    """FFT pair for arrays of ``xp``.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    workers : int or None
        Host threads per transform for :mod:`scipy.fft` (None = 1); the torch library uses
        torch's intra-op threads instead; ignored on the GPU.
    library : {'torch', 'scipy'}
        Which library transforms host arrays; ignored on the GPU.
    """
    if library not in HOST_FFT_LIBRARIES:
        raise ValueError(f"unknown host FFT library {library!r}; "
                         f"choose one of {', '.join(HOST_FFT_LIBRARIES)}")
    if xp is not np:
        return _module_fft2(xp)
    if library == "scipy":
        return _scipy_fft2(workers or 1)
    return _torch_fft2()


def _scipy_fft2(workers: int) -> Fft2:
    import scipy.fft as sfft

    def forward(x: np.ndarray, overwrite: bool = False) -> np.ndarray:
        return sfft.fft2(x, norm="ortho", workers=workers, overwrite_x=overwrite)

    def inverse(x: np.ndarray, overwrite: bool = False) -> np.ndarray:
        return sfft.ifft2(x, norm="ortho", workers=workers, overwrite_x=overwrite)

    return Fft2(forward, inverse, f"scipy.fft (workers={workers})")


def _torch_fft2() -> Fft2:
    import torch

    def as_tensor(x: np.ndarray) -> torch.Tensor:
        # from_numpy shares memory; it refuses negative strides and warns on read-only
        # arrays, which are copied instead.
        if not x.flags.writeable or any(stride < 0 for stride in x.strides):
            x = np.array(x)
        return torch.from_numpy(x)

    # ``overwrite`` is not used: torch's out= into the input was slower than a new array.
    def forward(x: np.ndarray, overwrite: bool = False) -> np.ndarray:  # noqa: ARG001
        return torch.fft.fft2(as_tensor(x), norm="ortho").numpy()

    def inverse(x: np.ndarray, overwrite: bool = False) -> np.ndarray:  # noqa: ARG001
        return torch.fft.ifft2(as_tensor(x), norm="ortho").numpy()

    backend = "MKL" if torch.backends.mkl.is_available() else "pocketfft"
    return Fft2(forward, inverse, f"torch.fft ({backend}, {torch.get_num_threads()} threads)")


def _module_fft2(xp: types.ModuleType) -> Fft2:
    def forward(x: Any, overwrite: bool = False) -> Any:  # noqa: ARG001 - cuFFT allocates
        return xp.fft.fft2(x, norm="ortho")

    def inverse(x: Any, overwrite: bool = False) -> Any:  # noqa: ARG001
        return xp.fft.ifft2(x, norm="ortho")

    return Fft2(forward, inverse, f"{xp.__name__}.fft")
