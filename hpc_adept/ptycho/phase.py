"""Phase projection from a reconstructed object: crop, unwrap, remove offset and ramp.

The ptychographic object is ``O = exp(i * projection)`` times a weak absorption, known only
up to a global phase and (when the probe was refined) a linear phase ramp. The laminography
stages need the projection itself on the projection grid (DESIGN section 4): this module
crops the field from the object grid, unwraps the phase when it wraps, and fits the constant
and linear phase robustly on the weakest-phase pixels (the empty background of an IC
projection, where the beam crossed no metal), so the background ends at 0.

Host (NumPy) code: it runs once per scan on a [nv, nu] image.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.fft as sfft

from hpc_adept.backend import to_numpy

__all__ = [
    "crop_field",
    "fit_background_plane",
    "phase_projection",
    "unwrap_phase",
    "wraps",
]

Unwrap = Literal["auto", "always", "never"]


def crop_field(obj: Any, field_shape: tuple[int, int],
               field_offset: tuple[int, int] | None = None) -> np.ndarray:
    """The projection field ``[nv, nu]`` of an object array (host complex128).

    Parameters
    ----------
    obj : array, complex, [H, W]
    field_shape : (nv, nu)
    field_offset : (row, col), optional
        Object index of field pixel (0, 0); default: the field centered in ``obj``.
    """
    obj = to_numpy(obj)
    nv, nu = field_shape
    if field_offset is None:
        field_offset = ((obj.shape[0] - nv) // 2, (obj.shape[1] - nu) // 2)
    r, c = field_offset
    if r < 0 or c < 0 or r + nv > obj.shape[0] or c + nu > obj.shape[1]:
        raise ValueError(f"field {field_shape} at {field_offset} leaves the object {obj.shape}")
    return np.asarray(obj[r:r + nv, c:c + nu], dtype=np.complex128)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def wraps(phase: np.ndarray) -> bool:
    """True when some neighbour difference of ``phase`` ([nv, nu], radians) exceeds pi."""
    return bool(np.any(np.abs(np.diff(phase, axis=0)) > np.pi)
                or np.any(np.abs(np.diff(phase, axis=1)) > np.pi))


def unwrap_phase(wrapped: np.ndarray) -> np.ndarray:
    """Least-squares 2-D phase unwrapping (Ghiglia and Romero 1994), float64 ``[nv, nu]``.

    The Poisson equation ``laplacian(phi) = div(wrap(grad psi))`` with Neumann boundaries is
    solved exactly by a DCT-II. The least-squares solution smooths over residues, so the
    result is snapped back to ``psi + 2 pi k`` (integer ``k``): where the least-squares
    phase is within pi of the truth, the values are exact, not smoothed.

    Parameters
    ----------
    wrapped : ndarray, float, [nv, nu]
        Phase in (-pi, pi], radians.

    Returns
    -------
    ndarray, float64, [nv, nu]
        Unwrapped phase, radians (defined up to a constant).
    """
    psi = np.asarray(wrapped, dtype=np.float64)
    nv, nu = psi.shape
    grad_r = np.zeros_like(psi)
    grad_c = np.zeros_like(psi)
    grad_r[:-1] = _wrap(np.diff(psi, axis=0))
    grad_c[:, :-1] = _wrap(np.diff(psi, axis=1))
    # Divergence with the Neumann convention: the gradient is zero beyond the last sample.
    div = grad_r.copy()
    div[1:] -= grad_r[:-1]
    div += grad_c
    div[:, 1:] -= grad_c[:, :-1]
    spectrum = sfft.dctn(div, type=2, norm="ortho")
    eig = (2 * np.cos(np.pi * np.arange(nv) / nv)[:, None]
           + 2 * np.cos(np.pi * np.arange(nu) / nu)[None, :] - 4.0)
    eig[0, 0] = 1.0  # the constant is free: keep its coefficient at zero
    spectrum /= eig
    spectrum[0, 0] = 0.0
    smooth = sfft.idctn(spectrum, type=2, norm="ortho")
    return psi + 2 * np.pi * np.round((smooth - psi) / (2 * np.pi))


def fit_background_plane(phase: np.ndarray, region: np.ndarray, quantile: float = 0.3,
                         iterations: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Constant + linear phase of the background, fitted on the weakest-phase pixels.

    Starting from a least-squares plane over ``region``, each iteration keeps the
    ``quantile`` of the region with the lowest residual (the background: an IC projection
    only adds phase where the ray crosses metal) and refits the plane there. The plane's
    constant is finally set to the mode of the kept residuals, so the background (not the
    kept set's lower tail) ends at 0.

    Parameters
    ----------
    phase : ndarray, float, [nv, nu]
        Unwrapped phase, radians.
    region : ndarray, bool, [nv, nu]
        Pixels that may be used (the well-scanned field or a support's complement).
    quantile : float
        Fraction of the region kept as background in each iteration.
    iterations : int
        Reweighting rounds.

    Returns
    -------
    plane : ndarray, float64, [nv, nu]
        Fitted background phase, radians.
    background : ndarray, bool, [nv, nu]
        The pixels of the last fit.
    """
    nv, nu = phase.shape
    rows, cols = np.mgrid[0:nv, 0:nu]
    rows = (rows - (nv - 1) / 2.0) / max(nv, 1)
    cols = (cols - (nu - 1) / 2.0) / max(nu, 1)
    basis = np.stack([np.ones_like(rows), rows, cols], axis=-1)  # [nv, nu, 3]
    chosen = region.copy()
    coef = np.zeros(3)
    for _ in range(iterations):
        coef = np.linalg.lstsq(basis[chosen], phase[chosen], rcond=None)[0]
        residual = phase - basis @ coef
        cut = np.quantile(residual[region], quantile)
        chosen = region & (residual <= cut)
        if chosen.sum() < 3:
            chosen = region
            break
    residual = phase - basis @ coef
    coef[0] += _mode(residual[chosen])
    return basis @ coef, chosen


