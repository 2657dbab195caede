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

__all__ = ["extended_shape", "lateral_margin_px", "lateral_run_px", "window_reach_px"]


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
