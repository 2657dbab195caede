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
                    and beam, pi/2 = tomography);                       (pinned by a test)
                    ``theta`` (rad)
tomocupy            ``--lamino-angle`` (deg, stage  ``90 - angle``      ``theta`` (pinned by
                    pitch, 0 = tomography);                             a test; its volume
                    ``/exchange/theta`` (deg)                           is written with y
                                                                        reversed)
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

tike (AdvancedPhotonSource/tike ``src/tike/operators/cupy/lamino.py``, ``Lamino.fwd`` and
``_make_grids``; newer releases compute the same grid in the ``make_grids`` kernel of
``src/tike/operators/cupy/grid.cu``): the 2-D Fourier transform of the projection at
(``kv`` along rows,
``ku`` along columns) is the volume's 3-D transform ``u[z, y, x]`` at ``xi = (kv
sin(tilt), -ku sin(theta) + kv cos(theta) cos(tilt), ku cos(theta) + kv sin(theta)
cos(tilt))`` (forward FFT of the volume, inverse 2-D FFT to the projection, both centred
by ``checkerboard``). By the Fourier slice theorem a point at ``p = (x, y, z)`` from the
volume centre lands at column ``p . U`` and row ``p . V`` with ``U = (cos t, -sin t, 0)``,
``V = (sin t cos(tilt), cos t cos(tilt), sin(tilt))``: ours with ``theta = -t`` and
``L = tilt`` (:func:`tike_vectors`).

tomocupy (tomography/tomocupy ``src/tomocupy/reconstruction/linerec.py``: ``phi = pi/2 +
lamino_angle / 180 * pi``; ``src/include/kernels_linerec.cuh`` ``backprojection_ker``:
``u = R[0](tx - n/2) + R[1](ty - n/2) + n/2``, ``v = R[3](tx - n/2) + R[4](ty - n/2) +
R[5](tz + sz - nz/2) + nz/2`` with ``R = (cos t, sin t, 0, sin t cos phi, -cos t cos phi,
sin phi)``, data ``[row v, angle, column u]``; ``/exchange/theta`` in degrees,
``dataio/reader.py`` ``read_theta``): the column step ``(cos t, sin t, 0)`` and row step
``(-sin a sin t, sin a cos t, cos a)`` with ``a = lamino_angle`` are ours with ``theta =
t`` and ``L = 90 - lamino_angle`` (:func:`tomocupy_vectors`), in the kernel's voxel frame
``(tx, ty, tz)``. tomocupy writes voxel ``(tx, ty, tz)`` to ``f[tz, n - ty - 1, tx]``: its
volume is ours reversed along y (axis 1).

Both pinned by tests/test_formats_raw.py: tike's forward model, transcribed as an exact
Fourier sum, and tomocupy's backprojection, transcribed voxel by voxel, meet our
projector's point phantom where these vectors say.