def _mode(values: np.ndarray) -> float:
    """Peak of a smoothed histogram of ``values``: the background level, unbiased by tails."""
    if values.size < 16:
        return float(np.median(values))
    lo, hi = np.quantile(values, [0.01, 0.99])
    if hi <= lo:
        return float(np.median(values))
    hist, edges = np.histogram(values, bins=64, range=(lo, hi))
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0])
    smooth = np.convolve(hist, kernel / kernel.sum(), mode="same")
    peak = int(np.argmax(smooth))
    # The bin centre is quantised; the median of the values around the peak is not.
    near = values[(values >= edges[max(peak - 1, 0)]) & (values <= edges[min(peak + 2, 64)])]
    return float(np.median(near)) if near.size else float(0.5 * (edges[peak] + edges[peak + 1]))


def phase_projection(source: Any, field_shape: tuple[int, int] | None = None, *,
                     field_offset: tuple[int, int] | None = None,
                     support: np.ndarray | None = None, unwrap: Unwrap = "auto",
                     background_quantile: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Phase projection and amplitude of a reconstructed object on the projection grid.

    Parameters
    ----------
    source : LsqmlResult or array, complex, [H, W]
        A reconstruction (its grid gives the field's place) or an object array.
    field_shape : (nv, nu), optional
        Projection grid; required for an array, taken from a result otherwise.
    field_offset : (row, col), optional
        Object index of field pixel (0, 0); default: from the result, or centered.
    support : ndarray, bool, [nv, nu], optional
        Pixels where the phase is trustworthy and may serve as background (e.g. the scanned,
        well-lit field). Default: for a result, where the illumination exceeds 10 % of its
        maximum; else the whole field.
    unwrap : {'auto', 'always', 'never'}
        'auto' unwraps when neighbouring pixels differ by more than pi.
    background_quantile : float
        Fraction of the support taken as background in the plane fit.

    Returns
    -------
    phase : ndarray, float32, [nv, nu]
        Radians; constant and linear background removed, background = 0.
    amplitude : ndarray, float32, [nv, nu]
        ``|O|`` normalised to 1 on the background.
    """
    field = _field_of(source, field_shape, field_offset)
    if support is None:
        support = _default_support(source, field.shape)
    support = np.asarray(support, dtype=bool)
    if support.shape != field.shape or not support.any():
        raise ValueError("support must be a non-empty bool array of the field's shape")
    # Rotate the global phase to the support's circular mean first: fewer wraps to undo.
    mean = np.sum(field[support])
    if abs(mean) > 0:
        field = field * np.conj(mean / abs(mean))
    phase = np.angle(field)
    if unwrap == "always" or (unwrap == "auto" and wraps(phase)):
        phase = unwrap_phase(phase)
    plane, background = fit_background_plane(phase, support, background_quantile)
    amplitude = np.abs(field)
    level = np.median(amplitude[background])
    if level > 0:
        amplitude = amplitude / level
    return (phase - plane).astype(np.float32), amplitude.astype(np.float32)


def _field_of(source: Any, field_shape: tuple[int, int] | None,
              field_offset: tuple[int, int] | None) -> np.ndarray:
    grid = getattr(source, "grid", None)
    if grid is not None:
        return crop_field(source.object, field_shape or grid.field_shape,
                          field_offset or grid.field_offset)
    if field_shape is None:
        raise ValueError("field_shape is required when source is an array")
    return crop_field(source, field_shape, field_offset)


def _default_support(source: Any, shape: tuple[int, int]) -> np.ndarray:
    illumination = getattr(source, "illumination", None)
    if illumination is None:
        return np.ones(shape, dtype=bool)
    lit = crop_field(illumination, shape, source.grid.field_offset).real
    return lit > 0.1 * lit.max()
