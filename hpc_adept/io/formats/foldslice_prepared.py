"""fold_slice / PtychoShelves prepared data: ``data_roi<label>_dp.hdf5`` + ``_para.hdf5``.

Layout (yijiang1/fold_slice):

- ``ptycho/+scans/get_filenames_aps.m`` line 14: the frames of scan ``S`` are
  ``<base_path>/<sprintf(scan.format, S)>/data_roi<roi_label>_dp.hdf5``, dataset ``/dp``.
- ``ptycho/+detector/+prep_data/+matlab_aps/load_data.m``: ``data = h5read(file, '/dp')``
  (MATLAB sees h5py's ``[N, Ndp, Ndp]`` as ``[Ndp, Ndp, N]``, each frame transposed), then
  the detector's ``det.orientation = [<Transpose> <FlipLR> <FlipUD>]`` is applied:
  ``permute(data, [2 1 3])``, ``fliplr``, ``flipud``. X-ray Eiger detectors use
  ``[1 0 0]`` (``+detector/+eiger_APS/eiger_APS.m``, ``+eiger1p5M/eiger1p5M.m``): the
  transpose undoes ``h5read``'s, so fold_slice fits h5py's frame as stored (as ptychodus
  reads it); the electron ``empad`` uses ``[0 0 0]`` (frames transposed).
- ``ptycho/+scans/+positions/hdf5_pos.m`` lines 9-18: ``/ppX``, ``/ppY`` (metres) from
  ``data_roi<label>_para.hdf5`` in the same folder; ``positions_real(:,1) = -ppY``,
  ``positions_real(:,2) = -ppX`` (columns: row/y, column/x).
- ``ptycho/+core/ptycho_adjust_positions.m``: ``p.positions_real = -p.positions_real`` and
  ``p.positions = p.positions_real ./ p.dx_spec`` (then shifted to start at 0): the probe
  window's (row, col) in the object grows with ``(+ppY, +ppX)``. The two negations cancel.
- ptychodus ``plugins/fold_slice/position_file.py`` (1.7.0) reads ``/lambda`` (m),
  ``/dx`` (object pixel, m) and ``/angle`` (deg) beside the positions, when present.

Mapping onto :class:`~hpc_adept.io.cxi.Scan` (verified from the lines above):

- counts ``[n, ny, nx]`` = the frames as fold_slice holds them after ``load_data.m`` with
  the given ``orientation`` (default ``(1, 0, 0)``: h5py's frames unchanged); DC at
  ``(N//2, N//2)`` (a flip of an even-sized frame moves it by one pixel, as in fold_slice);
- positions ``(x, y, z) = (ppX, ppY, 0)`` metres: x along frame columns, y along rows, the
  same sign as the probe window's shift in fold_slice's object;
- energy from ``/lambda``; with ``/dx`` the ratio distance / detector pixel is fixed
  (``dx = lambda z / (N p)``) and the caller supplies one of them; the rotation angle from
  ``/angle`` in the PtychoShelves convention (our ``theta = angle + 90``, see
  :mod:`hpc_adept.io.formats.geometry`); the laminography angle is always supplied.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from hpc_adept.io.cxi import PLANCK_TIMES_C_JM, Scan
from hpc_adept.io.formats._read import (
    data_error,
    open_h5,
    optional_number,
    read_array,
    read_frames,
    require_dataset,
)
from hpc_adept.io.formats._values import (
    Supplied,
    check_positions_m,
    energy_ev_from_wavelength,
    energy_j_from_ev,
    laminography_deg,
    resolve,
    resolve_detector,
    rotation_deg,
)

__all__ = [
    "DP_PATTERN",
    "EIGER_ORIENTATION",
    "find_pairs",
    "oriented",
    "para_path_for",
    "read_foldslice_scan",
]

PathLike = str | os.PathLike

DP_PATTERN = re.compile(r"^data_roi(?P<label>.+)_dp\.hdf5$")
DP_KEY = "/dp"
PPX, PPY = "/ppX", "/ppY"
LAMBDA, DX, ANGLE = "/lambda", "/dx", "/angle"
EIGER_ORIENTATION = (1, 0, 0)  # det.orientation of eiger_APS.m, eiger1p5M.m


def oriented(frames: np.ndarray, orientation: tuple[int, int, int]) -> np.ndarray:
    """h5py frames ``[n, a, b]`` as fold_slice holds them after ``load_data.m``.

    ``h5read`` transposes each frame; ``det.orientation`` then transposes back, flips
    left-right and flips up-down, in that order.
    """
    transpose, flip_lr, flip_ud = (bool(v) for v in orientation)
    out = frames if transpose else np.swapaxes(frames, 1, 2)  # h5read, then permute
    if flip_lr:
        out = out[:, :, ::-1]
    if flip_ud:
        out = out[:, ::-1, :]
    return np.ascontiguousarray(out)


def para_path_for(dp_path: PathLike) -> Path:
    """``data_roi<label>_para.hdf5`` beside ``data_roi<label>_dp.hdf5``."""
    p = Path(dp_path)
    match = DP_PATTERN.match(p.name)
    if match is None:
        raise data_error(p, "not a fold_slice frame file (expected data_roi<label>_dp.hdf5)")
    return p.with_name(f"data_roi{match['label']}_para.hdf5")


def find_pairs(path: PathLike, label: str | None = None) -> list[tuple[Path, Path]]:
    """(dp, para) file pairs under ``path``: a dp file, a scan folder or a base folder.

    A base folder holds one sub-folder per scan (``sprintf(p.scan.format, S)``); the pairs
    come sorted by folder name. ``label``: only ``data_roi<label>_dp.hdf5`` (fold_slice's
    ``roi_label``, e.g. ``0_Ndp128``); None: a folder must hold one preparation. Raises
    DataError when none is found, a folder holds several labels and none is chosen, or a
    dp file lacks its parameter file.
    """
    p = Path(path)
    if p.is_file():
        candidates = [p]
    else:
        candidates = sorted(c for c in p.glob("data_roi*_dp.hdf5"))
        if not candidates:
            candidates = sorted(p.glob("*/data_roi*_dp.hdf5"))
        candidates = _one_label(p, candidates, label)
    pairs = []
    for dp in candidates:
        para = para_path_for(dp)
        if not para.is_file():
            raise data_error(para, "missing: fold_slice keeps /ppX and /ppY beside "
                                   f"{dp.name} (hdf5_pos.m)")
        pairs.append((dp, para))
    if not pairs:
        raise data_error(p, "no fold_slice data_roi<label>_dp.hdf5 file found")
    return pairs


def _one_label(where: Path, candidates: list[Path], label: str | None) -> list[Path]:
    """The dp files of ``label``, or DataError when a folder holds several labels and
    ``label`` is None (fold_slice prepares one per ``roi_label``: 0_Ndp64, 0_Ndp128...)."""
    labels = {c: DP_PATTERN.match(c.name)["label"] for c in candidates}
    if label is not None:
        chosen = [c for c in candidates if labels[c] == label]
        if not chosen:
            raise data_error(where, f"no data_roi{label}_dp.hdf5 (data.roi_label); labels "
                                    f"found: {', '.join(sorted(set(labels.values())))}")
        return chosen
    per_folder: dict[Path, set[str]] = {}
    for c in candidates:
        per_folder.setdefault(c.parent, set()).add(labels[c])
    several = next((f for f, names in per_folder.items() if len(names) > 1), None)
    if several is not None:
        raise data_error(several, f"holds several preparations (labels "
                                  f"{', '.join(sorted(per_folder[several]))}): set "
                                  f"data.roi_label")
    return candidates


def _read_para(para: Path, n_frames: int) -> tuple[np.ndarray, dict[str, float | None]]:
    """Positions ``[n, 3]`` metres (x = ppX, y = ppY) and the optional header values."""
    with open_h5(para) as f:
        columns = []
        for key in (PPX, PPY):
            ds = require_dataset(f, key, para)
            if ds.size != n_frames or sum(n > 1 for n in ds.shape) > 1:
                raise data_error(para, f"expected {n_frames} values (one per frame), got "
                                       f"shape {ds.shape}", key)
            columns.append(read_array(f, key, para, ndim=len(ds.shape),
                                      dtype=np.float64).reshape(-1))
        header = {
            "wavelength_m": optional_number(f, LAMBDA, para, positive=True),
            "object_pixel_m": optional_number(f, DX, para, positive=True),
            "angle_deg": optional_number(f, ANGLE, para),
        }
    positions = np.stack([columns[0], columns[1], np.zeros(n_frames)], axis=1)
    check_positions_m(para, f"{PPX}, {PPY}", positions)
    return positions, header


def read_foldslice_scan(dp_path: PathLike, para_path: PathLike | None = None, *,
                        supplied: Supplied | None = None, load_counts: bool = True,
                        angle_convention: str = "ptychoshelves",
                        orientation: tuple[int, int, int] = EIGER_ORIENTATION) -> Scan:
    """Read one fold_slice prepared scan as a :class:`Scan`.

    Parameters
    ----------
    dp_path : str or os.PathLike
        ``data_roi<label>_dp.hdf5``.
    para_path : str or os.PathLike, optional
        Default: ``data_roi<label>_para.hdf5`` beside it.
    supplied : Supplied, optional
        What the files lack: ``laminography_angle_deg`` always; ``energy_ev`` without
        ``/lambda``; ``detector_pixel_m`` or ``distance_m`` (both without ``/dx``);
        ``rotation_angle_deg`` without ``/angle``. Angles in ``angle_convention``.
    load_counts : bool
        False reads only the frames' shape (``Scan.counts`` is None).
    angle_convention : str
        Convention of ``/angle`` and of a supplied rotation / laminography angle
        (:mod:`hpc_adept.io.formats.geometry`); default PtychoShelves.
    orientation : (int, int, int)
        fold_slice's ``det.orientation`` ``(transpose, fliplr, flipud)`` of the detector
        the data were prepared for; default ``(1, 0, 0)`` (Eiger).

    Raises
    ------
    DataError
        One line naming the file and key.
    """
    dp = Path(dp_path)
    para = Path(para_path) if para_path is not None else para_path_for(dp)
    s = supplied or Supplied()
    with open_h5(dp) as f:
        frames, shape = read_frames(f, DP_KEY, dp, load=load_counts)
    n, a, b = shape
    if a != b:
        raise data_error(dp, f"frames must be square (Ndp x Ndp), got {a} x {b}", DP_KEY)
    positions, header = _read_para(para, n)
    lam = header["wavelength_m"]
    energy_ev = resolve(para, LAMBDA, "energy_ev",
                        None if lam is None else energy_ev_from_wavelength(para, LAMBDA, lam),
                        s.energy_ev)
    energy_j = energy_j_from_ev(para, LAMBDA, energy_ev)
    distance, pixel = resolve_detector(para, DX, header["object_pixel_m"],
                                       PLANCK_TIMES_C_JM / energy_j, a, s)
    angle = resolve(para, ANGLE, "rotation_angle_deg", header["angle_deg"],
                    s.rotation_angle_deg)
    lamino = resolve(para, "laminography angle", "laminography_angle_deg", None,
                     s.laminography_angle_deg)
    counts = None if frames is None else oriented(frames, orientation)
    if orientation[0] == 0:
        a, b = b, a
    return Scan(counts=counts, positions_m=positions, energy_j=energy_j, distance_m=distance,
                x_pixel_size_m=pixel, y_pixel_size_m=pixel,
                rotation_angle_deg=rotation_deg(angle, angle_convention),
                laminography_angle_deg=laminography_deg(para, lamino, angle_convention),
                path=str(dp), counts_shape=(n, a, b))

