"""How other codes' rotation and laminography angles map onto ours (DESIGN section 3).

Ours: volume ``[z, y, x]``, z the rotation axis; laminography angle ``L`` between beam and
rotation axis (90 = tomography), ``a = 90 - L``; for rotation angle ``theta``::

    ray d = ( sin(theta) cos(a), -cos(theta) cos(a), sin(a))
    u     = ( cos(theta),         sin(theta),        0     )   (detector column step)
    v     = (-sin(a) sin(theta),  sin(a) cos(theta), cos(a))   (detector row step)

==================  ==============================  ==================  ===================
code                its angles                      -> our ``L``        -> our ``theta``
==================  ==============================  ==================  ===================
adept (ours)        ``tilt_deg``, ``angles_deg``    L                   theta
PtychoShelves,      ``lamino_angle`` (deg, 90 =     ``lamino_angle``    ``theta + 90``
fold_slice,         tomography); ``theta`` (deg)                        (pinned by a test)
pyxalign
ptychodus           ``tomography_angle_deg`` only   supplied            as PtychoShelves
                    (handed on to pyxalign)                             (its consumer)
tike                ``tilt`` (rad, between axis     ``degrees(tilt)``   ``-degrees(theta)``
                    and beam, pi/2 = tomography);                       (sense measured on
                    ``theta`` (rad)                                     tike's test data; not
                                                                        pinned here)
tomocupy            ``--lamino-angle`` (deg, stage  ``90 - angle``      ``theta`` (sense not
                    pitch, 0 = tomography)                              pinned)
==================  ==============================  ==================  ===================

PtychoShelves / pyxalign: ``+astra/ASTRA_initialize.m`` (yijiang1/fold_slice) first adds
90 deg to the angles ("compatibility with iradonfast": ``r.angles = r.angles + 90``), then
``ASTRA_get_geometry`` builds ASTRA ``parallel3d_vec`` vectors with
``lamino_angle = pi/2 - deg2rad(lamino_angle)``: ray ``(sin t cos a, -cos t cos a, sin a)``,
column step ``(cos t, sin t, 0)``, row step ``(-sin a sin t, sin a cos t, cos a)``. These are
our vectors with ``theta = t = theta_PS + 90`` and ``L = lamino_angle``; a projection image
is ``[row, col] = [v, u]`` in MATLAB orientation (``size_projection = [Nlayers, width]``).
:func:`ptychoshelves_vectors` transcribes it, and tests/test_formats.py pins the mapping by
projecting a point phantom with :func:`hpc_adept.lamino.project`.

Not pinned: PtychoShelves' ``rotation_center`` (default ``size_projection / 2`` in its
corner-based pixel coordinates, i.e. our ``(m - 1) / 2`` up to half a pixel), its
``tilt_angle`` / ``skewness_angle`` / ``pixel_scale`` (we accept only 0, 0, 1); tike's and
tomocupy's rotation senses and offsets (no code of theirs is run here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CONVENTIONS",
    "ptychoshelves_vectors",
    "to_adept_angles",
    "to_adept_laminography",
]

CONVENTIONS = ("adept", "ptychoshelves", "tike", "tomocupy")


def _check(convention: str) -> str:
    name = convention.lower()
    if name == "pyxalign" or name == "fold_slice":
        return "ptychoshelves"
    if name not in CONVENTIONS:
        raise ValueError(f"unknown angle convention {convention!r}; known: {CONVENTIONS}")
    return name


def to_adept_angles(angles: Sequence[float] | np.ndarray | float, convention: str
                    ) -> np.ndarray:
    """Rotation angles of another code as our ``theta`` in degrees.

    Parameters
    ----------
    angles : float or sequence of float
        The code's rotation angles: degrees, except tike (radians).
    convention : {"adept", "ptychoshelves" (= "pyxalign", "fold_slice"), "tike", "tomocupy"}

    Returns
    -------
    numpy.ndarray, float64, [n] (or shape () for a scalar input)
    """
    name = _check(convention)
    values = np.asarray(angles, dtype=np.float64)
    if name == "ptychoshelves":
        return values + 90.0
    if name == "tike":
        return -np.degrees(values)
    return values.copy()


def to_adept_laminography(angle: float, convention: str) -> float:
    """Another code's laminography angle as our ``L`` in degrees (90 = tomography).

    Parameters
    ----------
    angle : float
        ``lamino_angle`` (PtychoShelves/pyxalign, degrees), ``tilt`` (tike, radians),
        ``--lamino-angle`` (tomocupy, degrees), or our ``L``.
    convention : str
        As in :func:`to_adept_angles`.
    """
    name = _check(convention)
    if name == "tike":
        return math.degrees(float(angle))
    if name == "tomocupy":
        return 90.0 - float(angle)
    return float(angle)


def ptychoshelves_vectors(angles_deg: Sequence[float], lamino_angle_deg: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PtychoShelves' ASTRA vectors (ray, column step, row step), each ``[n, 3]`` float64.

    A transcription of ``ASTRA_initialize`` / ``ASTRA_get_geometry``
    (yijiang1/fold_slice ``+astra/ASTRA_initialize.m``) for ``tilt_angle = 0``,
    ``skewness_angle = 0``, ``pixel_scale = 1``: ``angles + 90`` ("compatibility with
    iradonfast"), ``lamino = pi/2 - deg2rad(lamino_angle)``, ``vectors(:,1:3)`` ray,
    ``vectors(:,7:9)`` = pixel (0,0)->(0,1), ``vectors(:,10:12)`` = (0,0)->(1,0).
    """
    t = np.deg2rad(np.asarray(angles_deg, dtype=np.float64) + 90.0)
    a = math.pi / 2 - math.radians(float(lamino_angle_deg))
    ray = np.stack([np.sin(t) * math.cos(a), -np.cos(t) * math.cos(a),
                    np.full_like(t, math.sin(a))], axis=1)
    col = np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], axis=1)
    row = np.stack([-math.sin(a) * np.sin(t), math.sin(a) * np.cos(t),
                    np.full_like(t, math.cos(a))], axis=1)
    return ray, col, row
