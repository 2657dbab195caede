"""Where the projection-matching reconstruction and its reprojections can be trusted: the
loose support of an isolated region, the lateral margin of a widened volume, the weight
of a pixel whose ray leaves that volume and how many angles see what a ray crosses."""

from __future__ import annotations

import math

import numpy as np
import torch

from hpc_adept.lamino.region import lateral_margin_px
from hpc_adept.linop import LinearOperator


def visible_support(volume_shape: tuple[int, int, int], detector_shape: tuple[int, int],
                    tilt_deg: float, margin_px: float = 1.0) -> np.ndarray:
    """Voxels that every projection sees inside its detector (a loose support mask).

    A voxel at offset ``p`` from the volume centre lands at ``col = p.u(theta)`` and
    ``row = p.v(theta)``; over a full turn ``max |col| = r`` and
    ``max |row| = sin(a) r + cos(a) |p_z|`` with ``r = hypot(p_x, p_y)``. Voxels that leave
    the detector (less ``margin_px``) at some angle are reconstructed from part of the
    data only and carry truncation artefacts into the reprojections; they are set to zero.
    When the detector holds the volume's whole shadow, every voxel is kept.

    Returns
    -------
    ndarray, bool, [nz, ny, nx]
    """
    nz, ny, nx = volume_shape
    nv, nu = detector_shape
    a = math.radians(90.0 - float(tilt_deg))
    z = np.abs(np.arange(nz) - (nz - 1) / 2.0)[:, None, None]
    y = (np.arange(ny) - (ny - 1) / 2.0)[None, :, None]
    x = (np.arange(nx) - (nx - 1) / 2.0)[None, None, :]
    r = np.sqrt(x ** 2 + y ** 2)
    in_cols = r <= (nu - 1) / 2.0 - margin_px + 0.5
    in_rows = abs(math.sin(a)) * r + abs(math.cos(a)) * z <= (nv - 1) / 2.0 - margin_px + 0.5
    return np.broadcast_to(in_cols & in_rows, volume_shape).copy()


def level_margin_px(lateral_margin: str | int, region_shape: tuple[int, int, int],
                    detector_shape: tuple[int, int], tilt_deg: float, factor: int) -> int:
    """Lateral margin (voxels of the level, each side) of one binning level.

    Parameters
    ----------
    lateral_margin : 'auto' or int
        ``align.lateral_margin``: ``auto`` is
        :func:`~hpc_adept.lamino.region.lateral_margin_px` of the level's region and
        detector window (every point the window sees is inside the widened volume); an
        integer is full-resolution voxels, divided by ``factor`` and rounded up.
    region_shape : (nz, ny, nx)
        The region at this level, voxels.
    detector_shape : (nv, nu)
        The level's detector window, pixels.
    tilt_deg : float, degrees
    factor : int
        Binning of the level.
    """
    if lateral_margin == "auto":
        return lateral_margin_px(region_shape, detector_shape, tilt_deg)
    return int(math.ceil(int(lateral_margin) / factor))


def ray_trust(path: torch.Tensor, thickness_px: int, tilt_deg: float,
              band: float = 0.1) -> torch.Tensor:
    """Weight in [0, 1] of each pixel from the length of its ray inside the modelled slab.

    A ray of an extended sample crosses the whole slab (``thickness / sin(a)`` voxels,
    ``a = 90 - L``); where it leaves a widened volume of finite width through its side, the
    reprojection misses material that the data hold. Pixels whose ray is inside for the
    full length get 1, those short by more than ``band`` of it get 0, linear between.

    Parameters
    ----------
    path : torch.Tensor, float, [n, nv, nu]
        Projections of a volume of ones (ray lengths, voxels).
    thickness_px : int
        Slab thickness (the volume's nz), voxels.
    tilt_deg : float, degrees
    band : float
        Fraction of the full length over which the weight falls to zero.
    """
    full = thickness_px / abs(math.sin(math.radians(90.0 - tilt_deg)))
    # 2 % below the full length still counts as full (projector interpolation)
    return ((path / full - (1.0 - band)) / (band - 0.02)).clamp(0.0, 1.0)


def angular_coverage(op: LinearOperator, path: torch.Tensor, power: float) -> torch.Tensor:
    """Weight in [0, 1] of each pixel from how many angles see the voxels along its ray.

    A voxel's coverage is the adjoint of a stack of ones over its largest value: the sum,
    over the angles whose window sees it, of its footprint (about the same for every angle
    at a fixed tilt), so nearly the fraction of the angles that see it. A pixel gets the
    mean coverage along its ray, raised to ``power``. Material that few angles see can
    follow a smooth pattern of shifts over the angles (it is displaced with them); the
    region that every angle sees cannot.

    Parameters
    ----------
    op : LinearOperator
        The level's projector of all angles, [nz, ny, nx] -> [n, nv, nu].
    path : torch.Tensor, float, [n, nv, nu]
        ``op.forward`` of a volume of ones (ray lengths, voxels).
    power : float, >= 0
        Exponent: larger values listen more to the region every angle sees.

    Returns
    -------
    torch.Tensor, [n, nv, nu], dtype of ``path``, values in [0, 1]
    """
    seen = op.adjoint(torch.ones_like(path))
    coverage = seen / seen.amax().clamp_min(1e-30)
    mean = op.forward(coverage) / path.clamp_min(1e-12)
    return mean.clamp(0.0, 1.0) ** power
