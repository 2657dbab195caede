"""Shared low-level reading for the foreign formats: HDF5 filters, MATLAB v7.3, scalars.

This is the one module of :mod:`hpc_adept.io.formats` that imports the project's
defensive HDF5 helpers (``open_h5``, ``require_dataset``, ``read_array``, ...); the format
modules import them from here. Every problem becomes a one-line
:class:`~hpc_adept.errors.DataError` naming the file and the key.

MATLAB files are read through HDF5 only (``-v7.3`` MAT-files are HDF5 files with a 512-byte
user block); older MAT-files are refused with a line saying how to re-save them. Nothing is
ever unpickled and no MATLAB class loader is involved.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.h5read import (
    check_shape,
    data_error,
    open_h5,
    read_array,
    read_attrs,
    require_dataset,
)

__all__ = [
    "check_filters",
    "check_shape",
    "data_error",
    "mat_v73_problem",
    "open_h5",
    "optional_number",
    "optional_number_attr",
    "read_array",
    "read_attrs",
    "read_complex",
    "read_frames",
    "require_dataset",
]

PathLike = str | os.PathLike

# HDF5 filter ids registered by the hdf5plugin package (https://github.com/silx-kit/hdf5plugin).
_PLUGIN_FILTERS = {
    307: "bzip2",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle/LZ4, as in Eiger files",
    32013: "zfp",
    32015: "zstd",
    32017: "sz",
    32026: "blosc2",
}


def _filter_ids(ds: h5py.Dataset) -> list[tuple[int, str]]:
    """(filter id, name) of every filter in the dataset's pipeline."""
    plist = ds.id.get_create_plist()
    out = []
    for index in range(plist.get_nfilters()):
        code, _flags, _aux, name = plist.get_filter(index)
        out.append((int(code), name.decode("ascii", "replace") if isinstance(name, bytes)
                    else str(name)))
    return out


def _try_register_plugins() -> None:
    """Import hdf5plugin when installed: importing it registers its filters with HDF5."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass


def check_filters(ds: h5py.Dataset, path: PathLike, key: str) -> None:
    """DataError naming the first HDF5 filter of ``ds`` that this HDF5 library lacks.

    The line names the filter and the package providing it (``hdf5plugin``), so the user
    knows what to install; the data are not touched.
    """
    missing = [(c, n) for c, n in _filter_ids(ds) if not h5py.h5z.filter_avail(c)]
    if missing:
        _try_register_plugins()
        missing = [(c, n) for c, n in missing if not h5py.h5z.filter_avail(c)]
    if not missing:
        return
    code, name = missing[0]
    label = _PLUGIN_FILTERS.get(code, name or "unknown")
    raise data_error(path, f"needs the HDF5 filter {code} ({label}), which is not available: "
                           f"pip install hdf5plugin (the package that provides it)", key)


def read_frames(f: h5py.Group, key: str, path: PathLike, load: bool = True
                ) -> tuple[np.ndarray | None, tuple[int, int, int]]:
    """Diffraction frames ``[n, ny, nx]`` as float32 (or only their shape when not ``load``).

    Checks: a 3-D real dataset, filters available, finite, non-negative, not all zero.
    """
    ds = require_dataset(f, key, path)
    if ds.dtype.kind not in "biuf":
        raise data_error(path, f"dtype {ds.dtype} is not real numeric", key)
    check_shape(ds.shape, 3, path, key)
    check_filters(ds, path, key)
    shape = tuple(int(n) for n in ds.shape)
    if not load:
        return None, shape  # type: ignore[return-value]
    frames = read_array(f, key, path, ndim=3, dtype=np.float32, finite=False)
    if not np.isfinite(frames).all():
        raise data_error(path, "contains NaN or infinite values", key)
    if (frames < 0).any():
        raise data_error(path, f"contains negative counts (min {float(frames.min()):g})", key)
    if not frames.sum(dtype=np.float64) > 0:
        raise data_error(path, "all counts are zero", key)
    return frames, shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- scalars


def _number(value: object, path: PathLike, key: str, positive: bool) -> float:
    """A stored value of size 1 (any shape: MATLAB stores scalars as [1, 1]) as a float."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf" or arr.size != 1:
        raise data_error(path, f"expected one real number, got {arr.dtype} shape {arr.shape}",
                         key)
    number = float(arr.reshape(()))
    if not np.isfinite(number):
        raise data_error(path, f"not finite ({number})", key)
    if positive and not number > 0:
        raise data_error(path, f"must be positive, got {number:g}", key)
    return number


