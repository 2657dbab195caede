"""PtychoShelves (PSI) prepared data: ``S%05d_data_%03dx%03d.h5``.

Written by yijiang1/fold_slice ``ptycho/+core/prep_h5data.m`` (lines 64-233), named by
``ptycho/+core/ptycho_prepare_paths.m`` line 235 (``sprintf('S%05d_data_%03dx%03d',
p.scan_number(1), p.asize(1), p.asize(2)) p.prepare.prep_data_suffix '.h5'``; with binning
``..._b%i``), read back by ``+io/load_prepared_data.m`` (case ``'LibDetXR'``):

- ``/measurement/n{i}/data`` = ``permute((fmag(:,:,idx) / p.renorm).^2, [2 1 3])``, written
  by ``+io/+HDF/save2hdf5.m`` / ``write_dataset.m`` with ``H5S.create_simple(...,
  fliplr(dims))``: h5py reads ``[N, asize(1), asize(2)]`` and frame ``k`` is
  ``fmag(:,:,k).^2 / renorm^2`` in MATLAB's own ``[row, col]``. ``fmag`` is
  ``fftshift_2D(sqrt(data)) * p.renorm`` (``+detector/+prep_data/+matlab_ps/
  prep_data_matlab.m`` lines 206-216), so the stored frame is the measured intensity,
  fftshifted (DC at ``[0, 0]``): the counts are ``ifftshift`` of it (``fftshift_2D``
  shifts the first two axes as ``numpy.fft.fftshift`` does). The frames are the detector's as
  fold_slice holds them after ``det.orientation`` (Eiger ``[1 0 0]``: as h5py stores the
  raw file), the orientation :mod:`.foldslice_prepared` documents.
- ``/measurement/n{i}/positions`` = ``uint32(transpose(round(p.positions(idx,:))))``:
  h5py ``[N, 2]`` (row, col) of each probe window in the object, pixels, after
  ``+core/ptycho_adjust_positions.m`` (``positions = -positions_real ./ dx_spec``, then
  ``- min(positions) + positions_pad``): the window moves with (+y, +x) as in
  :mod:`.foldslice_prepared`, and the scan's absolute offset is gone (each file's
  positions start at 0). Read as ``x = (col - c0) dx``, ``y = (row - r0) dx`` with
  ``(r0, c0)`` the middle of the positions' range (the scan centred on the projection) and
  ``dx = lambda z / (N p)``.
- ``/detector/n{d}/modules`` (h5py ``[n_modules, 4]``: rows, cols, first row, first col,
  0-based) and ``/detector/n{d}/bad_pixels`` (h5py ``[K, 2]``: row, col), or per frame
  ``/measurement/n{i}/bad_pixels``: in the fftshifted frame (``p.fmask`` is stored
  fftshifted). Pixels outside every module or listed bad are masked (all frames: a
  per-frame list is merged).
- ``/measurement`` attribute ``max_power = 1 / renorm^2``; ``/measurement/n{i}`` attributes
  ``detector``, ``probe``, ``object`` (0-based), ``max_sum``.

Several ``n{i}`` in one file are scans reconstructed together; they must share one object
(attribute ``object``) and are read as one scan. The file records neither energy, distance,
detector pixel nor angles: they are supplied (a LamNI ``tomography_scannumbers.txt`` may give
the rotation angle of the file's scan number ``S%05d``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.cxi import PLANCK_TIMES_C_JM, Scan
from hpc_adept.io.formats._read import (
    check_shape,
    data_error,
    open_h5,
    optional_number_attr,
    read_array,
    read_frames,
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
from hpc_adept.io.formats.lamni import read_angle_table

__all__ = ["NAME_PATTERN", "find_files", "read_prepared_scan"]

PathLike = str | os.PathLike

NAME_PATTERN = re.compile(r"^S(?P<scan>\d{5,})_data_(?P<rows>\d{3,})x(?P<cols>\d{3,})"
                          r"(?:_b(?P<binning>\d+))?.*\.h5$")
_MEASUREMENT = re.compile(r"^n(\d+)$")


def find_files(path: PathLike) -> list[Path]:
    """The prepared files of ``path`` (a file, or a folder searched recursively), by name."""
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted((f for f in p.rglob("S*_data_*.h5") if NAME_PATTERN.match(f.name)),
                  key=lambda f: f.name)


def _groups(f: h5py.File, path: Path) -> list[str]:
    """``n0``, ``n1``, ... of ``/measurement`` in numeric order; DataError when none."""
    group = f.get("/measurement")
    if not isinstance(group, h5py.Group):
        raise data_error(path, "missing (PtychoShelves prepared data keep the frames under "
                               "/measurement/n0/data)", "/measurement")
    names = sorted((k for k in group if _MEASUREMENT.match(k)), key=lambda k: int(k[1:]))
    if not names:
        raise data_error(path, "holds no n0, n1, ... group", "/measurement")
    objects = {optional_number_attr(group[k], "object", path) for k in names}
    if len(objects) > 1:
        raise data_error(path, f"its {len(names)} scans belong to different objects "
                               f"{sorted(o for o in objects if o is not None)}: one "
                               f"projection per file is read", "/measurement")
    return names


def _read_positions(f: h5py.File, path: Path, key: str, n: int) -> np.ndarray:
    """``[n, 2]`` float64 (row, col) pixels of one measurement."""
    ds = require_dataset(f, key, path)
    check_shape(ds.shape, 2, path, key, (n, 2))
    return read_array(f, key, path, ndim=2, dtype=np.float64)


def _mark(mask: np.ndarray, f: h5py.File, path: Path, key: str) -> None:
    """Set the (row, col) pixels listed at ``key`` (``[K, 2]``, 0-based) in ``mask``."""
    if f.get(key) is None:
        return
    ds = require_dataset(f, key, path)
    if len(ds.shape) == 2 and 0 in ds.shape:
        return  # MATLAB's empty 2 x 0 list (prep_h5data.m: no bad pixel in these frames)
    pixels = read_array(f, key, path, ndim=2, dtype=np.int64)
    if pixels.shape[1] != 2 or pixels.min() < 0 or (pixels.max(0) >= mask.shape).any():
        raise data_error(path, f"expected [K, 2] (row, col) pixels inside the "
                               f"{mask.shape[0]} x {mask.shape[1]} frame", key)
    mask[pixels[:, 0], pixels[:, 1]] = True


def _mask(f: h5py.File, path: Path, names: list[str], shape: tuple[int, int]
          ) -> np.ndarray | None:
    """Bad pixels (True) in our frame orientation, or None when every pixel is good."""
    bad = np.zeros(shape, dtype=bool)
    for name in names:
        group = f[f"/measurement/{name}"]
        det = optional_number_attr(group, "detector", path)
        base = f"/detector/n{int(det or 0)}"
        if f.get(f"{base}/modules") is not None:
            modules = read_array(f, f"{base}/modules", path, ndim=2, dtype=np.int64)
            check_shape(modules.shape, 2, path, f"{base}/modules", (None, 4))
            outside = np.ones(shape, dtype=bool)
            for rows, cols, row0, col0 in modules:
                if min(rows, cols) < 1 or min(row0, col0) < 0 or row0 + rows > shape[0] \
                        or col0 + cols > shape[1]:
                    raise data_error(path, f"module {[rows, cols, row0, col0]} lies outside "
                                           f"the {shape[0]} x {shape[1]} frame",
                                     f"{base}/modules")
                outside[row0:row0 + rows, col0:col0 + cols] = False
            bad |= outside
        _mark(bad, f, path, f"{base}/bad_pixels")
        _mark(bad, f, path, f"/measurement/{name}/bad_pixels")
    if bad.all():
        raise data_error(path, "every detector pixel is masked", "/detector")
    return np.fft.ifftshift(bad) if bad.any() else None


def _read_file(path: Path, load: bool) -> tuple[np.ndarray | None, np.ndarray, tuple,
                                                 np.ndarray | None]:
    """Counts ``[n, N, N]`` (ours: DC at ``N // 2``), positions ``[n, 2]`` (row, col) px,
    the counts' shape and the mask."""
    frames, positions, shapes = [], [], []
    with open_h5(path) as f:
        names = _groups(f, path)
        for name in names:
            key = f"/measurement/{name}/data"
            data, shape = read_frames(f, key, path, load=load)
            if shape[1] != shape[2]:
                raise data_error(path, f"frames must be square (asize x asize), got "
                                       f"{shape[1]} x {shape[2]}", key)
            positions.append(_read_positions(f, path, f"/measurement/{name}/positions",
                                             shape[0]))
            frames.append(data)
            shapes.append(shape)
        if len({s[1:] for s in shapes}) > 1:
            raise data_error(path, f"the scans' frame shapes differ: {shapes}", "/measurement")
        mask = _mask(f, path, names, shapes[0][1:]) if load else None
    counts = None
    if load:
        counts = np.fft.ifftshift(np.concatenate(frames), axes=(1, 2))
    n = sum(s[0] for s in shapes)
    return counts, np.concatenate(positions), (n, *shapes[0][1:]), mask


def _angle(path: Path, s: Supplied, angle_table_path: PathLike | None) -> float:
    """The rotation angle: supplied, or the table's row of the file's scan number."""
    if s.rotation_angle_deg is not None or angle_table_path is None:
        return resolve(path, "rotation angle", "rotation_angle_deg", None,
                       s.rotation_angle_deg)
    match = NAME_PATTERN.match(path.name)
    if match is None:
        raise data_error(path, "no scan number in the name (S%05d_data_...): supply "
                               "data.rotation_angles_deg")
    record = read_angle_table(angle_table_path).get(int(match["scan"]))
    if record is None:
        raise data_error(angle_table_path, f"no row for scan {int(match['scan'])}")
    return record.encoder_angle_deg


def read_prepared_scan(path: PathLike, *, supplied: Supplied | None = None,
                       load_counts: bool = True, angle_convention: str = "ptychoshelves",
                       angle_table_path: PathLike | None = None) -> Scan:
    """One PtychoShelves prepared file as a :class:`Scan` (see the module docstring).

    Parameters
    ----------
    path : path
        ``S%05d_data_%03dx%03d*.h5``.
    supplied : Supplied
        ``energy_ev``, ``distance_m``, ``detector_pixel_m``, ``laminography_angle_deg``
        (always) and ``rotation_angle_deg`` (unless ``angle_table_path`` gives it), in
        ``angle_convention``.
    angle_table_path : path, optional
        LamNI ``tomography_scannumbers.txt``: the rotation angle of the file's scan number.
    """
    p = Path(path)
    s = supplied or Supplied()
    counts, rc, shape, mask = _read_file(p, load_counts)
    match = NAME_PATTERN.match(p.name)
    # fold_slice names the file by the unbinned size; the frames are binned 2^b times
    # (load_prepared_data.m: p.asize / 2^p.detector.binning).
    binning = 2 ** int(match["binning"] or 0) if match is not None else 1
    if match is not None and (int(match["rows"]) // binning,
                              int(match["cols"]) // binning) != shape[1:]:
        raise data_error(p, f"the name says {match['rows']}x{match['cols']} frames binned "
                            f"{binning}x, the file holds {shape[1]} x {shape[2]}",
                         "/measurement")
    energy_j = energy_j_from_ev(p, "energy", resolve(p, "energy", "energy_ev", None,
                                                     s.energy_ev))
    distance = check_range(p, "distance", resolve(p, "distance", "distance_m", None,
                                                  s.distance_m), DISTANCE_M_RANGE, "m")
    pixel = check_range(p, "pixel size", resolve(p, "pixel size", "detector_pixel_m", None,
                                                 s.detector_pixel_m),
                        DETECTOR_PIXEL_M_RANGE, "m")
    # detector_pixel_m is the physical pixel; a binned file's frame pixel is 2^b of them.
    dx = PLANCK_TIMES_C_JM / energy_j * distance / (shape[1] * pixel * binning)
    middle = (rc.min(axis=0) + rc.max(axis=0)) / 2.0
    positions = np.zeros((shape[0], 3))
    positions[:, 0] = (rc[:, 1] - middle[1]) * dx
    positions[:, 1] = (rc[:, 0] - middle[0]) * dx
    check_positions_m(p, "/measurement/n0/positions", positions)
    lam = resolve(p, "laminography angle", "laminography_angle_deg", None,
                  s.laminography_angle_deg)
    return Scan(counts=counts, positions_m=positions, energy_j=energy_j, distance_m=distance,
                x_pixel_size_m=pixel, y_pixel_size_m=pixel,
                rotation_angle_deg=rotation_deg(_angle(p, s, angle_table_path),
                                                angle_convention),
                laminography_angle_deg=laminography_deg(p, lam, angle_convention), mask=mask,
                path=str(p), counts_shape=shape)
