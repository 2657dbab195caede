"""Registration of a reconstruction to the reference volume.

Both volumes are centred on the same physical point (the volume centre, index
``(n - 1) / 2`` on each axis, is the rotation centre; DESIGN section 3) and have the same
voxel size. They are cut to their common centred region; the displacement that remains
(a reconstruction from misaligned projections is shifted as a whole) is found in two
steps: the integer shift maximising the overlap-normalised linear cross-correlation (FFT,
zero-padded so that nothing wraps around), then a sub-voxel refinement by Gauss-Newton
(Lucas-Kanade) on the least-squares misfit with a free affine intensity map, i.e. the
sub-voxel shift of largest Pearson correlation. The reconstruction is moved onto the
reference grid by cubic-spline interpolation and both are cut to the voxels that stayed
inside.

Convention: a shift ``s`` (voxels, (z, y, x)) means ``moving[x] = reference[x - s]``,
i.e. the content of ``moving`` sits ``s`` voxels further along each axis.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Registration", "affine_fit", "center_crop_slices", "common_region", "estimate_shift",
           "register", "restrict"]

Slices = tuple[slice, slice, slice]


def center_crop_slices(reference_shape: tuple[int, ...], volume_shape: tuple[int, ...]
                       ) -> tuple[Slices, Slices, np.ndarray]:
    """Common centred region of two volumes.

    Returns
    -------
    reference_slices, volume_slices : tuple of slice
        The region of each volume, both of shape ``min(reference_shape, volume_shape)``.
    offset : ndarray, float64, [3]
        Shift (convention of this module) of the volume's crop relative to the reference's
        crop: 0 per axis, or +-0.5 where the sizes differ by an odd number (the centres then
        fall half a voxel apart on the crop grids).
    """
    ref_slices, vol_slices, offset = [], [], []
    for n_ref, n_vol in zip(reference_shape, volume_shape, strict=True):
        m = min(n_ref, n_vol)
        start_ref, start_vol = (n_ref - m) // 2, (n_vol - m) // 2
        ref_slices.append(slice(start_ref, start_ref + m))
        vol_slices.append(slice(start_vol, start_vol + m))
        # Crop index i is physical offset i + start - (n - 1) / 2 from the centre.
        offset.append((start_ref - (n_ref - 1) / 2) - (start_vol - (n_vol - 1) / 2))
    return tuple(ref_slices), tuple(vol_slices), np.array(offset, dtype=np.float64)


def _integer_shift(ref: np.ndarray, mov: np.ndarray, max_shift: int) -> np.ndarray:
    """Integer lag maximising the mean product over the overlap (mean-removed inputs).

    The volumes are zero-padded so the correlation is linear, not circular (content that
    leaves one face must not re-enter at the other), and each lag's sum is divided by its
    overlap size so that large lags are not penalised for overlapping less.
    """
    # Why clamp per axis: no lag beyond n - 1 overlaps at all, and padding by a larger
    # max_shift only wastes memory (an FFT of (n + max_shift)^3 voxels).
    limits = tuple(min(max(max_shift, 0), n - 1) for n in ref.shape)
    padded = tuple(n + m + 1 for n, m in zip(ref.shape, limits, strict=True))
    cross_power = np.fft.rfftn(mov, padded, axes=(0, 1, 2)) * np.conj(
        np.fft.rfftn(ref, padded, axes=(0, 1, 2)))
    correlation = np.fft.irfftn(cross_power, padded, axes=(0, 1, 2))
    lags, picks = [], []
    for limit, p in zip(limits, padded, strict=True):
        signed = np.rint(np.fft.fftfreq(p) * p).astype(int)
        pick = np.flatnonzero(np.abs(signed) <= limit)
        lags.append(signed[pick])
        picks.append(pick)
    window = correlation[np.ix_(*picks)]
    overlap = np.ones(window.shape)
    for axis, (n, lag) in enumerate(zip(ref.shape, lags, strict=True)):
        shape = [1, 1, 1]
        shape[axis] = len(lag)
        overlap = overlap * (n - np.abs(lag)).reshape(shape)
    best = np.unravel_index(int(np.argmax(window / overlap)), window.shape)
    return np.array([lags[a][best[a]] for a in range(3)], dtype=np.float64)


def _overlap_slices(shape: tuple[int, ...], shift: np.ndarray) -> tuple[Slices, Slices]:
    """For an integer shift: slices of ``reference`` and ``moving`` that coincide."""
    ref_sl, mov_sl = [], []
    for n, s in zip(shape, np.rint(shift).astype(int), strict=True):
        ref_sl.append(slice(max(0, -s), min(n, n - s)))
        mov_sl.append(slice(max(0, s), min(n, n + s)))
    return tuple(ref_sl), tuple(mov_sl)


def _refine_subvoxel(ref: np.ndarray, mov: np.ndarray, iterations: int = 20,
                     tolerance: float = 1e-4) -> np.ndarray:
    """Fractional shift ``g`` (|g| <= 1.5 per axis) with ``ref ~ a * mov(x + g) + b``.

    Gauss-Newton (Lucas-Kanade) on the least-squares misfit with a free affine intensity
    map, which is the same as maximising the Pearson correlation of ``ref`` and the
    shifted ``mov``; ``mov(x + g)`` by cubic-spline interpolation. Inputs are integer-
    aligned already; a 2-voxel margin is left out of the fit (spline edge effects).
    """
    from scipy import ndimage

    margin = tuple(slice(2, n - 2) if n > 8 else slice(None) for n in ref.shape)
    target = ref[margin].ravel()
    coefficients = ndimage.spline_filter(mov, order=3, mode="mirror")
    g = np.zeros(3)
    for _ in range(iterations):
        shifted = ndimage.shift(coefficients, -g, order=3, mode="mirror", prefilter=False)
        gradients = np.gradient(shifted)
        columns = [shifted[margin].ravel(), np.ones(target.size)]
        columns += [grad[margin].ravel() for grad in gradients]
        design = np.stack(columns, axis=1)
        solution, *_ = np.linalg.lstsq(design, target, rcond=None)
        scale = solution[0]
        if abs(scale) < 1e-12:
            break
        step = solution[2:] / scale
        g = np.clip(g + step, -1.5, 1.5)
        if np.max(np.abs(step)) < tolerance:
            break
    return g


def estimate_shift(reference: np.ndarray, moving: np.ndarray, max_shift: int = 8,
                   subvoxel: bool = True) -> tuple[np.ndarray, float]:
    """Shift of ``moving`` relative to ``reference`` (same shape), sub-voxel.

    Parameters
    ----------
    reference, moving : ndarray, [nz, ny, nx], real
        Volumes on the same grid.
    max_shift : int
        Largest shift searched per axis, voxels (the result is clipped to it).
    subvoxel : bool
        Refine the integer shift to a fraction of a voxel.

    Returns
    -------
    shift : ndarray, float64, [3]
        (z, y, x) voxels; ``moving[x] ~ reference[x - shift]``.
    correlation : float
        Pearson correlation of the overlapping voxels at the integer part of the shift.
    """
    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    if ref.shape != mov.shape or ref.ndim != 3:
        raise ValueError(f"need two 3-D volumes of one shape, got {ref.shape}, {mov.shape}")
    ref = ref - ref.mean()
    mov = mov - mov.mean()
    if not (ref.any() and mov.any()):
        return np.zeros(3), 0.0
    shift = _integer_shift(ref, mov, max_shift)
    ref_sl, mov_sl = _overlap_slices(ref.shape, shift)
    ref_part, mov_part = ref[ref_sl], mov[mov_sl]
    a, b = ref_part.ravel() - ref_part.mean(), mov_part.ravel() - mov_part.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    correlation = float(a @ b) / denominator if denominator > 0 else 0.0
    if subvoxel and min(ref_part.shape) >= 4:
        shift = np.clip(shift + _refine_subvoxel(ref_part, mov_part), -max_shift, max_shift)
    # Report to 1/200 voxel, well below what the data resolve; an integer stays exact, so
    # no needless interpolation is done.
    return np.round(shift * 200.0) / 200.0 + 0.0, correlation  # + 0.0: no -0.0


def _apply_shift(volume: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, Slices]:
    """``aligned[x] = volume[x + shift]`` and the region where it is defined.

    Returns the aligned array (float64, the same shape; cubic spline for fractional shifts)
    and the slices of the voxels whose source lay inside ``volume``.
    """
    from scipy import ndimage

    region = []
    for s, n in zip(shift, volume.shape, strict=True):
        start = max(0, math.ceil(-s - 1e-9))
        stop = min(n, math.floor(n - 1 - s + 1e-9) + 1)
        region.append(slice(start, max(start, stop)))
    rounded = np.round(shift)
    if np.all(np.abs(shift - rounded) < 1e-9):
        aligned = np.zeros(volume.shape, np.float64)
        k = rounded.astype(int)
        src = tuple(slice(r.start + ki, r.stop + ki) for r, ki in zip(region, k, strict=True))
        aligned[tuple(region)] = volume[src]
    else:
        aligned = ndimage.shift(np.asarray(volume, np.float64), -shift, order=3,
                                mode="nearest")
    return aligned, tuple(region)


@dataclass(frozen=True)
class Registration:
    """A reconstruction on the reference grid.

    Attributes
    ----------
    reference_slices : tuple of slice
        The evaluated region, in reference indices (z, y, x).
    aligned : ndarray, float64
        The reconstruction resampled onto that region.
    shift_voxels : ndarray, float64, [3]
        Displacement of the reconstruction's content found beyond the centre alignment,
        (z, y, x) voxels (0 when registration is off).
    peak_correlation : float or None
        Pearson correlation of the overlapping voxels at the integer shift found (None
        when registration is off).
    own_slices : tuple of slice or None
        After :func:`restrict`: the region this registration defined on its own (None:
        ``reference_slices`` is that region).
    """

    reference_slices: Slices
    aligned: np.ndarray
    shift_voxels: np.ndarray
    peak_correlation: float | None
    own_slices: Slices | None = None


def register(reference: np.ndarray, volume: np.ndarray, enabled: bool = True,
             max_shift: int = 8, subvoxel: bool = True) -> Registration:
    """Bring ``volume`` onto the grid of ``reference`` (centre alignment + optional shift).

    Parameters
    ----------
    reference : ndarray, [nz, ny, nx]
        Reference values (continuous; used for the correlation).
    volume : ndarray, [mz, my, mx]
        Reconstruction with the same voxel size, centred on the same point.
    enabled : bool
        Search for a residual shift; otherwise only the centre alignment is applied.
    max_shift, subvoxel : see :func:`estimate_shift`.
    """
    ref_slices, vol_slices, offset = center_crop_slices(reference.shape, volume.shape)
    ref_crop = np.asarray(reference[ref_slices], np.float64)
    vol_crop = np.asarray(volume[vol_slices], np.float64)
    peak = None
    shift = offset.copy()
    if enabled:
        shift, peak = estimate_shift(ref_crop, vol_crop, max_shift=max_shift,
                                     subvoxel=subvoxel)
    aligned, region = _apply_shift(vol_crop, shift)
    reference_region = tuple(
        slice(r.start + c.start, r.start + c.stop)
        for r, c in zip(ref_slices, region, strict=True)
    )
    return Registration(reference_region, aligned[region], shift - offset, peak)


def common_region(registrations: list[Registration]) -> Slices:
    """The reference voxels that every registration in ``registrations`` defines.

    Each registration leaves out the border planes its own shift pulls in from outside the
    reconstruction (a plane for a shift of 0.02 voxels); scoring every method on the
    intersection judges them all on the same voxels, the same vias and the same wires.

    Parameters
    ----------
    registrations : list of Registration

    Returns
    -------
    tuple of slice
        The intersection, in reference indices (z, y, x).

    Raises
    ------
    ValueError
        When the intersection is empty or ``registrations`` is.
    """
    if not registrations:
        raise ValueError("no registration to intersect")
    starts = np.max([[s.start for s in r.reference_slices] for r in registrations], axis=0)
    stops = np.min([[s.stop for s in r.reference_slices] for r in registrations], axis=0)
    if np.any(stops <= starts):
        raise ValueError(f"the registered regions do not overlap (start {starts.tolist()}, "
                         f"stop {stops.tolist()})")
    return tuple(slice(int(a), int(b)) for a, b in zip(starts, stops, strict=True))


def restrict(registration: Registration, region: Slices) -> Registration:
    """``registration`` cut to ``region`` (reference indices, inside its own region); the
    aligned values are copied (the full array can be freed) and ``own_slices`` keeps the
    region it had.

    Raises
    ------
    ValueError
        When ``region`` is not inside the registration's region.
    """
    own = registration.reference_slices
    if any(r.start < o.start or r.stop > o.stop for r, o in zip(region, own, strict=True)):
        raise ValueError(f"region {region} is not inside the registered region {own}")
    local = tuple(slice(r.start - o.start, r.stop - o.start)
                  for r, o in zip(region, own, strict=True))
    return dataclasses.replace(registration, reference_slices=tuple(region),
                               aligned=registration.aligned[local].copy(),
                               own_slices=registration.own_slices or own)


def affine_fit(reference: np.ndarray, estimate: np.ndarray) -> tuple[float, float, float]:
    """Least-squares intensity fit ``reference ~ scale * estimate + offset`` (float64).

    Returns
    -------
    scale, offset : float
        The fitted map (units: reference per estimate unit, reference units).
    relative_rmse : float
        RMS of ``reference - fit`` divided by the reference's standard deviation
        (0 = perfect; 1 = no better than the reference's mean).
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    est = np.asarray(estimate, dtype=np.float64).ravel()
    est_c = est - est.mean()
    ref_c = ref - ref.mean()
    variance = float(est_c @ est_c)
    scale = float(est_c @ ref_c) / variance if variance > 0 else 0.0
    offset = float(ref.mean() - scale * est.mean())
    residual = ref_c - scale * est_c
    ref_norm = float(ref_c @ ref_c)
    relative = math.sqrt(float(residual @ residual) / ref_norm) if ref_norm > 0 else math.nan
    return scale, offset, relative
