"""PSI cSAXS / LamNI raw Eiger 1.5M HDF5 with Orchestra positions and the LamNI angle table.

Frames (ptychodus 1.7.0 ``plugins/aps31id_lamni/diffraction_file.py`` and
``plugins/sls_csaxs_diffraction_file.py``; fold_slice ``+detector/+eiger1p5M/eiger1p5M.m``):

- ``/entry/data/data`` (area-detector / cSAXS files), ``/entry/data/eiger_4`` (legacy
  LamNI) or ``/entry/instrument/eiger_4/data`` (fold_slice's ``H5Location``); Eiger
  1.5M frames are ``1030 x 1614`` (``det.geometry.sz``) with 75 um pixels, usually
  bitshuffle-LZ4 (HDF5 filter 32008: ``hdf5plugin``);
- legacy attributes on the dataset: ``Center_x_pixel``, ``Center_y_pixel``,
  ``Detector_distance_m``, ``Photon_energy_kev``, ``Pixel_size`` (m);
- area detector: ``/entry/instrument/detector/{detector_distance, x_pixel_size,
  beam_center_x, beam_center_y}``, ``/entry/instrument/monochromator/energy`` in the units
  of ``/entry/metadata_units/{Distance_EGU, PixelSize_EGU, MonoEnergy_EGU}`` (default
  mm, um, keV);
- cSAXS: ``/entry/instrument/monochromator/distance`` (mm, sign ignored) and ``energy``
  (keV), ``/entry/instrument/eiger_4/x_pixel_size`` (um).
- a DECTRIS master file (``*_master.h5``, the detector's own SIMPLON API output) whose
  frames sit in the ``*_data_%06d.h5`` files it links, header in metres / eV
  (:mod:`.dectris`).

fold_slice's Eiger ``det.orientation = [1 0 0]`` undoes ``h5read``'s transpose, so the frame
is used as h5py stores it (as ptychodus does), cropped to ``roi_px`` x ``roi_px`` with the
beam centre (``Center_x/y_pixel`` or ``beam_center_x/y``, or supplied) at
``(roi_px // 2, roi_px // 2)``. Pixels at the dtype's maximum in any frame (Eiger gaps and
dead pixels) are masked.

Positions: the ``specES1/scan_positions/scan_%05d.dat`` files (fold_slice templates'
``p.positions_file``; ptypy ``ptypy/experiment/cSAXS.py`` ``get_position_path``). Read
by ptychodus 1.7.0 (``plugins/aps31id_lamni/position_file.py``), fold_slice
(``+beamline/read_position_file.m``, called by ``+scans/+positions/orchestra.m``) and
ptypy (``cSAXS.py`` ``get_positions``) the same way: a title line (``Scan 00123,
lsamrot_encoder 12.3``: ``textscan(f, '%s %d, %s %f', 1)``), a line of column names
(ptypy: ``if k == 1: keys = line.split()``), then one row per point
(``np.loadtxt(path, skiprows=2)``). Columns:

- the three layouts ptychodus matches exactly: Orchestra (``DataPoint TotalPoints
  Target_x Average_x_st_fzp ...``, index origin 0, x column 3, y column 6) or
  softGlueZynq (raw / processed, index origin 1);
- any other header naming ``Average_x_st_fzp`` and ``Average_y_st_fzp`` (or the
  "outdated" ``Average_x`` / ``Average_y``, ``orchestra.m`` lines 47-50), rows in
  frame order (fold_slice pairs row k with frame k).

Units and sign: micrometres, negated: ``x = -Average_x_st_fzp * 1e-6``, likewise y
(ptychodus: ``-LengthUnit.MICROMETER.to_meters(...)``; fold_slice ``orchestra.m`` with
``angular_correction_setup = 'lamni'``: ``positions_real = [Average_y_st_fzp*1e-6
Average_x_st_fzp*1e-6]``, negated by ``+core/ptycho_adjust_positions.m``). The measured
interferometer averages are used, as fold_slice and ptychodus do, not ptypy's default
``motors = ('Target_y', 'Target_x')``. OMNY / flOMNI's angular correction
(``Average_rotz_st``, ``orchestra.m`` ``apply_correction``) is not applied: LamNI
(``'lamni'``) applies none.

Angles (ptychodus 1.7.0 ``plugins/aps31id_lamni/_scan_table.py``; fold_slice
``+beamline/read_omny_angles.m``): ``tomography_scannumbers.txt``, no header, rows
``scan_no golden_angle encoder_angle measurement_id subtomo_no detector_position label``
(fold_slice's older 6 columns lack ``measurement_id``: ``case {3,6}``); the encoder angle
(fold_slice's ``readout_angle``, used by ``tomo/+prepare/load_angles.m``) is the rotation
angle in the PtychoShelves convention (as pyxalign uses it); a repeated scan number: the
last row (``unique(scans, 'last')`` in ``load_angles.m``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
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
    optional_number_attr,
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
from hpc_adept.io.formats.dectris import (
    DETECTOR,
    FIRST_LINK,
    beam_centre,
    crop_window,
    cropped_frames,
    is_master,
    read_master,
    sum_bursts,
)
from hpc_adept.io.formats.spec_positions import DEFAULT_MOTORS, is_spec_file, read_spec_positions

__all__ = ["EIGER_DATA", "ScanRecord", "crop_window", "cropped_frames", "read_angle_table",
           "read_eiger_scan", "read_lamni_positions"]

PathLike = str | os.PathLike

log = logging.getLogger(__name__)
EIGER_DATA = ("/entry/data/data", "/entry/data/eiger_4", "/entry/instrument/eiger_4/data")
# The unit names ptychodus accepts in /entry/metadata_units (aps31id_lamni/diffraction_file.py
# _LEN_TO_M, _E_TO_EV); any other name is refused (ptychodus warns and assumes m / eV).
_LENGTH_UNITS = {
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), 1.0),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), 1e-2),
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), 1e-3),
    **dict.fromkeys(("um", "µm", "micron", "microns", "micrometer", "micrometers",
                     "micrometre", "micrometres"), 1e-6),
    **dict.fromkeys(("nm", "nanometer", "nanometers", "nanometre", "nanometres"), 1e-9)}
_ENERGY_UNITS = {
    **dict.fromkeys(("ev", "electronvolt", "electronvolts"), 1.0),
    **dict.fromkeys(("kev", "kiloelectronvolt", "kiloelectronvolts"), 1e3),
    **dict.fromkeys(("mev", "megaelectronvolt", "megaelectronvolts"), 1e6)}
SOFTGLUE_RAW = "DataPoint x_st_fzp y_st_fzp ckUser_Clk_Count Detector_Count"
_POSITION_LAYOUTS = {  # header -> (index column, index origin, x column, y column)
    "DataPoint TotalPoints Target_x Average_x_st_fzp Stdev_x_st_fzp Target_y "
    "Average_y_st_fzp Stdev_y_st_fzp Average_cap1 Stdev_cap1 Average_cap2 Stdev_cap2 "
    "Average_cap3 Stdev_cap3 Average_cap4 Stdev_cap4 Average_cap5 Stdev_cap5": (0, 0, 3, 6),
    SOFTGLUE_RAW: (4, 1, 1, 2),
    "Detector_Count Average_x_st_fzp Stdev_x_st_fzp Average_y_st_fzp Stdev_y_st_fzp":
        (0, 1, 1, 3),
}


@dataclass(frozen=True)
class ScanRecord:
    """One row of ``tomography_scannumbers.txt``."""

    scan_no: int
    golden_angle_deg: float
    encoder_angle_deg: float
    measurement_id: int
    subtomo_no: int
    detector_position: int
    label: str


def read_angle_table(path: PathLike) -> dict[int, ScanRecord]:
    """Scan number -> record; unparsable or short rows are errors (one line), except a last
    line without its newline that does not parse: the beamline appends one line per scan
    while the tomography is measured, so that line is being written; it is skipped with a
    warning (ptychodus skips unparsable lines too)."""
    p = Path(path)
    if not p.is_file():
        raise data_error(p, "angle table not found")
    records: dict[int, ScanRecord] = {}
    text = p.read_text(errors="replace")
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if number == len(lines) and not text.endswith(("\n", "\r")) and not _parses(line):
            log.warning("%s: line %d is incomplete (being written?): skipped", p, number)
            break
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            record = _table_row(fields)
        except ValueError:
            raise data_error(p, f"line {number}: expected 'scan_no golden_angle "
                                f"encoder_angle measurement_id subtomo_no "
                                f"detector_position label'") from None
        if not np.isfinite(record.encoder_angle_deg):
            raise data_error(p, f"line {number}: angle is not finite")
        records[record.scan_no] = record
    return records


def _table_row(fields: list[str]) -> ScanRecord:
    """One angle-table row (seven fields, or fold_slice's older six without
    ``measurement_id``); ValueError when it is not one."""
    if len(fields) == 6:
        fields = fields[:3] + ["0"] + fields[3:]
    if len(fields) != 7:
        raise ValueError(f"{len(fields)} fields")
    return ScanRecord(int(fields[0]), float(fields[1]), float(fields[2]), int(fields[3]),
                      int(fields[4]), int(fields[5]), fields[6])


def _parses(line: str) -> bool:
    """Whether ``line`` is a comment, blank, or a complete angle-table row."""
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return True
    try:
        _table_row(fields)
    except ValueError:
        return False
    return True


_NAMED_COLUMNS = (("Average_x_st_fzp", "Average_y_st_fzp"), ("Average_x", "Average_y"))


def _columns(p: Path, header: str) -> tuple[int | None, int, int, int]:
    """(index column or None = row order, index origin, x column, y column) of a header."""
    if header in _POSITION_LAYOUTS:
        return _POSITION_LAYOUTS[header]
    names = header.split()
    for x_name, y_name in _NAMED_COLUMNS:
        if x_name in names and y_name in names:
            return None, 0, names.index(x_name), names.index(y_name)
    raise data_error(p, f"line 2: unknown column header {header[:60]!r} (expected Orchestra, "
                        f"softGlueZynq, or columns Average_x_st_fzp and Average_y_st_fzp)")


def _position_rows(p: Path, lines: list[str], width: int, columns: tuple) -> np.ndarray:
    """``[n, 3]`` float64 rows (frame index, x um, y um) of the data lines."""
    index_col, origin, x_col, y_col = columns
    rows = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if fields[0].startswith("#"):
            continue
        if len(fields) != width:
            raise data_error(p, f"line {number}: {len(fields)} columns, expected {width}")
        try:
            index = len(rows) if index_col is None else int(float(fields[index_col])) - origin
            rows.append((index, float(fields[x_col]), float(fields[y_col])))
        except ValueError:
            raise data_error(p, f"line {number}: not a number") from None
    if not rows:
        raise data_error(p, "no positions")
    return np.array(rows, dtype=np.float64)


def read_lamni_positions(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Frame indexes ``[n]`` (0-based) and positions ``[n, 3]`` metres of a LamNI ``.dat``.

    Positions ``(x, y, 0) = -(Average_x_st_fzp, Average_y_st_fzp) * 1e-6`` (see the module
    docstring). Rows sharing a frame index (softGlueZynq's raw layout samples each frame
    several times, all with one ``Detector_Count``) are averaged into one position, as
    ptychodus does (``api/reconstructor.py`` ``prepare_reconstruct_input``: "duplicate
    position indexes are averaged into a single anchor"); the frames are then in index order.
    DataError (one line) for an unknown header, a short row, a non-number,
    non-finite values or values too large for micrometres.
    """
    p = Path(path)
    if not p.is_file():
        raise data_error(p, "position file not found")
    lines = [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    header = " ".join(lines[1].split()) if len(lines) > 1 else ""
    columns = _columns(p, header)
    table = _position_rows(p, lines, len(header.split()), columns)
    indexes, inverse = np.unique(table[:, 0], return_inverse=True)
    if len(indexes) < len(table):  # softGlueZynq raw: several samples of one frame
        if header != SOFTGLUE_RAW:
            log.warning("%s: %d rows repeat a frame index: their positions are averaged",
                        p, len(table) - len(indexes))
        counts = np.bincount(inverse)
        table = np.stack([indexes] + [np.bincount(inverse, table[:, c]) / counts
                                      for c in (1, 2)], axis=1)
    positions = np.stack([-table[:, 1] * 1e-6, -table[:, 2] * 1e-6,
                          np.zeros(len(table))], axis=1)
    check_positions_m(p, "positions", positions)
    return table[:, 0].astype(np.int64), positions


def _unit(f: h5py.File, path: Path, key: str, default: str, table: dict[str, float]
          ) -> float:
    """Scale to SI (m, eV) of the unit name at ``key`` (``default`` when absent or empty);
    DataError for a unit this table does not know (a silent default would be off by powers
    of ten)."""
    raw = f.get(key)
    text = default
    if isinstance(raw, h5py.Dataset):
        value = np.asarray(raw[()]).reshape(-1)
        if value.size:
            item = value[0]
            text = (item.decode("utf-8", "replace") if isinstance(item, bytes)
                    else str(item)).strip().lower() or default
    if text not in table:
        known = [k for k in ("m", "cm", "mm", "um", "nm", "ev", "kev", "mev") if k in table]
        raise data_error(path, f"unknown unit {text[:20]!r} (expected e.g. "
                               f"{', '.join(known)})", key)
    return table[text]


def _header(f: h5py.File, path: Path, key: str) -> dict[str, float | None]:
    """Energy (eV), distance (m), pixel (m; ``y_pixel_m`` where the file records the rows'
    apart), beam centre (row, col) from any Eiger layout."""
    ds = f[key]
    head = {"energy_ev": None, "distance_m": None, "pixel_m": None, "y_pixel_m": None,
            "row": None, "col": None}
    kev = optional_number_attr(ds, "Photon_energy_kev", path, positive=True)
    head["energy_ev"] = None if kev is None else kev * 1e3
    head["distance_m"] = optional_number_attr(ds, "Detector_distance_m", path, positive=True)
    head["pixel_m"] = optional_number_attr(ds, "Pixel_size", path, positive=True)
    head["col"] = optional_number_attr(ds, "Center_x_pixel", path)
    head["row"] = optional_number_attr(ds, "Center_y_pixel", path)
    det, mono = "/entry/instrument/detector", "/entry/instrument/monochromator"
    lengths = {f"{det}/detector_distance": ("distance_m", "Distance_EGU", "mm"),
               f"{det}/x_pixel_size": ("pixel_m", "PixelSize_EGU", "um"),
               f"{det}/y_pixel_size": ("y_pixel_m", "PixelSize_EGU", "um"),
               f"{mono}/energy": ("energy_ev", "MonoEnergy_EGU", "kev"),
               f"{mono}/distance": ("distance_m", None, "mm"),
               "/entry/instrument/eiger_4/x_pixel_size": ("pixel_m", None, "um")}
    for k, (name, egu, default) in lengths.items():
        value = optional_number(f, k, path)
        if value is not None and head[name] is None:
            table = _ENERGY_UNITS if name == "energy_ev" else _LENGTH_UNITS
            scale = (_unit(f, path, f"/entry/metadata_units/{egu}", default, table) if egu
                     else table[default])
            head[name] = abs(value) * scale
    for k, name in ((f"{det}/beam_center_x", "col"), (f"{det}/beam_center_y", "row")):
        if head[name] is None:
            head[name] = optional_number(f, k, path)
    return head


def _scan_number(path: Path) -> int | None:
    """The scan number in a file name: five digits after ``S``, ``run_`` or ``scan_``
    (cSAXS ``S%05d``, ``run_%05d_%012d``, ``scan_%05d``), else the last run of five
    digits, else the last run of 3+ digits."""
    tagged = re.search(r"(?:^|_)(?:S|run_|scan_)(\d{5})(?=_|$)", path.stem)
    if tagged:
        return int(tagged.group(1))
    runs = re.findall(r"\d{3,}", path.stem)
    five = [r for r in runs if len(r) == 5]
    return int(five[-1]) if five else (int(runs[-1]) if runs else None)


def _file_frames(p: Path, beam_center_rc: tuple[float, float] | None, roi_px: int,
                 load: bool) -> tuple[dict, np.ndarray | None, np.ndarray | None, int]:
    """Header, cropped frames, gap mask and frame count of a file holding its frames."""
    with open_h5(p) as f:
        key = next((k for k in EIGER_DATA if f.get(k) is not None), None)
        if key is None:
            raise data_error(p, f"no Eiger frames ({', '.join(EIGER_DATA)}), nor a DECTRIS "
                                f"master's external link {FIRST_LINK} with "
                                f"{DETECTOR}/detectorSpecific")
        ds = require_dataset(f, key, p)
        check_shape(ds.shape, 3, p, key)
        check_filters(ds, p, key)
        head = _header(f, p, key)
        rows, cols = crop_window(p, key, ds.shape, beam_centre(p, head, beam_center_rc, key),
                                 roi_px)
        frames, mask = cropped_frames(f, p, key, rows, cols, load)
        return head, frames, mask, ds.shape[0]


def _positions(p: Path, positions_path: Path, number: int | None,
               spec_motors: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Frame indexes and positions (m) of scan ``number`` from an Orchestra or spec file."""
    if not is_spec_file(positions_path):
        return read_lamni_positions(positions_path)
    if number is None:
        raise data_error(p, f"no scan number in the file name to find its scan in the spec "
                            f"file {positions_path.name} (name it S%05d or run_%05d_...)")
    return read_spec_positions(positions_path, number, spec_motors)


def read_eiger_scan(path: PathLike, positions_path: PathLike, *, roi_px: int,
                    beam_center_rc: tuple[float, float] | None = None,
                    angle_table_path: PathLike | None = None, scan_number: int | None = None,
                    supplied: Supplied | None = None, load_counts: bool = True,
                    angle_convention: str = "ptychoshelves",
                    spec_motors: tuple[str, str] = DEFAULT_MOTORS,
                    burst_frames: int = 1) -> Scan:
    """One raw cSAXS / LamNI Eiger scan, cropped to ``roi_px`` around the beam centre: a
    file holding its frames, or a DECTRIS master file linking data files beside it
    (:mod:`.dectris`).

    Positions: an Orchestra ``.dat`` file (:func:`read_lamni_positions`) or the beamline's
    spec data file (:mod:`.spec_positions`: the ``spec_motors`` columns of scan
    ``scan_number``). The rotation angle comes from the supplied value or the angle table
    (the row of ``scan_number``, default: the number in the file name, see
    :func:`_scan_number`).
    ``burst_frames`` consecutive frames per point are summed (:func:`.dectris.sum_bursts`).
    """
    p = Path(path)
    s = supplied or Supplied()
    number = scan_number if scan_number is not None else _scan_number(p)
    indexes, positions = _positions(p, Path(positions_path), number, spec_motors)
    with open_h5(p) as f:
        master = is_master(f)
    read = read_master if master else _file_frames
    head, frames, mask, n_frames = read(p, beam_center_rc, roi_px, load_counts)
    frames, n_frames = sum_bursts(p, frames, n_frames, burst_frames, indexes)
    if indexes.min() < 0 or indexes.max() >= n_frames:
        raise data_error(positions_path, f"position indexes outside the {n_frames} frames")
    energy_j = energy_j_from_ev(p, "energy", resolve(p, "energy", "energy_ev",
                                                     head["energy_ev"], s.energy_ev))
    distance = check_range(p, "distance", resolve(p, "distance", "distance_m",
                                                  head["distance_m"], s.distance_m),
                           DISTANCE_M_RANGE, "m")
    pixel = check_range(p, "pixel size", resolve(p, "pixel size", "detector_pixel_m",
                                                 head["pixel_m"], s.detector_pixel_m),
                        DETECTOR_PIXEL_M_RANGE, "m")
    y_pixel = check_range(p, "y pixel size", head.get("y_pixel_m") or pixel,
                          DETECTOR_PIXEL_M_RANGE, "m")  # master files record both
    angle = s.rotation_angle_deg
    if angle is None and angle_table_path is not None:
        record = read_angle_table(angle_table_path).get(number)  # type: ignore[arg-type]
        if record is None:
            raise data_error(angle_table_path, f"no row for scan {number}")
        angle = record.encoder_angle_deg
    angle = resolve(p, "rotation angle", "rotation_angle_deg", None, angle)
    lam = resolve(p, "laminography angle", "laminography_angle_deg", None,
                  s.laminography_angle_deg)
    return Scan(counts=None if frames is None else frames[indexes], positions_m=positions,
                energy_j=energy_j, distance_m=distance, x_pixel_size_m=pixel,
                y_pixel_size_m=y_pixel,
                rotation_angle_deg=rotation_deg(angle, angle_convention),
                laminography_angle_deg=laminography_deg(p, lam, angle_convention), mask=mask,
                path=str(p), counts_shape=(len(indexes), roi_px, roi_px))
