"""Phase projection from a reconstructed object: crop, unwrap, remove offset and ramp.

The ptychographic object is ``O = exp(i * projection)`` times a weak absorption, known only
up to a global phase and (when the probe was refined) a linear phase ramp. The laminography
stages need the projection itself on the projection grid (DESIGN section 4): this module
crops the field from the object grid, unwraps the phase when it wraps, and removes a
constant and linear phase in one of two ways (``ptycho.phase_reference``):

- ``vacuum``: fitted robustly on the weakest-phase pixels, the flat background of an IC
  projection where the beam crossed no metal (vacuum beside an isolated crop, or only
  dielectric in a chip that fills the field), so that background ends at 0;
- ``plane``: no background is assumed: the least-squares constant and ramp over the lit
  field (weighted by the illumination) are removed, leaving each projection with zero
  weighted mean and ramp; its true offset and ramp are then unknown and the later stages
  must fit their own;
- ``auto``: ``vacuum`` when the weakest pixels form a flat, populated level at the low end
  of the field's phase (:func:`trusts_background`), else ``plane``.

Host (NumPy) code: it runs once per scan on a [nv, nu] image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.fft as sfft

from hpc_adept.backend import to_numpy

__all__ = [
    "BackgroundLevel",
    "PhaseExtraction",
    "background_level",
    "noise_sigma",
    "crop_field",
    "extract_phase",
    "fit_background_plane",
    "fit_plane",
    "level_tolerance",
    "phase_projection",
    "refine_on_level",
    "trusts_background",
    "unwrap_phase",
    "wraps",
]

Unwrap = Literal["auto", "always", "never"]
PhaseReference = Literal["auto", "vacuum", "plane"]

# The ``auto`` rule (:func:`trusts_background`), measured in profiling/phase_reference.py.
LEVEL_SIGMAS = 3.0          # half-width of the background level, noise standard deviations
LEVEL_FLOOR = 1e-3          # ... at least this fraction of the phase range (noise-free data)
REFINE_SIGMAS = 1.5         # half-width of the level the vacuum plane is refitted on
CORE_SIGMAS = 1.5           # half-width of the level's core (its sharpness)
MIN_LEVEL_FRACTION = 0.25   # the level holds at least this fraction of the support
MAX_BELOW_FRACTION = 0.03   # at most this fraction of the support lies below the level
MIN_SHARPNESS = 0.7         # within CORE_SIGMAS over within LEVEL_SIGMAS sigmas, at least


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
    basis = _plane_basis(phase.shape)  # [nv, nu, 3]
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


@dataclass(frozen=True)
class PhaseExtraction:
    """A phase projection and how its offset and ramp were set (:func:`extract_phase`).

    Attributes
    ----------
    phase : ndarray, float32, [nv, nu]
        Radians.
    amplitude : ndarray, float32, [nv, nu]
        ``|O|``, normalised to 1 on the background (``vacuum``) or the support (``plane``).
    reference : {'vacuum', 'plane'}
        How the offset and ramp were removed (``auto`` resolved).
    background : BackgroundLevel
        The vacuum fit's background level (``auto``'s evidence).
    """

    phase: np.ndarray
    amplitude: np.ndarray
    reference: Literal["vacuum", "plane"]
    background: BackgroundLevel

    @property
    def offset_arbitrary(self) -> bool:
        """True when the projection's offset and linear ramp carry no information."""
        return self.reference == "plane"


def _plane_basis(shape: tuple[int, int]) -> np.ndarray:
    """Constant, row and column basis ``[nv, nu, 3]`` (centred, scaled to the field)."""
    nv, nu = shape
    rows, cols = np.mgrid[0:nv, 0:nu]
    rows = (rows - (nv - 1) / 2.0) / max(nv, 1)
    cols = (cols - (nu - 1) / 2.0) / max(nu, 1)
    return np.stack([np.ones_like(rows), rows, cols], axis=-1)


