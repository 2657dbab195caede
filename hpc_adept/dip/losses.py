"""Loss terms of the deep image prior: high-pass emphasis of the data, depth-weighted TV.

The objective (ADePt eq. 1) is ``0.5 sum_n ||H_n x - HPF(y_n)||^2 + TV(x)``. HPF acts on
the measured projections only, so it is computed once before training.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch


def wavelet_emphasis(projections: np.ndarray, wavelet: str = "db8", levels: int = 4,
                     gain: float = 2.5) -> np.ndarray:
    """The reference's wavelet high-pass emphasis, energy-preserving per projection.

    Each projection is decomposed with a 2-D discrete wavelet transform of ``levels``
    levels; the detail bands are multiplied by ``gain**1`` (coarsest) ... ``gain**levels``
    (finest); the reconstruction is rescaled to the input's L2 norm. The transform uses
    periodic extension (``periodization``), which keeps it orthogonal for the Daubechies
    wavelets: the output's coefficients are exactly the scaled ones (up to the common
    energy factor).

    Parameters
    ----------
    projections : ndarray, float, [n_angles, nv, nu]
    wavelet : str
        PyWavelets wavelet name (reference: ``db8``).
    levels : int
        Decomposition levels (reference: 4); at most log2 of the smaller image side.
    gain : float
        Detail gain per level (reference: 2.5).

    Returns
    -------
    ndarray, float32, [n_angles, nv, nu]
    """
    import pywt

    data = np.asarray(projections, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"projections must be [n_angles, nv, nu], got shape {data.shape}")
    # Periodic extension keeps deep levels exact (no boundary growth), so levels are only
    # capped where a band would shrink below one sample.
    levels = max(1, min(levels, int(np.log2(min(data.shape[1:])))))
    out = np.empty_like(data)
    for i, image in enumerate(data):
        with warnings.catch_warnings():  # "level too high": harmless with periodization
            warnings.simplefilter("ignore", UserWarning)
            coeffs = pywt.wavedec2(image, wavelet, level=levels, mode="periodization")
        scaled = [coeffs[0]] + [tuple(band * gain ** (k + 1) for band in detail)
                                for k, detail in enumerate(coeffs[1:])]
        rec = pywt.waverec2(scaled, wavelet, mode="periodization")
        rec = rec[: image.shape[0], : image.shape[1]]
        out[i] = _energy_matched(rec, image)
    return out.astype(np.float32)


def fourier_emphasis(projections: np.ndarray, levels: int = 4, gain: float = 2.5) -> np.ndarray:
    """A Fourier counterpart of :func:`wavelet_emphasis`, energy-preserving per projection.

    Multiplies the 2-D spectrum by ``1 + (gain**levels - 1) * (1 - exp(-k^2 / (2 s^2)))``
    with ``k`` in cycles/pixel and ``s = 0.5 / 2**levels`` (the band edge of the coarsest
    wavelet level), so the DC term is kept and the finest scales get ``gain**levels``.

    Parameters
    ----------
    projections : ndarray, float, [n_angles, nv, nu]
    levels, gain : as for :func:`wavelet_emphasis`

    Returns
    -------
    ndarray, float32, [n_angles, nv, nu]
    """
    data = np.asarray(projections, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"projections must be [n_angles, nv, nu], got shape {data.shape}")
    kv = np.fft.fftfreq(data.shape[1])[:, None]
    ku = np.fft.rfftfreq(data.shape[2])[None, :]
    sigma = 0.5 / 2**levels
    weight = 1.0 + (gain**levels - 1.0) * (1.0 - np.exp(-(kv**2 + ku**2) / (2 * sigma**2)))
    rec = np.fft.irfft2(np.fft.rfft2(data) * weight, s=data.shape[1:])
    out = np.stack([_energy_matched(r, d) for r, d in zip(rec, data, strict=True)])
    return out.astype(np.float32)


def _energy_matched(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(image)
    return image * (np.linalg.norm(reference) / norm) if norm > 0 else image


def emphasise(projections: np.ndarray, kind: str, wavelet: str = "db8", levels: int = 4,
              gain: float = 2.5) -> np.ndarray:
    """Apply the configured emphasis: ``wavelet``, ``fourier`` or ``none`` (a float32 copy)."""
    if kind == "wavelet":
        return wavelet_emphasis(projections, wavelet, levels, gain)
    if kind == "fourier":
        return fourier_emphasis(projections, levels, gain)
    if kind == "none":
        return np.asarray(projections, dtype=np.float32).copy()
    raise ValueError(f"unknown high-pass emphasis {kind!r} (wavelet, fourier, none)")


def tv_slice_weights(nz: int, voxel_size_m: float, weights: Sequence[float],
                     z_bounds_m: Sequence[float]) -> np.ndarray:
    """Per-slice TV weights from weights per height range.

    Slice ``k`` covers heights ``[k d, (k+1) d)`` above the substrate (DESIGN.md); it gets
    ``weights[j]`` for the range ``z_bounds_m[j-1] <= (k + 0.5) d < z_bounds_m[j]`` (its
    centre decides).

    Parameters
    ----------
    nz : int
        Number of z slices.
    voxel_size_m : float
        Voxel edge d, metres.
    weights : sequence of float, length len(z_bounds_m) + 1
        Weight of each height range, bottom first.
    z_bounds_m : sequence of float, increasing
        Heights (metres) where the weight changes.

    Returns
    -------
    ndarray, float64, [nz]
    """
    if len(weights) != len(z_bounds_m) + 1:
        raise ValueError("need one more TV weight than z bounds")
    centres = (np.arange(nz) + 0.5) * voxel_size_m
    index = np.searchsorted(np.asarray(z_bounds_m, dtype=np.float64), centres, side="right")
    return np.asarray(weights, dtype=np.float64)[index]


def tv_loss(volume: torch.Tensor, slice_weights: torch.Tensor) -> torch.Tensor:
    """Anisotropic in-plane L1 total variation with per-slice weights.

    ``sum_z w_z sum_{y,x} (|x[z, y+1, x] - x[z, y, x]| + |x[z, y, x+1] - x[z, y, x]|)``

    Parameters
    ----------
    volume : torch.Tensor, [nz, ny, nx]
    slice_weights : torch.Tensor, [nz], same device

    Returns
    -------
    torch.Tensor, scalar
    """
    dy = (volume[:, 1:, :] - volume[:, :-1, :]).abs().sum(dim=(1, 2))
    dx = (volume[:, :, 1:] - volume[:, :, :-1]).abs().sum(dim=(1, 2))
    return (slice_weights.to(volume.dtype) * (dy + dx)).sum()


def data_loss(predicted: torch.Tensor, target: torch.Tensor,
              weights: torch.Tensor | None = None, plane_free: bool = False) -> torch.Tensor:
    """``0.5 * sum w r^2`` over every pixel (a scalar), ``r = predicted - target``.

    Parameters
    ----------
    predicted, target : torch.Tensor, float32, [n, nv, nu]
    weights : torch.Tensor, float32, [n, nv, nu], optional
        Pixel weights (default 1): e.g. 0 where a ray leaves the modelled volume.
    plane_free : bool
        Score ``r`` minus its weighted least-squares constant and linear ramp per
        projection (:func:`hpc_adept.lamino.planes.remove_planes`): blind to the offset and
        ramp that ptychography without a vacuum reference leaves in each projection.
    """
    residual = predicted - target
    if plane_free:
        from hpc_adept.lamino.planes import remove_planes

        residual = remove_planes(residual, weights)
    if weights is None:
        return 0.5 * residual.square().sum()
    return 0.5 * (weights * residual.square()).sum()
