"""3-D power spectral density of a volume and its central cuts (paper section 3.2, Fig. 4).

The PSD is ``|FFT(v)|^2 / N`` of the mean-removed volume (Wiener-Khinchin: the Fourier
transform of the autocorrelation). By default the volume is tapered with a separable Hann
window first: without it the jump between opposite faces of a non-periodic volume puts
bright streaks along the k axes, right where the laminographic missing cone (a double cone
about kz) should show as a dark wedge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PsdCuts", "power_spectrum", "psd_cuts"]


def power_spectrum(volume: np.ndarray, window: bool = True) -> np.ndarray:
    """3-D PSD with the zero frequency at the centre.

    Parameters
    ----------
    volume : ndarray, [nz, ny, nx], real
    window : bool
        Taper with a separable Hann window before the transform.

    Returns
    -------
    ndarray, float64, [nz, ny, nx]
        ``fftshift(|fftn(v - mean)|^2) / v.size``; index ``n // 2`` on each axis is k = 0.
    """
    v = np.asarray(volume, dtype=np.float64)
    v = v - v.mean()
    if window:
        for axis, n in enumerate(v.shape):
            shape = [1] * v.ndim
            shape[axis] = n
            v = v * np.hanning(n).reshape(shape) if n > 2 else v
    spectrum = np.fft.fftshift(np.abs(np.fft.fftn(v)) ** 2) / v.size
    return spectrum


@dataclass(frozen=True)
class PsdCuts:
    """Log-scaled central cuts of a 3-D PSD.

    Attributes
    ----------
    kx_ky : ndarray, float64, [ny, nx]
        log10 PSD in the kz = 0 plane, indexed ``[ky, kx]``.
    ky_kz : ndarray, float64, [nz, ny]
        log10 PSD in the kx = 0 plane, indexed ``[kz, ky]``.
    kz, ky, kx : ndarray, float64
        Spatial frequencies of the axes, cycles per metre (cycles per voxel when the voxel
        size given was 1).
    """

    kx_ky: np.ndarray
    ky_kz: np.ndarray
    kz: np.ndarray
    ky: np.ndarray
    kx: np.ndarray


def psd_cuts(volume: np.ndarray, voxel_size_m: float = 1.0, window: bool = True,
             floor: float = 1e-12) -> PsdCuts:
    """Central kx-ky and ky-kz cuts of the PSD, log10-scaled.

    Parameters
    ----------
    volume : ndarray, [nz, ny, nx]
    voxel_size_m : float
        Voxel edge, metres (sets the frequency axes).
    window : bool
        See :func:`power_spectrum`.
    floor : float
        Values below ``floor * max`` are clipped before the logarithm (so a zero never
        gives -inf).
    """
    spectrum = power_spectrum(volume, window=window)
    nz, ny, nx = spectrum.shape
    lowest = floor * float(spectrum.max()) if spectrum.max() > 0 else floor
    log_spectrum_xy = np.log10(np.maximum(spectrum[nz // 2], lowest))
    log_spectrum_yz = np.log10(np.maximum(spectrum[:, :, nx // 2], lowest))

    def axis(n: int) -> np.ndarray:
        return np.fft.fftshift(np.fft.fftfreq(n, d=voxel_size_m))

    return PsdCuts(log_spectrum_xy, log_spectrum_yz, axis(nz), axis(ny), axis(nx))
