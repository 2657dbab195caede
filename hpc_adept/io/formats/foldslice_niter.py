"""fold_slice GPU-engine results ``Niter<N>.mat`` (MATLAB ``-v7.3`` = HDF5), read via h5py.

Written by yijiang1/fold_slice ``ptycho/+engines/+GPU/ptycho_solver.m``
(``save(strcat(par.fout,'Niter',num2str(iter),'.mat'),'outputs','p','probe','object')``):

- ``object = zeros(Ny, Nx, Nlayers)`` filled with ``self.object{ll}(:,:,1,1)``;
- ``probe = zeros(Np, Np, probe_modes, variable_probe_modes + 1)``;
- ``p.dx_spec = self.pixel_size`` (``[dy dx]``, metres), ``p.lambda``,
  ``p.object_ROI{1}``, ``p.object_ROI{2}`` (``cache.object_ROI``: 1-based row and column
  indices of the reconstructed region); ``p.angle`` where a fork stores it.

MATLAB's HDF5 writer stores every array with its dimensions reversed (h5py reads the
transpose), complex values as a compound ``(real, imag)``, structs as groups and cells as
datasets of object references into ``/#refs#``. So h5py's ``object`` is
``[Nlayers, Nx, Ny]`` (or ``[Nx, Ny]``) and each layer is transposed back here. Files
saved without ``-v7.3`` (MAT v5/v7) are refused with a line saying how to re-save them;
nothing is loaded through MATLAB's or scipy's MAT readers.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.formats._read import (
    data_error,
    mat_v73_problem,
    open_h5,
    optional_number,
    read_complex,
    require_dataset,
)
from hpc_adept.io.formats.ptychoshelves_recons import ObjectRecord, read_pixel

__all__ = ["read_niter_object"]

PathLike = str | os.PathLike

OBJECT, PROBE = "/object", "/probe"
DX_SPEC, ROI, ANGLE = "/p/dx_spec", "/p/object_ROI", "/p/angle"


def _roi_axis(f: h5py.File, path: Path, ref: h5py.Reference, extent: int) -> slice:
    """A 1-based MATLAB index vector behind a cell reference as a 0-based slice."""
    try:
        target = f[ref]
    except (KeyError, ValueError, TypeError) as exc:
        raise data_error(path, f"broken cell reference: {exc}", ROI) from None
    if not isinstance(target, h5py.Dataset) or target.dtype.kind not in "iuf":
        raise data_error(path, "cell entry is not a numeric index vector", ROI)
    idx = np.asarray(target[()], dtype=np.float64).reshape(-1)
    if idx.size == 0 or not np.isfinite(idx).all() or idx.min() < 1 or idx.max() > extent:
        raise data_error(path, f"indices outside 1..{extent}", ROI)
    return slice(int(idx.min()) - 1, int(idx.max()))


def _roi(f: h5py.File, path: Path, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """``p.object_ROI`` (a cell of two index vectors) as (rows, cols) slices, or None."""
    if f.get(ROI) is None:
        return None
    ds = require_dataset(f, ROI, path)
    if ds.dtype != h5py.ref_dtype or ds.size != 2:
        raise data_error(path, f"expected a cell of 2 index vectors, got {ds.dtype} "
                               f"{ds.shape}", ROI)
    refs = np.asarray(ds[()]).reshape(-1)
    return _roi_axis(f, path, refs[0], shape[0]), _roi_axis(f, path, refs[1], shape[1])


def read_niter_object(path: PathLike) -> ObjectRecord:
    """Object (layers multiplied, MATLAB orientation ``[Ny, Nx]``), pixel, ROI, probe."""
    p = Path(path)
    problem = mat_v73_problem(p)
    if problem:
        raise data_error(p, problem)
    with open_h5(p) as f:
        raw = read_complex(f, OBJECT, p, (2, 3))
        layers = raw[None] if raw.ndim == 2 else raw
        obj = np.prod(np.swapaxes(layers, 1, 2), axis=0)  # undo MATLAB's reversed dims
        pixel = read_pixel(f, p, DX_SPEC)
        roi = _roi(f, p, obj.shape)
        probe = None
        if f.get(PROBE) is not None:
            raw_probe = read_complex(f, PROBE, p, (2, 3, 4))
            first = raw_probe.reshape((-1,) + raw_probe.shape[-2:])[0]
            probe = first.T
        angle = optional_number(f, ANGLE, p)
    return ObjectRecord(object=obj, pixel_m=pixel, angle_deg=angle, probe=probe, roi=roi)
