"""A complex object reconstructed elsewhere as a phase projection (radians, float32).

The phase is unwrapped (least squares, DCT-based, no scikit-image; only when neighbouring
pixels differ by more than pi), then a plane ``c0 + c1 row + c2 col`` fitted by least
squares over the frame (or over a given region) is subtracted: the offset and the linear
ramp of a ptychographic object are arbitrary.
"""

from __future__ import annotations

import numpy as np

from hpc_adept.ptycho.phase import unwrap_phase, wraps

__all__ = ["object_phase", "remove_plane"]


def remove_plane(phase: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """Subtract the least-squares plane ``c0 + c1 r + c2 c`` fitted over ``region``.

    Parameters
    ----------
    phase : numpy.ndarray, float, [nv, nu]
        Radians.
    region : numpy.ndarray, bool, [nv, nu], optional
        Pixels used in the fit (default: all).

    Returns
    -------
    numpy.ndarray, float64, [nv, nu]
    """
    phase = np.asarray(phase, dtype=np.float64)
    rows, cols = np.indices(phase.shape, dtype=np.float64)
    design = np.stack([np.ones(phase.size), rows.ravel(), cols.ravel()], axis=1)
    use = np.ones(phase.size, bool) if region is None else np.asarray(region, bool).ravel()
    coef, *_ = np.linalg.lstsq(design[use], phase.ravel()[use], rcond=None)
    return phase - (design @ coef).reshape(phase.shape)


def object_phase(obj: np.ndarray, phase_sign: float = 1.0,
                 region: np.ndarray | None = None) -> np.ndarray:
    """Phase projection of a complex object ``[nv, nu]``: unwrapped, offset and ramp removed.

    Parameters
    ----------
    obj : numpy.ndarray, complex, [nv, nu]
        Transmission ``|O| exp(i phi)``.
    phase_sign : {1.0, -1.0}
        -1 turns PtychoShelves' phase (negative in matter: its tomography takes
        ``rec = -tomo.FBP(phase, ...)``) into the positive phase of our simulator's ground
        truth. The readers keep the stored sign by default.
    region : numpy.ndarray, bool, optional
        Pixels for the plane fit.

    Returns
    -------
    numpy.ndarray, float32, [nv, nu]
    """
    field = np.asarray(obj, dtype=np.complex128)
    total = field.sum()
    if abs(total) > 0:  # rotate the global phase to 0 first: fewer wraps to undo
        field = field * np.conj(total / abs(total))
    phase = np.angle(field)
    if wraps(phase):
        phase = unwrap_phase(phase)
    return (phase_sign * remove_plane(phase, region)).astype(np.float32)
