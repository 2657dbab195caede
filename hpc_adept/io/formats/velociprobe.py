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

import numpy as np

from hpc_adept.io.cxi import Scan
from hpc_adept.io.formats._read import (
    data_error,
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
from hpc_adept.io.formats.dectris import (
    DETECTOR,
    FIRST_LINK,
    is_master,
    read_master,
    sum_bursts,
)
from hpc_adept.io.formats.spec_positions import is_spec_file

__all__ = ["DETECTOR", "FIRST_LINK", "is_master", "read_velociprobe_positions",
           "read_velociprobe_scan"]

PathLike = str | os.PathLike

_X, _Y, _TRIGGER = 1, 2, 7  # VelociprobePositionFileColumn.X, LASER_INTERFEROMETER_Y, TRIGGER


def read_velociprobe_positions(path: PathLike, chi_deg: float = 0.0
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Frame indexes ``[n]`` and positions ``[n, 3]`` metres of a Velociprobe position CSV
    (see the module docstring); rows sharing a trigger are averaged."""
    p = Path(path)
    if not p.is_file():
        raise data_error(p, "position file not found")
    text = p.read_text(errors="replace")
    if is_spec_file(p) or text.lstrip().startswith("Scan "):
        # a cSAXS / LamNI master file is detected as a Velociprobe one; its positions are not
        raise data_error(p, "a spec or Orchestra position file, not a Velociprobe CSV: set "
                            "data.format: lamni-eiger")
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
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
                          angle_convention: str = "adept", burst_frames: int = 1) -> Scan:
    """One Velociprobe scan (master file + position CSV), cropped to ``roi_px``;
    ``burst_frames`` consecutive frames per trigger summed (:func:`.dectris.sum_bursts`)."""
    p = Path(path)
    s = supplied or Supplied()
    head, frames, mask, n_frames = read_master(p, beam_center_rc, roi_px, load_counts)
    indexes, positions = read_velociprobe_positions(positions_path, head["chi_deg"] or 0.0)
    frames, n_frames = sum_bursts(p, frames, n_frames, burst_frames, indexes)
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
