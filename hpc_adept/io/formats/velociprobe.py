"""APS 33-ID-C Velociprobe: an Eiger master file linking its frame files, positions in nm.

Master file (ptychodus 1.7.0 ``plugins/aps33id_velociprobe/
aps33id_velociprobe_diffraction_file.py``; tike ``src/tike/ptycho/io.py``
``read_aps_2idd`` docstring):

- ``/entry/data/data_000001``, ``data_000002``, ...: external links, each to a frame
  array ``[n_k, rows, cols]`` in a file beside the master (``DataGroup.read``: every
  ``h5py.ExternalLink`` of ``/entry/data``, ``sorted(group.items())``, ``file_path =
  master.parent / link.filename``, ``data_path = link.path``), usually bitshuffle-LZ4
  (HDF5 filter 32008: ``hdf5plugin``). tike: "the number of data_000000 links may be more
  than the actual number of files" (the master is written first): the links are read in
  name order up to the first whose file is absent;
- ``/entry/instrument/detector/detector_distance`` (``units`` ``m``), ``x_pixel_size``,
  ``y_pixel_size`` (``m``), ``beam_center_x``, ``beam_center_y`` (``pixel``),
  ``detectorSpecific/photon_energy`` (``eV``), and ``/entry/sample/goniometer/chi``
  (``degree``), each checked against the ``units`` attribute where the file has one
  (``DetectorGroup.read`` asserts them).

Our HDF5 reading refuses external links (a link could pull any local file in); here each
link is resolved explicitly instead: its target must be a plain file name (no folder part)
in the master's folder, opened and checked like any file.

Frames are cropped to ``roi_px`` around the beam centre (``CropCenter(beam_center_x,
beam_center_y)``), as the LamNI reader does; pixels at the dtype's maximum are masked.

Positions (``aps33id_velociprobe_position_file.py``): comma-separated rows, ``#``
comments, at least 8 columns: column 1 x, column 2 laser-interferometer y, column 5
encoder y (negated), column 7 the trigger (the frame index), integers in nanometres; read
as ``x = (x - mean(x)) * 1e-9 * cos(chi)``, ``y = (y - mean(y)) * 1e-9`` (``_apply_transform``,
the laser-interferometer y of the reader ptychodus registers first,
``APS_Velociprobe_LI``). Rows sharing a trigger are averaged (ptychodus keeps one point
per row with that index). The rotation and laminography angles are supplied.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.cxi import Scan
from hpc_adept.io.formats._read import (
    check_filters,
    check_shape,
    data_error,
    open_h5,
    optional_number,
    require_dataset,
)
from hpc_adept.io.formats._values import (
    DETECTOR_PIXEL_M_RANGE,
    DISTANCE_M_RANGE,
    Supplied,
    check_positions_m,
    check_range,
    energy_j_from_ev,
    laminography_deg,
    resolve,
    rotation_deg,
)
from hpc_adept.io.formats.lamni import crop_window, cropped_frames

__all__ = ["DETECTOR", "FIRST_LINK", "is_master", "read_velociprobe_positions",
           "read_velociprobe_scan"]

PathLike = str | os.PathLike

FIRST_LINK = "/entry/data/data_000001"
DETECTOR = "/entry/instrument/detector"
CHI = "/entry/sample/goniometer/chi"
_X, _Y, _TRIGGER = 1, 2, 7  # VelociprobePositionFileColumn.X, LASER_INTERFEROMETER_Y, TRIGGER


def is_master(f: h5py.File) -> bool:
    """Whether ``f`` is a Velociprobe master file (an external link to its first frames)."""
    try:
        link = f.get(FIRST_LINK, getlink=True)
    except (OSError, KeyError, ValueError):
        return False
    return isinstance(link, h5py.ExternalLink) and f.get(f"{DETECTOR}/detectorSpecific") \
        is not None


def _number(f: h5py.File, key: str, path: Path, unit: str, positive: bool = True
            ) -> float | None:
    """A scalar (or one-element) dataset, its ``units`` attribute checked when present."""
    value = optional_number(f, key, path, positive=positive)
    if value is None:
        return None
    units = f[key].attrs.get("units")
    if units is not None:
        text = units.decode("utf-8", "replace") if isinstance(units, bytes) else str(units)
        if text.strip() != unit:
            raise data_error(path, f"units {text!r}, expected {unit!r}", key)
    return value


def _links(f: h5py.File, path: Path) -> list[tuple[Path, str]]:
    """(file, dataset) of each frame array, in name order, up to the first absent file."""
    group = f.get("/entry/data", getlink=False)
    if not isinstance(group, h5py.Group):
        raise data_error(path, "missing", "/entry/data")
    arrays = []
    for name in sorted(group):
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.ExternalLink):
            continue
        target = Path(link.filename)
        if target.name != link.filename or target.name in ("", ".", ".."):
            raise data_error(path, f"links to {link.filename!r}, not a file beside the "
                                   f"master (refused)", f"/entry/data/{name}")
        if (path.parent / target).resolve().parent != path.resolve().parent:
            raise data_error(path, f"{link.filename!r} resolves outside the master's folder "
                                   f"(refused)", f"/entry/data/{name}")
        if not (path.parent / target).is_file():
            break  # written before its file, as tike notes
        arrays.append((path.parent / target, link.path))
    if not arrays:
        raise data_error(path, "no frame file of its external links exists beside it",
                         "/entry/data")
    return arrays


def _header(path: Path) -> dict[str, float | None]:
    with open_h5(path) as f:
        det = DETECTOR
        return {
            "distance_m": _number(f, f"{det}/detector_distance", path, "m"),
            "pixel_m": _number(f, f"{det}/x_pixel_size", path, "m"),
            "y_pixel_m": _number(f, f"{det}/y_pixel_size", path, "m"),
            "col": _number(f, f"{det}/beam_center_x", path, "pixel", positive=False),
            "row": _number(f, f"{det}/beam_center_y", path, "pixel", positive=False),
            "energy_ev": _number(f, f"{det}/detectorSpecific/photon_energy", path, "eV"),
            "chi_deg": _number(f, CHI, path, "degree", positive=False),
        }


def _frames(arrays: list[tuple[Path, str]], centre: tuple[float, float], roi_px: int,
            load: bool) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Cropped frames of every array (concatenated), their mask and their count."""
    frames, masks, count = [], [], 0
    for file, key in arrays:
        with open_h5(file) as g:
            ds = require_dataset(g, key, file)
            check_shape(ds.shape, 3, file, key)
            check_filters(ds, file, key)
            rows, cols = crop_window(file, key, ds.shape, centre, roi_px)
            data, mask = cropped_frames(g, file, key, rows, cols, load)
            count += ds.shape[0]
        frames.append(data)
        masks.append(mask)
    if not load:
        return None, None, count
    mask = np.any([m for m in masks if m is not None], axis=0) if any(
        m is not None for m in masks) else None
    return np.concatenate(frames), mask, count