def fit_plane(phase: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted least-squares constant + linear phase (float64 ``[nv, nu]``, radians).

    Parameters
    ----------
    phase : ndarray, float, [nv, nu]
        Radians.
    weight : ndarray, float, [nv, nu]
        Non-negative weights (e.g. the illumination, zero outside the support); at least
        three non-collinear pixels must have a positive weight.
    """
    basis = _plane_basis(phase.shape)
    used = weight > 0
    root = np.sqrt(weight[used])
    coef = np.linalg.lstsq(basis[used] * root[:, None], phase[used] * root, rcond=None)[0]
    return basis @ coef


@dataclass(frozen=True)
class BackgroundLevel:
    """How flat and populated the background level at 0 of a vacuum fit is.

    Attributes
    ----------
    level : float
        Fraction of the support within ``tolerance`` of 0.
    below : float
        Fraction of the support below ``-tolerance``.
    sharpness : float
        Fraction within ``CORE_SIGMAS`` noise sigmas over ``level`` (``LEVEL_SIGMAS``): 0.87
        for a flat level with white Gaussian noise (0.74-0.75 after LSQ-ML, whose noise is
        correlated, so that the estimated sigma is about 0.7 of the true one), 0.5 for a
        uniform spread of phases, less at the low end of a rising histogram.
    tolerance : float, rad
        Half-width of the level.
    """

    level: float
    below: float
    sharpness: float
    tolerance: float


def level_tolerance(residual: np.ndarray, support: np.ndarray) -> float:
    """Half-width (rad) of a background level: ``LEVEL_SIGMAS`` noise sigmas
    (:func:`noise_sigma`), at least ``LEVEL_FLOOR`` of the support's 1-99 % phase range (for
    noise-free data)."""
    lo, hi = np.quantile(residual[support], [0.01, 0.99])
    return max(LEVEL_SIGMAS * noise_sigma(residual, support), LEVEL_FLOOR * float(hi - lo))


def background_level(residual: np.ndarray, support: np.ndarray,
                     tolerance: float) -> BackgroundLevel:
    """Statistics of the level ``|residual| <= tolerance`` (see :class:`BackgroundLevel`).

    Parameters
    ----------
    residual : ndarray, float, [nv, nu]
        Phase minus the vacuum fit's plane, radians.
    support : ndarray, bool, [nv, nu]
        The usable pixels.
    tolerance : float, rad
        From :func:`level_tolerance`.
    """
    values = residual[support]
    level = float(np.mean(np.abs(values) <= tolerance))
    core = float(np.mean(np.abs(values) <= tolerance * CORE_SIGMAS / LEVEL_SIGMAS))
    return BackgroundLevel(level, float(np.mean(values < -tolerance)),
                           core / level if level > 0 else 0.0, tolerance)


def noise_sigma(image: np.ndarray, support: np.ndarray) -> float:
    """Robust standard deviation of white noise on ``image`` (float ``[nv, nu]``).

    The median absolute response to the 3 x 3 mask ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``
    (Immerkaer 1996) at support pixels whose 3 x 3 neighbourhood is in the support: the mask
    cancels constants and ramps and, through the median, most edges; for white noise its
    response has six times the noise's standard deviation. Correlated noise (LSQ-ML's) is
    underestimated: by about 0.7 on the scans of profiling/phase_reference.py.
    """
    if min(image.shape) < 3:
        return 0.0
    img = np.asarray(image, dtype=np.float64)
    lap = (img[:-2, :-2] + img[:-2, 2:] + img[2:, :-2] + img[2:, 2:]
           - 2 * (img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:])
           + 4 * img[1:-1, 1:-1])
    inside = np.ones(lap.shape, dtype=bool)
    for dr in range(3):
        for dc in range(3):
            inside &= support[dr:dr + lap.shape[0], dc:dc + lap.shape[1]]
    if not inside.any():
        return 0.0
    return float(1.4826 * np.median(np.abs(lap[inside])) / 6.0)


def refine_on_level(phase: np.ndarray, support: np.ndarray, plane: np.ndarray,
                    tolerance: float, rounds: int = 3) -> tuple[np.ndarray, np.ndarray | None]:
    """Refit the vacuum fit's plane by least squares on the core of its level
    (``|phase - plane| <= tolerance * REFINE_SIGMAS / LEVEL_SIGMAS``).

    Why: :func:`fit_background_plane` fits the lowest quantile of the background, whose
    noise is one-sided, and its mode sits near the quantile's cut: with noise ``sigma`` the
    background ended about ``0.5 sigma`` above 0 (5-11 mrad at 20 mrad of noise on a
    region's projection beside vacuum). The core of the level is symmetric about the
    background, so its plane is not biased by the noise; a narrow core keeps the faint
    metal (partial voxels, thin wires) out: -3 to -5 mrad with 3 sigma, -1 mrad with 1.5
    (tests/test_ptycho.py, ``test_vacuum_background_is_not_biased_by_noise``).

    Returns
    -------
    plane : ndarray, float64, [nv, nu]
        The refined plane (``plane`` itself when the level holds fewer than 3 pixels).
    level : ndarray, bool, [nv, nu]
        The pixels of the last fit (None when there was none).
    """
    level = None
    core = tolerance * REFINE_SIGMAS / LEVEL_SIGMAS
    for _ in range(rounds):
        within = support & (np.abs(phase - plane) <= core)
        if within.sum() < 3:
            break
        plane = plane + fit_plane(phase - plane, within.astype(np.float64))
        level = within
    return plane, level


def trusts_background(stats: BackgroundLevel) -> bool:
    """``auto``'s rule: the vacuum fit is trusted when its level holds at least
    ``MIN_LEVEL_FRACTION`` of the support, at most ``MAX_BELOW_FRACTION`` of the support
    lies below it, and the level is sharp (``sharpness >= MIN_SHARPNESS``: a flat level, not
    the low end of a spread). Measured: profiling/phase_reference.py."""
    return (stats.level >= MIN_LEVEL_FRACTION and stats.below <= MAX_BELOW_FRACTION
            and stats.sharpness >= MIN_SHARPNESS)


def extract_phase(source: Any, field_shape: tuple[int, int] | None = None, *,
                  field_offset: tuple[int, int] | None = None,
                  support: np.ndarray | None = None, weight: np.ndarray | None = None,
                  unwrap: Unwrap = "auto", reference: PhaseReference = "vacuum",
                  background_quantile: float = 0.3) -> PhaseExtraction:
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
        Pixels where the phase is trustworthy (e.g. the scanned, well-lit field). Default:
        for a result, where the illumination exceeds 10 % of its maximum; else the whole
        field.
    weight : ndarray, float, [nv, nu], optional
        Weights of the ``plane`` fit on the support; default: a result's illumination, or 1.
    unwrap : {'auto', 'always', 'never'}
        'auto' unwraps when neighbouring pixels differ by more than pi.
    reference : {'vacuum', 'plane', 'auto'}
        How the offset and ramp are removed (module docstring).
    background_quantile : float
        Fraction of the support taken as background in the vacuum fit.

    Returns
    -------
    PhaseExtraction
        The phase (``vacuum``: the background level at 0; ``plane``: zero weighted mean
        and ramp over the support), the amplitude, the reference used and the background
        level's statistics (computed for every reference).
    """
    field = _field_of(source, field_shape, field_offset)
    if support is None:
        support = _default_support(source, field.shape)
    support = np.asarray(support, dtype=bool)
    if support.shape != field.shape or not support.any():
        raise ValueError("support must be a non-empty bool array of the field's shape")
    if reference not in ("auto", "vacuum", "plane"):
        raise ValueError(f"reference must be 'auto', 'vacuum' or 'plane', got {reference!r}")
    # Rotate the global phase to the support's circular mean first: fewer wraps to undo.
    mean = np.sum(field[support])
    if abs(mean) > 0:
        field = field * np.conj(mean / abs(mean))
    phase = np.angle(field)
    if unwrap == "always" or (unwrap == "auto" and wraps(phase)):
        phase = unwrap_phase(phase)
    plane, background = fit_background_plane(phase, support, background_quantile)
    tolerance = level_tolerance(phase - plane, support)
    refined, level = refine_on_level(phase, support, plane, tolerance)
    stats = background_level(phase - refined, support, tolerance)
    chosen = reference if reference != "auto" else (
        "vacuum" if trusts_background(stats) else "plane")
    if chosen == "plane":
        background = support
        plane = fit_plane(phase, _plane_weight(source, support, weight))
    elif level is not None:
        plane, background = refined, level
    amplitude = np.abs(field)
    scale = np.median(amplitude[background])
    if scale > 0:
        amplitude = amplitude / scale
    return PhaseExtraction((phase - plane).astype(np.float32), amplitude.astype(np.float32),
                           chosen, stats)


def phase_projection(source: Any, field_shape: tuple[int, int] | None = None, *,
                     field_offset: tuple[int, int] | None = None,
                     support: np.ndarray | None = None, unwrap: Unwrap = "auto",
                     reference: PhaseReference = "vacuum",
                     background_quantile: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Phase projection and amplitude (float32 ``[nv, nu]``) of :func:`extract_phase`.

    With ``reference='vacuum'`` (the default) the constant and linear background is
    removed and the background ends at 0; the amplitude is 1 there.
    """
    out = extract_phase(source, field_shape, field_offset=field_offset, support=support,
                        unwrap=unwrap, reference=reference,
                        background_quantile=background_quantile)
    return out.phase, out.amplitude


def _field_of(source: Any, field_shape: tuple[int, int] | None,
              field_offset: tuple[int, int] | None) -> np.ndarray:
    grid = getattr(source, "grid", None)
    if grid is not None:
        return crop_field(source.object, field_shape or grid.field_shape,
                          field_offset or grid.field_offset)
    if field_shape is None:
        raise ValueError("field_shape is required when source is an array")
    return crop_field(source, field_shape, field_offset)


def _illumination_of(source: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A result's illumination on the field (float64 ``[nv, nu]``), or None."""
    illumination = getattr(source, "illumination", None)
    if illumination is None:
        return None
    return crop_field(illumination, shape, source.grid.field_offset).real


def _default_support(source: Any, shape: tuple[int, int]) -> np.ndarray:
    lit = _illumination_of(source, shape)
    if lit is None:
        return np.ones(shape, dtype=bool)
    return lit > 0.1 * lit.max()


def _plane_weight(source: Any, support: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """The plane fit's weights: ``weight``, else the illumination, else 1; 0 off the support."""
    if weight is None:
        weight = _illumination_of(source, support.shape)
    if weight is None:
        weight = np.ones(support.shape)
    weight = np.asarray(weight, dtype=np.float64)
    if weight.shape != support.shape or not np.all(np.isfinite(weight)) or weight.min() < 0:
        raise ValueError("weight must be a finite, non-negative array of the field's shape")
    return np.where(support, weight, 0.0)
