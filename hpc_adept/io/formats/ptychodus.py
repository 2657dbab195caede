"""ptychodus files: diffraction data (``/dp`` or assembled ``/patterns``) and products.

Layouts (AdvancedPhotonSource/ptychodus 1.7.0, PyPI):

- ``plugins/h5_diffraction_file.py`` ``H5DiffractionFileWriter.write``: one dataset
  ``/dp`` ``[n, height, width]`` written with ``compression='lzf'`` (an h5py filter), no
  metadata; its reader takes ``num_patterns, detector_height, detector_width = data.shape``
  (rows = y). pty-chi's tests use this file with a product file beside it.
- ``api/io.py`` ``save_diffraction_data``: ``/indexes`` ``[n]``, ``/patterns``
  ``[n, height, width]`` with attributes ``detector_pixel_width_m`` /
  ``detector_pixel_height_m``, ``/bad_pixels`` ``[height, width]`` (True = bad).
- ``api/io.py`` ``save_product`` / ``load_product``: root attributes
  ``detector_object_distance_m``, ``photon_energy_eV`` (older releases:
  ``probe_energy_eV``), ``tomography_angle_deg``; datasets ``probe_position_indexes``,
  ``probe_position_x_m``, ``probe_position_y_m``, ``probe`` (complex, ``[..., h, w]``),
  ``object`` (complex ``[layers, h, w]`` or ``[h, w]``) with attributes ``pixel_width_m``,
  ``pixel_height_m``, ``center_x_m``, ``center_y_m``.
- ``api/object.py`` ``ObjectGeometry.map_coordinates_object_to_probe``: "the world center
  sits at pixel index (N-1)/2", ``x_m = center_x_m + pixel_width_m * (x_px - (W-1)/2)``:
  x along columns, y along rows, as ours.

Mapping onto :class:`~hpc_adept.io.cxi.Scan`: frames as stored (no transpose); position
``(x, y, z) = (probe_position_x_m, probe_position_y_m, 0)`` for the frame whose pattern
index is ``probe_position_indexes`` (frames without a position are dropped, as ptychodus
pairs them); energy and distance from the product; the detector pixel from the assembled
file, or supplied, or derived from the object pixel ``lambda z / (N p)``. ptychodus writes
``tomography_angle_deg = 0`` by default, so a supplied rotation angle takes precedence over
it; the laminography angle is always supplied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.cxi import PLANCK_TIMES_C_JM, Scan
from hpc_adept.io.formats._read import (
    data_error,
    open_h5,
    optional_number_attr,
    read_array,
    read_complex,
    read_frames,
    require_dataset,
)
from hpc_adept.io.formats._values import (
    Supplied,
    check_positions_m,
    energy_j_from_ev,
    laminography_deg,
    resolve,
    resolve_detector,
    rotation_deg,
)

__all__ = [
    "ProductHeader",
    "is_product",
    "read_product_header",
    "read_product_object",
    "read_ptychodus_scan",
]

PathLike = str | os.PathLike

DP_KEY = "/dp"
PATTERNS, INDEXES, BAD_PIXELS = "/patterns", "/indexes", "/bad_pixels"
PIXEL_W, PIXEL_H = "detector_pixel_width_m", "detector_pixel_height_m"
POS_INDEXES, POS_X, POS_Y = "probe_position_indexes", "probe_position_x_m", "probe_position_y_m"
ENERGY_ATTRS = ("photon_energy_eV", "probe_energy_eV")
DISTANCE_ATTR = "detector_object_distance_m"
ANGLE_ATTR = "tomography_angle_deg"
OBJECT = "object"


@dataclass(frozen=True)
class ProductHeader:
    """What a ptychodus product file says about its scan.

    Attributes
    ----------
    indexes : numpy.ndarray
        ``[n]`` int64 pattern index of each position.
    positions_m : numpy.ndarray
        ``[n, 3]`` float64 (x, y, 0), metres.
    energy_ev, distance_m, angle_deg : float or None
        Photon energy, detector-object distance, tomography angle (ptychodus's own).
    object_pixel_m : tuple of float or None
        ``(height, width)`` object pixel, metres.
    """

    indexes: np.ndarray
    positions_m: np.ndarray
    energy_ev: float | None
    distance_m: float | None
    angle_deg: float | None
    object_pixel_m: tuple[float, float] | None


def is_product(f: h5py.File) -> bool:
    """True when ``f`` has the datasets of a ptychodus product file."""
    return all(isinstance(f.get(k), h5py.Dataset) for k in (POS_INDEXES, POS_X, POS_Y, OBJECT))


def _positions(f: h5py.File, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pattern indexes ``[n]`` and positions ``[n, 3]`` of a product file."""
    n = require_dataset(f, POS_INDEXES, path).size
    indexes = read_array(f, POS_INDEXES, path, ndim=1, dtype=np.int64, kind="integer",
                         expected=(n,))
    xs = read_array(f, POS_X, path, ndim=1, dtype=np.float64, expected=(n,))
    ys = read_array(f, POS_Y, path, ndim=1, dtype=np.float64, expected=(n,))
    if len(set(indexes.tolist())) != n or (n and indexes.min() < 0):
        raise data_error(path, "indexes must be distinct and non-negative", POS_INDEXES)
    positions = np.stack([xs, ys, np.zeros(n)], axis=1)
    check_positions_m(path, f"{POS_X}, {POS_Y}", positions)
    return indexes, positions


def _object_pixel(f: h5py.File, path: Path) -> tuple[float, float] | None:
    if not isinstance(f.get(OBJECT), h5py.Dataset):
        return None
    obj = f[OBJECT]
    w = optional_number_attr(obj, "pixel_width_m", path, positive=True)
    h = optional_number_attr(obj, "pixel_height_m", path, positive=True)
    return None if w is None or h is None else (h, w)


def read_product_header(path: PathLike) -> ProductHeader:
    """Positions and metadata of a ptychodus product file (the object is not read)."""
    p = Path(path)
    with open_h5(p) as f:
        indexes, positions = _positions(f, p)
        energy = None
        for name in ENERGY_ATTRS:
            energy = optional_number_attr(f, name, p, positive=True)
            if energy is not None:
                break
        return ProductHeader(
            indexes=indexes, positions_m=positions, energy_ev=energy,
            distance_m=optional_number_attr(f, DISTANCE_ATTR, p, positive=True),
            angle_deg=optional_number_attr(f, ANGLE_ATTR, p),
            object_pixel_m=_object_pixel(f, p))


def _read_diffraction(path: Path, load: bool) -> tuple[np.ndarray | None, tuple[int, int, int],
                                                       np.ndarray, dict[str, object]]:
    """Frames (or None), their shape, pattern indexes, extras (pixel size, bad pixels)."""
    with open_h5(path) as f:
        extras: dict[str, object] = {}
        if f.get(PATTERNS) is not None:
            frames, shape = read_frames(f, PATTERNS, path, load)
            indexes = read_array(f, INDEXES, path, ndim=1, dtype=np.int64, kind="integer",
                                 expected=(shape[0],))
            ds = f[PATTERNS]
            w = optional_number_attr(ds, PIXEL_W, path, positive=True)
            h = optional_number_attr(ds, PIXEL_H, path, positive=True)
            if w is not None and h is not None:
                extras["pixel_m"] = (h, w)
            if f.get(BAD_PIXELS) is not None:
                extras["mask"] = read_array(f, BAD_PIXELS, path, ndim=2, dtype=np.bool_,
                                            kind="integer", expected=shape[1:])
        elif f.get(DP_KEY) is not None:
            frames, shape = read_frames(f, DP_KEY, path, load)
            indexes = np.arange(shape[0], dtype=np.int64)
        else:
            raise data_error(path, f"no diffraction data (neither {DP_KEY} nor {PATTERNS})")
    return frames, shape, indexes, extras


def _pair(path: Path, frame_indexes: np.ndarray, position_indexes: np.ndarray) -> np.ndarray:
    """Row of each position's frame; DataError when a position has no frame."""
    where = {int(k): i for i, k in enumerate(frame_indexes.tolist())}
    missing = [int(k) for k in position_indexes.tolist() if int(k) not in where]
    if missing:
        raise data_error(path, f"{len(missing)} positions have no diffraction pattern "
                               f"(first index {missing[0]})", POS_INDEXES)
    return np.array([where[int(k)] for k in position_indexes.tolist()], dtype=np.int64)


def _detector_pixel(path: Path, extras: dict, s: Supplied, header: ProductHeader,
                    wavelength_m: float, n: int) -> tuple[float, float]:
    """(distance_m, pixel_m) from the file, the product and what was supplied."""
    distance = resolve(path, DISTANCE_ATTR, "distance_m", header.distance_m, s.distance_m)
    pixel = extras.get("pixel_m")
    if pixel is not None:
        h, w = pixel  # type: ignore[misc]
        if not np.isclose(h, w, rtol=1e-6):
            raise data_error(path, f"non-square detector pixels {h:g} x {w:g} m", PATTERNS)
        px = resolve(path, PIXEL_W, "detector_pixel_m", float(w), s.detector_pixel_m)
        return distance, px
    obj = None if header.object_pixel_m is None else header.object_pixel_m[1]
    return resolve_detector(path, "object@pixel_width_m", obj, wavelength_m, n,
                            Supplied(distance_m=distance, detector_pixel_m=s.detector_pixel_m))


def read_ptychodus_scan(diffraction_path: PathLike, product_path: PathLike, *,
                        supplied: Supplied | None = None, load_counts: bool = True,
                        angle_convention: str = "ptychoshelves") -> Scan:
    """Read a ptychodus diffraction file with the positions of a product file.

    Parameters
    ----------
    diffraction_path : str or os.PathLike
        ``/dp`` file or assembled ``/patterns`` file.
    product_path : str or os.PathLike
        ptychodus product file (positions, energy, distance, angle).
    supplied : Supplied, optional
        ``laminography_angle_deg`` always; ``rotation_angle_deg`` (wins over the product's
        ``tomography_angle_deg``, which ptychodus writes as 0 by default); energy, distance
        and detector pixel where neither file has them.
    load_counts : bool
        False reads only the frames' shape.
    angle_convention : str
        Convention of the angles (:mod:`hpc_adept.io.formats.geometry`).
    """
    path = Path(diffraction_path)
    s = supplied or Supplied()
    frames, shape, frame_indexes, extras = _read_diffraction(path, load_counts)
    header = read_product_header(product_path)
    rows = _pair(Path(product_path), frame_indexes, header.indexes)
    n, ny, nx = shape
    energy_ev = resolve(product_path, f"@{ENERGY_ATTRS[0]}", "energy_ev", header.energy_ev,
                        s.energy_ev)
    energy_j = energy_j_from_ev(product_path, f"@{ENERGY_ATTRS[0]}", energy_ev)
    distance, pixel = _detector_pixel(path, extras, s, header, PLANCK_TIMES_C_JM / energy_j, nx)
    file_angle = None if s.rotation_angle_deg is not None else header.angle_deg
    angle = resolve(product_path, f"@{ANGLE_ATTR}", "rotation_angle_deg", file_angle,
                    s.rotation_angle_deg)
    lamino = resolve(path, "laminography angle", "laminography_angle_deg", None,
                     s.laminography_angle_deg)
    counts = None if frames is None else frames[rows]
    return Scan(counts=counts, positions_m=header.positions_m, energy_j=energy_j,
                distance_m=distance, x_pixel_size_m=pixel, y_pixel_size_m=pixel,
                rotation_angle_deg=rotation_deg(angle, angle_convention),
                laminography_angle_deg=laminography_deg(path, lamino, angle_convention),
                mask=extras.get("mask"), path=str(path), counts_shape=(len(rows), ny, nx))


def _product_roi(f: h5py.File, path: Path, shape: tuple[int, int],
                 pixel: tuple[float, float]) -> tuple[slice, slice] | None:
    """Object region swept by the probe centres (``ObjectGeometry``: centre at (N-1)/2)."""
    obj = f[OBJECT]
    cx = optional_number_attr(obj, "center_x_m", path)
    cy = optional_number_attr(obj, "center_y_m", path)
    if cx is None or cy is None:
        return None
    _, positions = _positions(f, path)
    rows = (positions[:, 1] - cy) / pixel[0] + (shape[0] - 1) / 2
    cols = (positions[:, 0] - cx) / pixel[1] + (shape[1] - 1) / 2
    r0, r1 = max(int(np.floor(rows.min())), 0), min(int(np.ceil(rows.max())) + 1, shape[0])
    c0, c1 = max(int(np.floor(cols.min())), 0), min(int(np.ceil(cols.max())) + 1, shape[1])
    if r1 - r0 < 2 or c1 - c0 < 2:
        return None
    return slice(r0, r1), slice(c0, c1)


def read_product_object(path: PathLike) -> dict:
    """Object (layers multiplied), pixel (dy, dx), angle, probe and ROI of a product file."""
    p = Path(path)
    with open_h5(p) as f:
        raw = read_complex(f, OBJECT, p, (2, 3))
        obj = raw if raw.ndim == 2 else np.prod(raw, axis=0)
        pixel = _object_pixel(f, p)
        if pixel is None:
            raise data_error(p, "missing pixel_width_m / pixel_height_m", f"{OBJECT}@")
        probe = None
        if f.get("probe") is not None:
            raw_probe = read_complex(f, "probe", p, (2, 3, 4))
            probe = raw_probe.reshape((-1,) + raw_probe.shape[-2:])[0]
        angle = optional_number_attr(f, ANGLE_ATTR, p)
        roi = _product_roi(f, p, obj.shape, pixel)
    return {"object": obj, "pixel_m": pixel, "angle_deg": angle, "probe": probe, "roi": roi}
