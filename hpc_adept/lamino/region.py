"""A region of interest inside an extended slab: how far the detector window reaches.

A chip is a slab far wider than the region reconstructed from it. With the convention of
DESIGN section 3 the ray ``d`` has the lateral component ``cos(a)`` and the axial component
``sin(a)`` (``a = 90 - L``), so a ray crossing a slab ``t`` voxels thick runs
``t * cos(a) / sin(a) = t * tan(L)`` voxels sideways (1.80 t at L = 61 deg). The detector
window of a region therefore sees the chip around it, out to the radius
:func:`window_reach_px`. Pure geometry: no torch, no MPI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RegionPlan", "extend_columns", "extended_shape", "lateral_margin_px",
           "lateral_run_px", "looks_isolated", "plan_region", "reference_to_border",
           "sample_indices", "window_reach_px"]

#: Outer rows and columns of a projection that :func:`looks_isolated` inspects, pixels.
BORDER_PX = 2
#: Border RMS below this fraction of the whole window's RMS: the border is empty.
EMPTY_BORDER_RATIO = 0.1


def _sin_cos_a(tilt_deg: float) -> tuple[float, float]:
    a = math.radians(90.0 - tilt_deg)
    if abs(math.sin(a)) < 1e-6:
        raise ValueError(f"tilt_deg {tilt_deg}: at L = 90 (tomography) a ray runs along the "
                         f"slab and the lateral reach is unbounded")
    return abs(math.sin(a)), abs(math.cos(a))


def lateral_run_px(thickness_px: float, tilt_deg: float) -> float:
    """Sideways run (voxels) of one ray across a slab ``thickness_px`` voxels thick."""
    sin_a, cos_a = _sin_cos_a(tilt_deg)
    return float(thickness_px) * cos_a / sin_a


def window_reach_px(nz: int, detector_shape: tuple[int, int], tilt_deg: float) -> float:
    """Largest lateral distance (voxels, from the rotation axis) of a slab point that some
    rotation angle projects into the detector window.

    A point at lateral offset ``(p_u, p_w)`` and height ``z`` lands at ``u = p_u`` and
    ``v = sin(a) p_w + cos(a) z``; over all angles the point reaches the window
    ``|u| <= U, |v| <= V`` iff ``r**2 <= U**2 + ((V + cos(a) |z|) / sin(a))**2``.

    Parameters
    ----------
    nz : int
        Slab thickness in voxels (the volume's z extent).
    detector_shape : (nv, nu)
        Detector window in pixels (one pixel = one voxel).
    tilt_deg : float, deg
        Laminography angle L.
    """
    sin_a, cos_a = _sin_cos_a(tilt_deg)
    half_v = detector_shape[0] / 2.0
    half_u = detector_shape[1] / 2.0
    half_z = nz / 2.0
    return math.hypot(half_u, (half_v + cos_a * half_z) / sin_a)


def lateral_margin_px(volume_shape: tuple[int, int, int], detector_shape: tuple[int, int],
                      tilt_deg: float) -> int:
    """Voxels to add on each lateral side of ``volume_shape`` so that the widened square
    slab holds every point the detector window sees (:func:`window_reach_px`), plus one."""
    nz, ny, nx = volume_shape
    reach = window_reach_px(nz, detector_shape, tilt_deg)
    return max(0, math.ceil(reach - min(ny, nx) / 2.0) + 1)


def extended_shape(volume_shape: tuple[int, int, int], margin_px: int) -> tuple[int, int, int]:
    """``volume_shape`` widened by ``margin_px`` on both sides of y and x; the centre (the
    rotation axis) stays where it was, so the region is ``[:, m:m + ny, m:m + nx]``."""
    nz, ny, nx = volume_shape
    return (nz, ny + 2 * margin_px, nx + 2 * margin_px)


def sample_indices(n: int, count: int = 8) -> list[int]:
    """Up to ``count`` evenly spaced indices of ``n`` projections (the ones
    :func:`looks_isolated` is shown, wherever it is called)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(count, n))})


