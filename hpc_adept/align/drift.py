"""The rigid-translation shift pattern that laminographic projection matching cannot see.

A rigid translation ``p = (p_x, p_y, p_z)`` voxels of the object moves the projection at
rotation angle theta by ``(row, col) = (p.v(theta), p.u(theta))`` (DESIGN section 3):

    row = -sin(a) sin(theta) p_x + sin(a) cos(theta) p_y + cos(a) p_z
    col =  cos(theta) p_x        + sin(theta) p_y

with ``a = 90 deg - L``. Such shifts are consistent with a translated object, so the data
cannot tell them from no shift: they are projected out of every shift estimate.
"""

from __future__ import annotations

import math

import numpy as np


def rigid_drift_basis(angles_deg: np.ndarray, tilt_deg: float) -> np.ndarray:
    """Shift patterns of unit translations along x, y and z.

    Parameters
    ----------
    angles_deg : ndarray, [n_angles], degrees
    tilt_deg : float, degrees (laminography angle L)

    Returns
    -------
    ndarray, float64, [n_angles, 2, 3]
        ``basis[i, :, j]`` is the ``(row, col)`` shift (pixels) of projection ``i`` caused
        by a one-voxel translation along axis ``j`` of (x, y, z).
    """
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    a = math.radians(90.0 - float(tilt_deg))
    basis = np.zeros((theta.size, 2, 3))
    basis[:, 0, 0] = -math.sin(a) * np.sin(theta)
    basis[:, 0, 1] = math.sin(a) * np.cos(theta)
    basis[:, 0, 2] = math.cos(a)
    basis[:, 1, 0] = np.cos(theta)
    basis[:, 1, 1] = np.sin(theta)
    return basis


def fit_rigid_drift(shifts_px: np.ndarray, angles_deg: np.ndarray, tilt_deg: float,
                    axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Least-squares translation ``p`` [3] (voxels, (x, y, z)) whose shift pattern is
    closest to ``shifts_px`` [n_angles, 2] (row, col), along ``axes`` only (the others 0).
    Directions the angles leave undetermined (e.g. p_y for a single angle) get the
    minimum-norm value."""
    basis = rigid_drift_basis(angles_deg, tilt_deg).reshape(-1, 3)
    coef = np.zeros(3)
    coef[list(axes)], *_ = np.linalg.lstsq(
        basis[:, list(axes)], np.asarray(shifts_px, np.float64).reshape(-1), rcond=1e-10)
    return coef


def remove_rigid_drift(shifts_px: np.ndarray, angles_deg: np.ndarray, tilt_deg: float,
                       axes: tuple[int, ...] = (0, 1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """Project the rigid-translation pattern out of per-projection shifts.

    Parameters
    ----------
    shifts_px : ndarray, [n_angles, 2], pixels (row, col)
    angles_deg : ndarray, [n_angles], degrees
    tilt_deg : float, degrees
    axes : tuple of int
        The translations removed (0, 1, 2: x, y, z; default all). A volume prior fixed in
        height (a layer stack) observes the z translation: it is then kept (``(0, 1)``).

    Returns
    -------
    (cleaned, translation) : ndarray float64 [n_angles, 2], ndarray float64 [3]
        ``cleaned`` is orthogonal (summed over angles and both axes) to the removed
        translations' patterns; ``translation`` is the removed ``p`` in voxels.
    """
    shifts = np.asarray(shifts_px, dtype=np.float64)
    coef = fit_rigid_drift(shifts, angles_deg, tilt_deg, axes)
    pattern = rigid_drift_basis(angles_deg, tilt_deg) @ coef
    return shifts - pattern, coef
