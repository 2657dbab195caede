"""Values a foreign file may lack, supplied by the caller, and plausibility checks of units.

Foreign formats record only part of the geometry our :class:`~hpc_adept.io.cxi.Scan` needs
(fold_slice's parameter file has no distance, ptychodus's diffraction file has no energy,
no file records the laminography angle). The caller supplies the rest as explicit keyword
arguments; the stages take them from the config's ``data`` section under the same names
(:func:`hpc_adept.io.formats.source.reader_options`). A value found in the file and also
supplied must agree (relative 1e-6): a contradiction is an error, never a silent choice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from hpc_adept.io.cxi import ELEMENTARY_CHARGE_C, PLANCK_TIMES_C_JM
from hpc_adept.io.formats._read import data_error
from hpc_adept.io.formats.geometry import to_adept_angles, to_adept_laminography

__all__ = [
    "Supplied",
    "check_positions_m",
    "laminography_deg",
    "resolve",
    "resolve_detector",
    "rotation_deg",
    "supplied_from",
]

PathLike = str | os.PathLike

# Plausible ranges (SI) for hard X-ray ptychography: a value outside is almost always a
# unit mistake (eV stored as J, mm as m, um as m).
ENERGY_EV_RANGE = (100.0, 200_000.0)
DISTANCE_M_RANGE = (1e-3, 100.0)
DETECTOR_PIXEL_M_RANGE = (1e-7, 5e-3)
OBJECT_PIXEL_M_RANGE = (1e-11, 1e-5)
POSITION_M_MAX = 0.05  # 5 cm of probe travel


@dataclass(frozen=True)
class Supplied:
    """Values the caller supplies for what a file lacks (all optional).

    Attributes
    ----------
    energy_ev : float or None
        Photon energy, electronvolts.
    distance_m : float or None
        Sample-detector distance, metres.
    detector_pixel_m : float or None
        Detector pixel size (square pixels), metres.
    rotation_angle_deg : float or None
        Rotation angle theta of the scan (our convention, DESIGN section 3), degrees.
    laminography_angle_deg : float or None
        Angle L between beam and rotation axis (90 = tomography), degrees.
    """

    energy_ev: float | None = None
    distance_m: float | None = None
    detector_pixel_m: float | None = None
    rotation_angle_deg: float | None = None
    laminography_angle_deg: float | None = None


def supplied_from(values: Mapping[str, object]) -> Supplied:
    """Build :class:`Supplied` from keyword arguments; TypeError on an unknown name."""
    names = {f.name for f in fields(Supplied)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"unknown supplied value(s) {unknown}; known: {sorted(names)}")
    clean = {k: (None if v is None else float(v)) for k, v in values.items()}  # type: ignore[arg-type]
    return Supplied(**clean)


def _describe(name: str) -> str:
    key = ("data.rotation_angles_deg or data.angles_path" if name == "rotation_angle_deg"
           else f"data.{name}")
    return f"supply {name}=... (config: set {key}) since the file does not record it"


def resolve(path: PathLike, key: str, name: str, from_file: float | None,
            supplied: float | None) -> float:
    """The value from the file or the caller; DataError when missing or contradictory.

    Parameters
    ----------
    key : str
        Where the file keeps the value (for messages), e.g. ``"/lambda"``.
    name : str
        The keyword the caller would supply, e.g. ``"energy_ev"``.
    """
    if from_file is None and supplied is None:
        raise data_error(path, f"missing; {_describe(name)}", key)
    if from_file is not None and supplied is not None:
        if not math.isclose(from_file, supplied, rel_tol=1e-6, abs_tol=1e-9):
            raise data_error(path, f"the file says {from_file:g} but {name}={supplied:g} was "
                                   f"supplied; remove one of them", key)
    value = from_file if from_file is not None else supplied
    if not math.isfinite(value):  # type: ignore[arg-type]
        raise data_error(path, f"{name} is not finite ({value})", key)
    return float(value)  # type: ignore[arg-type]


def check_range(path: PathLike, key: str, value: float, bounds: tuple[float, float],
                unit: str) -> float:
    """DataError when ``value`` lies outside ``bounds`` (a unit mistake, most likely)."""
    low, high = bounds
    if not low <= value <= high:
        raise data_error(path, f"{value:g} {unit} is outside the plausible range "
                               f"[{low:g}, {high:g}] {unit} (wrong unit?)", key)
    return value


def energy_j_from_ev(path: PathLike, key: str, energy_ev: float) -> float:
    """Checked photon energy in joules from electronvolts."""
    check_range(path, key, energy_ev, ENERGY_EV_RANGE, "eV")
    return energy_ev * ELEMENTARY_CHARGE_C


def energy_ev_from_wavelength(path: PathLike, key: str, wavelength_m: float) -> float:
    """Photon energy (eV) of a wavelength (m), range-checked."""
    if not wavelength_m > 0:
        raise data_error(path, f"wavelength must be positive, got {wavelength_m:g}", key)
    energy_ev = PLANCK_TIMES_C_JM / wavelength_m / ELEMENTARY_CHARGE_C
    return check_range(path, key, energy_ev, ENERGY_EV_RANGE, "eV (from the wavelength)")


def resolve_detector(path: PathLike, key: str, object_pixel_m: float | None,
                     wavelength_m: float, frame_size: int, supplied: Supplied
                     ) -> tuple[float, float]:
    """(distance_m, detector_pixel_m) from the object pixel ``dx = lambda z / (N p)``.

    A file that records the object pixel size fixes ``z / p``; the caller supplies one of
    the two (both must then agree with the file to 1e-3). Without the object pixel both
    must be supplied.
    """
    z, p = supplied.distance_m, supplied.detector_pixel_m
    if object_pixel_m is None:
        z = resolve(path, key, "distance_m", None, z)
        p = resolve(path, key, "detector_pixel_m", None, p)
    else:
        check_range(path, key, object_pixel_m, OBJECT_PIXEL_M_RANGE, "m (object pixel)")
        ratio = object_pixel_m * frame_size / wavelength_m  # z / p
        if z is None and p is None:
            raise data_error(path, "the file fixes the object pixel size but not the distance: "
                                   "supply detector_pixel_m=... or distance_m=... (config: "
                                   "set data.detector_pixel_m or data.distance_m)", key)
        if z is not None and p is not None and not math.isclose(z / p, ratio, rel_tol=1e-3):
            raise data_error(path, f"distance_m / detector_pixel_m = {z / p:g} disagrees with "
                                   f"the object pixel size in the file ({ratio:g})", key)
        z = z if z is not None else ratio * p  # type: ignore[operator]
        p = p if p is not None else z / ratio
    check_range(path, key, z, DISTANCE_M_RANGE, "m (distance)")
    check_range(path, key, p, DETECTOR_PIXEL_M_RANGE, "m (detector pixel)")
    return float(z), float(p)


def check_positions_m(path: PathLike, key: str, positions_m) -> None:
    """DataError when positions are non-finite or too large to be metres."""
    import numpy as np

    pos = np.asarray(positions_m)
    if not np.isfinite(pos).all():
        raise data_error(path, "contains NaN or infinite values", key)
    extent = float(np.abs(pos).max()) if pos.size else 0.0
    if extent > POSITION_M_MAX:
        raise data_error(path, f"positions reach {extent:g}, too large for metres "
                               f"(micrometres or nanometres stored?)", key)


def laminography_deg(path: PathLike, value: float, convention: str) -> float:
    """Our L (degrees) from a laminography angle in ``convention``, checked in (0, 90]."""
    lam = to_adept_laminography(value, convention)
    if not 0.0 < lam <= 90.0:
        raise data_error(path, f"laminography angle must be in (0, 90] deg (ours; 90 = "
                               f"tomography), got {lam:g}", "laminography_angle_deg")
    return lam


def rotation_deg(value: float, convention: str) -> float:
    """Our theta (degrees) from a rotation angle in ``convention``."""
    return float(to_adept_angles(value, convention))