def _border_plane_coefficients(p: np.ndarray, border_px: int
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Per projection, ``(c0, c1, c2)`` of the plane ``c0 + c1 v / nv + c2 u / nu``
    least-squares fitted to the outer ``border_px`` rows and columns (float64 [3, n]), and
    that ring (bool [nv, nu])."""
    _, nv, nu = p.shape
    b = max(1, min(border_px, nv // 4, nu // 4))
    ring = np.ones((nv, nu), dtype=bool)
    ring[b:nv - b, b:nu - b] = False
    rows, cols = np.nonzero(ring)
    basis = np.stack([np.ones(rows.size), rows / nv, cols / nu], axis=1)  # [k, 3]
    values = np.asarray(p[:, ring], dtype=np.float64)                     # [n, k]
    return np.linalg.lstsq(basis, values.T, rcond=None)[0], ring


def _plane(coef: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The plane of coefficients ``(c0, c1, c2)`` on ``shape`` (float64 [nv, nu])."""
    nv, nu = shape
    v, u = np.mgrid[0:nv, 0:nu]
    return coef[0] + coef[1] * (v / nv) + coef[2] * (u / nu)


def looks_isolated(projections: np.ndarray, border_px: int = BORDER_PX,
                   ratio: float = EMPTY_BORDER_RATIO) -> bool:
    """True when the projections' outer border is empty: the sample lies inside the field.

    An isolated crop in vacuum projects inside a window chosen with a margin, so its outer
    ``border_px`` rows and columns hold only noise (and, without a vacuum phase reference,
    a constant and a ramp); a region of a wide chip has chip in every pixel. Per
    projection, a plane is fitted to the border and removed; True when what is left on
    the border has an RMS below ``ratio`` times that of the whole window. ``projections``
    float [n, nv, nu].
    """
    p = np.asarray(projections, dtype=np.float64)
    coef, ring = _border_plane_coefficients(p, border_px)
    rest = np.stack([p[i] - _plane(coef[:, i], p.shape[1:]) for i in range(len(p))])
    whole = math.sqrt(float(np.mean(rest**2)))
    return whole == 0.0 or math.sqrt(float(np.mean(rest[:, ring] ** 2))) < ratio * whole


def reference_to_border(projections: np.ndarray, border_px: int = BORDER_PX) -> np.ndarray:
    """Projections of an isolated sample referenced to the vacuum around it.

    Where nothing fixed each projection's phase offset and ramp (ptychography without a
    vacuum reference, projections made elsewhere) but the sample lies inside the field
    (:func:`looks_isolated`), the empty border is vacuum, whose phase is 0: the plane
    fitted to it is each projection's offset and ramp, and is subtracted. Unlike a
    reconstruction blind to every projection's plane, this keeps the sample's own
    constant and linear content (its projected mass), which the blind fit cannot tell
    from an offset.

    Parameters
    ----------
    projections : ndarray, float, [n, nv, nu], rad
    border_px : int
        Outer rows and columns taken as vacuum.

    Returns
    -------
    ndarray, float32, [n, nv, nu]
        A new array; the input is not changed. Host memory: the copy and one float64
        projection beyond it (the plane is fitted on the border only).
    """
    coef, _ = _border_plane_coefficients(projections, border_px)
    out = np.array(projections, dtype=np.float32, copy=True)
    for i in range(len(out)):
        out[i] -= _plane(coef[:, i], out.shape[1:]).astype(np.float32)
    return out


@dataclass(frozen=True)
class RegionPlan:
    """The volume a reconstruction computes for a region, and where the region sits in it.

    Attributes
    ----------
    region_shape : (nz, ny, nx)
        The volume the user asked for (``recon.volume_shape``).
    margin_px : int
        Voxels added on each lateral side (0: the region itself).
    extended : bool
        The sample is a wide slab (the data hold material outside the region).
    plane_free : bool
        Each projection's constant and linear phase ramp are unknown (no vacuum
        reference): the reconstruction must be blind to them.
    border_referenced : bool
        An isolated sample whose offsets and ramps were marked arbitrary: each projection
        is referenced to its empty border (:func:`reference_to_border`) before use.
    """

    region_shape: tuple[int, int, int]
    margin_px: int
    extended: bool
    plane_free: bool = False
    border_referenced: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """The widened volume ``[nz, ny + 2 m, nx + 2 m]``."""
        return extended_shape(self.region_shape, self.margin_px)

    def crop(self, volume: np.ndarray) -> np.ndarray:
        """The region ``[nz, ny, nx]`` of a widened volume (a copy, float32)."""
        m = self.margin_px
        _, ny, nx = self.region_shape
        return np.ascontiguousarray(volume[:, m:m + ny, m:m + nx], dtype=np.float32)


def plan_region(region_shape: tuple[int, int, int], tilt_deg: float, extended: bool,
                margin: int | str = "auto", multiple: int = 1,
                plane_free: bool | None = None) -> RegionPlan:
    """The :class:`RegionPlan` of ``region_shape``.

    ``margin`` ``auto`` is ``ceil(nz tan(L) / 2)`` for an extended sample (half of
    :func:`lateral_run_px`: the rays whose path's middle lies in the region cross the slab
    inside the widened volume) and 0 for an isolated one; any margin is then rounded up so
    that the widened lateral sizes stay multiples of ``multiple`` when the region's are
    (the DIP's strides).
    ``plane_free`` defaults to ``extended``.
    """
    nz = region_shape[0]
    if margin == "auto":
        m = math.ceil(lateral_run_px(nz, tilt_deg) / 2 - 1e-9) if extended else 0
    else:
        m = int(margin)
    if m and multiple > 1:
        while any((n + 2 * m) % multiple and n % multiple == 0 for n in region_shape[1:]):
            m += 1
    plane_free = extended if plane_free is None else plane_free
    return RegionPlan(tuple(int(n) for n in region_shape), m, bool(extended), bool(plane_free))


def extend_columns(projections: np.ndarray, pad_px: int) -> np.ndarray:
    """Projections continued ``pad_px`` columns beyond both sides of the window.

    The ramp filter is non-local: filtering a window cut out of a wide sample as if it
    ended in zeros biases the low frequencies (cupping). The continuation mirrors the
    window's edge columns and tapers them to 0 with a half cosine, so it starts at the
    edge's values and slopes, then fades smoothly. ``[n, nv, nu] -> [n, nv, nu + 2 pad]``.
    """
    p = np.asarray(projections)
    if pad_px <= 0:
        return p
    nu = p.shape[-1]
    reach = min(pad_px, nu)
    taper = 0.5 * (1 + np.cos(np.pi * (np.arange(1, pad_px + 1)) / (pad_px + 1)))
    left = np.zeros((*p.shape[:-1], pad_px), dtype=p.dtype)
    right = np.zeros_like(left)
    left[..., pad_px - reach:] = p[..., 1:reach + 1][..., ::-1] if nu > reach else \
        p[..., :reach][..., ::-1]
    right[..., :reach] = p[..., -reach - 1:-1][..., ::-1] if nu > reach else \
        p[..., -reach:][..., ::-1]
    left *= taper[::-1].astype(p.dtype)
    right *= taper.astype(p.dtype)
    return np.concatenate([left, p, right], axis=-1)
