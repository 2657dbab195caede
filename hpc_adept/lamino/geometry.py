"""Parallel-beam laminography geometry (DESIGN.md section 3, the contract).

Volume arrays are indexed ``[z, y, x]`` with z the rotation axis (the sample normal);
projection images are indexed ``[row, col] = [v, u]``. With ``L = tilt_deg`` (the angle
between beam and rotation axis, 90 = tomography), ``a = 90 - L`` and rotation angle
``theta``, the unit vectors in (x, y, z) are::

    ray d            = ( sin(theta) cos(a), -cos(theta) cos(a), sin(a))
    column step u    = ( cos(theta),         sin(theta),        0     )
    row step v       = (-sin(a) sin(theta),  sin(a) cos(theta), cos(a))

A point at offset ``p`` (voxels) from the volume center ``(n - 1) / 2`` lands at detector
offset ``(row, col) = (p.v, p.u)`` from the detector center ``(m - 1) / 2``, and a
projection value is the line integral along ``d`` in voxel units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpc_adept.errors import DataError


class GeometryError(DataError, ValueError):
    """Invalid laminography geometry or array shape.

    A :class:`ValueError` (the lamino contract) and a :class:`~hpc_adept.errors.DataError`
    (so that the command line reports it as one line with exit code 2).
    """


def _as_shape(value: Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``ndim`` positive Python ints or raise GeometryError."""
    try:
        items = tuple(value)
    except TypeError:
        raise GeometryError(f"{name} must be a sequence of {ndim} ints, got {value!r}") from None
    if len(items) != ndim:
        raise GeometryError(f"{name} must have {ndim} entries, got {len(items)}: {items}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < 1:
            raise GeometryError(f"{name} entries must be positive ints, got {items}")
        out.append(int(item))
    return tuple(out)


def _as_angles(value: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """Return rotation angles (degrees) as a tuple of finite floats or raise GeometryError."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError(f"angles_deg must be a sequence of numbers, got {value!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise GeometryError(f"angles_deg must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise GeometryError(f"angles_deg must be finite, entry {bad} is {arr[bad]}")
    return tuple(float(x) for x in arr)


# Laminography angles a reconstruction can use: 90 deg is tomography, 0 would put the
# rotation axis along the beam (no depth information at all).
TILT_RANGE_DEG = (0.0, 90.0)


def tilt_problem(tilt_deg: float, name: str = "laminography angle") -> str | None:
    """Why ``tilt_deg`` is no usable laminography angle L (degrees), or None.

    The one rule for L, applied by :class:`Geometry`, the config (``simulate.tilt_deg``) and
    the file readers: finite and in (0, 90]. ``name`` starts the message.
    """
    low, high = TILT_RANGE_DEG
    if not low < tilt_deg <= high:  # NaN fails too
        return f"{name} must be in ({low:g}, {high:g}] deg, got {tilt_deg:g}"
    return None


def _as_tilt(value: float) -> float:
    """Return the laminography angle L in degrees, checked by :func:`tilt_problem`."""
    try:
        tilt = float(value)
    except (TypeError, ValueError):
        raise GeometryError(f"tilt_deg must be a number, got {value!r}") from None
    problem = tilt_problem(tilt, "tilt_deg")
    if problem:
        raise GeometryError(problem)
    return tilt


@dataclass(frozen=True)
class Geometry:
    """Acquisition geometry of a parallel-beam laminography scan.

    Parameters
    ----------
    angles_deg : sequence of float, shape [n_angles]
        Rotation angles theta in degrees (any order, any range; finite).
    tilt_deg : float
        Laminography angle L in degrees, in (0, 90]: angle between the beam and the
        rotation axis. 90 is tomography.
    volume_shape : (nz, ny, nx)
        Volume size in voxels; z is the rotation axis.
    detector_shape : (nv, nu)
        Projection size in pixels (rows, columns). One pixel equals one voxel.
    z_offset : float
        Height of the volume's centre above the rotation centre, voxels (default 0). A
        non-zero offset describes a slab of a taller volume (see :meth:`slab`): the
        projector and its adjoint honour it, so the projections of a volume are the sum of
        the projections of its slabs.

    Raises
    ------
    GeometryError (a ValueError)
        For non-finite or empty angles, tilt outside (0, 90], or non-positive shapes.

    Notes
    -----
    Fields are normalised on construction: ``angles_deg`` becomes a tuple of floats and
    the shapes tuples of ints, so a Geometry is hashable and compares by value (the
    projector caches its fixed sparse matrices per geometry).
    """

    angles_deg: tuple[float, ...]
    tilt_deg: float
    volume_shape: tuple[int, int, int]
    detector_shape: tuple[int, int]
    z_offset: float = 0.0

    def __post_init__(self) -> None:
        # frozen dataclass: normalise through object.__setattr__
        object.__setattr__(self, "angles_deg", _as_angles(self.angles_deg))
        object.__setattr__(self, "tilt_deg", _as_tilt(self.tilt_deg))
        object.__setattr__(self, "volume_shape", _as_shape(self.volume_shape, 3, "volume_shape"))
        object.__setattr__(
            self, "detector_shape", _as_shape(self.detector_shape, 2, "detector_shape")
        )
        offset = float(self.z_offset)
        if not math.isfinite(offset):
            raise GeometryError(f"z_offset must be finite, got {self.z_offset!r}")
        object.__setattr__(self, "z_offset", offset)

    @property
    def n_angles(self) -> int:
        """Number of projections."""
        return len(self.angles_deg)

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        """Shape ``(n_angles, nv, nu)`` of a projection stack."""
        return (self.n_angles, *self.detector_shape)

    @property
    def angles_rad(self) -> np.ndarray:
        """Rotation angles in radians, float64, shape [n_angles]."""
        return np.deg2rad(np.asarray(self.angles_deg, dtype=np.float64))

    @property
    def alpha_rad(self) -> float:
        """Beam elevation ``a = 90 deg - L`` in radians (0 for tomography)."""
        return math.radians(90.0 - self.tilt_deg)

    def vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ray direction and detector step vectors for every angle.

        Returns
        -------
        d, u, v : np.ndarray, float64, shape [n_angles, 3]
            Unit vectors in (x, y, z) voxel coordinates: ray direction, detector column
            step and detector row step (see the module docstring).
        """
        t = self.angles_rad
        sa, ca = math.sin(self.alpha_rad), math.cos(self.alpha_rad)
        st, ct = np.sin(t), np.cos(t)
        zero = np.zeros_like(t)
        d = np.stack([st * ca, -ct * ca, np.full_like(t, sa)], axis=1)
        u = np.stack([ct, st, zero], axis=1)
        v = np.stack([-sa * st, sa * ct, np.full_like(t, ca)], axis=1)
        return d, u, v

    def detector_position(self, offset_xyz: Sequence[float]) -> np.ndarray:
        """Detector offset where a point lands, for every angle.

        Parameters
        ----------
        offset_xyz : (x, y, z)
            Offset of the point from the volume center, voxels.

        Returns
        -------
        np.ndarray, float64, shape [n_angles, 2]
            ``(row, col)`` offsets from the detector center ``(m - 1) / 2``, pixels.
        """
        p = np.asarray(offset_xyz, dtype=np.float64)
        _, u, v = self.vectors()
        return np.stack([v @ p, u @ p], axis=1)

    def subset(self, index: Sequence[int] | slice | np.ndarray) -> Geometry:
        """Geometry of a subset of the angles (e.g. one rank's shard), same tilt and shapes.

        Parameters
        ----------
        index : slice, int sequence or boolean mask
            Selects angles as ``np.asarray(angles_deg)[index]`` does.
        """
        angles = np.asarray(self.angles_deg, dtype=np.float64)[index]
        return Geometry(np.atleast_1d(angles), self.tilt_deg, self.volume_shape,
                        self.detector_shape, self.z_offset)

    def slab(self, start: int, stop: int) -> Geometry:
        """Geometry of the z slices ``start .. stop - 1`` of this volume, same angles.

        Projecting a slab with this geometry gives exactly its share of the projections
        of the whole volume (the other slices set to zero).
        """
        nz, ny, nx = self.volume_shape
        if not 0 <= start < stop <= nz:
            raise GeometryError(f"slab [{start}, {stop}) is not inside 0 .. {nz}")
        centre = start + (stop - start - 1) / 2 - (nz - 1) / 2
        return Geometry(self.angles_deg, self.tilt_deg, (stop - start, ny, nx),
                        self.detector_shape, self.z_offset + centre)