def read_velociprobe_positions(path: PathLike, chi_deg: float = 0.0
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Frame indexes ``[n]`` and positions ``[n, 3]`` metres of a Velociprobe position CSV
    (see the module docstring); rows sharing a trigger are averaged."""
    p = Path(path)
    if not p.is_file():
        raise data_error(p, "position file not found")
    rows = []
    for number, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        fields = [x.strip() for x in line.split(",")]
        if not line.strip() or fields[0].startswith("#"):
            continue
        if len(fields) < _TRIGGER + 1:
            raise data_error(p, f"line {number}: {len(fields)} columns, expected at least "
                                f"{_TRIGGER + 1}")
        try:
            rows.append((int(fields[_TRIGGER]), float(fields[_X]), float(fields[_Y])))
        except ValueError:
            raise data_error(p, f"line {number}: not a number") from None
    if not rows:
        raise data_error(p, "no positions")
    table = np.array(rows, dtype=np.float64)
    triggers, inverse = np.unique(table[:, 0].astype(np.int64), return_inverse=True)
    xy = np.zeros((len(triggers), 2))
    np.add.at(xy, inverse, table[:, 1:])
    xy /= np.bincount(inverse)[:, None]
    xy = (xy - xy.mean(axis=0)) * 1e-9
    xy[:, 0] *= math.cos(math.radians(chi_deg))
    positions = np.column_stack([xy, np.zeros(len(xy))])
    check_positions_m(p, "positions", positions)
    return triggers, positions


def read_velociprobe_scan(path: PathLike, positions_path: PathLike, *, roi_px: int,
                          beam_center_rc: tuple[float, float] | None = None,
                          supplied: Supplied | None = None, load_counts: bool = True,
                          angle_convention: str = "adept") -> Scan:
    """One Velociprobe scan (master file + position CSV), cropped to ``roi_px``."""
    p = Path(path)
    s = supplied or Supplied()
    head = _header(p)
    with open_h5(p) as f:
        arrays = _links(f, p)
    centre = beam_center_rc or (head["row"], head["col"])
    if centre[0] is None or centre[1] is None:
        raise data_error(p, "no beam centre in the file; supply beam_center_rc", DETECTOR)
    frames, mask, n_frames = _frames(arrays, centre, roi_px, load_counts)
    indexes, positions = read_velociprobe_positions(positions_path, head["chi_deg"] or 0.0)
    if indexes.min() < 0 or indexes.max() >= n_frames:
        raise data_error(positions_path, f"triggers {indexes.min()}..{indexes.max()} outside "
                                         f"the {n_frames} frames")
    energy_j = energy_j_from_ev(p, "energy", resolve(p, "energy", "energy_ev",
                                                     head["energy_ev"], s.energy_ev))
    distance = check_range(p, "distance", resolve(p, "distance", "distance_m",
                                                  head["distance_m"], s.distance_m),
                           DISTANCE_M_RANGE, "m")
    pixel = check_range(p, "pixel size", resolve(p, "pixel size", "detector_pixel_m",
                                                 head["pixel_m"], s.detector_pixel_m),
                        DETECTOR_PIXEL_M_RANGE, "m")
    y_pixel = check_range(p, "y pixel size", head["y_pixel_m"] or pixel,
                          DETECTOR_PIXEL_M_RANGE, "m")
    angle = resolve(p, "rotation angle", "rotation_angle_deg", None, s.rotation_angle_deg)
    lam = resolve(p, "laminography angle", "laminography_angle_deg", None,
                  s.laminography_angle_deg)
    return Scan(counts=None if frames is None else frames[indexes], positions_m=positions,
                energy_j=energy_j, distance_m=distance, x_pixel_size_m=pixel,
                y_pixel_size_m=y_pixel,
                rotation_angle_deg=rotation_deg(angle, angle_convention),
                laminography_angle_deg=laminography_deg(p, lam, angle_convention), mask=mask,
                path=str(p), counts_shape=(len(indexes), roi_px, roi_px))