Centres. Ours are ``(n - 1) / 2`` of every volume axis and detector axis. tike's are ``n /
2`` (its ``checkerboard`` FFT centring, even sizes only): half a pixel off on each axis, so
tike's projections of a volume are ours of the same voxel array shifted by ``d - P p``
pixels, ``d = (0.5, 0.5)`` (rows, columns) and ``P p`` the detector position of ``p = (0.5,
0.5, 0.5)`` (measured on tike's own laminography set: the per-angle shifts that best match
our projection to tike's follow this to 0.01 px, and taking them out raises the PCC of the
two from 0.988 to 0.9993). :func:`centre_shifts` gives the shift that moves a projection
of another code onto our centres (for tike, so that our voxels are its voxels); the TIFF
reader applies it (pinned by tests/test_formats_raw.py with tike's forward
model). ASTRA (PtychoShelves, pyxalign) centres volume and detector at their geometric
centres, as we do: PtychoShelves' default ``rotation_center = size_projection / 2``
(``ASTRA_initialize.m``) is in corner-based pixel coordinates, i.e. exactly our ``(m - 1)
/ 2``, and so is pyxalign's default ``center_of_rotation`` (``data.shape[1:] / 2``).
tomocupy's default rotation axis (``--rotation-axis -1``: ``ni / 2``, ``dataio/reader.py``)
is the pixel-centre column ``W / 2`` (``fbp_filter_center`` moves column ``center`` to the
kernel's ``n / 2``), half a pixel right of ours: projections in its convention are moved
by ``-0.5`` column (the axis; its row centre ``nz / 2`` differs from ours only by a
translation of the volume along z). A run with another ``--rotation-axis c`` has its axis
at ``c``: shift it by ``W / 2 - c`` columns before reading it in tomocupy's convention,
or leave it to the alignment (a constant column shift is observable and estimated).

Not pinned: PtychoShelves' non-default ``rotation_center``, its ``tilt_angle`` /
``skewness_angle`` / ``pixel_scale`` (we accept only 0, 0, 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CONVENTIONS",
    "centre_shifts",
    "ptychoshelves_vectors",
    "tike_vectors",
    "to_adept_angles",
    "to_adept_laminography",
    "tomocupy_vectors",
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


def tike_vectors(theta_rad: Sequence[float], tilt_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """tike's detector steps (column, row), each ``[n, 3]`` float64 in (x, y, z) voxels.

    From ``Lamino._make_grids`` (tike ``src/tike/operators/cupy/lamino.py``): ``xi[:, 2] =
    ku cos(theta) + kv sin(theta) cos(tilt)``, ``xi[:, 1] = -ku sin(theta) + kv cos(theta)
    cos(tilt)``, ``xi[:, 0] = kv sin(tilt)``, the volume ``u`` indexed ``[z, y, x]``: the
    coefficients of ``ku`` and ``kv`` are the column and row steps.
    """
    t = np.asarray(theta_rad, dtype=np.float64)
    ct, st = math.cos(float(tilt_rad)), math.sin(float(tilt_rad))
    col = np.stack([np.cos(t), -np.sin(t), np.zeros_like(t)], axis=1)
    row = np.stack([np.sin(t) * ct, np.cos(t) * ct, np.full_like(t, st)], axis=1)
    return col, row


def tomocupy_vectors(theta_deg: Sequence[float], lamino_angle_deg: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """tomocupy's detector steps (column, row), each ``[n, 3]`` float64 in the (tx, ty, tz)
    voxel frame of its backprojection kernel.

    From ``kernels_linerec.cuh`` ``backprojection_ker``: ``R[0..2] = (cos t, sin t, 0)``
    (column ``u``), ``R[3..5] = (sin t cos phi, -cos t cos phi, sin phi)`` (row ``v``),
    ``phi = pi/2 + lamino_angle`` (``linerec.py``), ``t`` the angle in radians.
    """
    t = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))
    phi = math.pi / 2 + math.radians(float(lamino_angle_deg))
    col = np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], axis=1)
    row = np.stack([np.sin(t) * math.cos(phi), -np.cos(t) * math.cos(phi),
                    np.full_like(t, math.sin(phi))], axis=1)
    return col, row


def centre_shifts(angles_deg: Sequence[float], tilt_deg: float, detector_shape: Sequence[int],
                  convention: str) -> np.ndarray:
    """Shifts that move another code's projections onto our centres.

    Parameters
    ----------
    angles_deg : sequence of float, [n]
        Our rotation angles theta (degrees), already converted by :func:`to_adept_angles`.
    tilt_deg : float
        Our laminography angle L (degrees).
    detector_shape : (nv, nu)
        Size of the projections, pixels.
    convention : str
        As in :func:`to_adept_angles`.

    Returns
    -------
    numpy.ndarray, float64, [n, 2]
        ``(row, col)`` shift in pixels (content moves by ``+s``, DESIGN section 4) that
        moves the code's projections onto ours. Zero for codes centred as we are; for
        tike ``P p - d`` with ``p = (0.5, 0.5, 0.5)`` voxels (its volume centre ``n / 2``)
        and ``d = (0.5, 0.5)`` (its detector centre ``m / 2``): our projections of the same
        voxel array; for tomocupy ``(0, -0.5)``: its default rotation axis ``W / 2`` onto
        ours (the axes agree; its voxel grid stays half a voxel from ours in x and y).

    Raises
    ------
    ValueError
        tike's convention with an odd projection size (tike takes even sizes only).
    """
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    name = _check(convention)
    if name == "tomocupy":
        return np.tile([0.0, -0.5], (angles.size, 1))
    if name != "tike" or angles.size == 0:
        return np.zeros((angles.size, 2))
    # imported here: hpc_adept.lamino's package imports torch, not needed for the others
    from hpc_adept.lamino.geometry import Geometry

    nv, nu = (int(m) for m in detector_shape)
    if nv % 2 or nu % 2:
        raise ValueError(f"{nv} x {nu} projections: tike's centring (its checkerboard "
                         "FFT) takes even sizes only")
    geometry = Geometry(angles, tilt_deg, (1, 1, 1), (nv, nu))
    return geometry.detector_position((0.5, 0.5, 0.5)) - 0.5
