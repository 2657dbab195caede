"""Loose support of the projection-matching reconstruction."""

from __future__ import annotations

import math

import numpy as np


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