def optional_number(f: h5py.Group, key: str, path: PathLike, *, positive: bool = False
                    ) -> float | None:
    """A one-element real dataset as float, None when absent.

    A MATLAB ``-v7.3`` empty matrix (``[]``: MATLAB stores its dimensions as a uint64 vector
    with the attribute ``MATLAB_empty`` = 1) counts as absent.
    """
    if f.get(key) is None:
        return None
    ds = require_dataset(f, key, path)
    if _matlab_empty(ds):
        return None
    return _number(ds[()], path, key, positive)


def _matlab_empty(ds: h5py.Dataset) -> bool:
    """Whether ``ds`` is MATLAB's -v7.3 encoding of an empty matrix."""
    try:
        flag = ds.attrs.get("MATLAB_empty")
    except (OSError, TypeError, ValueError):
        return False
    return (flag is not None and np.asarray(flag).size == 1 and np.asarray(flag).dtype.kind
            in "biu" and int(np.asarray(flag).reshape(())) == 1 and ds.dtype.kind == "u"
            and not np.asarray(ds[()]).all())


def optional_number_attr(obj: h5py.HLObject, name: str, path: PathLike, *,
                         positive: bool = False) -> float | None:
    """A one-element real attribute as float, None when absent."""
    if name not in obj.attrs:
        return None
    key = f"{obj.name}@{name}" if obj.name != "/" else f"@{name}"
    try:
        raw = obj.attrs[name]
    except (OSError, TypeError, ValueError) as exc:
        raise data_error(path, f"unreadable attribute: {exc}", key) from None
    return _number(raw, path, key, positive)


# --------------------------------------------------------------------------- complex / MATLAB

# MATLAB's own -v7.3 writer names the compound fields real/imag; PtychoShelves' save2hdf5
# (+io/+HDF/write_dataset.m, "H5T.insert(datatypeID, 'r', ...)") names them r/i.
_COMPLEX_FIELDS = (("real", "imag"), ("r", "i"))


def read_complex(f: h5py.Group, key: str, path: PathLike, ndims: tuple[int, ...]
                 ) -> np.ndarray:
    """A complex dataset (native complex or MATLAB-style compound) as finite complex64.

    Parameters
    ----------
    ndims : tuple of int
        Accepted numbers of dimensions.
    """
    ds = require_dataset(f, key, path)
    if len(ds.shape) not in ndims:
        raise data_error(path, f"expected {' or '.join(map(str, ndims))}-D, got shape "
                               f"{ds.shape}", key)
    if 0 in ds.shape:
        raise data_error(path, f"empty (shape {ds.shape})", key)
    check_filters(ds, path, key)
    names = ds.dtype.names
    if ds.dtype.kind == "c":
        data = np.asarray(ds[()], dtype=np.complex64)
    elif names is not None:
        fields = next((pair for pair in _COMPLEX_FIELDS if set(pair) <= set(names)), None)
        if fields is None:
            raise data_error(path, f"compound fields {names} are not (real, imag) or (r, i)",
                             key)
        raw = ds[()]
        data = (raw[fields[0]].astype(np.float32) + 1j * raw[fields[1]].astype(np.float32))
        data = data.astype(np.complex64)
    elif ds.dtype.kind in "biuf":
        data = np.asarray(ds[()], dtype=np.complex64)  # a real object: zero phase
    else:
        raise data_error(path, f"dtype {ds.dtype} is not complex", key)
    if not np.isfinite(data).all():
        raise data_error(path, "contains NaN or infinite values", key)
    return data


_MAT_HEADER_BYTES = 128


def mat_v73_problem(path: PathLike) -> str | None:
    """Why ``path`` is no MATLAB -v7.3 (HDF5) MAT-file we may read, or None.

    A MAT-file starts with a 116-byte text header ("MATLAB 7.3 MAT-file, ..." for -v7.3,
    "MATLAB 5.0 MAT-file, ..." for the -v6/-v7 formats, which are not HDF5).
    """
    p = Path(path)
    if not p.is_file():
        return "file not found" if not p.exists() else "not a regular file"
    with open(p, "rb") as fh:
        head = fh.read(_MAT_HEADER_BYTES)
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return None
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return ("a MATLAB v5/v6/v7 MAT-file (not HDF5), which is not read: re-save it in "
                "MATLAB with save(filename, ..., '-v7.3')")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return None  # plain HDF5 under a .mat name
    return "not a MATLAB -v7.3 MAT-file (no MATLAB 7.3 header, not HDF5)"
