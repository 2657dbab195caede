"""PtychoShelves reconstructions ``*_recons.h5`` (one scan, one rotation angle).

Written by PtychoShelves ``+core/+save/reconstructions_as_h5.m`` through
``+core/+save/extract4saving.m`` and ``+io/+HDF/save2hdf5.m`` / ``write_dataset.m``:

- ``s.reconstruction.p.objects.object_<k> = permute(p.object{k}, [2 1 3 4])`` and
  ``/reconstruction/object`` is a soft link to ``/reconstruction/p/objects/object_0``;
  ``write_dataset`` creates the dataspace with ``fliplr(dims)``, so after the permute h5py
  reads ``[layers, modes, Ny, Nx]`` (trailing singleton MATLAB dimensions dropped) in
  MATLAB's image orientation: ``h5[..., y, x] = object(y, x, ...)``;
- complex data are a compound of two fields named ``r`` and ``i``
  (``H5T.insert(datatypeID, 'r', ...)``);
- ``probes/probe_<k> = permute(squeeze(p.probes(:,:,k,:)), [2 1 3])``: h5py
  ``[modes, Ny, Nx]``; ``/reconstruction/probes`` links to ``probe_0``;
- ``p.dx_spec`` (``[dy dx]``, metres), ``p.positions`` (transposed before saving: h5py
  ``[n, 2]`` (row, col) object pixels of each probe window's corner) and ``p.asize``.

The tomography angle is not in the file: the caller supplies it (PtychoShelves convention).
The object's mode 0 is used; several layers (multislice) multiply.

A joint reconstruction of several scans (``p.share_object = 0``) writes one file per scan;
from the second on, ``reconstructions_as_h5.m`` copies ``/reconstruction/p`` from the first
file with ``utils/hdf5_cp_file.m`` ("shallow": ``'ext:' orig_filename ':' group``, an HDF5
external link, the path relative to the file) and soft-links ``/reconstruction/object`` to
``/reconstruction/p/objects/object_<scan - 1>``. That one link is followed, explicitly
(general external links stay refused): its target must be another ``*_recons.h5`` of the
same data set (at most two folders up: ``<base>/S%05d/S%05d_recons.h5``), and the object,
probe, pixel and positions are read there (the positions then cover every scan: the crop
is their union).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.formats._read import data_error, open_h5, read_complex, require_dataset

__all__ = ["ObjectRecord", "read_recons_object"]

PathLike = str | os.PathLike

OBJECT = "/reconstruction/object"
PROBES = "/reconstruction/probes"
DX_SPEC = "/reconstruction/p/dx_spec"
POSITIONS = "/reconstruction/p/positions"
ASIZE = "/reconstruction/p/asize"


class ObjectRecord(dict):
    """``object`` complex [H, W], ``pixel_m`` (dy, dx), ``angle_deg``, ``probe``, ``roi``."""


def _single_object(data: np.ndarray) -> np.ndarray:
    """[H, W] from ``[H, W]``, ``[modes, H, W]`` or ``[layers, modes, H, W]``."""
    if data.ndim == 3:
        return data[0]
    if data.ndim == 4:
        return np.prod(data[:, 0], axis=0)
    return data


def read_pixel(f, path: Path, key: str) -> tuple[float, float]:
    """``dx_spec`` as (dy, dx) metres: one or two positive finite values."""
    ds = require_dataset(f, key, path)
    values = np.asarray(ds[()], dtype=np.float64).reshape(-1)
    if values.size not in (1, 2) or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise data_error(path, f"expected 1 or 2 positive pixel sizes, got {values}", key)
    if not 1e-11 <= values.max() <= 1e-5:
        raise data_error(path, f"pixel size {values.max():g} m is implausible (wrong unit?)",
                         key)
    return float(values[0]), float(values[-1])


def _roi(f, path: Path, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """Region swept by the probe centres, from ``p.positions`` and ``p.asize``."""
    if f.get(POSITIONS) is None or f.get(ASIZE) is None:
        return None
    pos = np.asarray(require_dataset(f, POSITIONS, path)[()], dtype=np.float64)
    asize = np.asarray(require_dataset(f, ASIZE, path)[()], dtype=np.float64).reshape(-1)
    if pos.ndim != 2 or pos.shape[1] != 2 or asize.size != 2 or not np.isfinite(pos).all():
        raise data_error(path, f"positions {pos.shape} / asize {asize.shape} malformed",
                         POSITIONS)
    low = np.floor(pos.min(axis=0) + asize / 2).astype(int)
    high = np.ceil(pos.max(axis=0) + asize / 2).astype(int) + 1
    low, high = np.maximum(low, 0), np.minimum(high, shape)
    if np.any(high - low < 2):
        return None
    return slice(low[0], high[0]), slice(low[1], high[1])


def _shared_parameters(f: h5py.File, path: Path) -> tuple[Path, dict[str, str]] | None:
    """Where a joint reconstruction's later scan keeps its ``/reconstruction/p`` (the first
    scan's file) and the paths there of its object and probe; None for a file of its own."""
    try:
        link = f.get("/reconstruction/p", getlink=True)
    except (OSError, RuntimeError, KeyError, ValueError):
        return None
    if not isinstance(link, h5py.ExternalLink):
        return None
    try:
        base = path.resolve().parent.parent
        target = (path.parent / link.filename).resolve()
        usable = (target.name.endswith("_recons.h5") and target.is_relative_to(base)
                  and link.path == "/reconstruction/p" and target.is_file())
    except (RuntimeError, OSError):  # a symbolic-link loop, no permission
        usable = False
    if not usable:
        raise data_error(path, f"/reconstruction/p links to {link.filename!r}: not another "
                               f"*_recons.h5 of this data set (refused)", "/reconstruction/p")
    keys = {}
    for key in (OBJECT, PROBES):
        soft = f.get(key, getlink=True)
        if isinstance(soft, h5py.SoftLink) and soft.path.startswith("/reconstruction/p/"):
            keys[key] = soft.path
    if OBJECT not in keys:
        raise data_error(path, "the object of a scan sharing /reconstruction/p must link "
                               "into it", OBJECT)
    return target, keys


def read_recons_object(path: PathLike) -> ObjectRecord:
    """The object (mode 0, layers multiplied), pixel size and probe of a ``*_recons.h5``."""
    p = Path(path)
    with open_h5(p) as f:
        shared = _shared_parameters(f, p)
    source, keys = shared if shared is not None else (p, {})
    with open_h5(source) as f:
        obj = _single_object(read_complex(f, keys.get(OBJECT, OBJECT), source, (2, 3, 4)))
        pixel = read_pixel(f, source, DX_SPEC)
        probe = None
        probes = keys.get(PROBES, PROBES)
        if f.get(probes) is not None:
            raw = read_complex(f, probes, source, (2, 3))
            probe = raw if raw.ndim == 2 else raw[0]
        roi = _roi(f, source, obj.shape)
    return ObjectRecord(object=obj, pixel_m=pixel, angle_deg=None, probe=probe, roi=roi)
