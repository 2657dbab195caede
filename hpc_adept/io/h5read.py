"""Defensive HDF5 reads, shared by :mod:`hpc_adept.io.cxi` and :mod:`hpc_adept.io.runfiles`.

Every file is untrusted: :func:`open_h5`, :func:`require_dataset`, :func:`read_array` and
the scalar and attribute readers turn every problem (a missing or truncated file, a
missing dataset, a wrong shape or dtype, NaN or infinity, a damaged chunk) into a one-line
:class:`~hpc_adept.errors.DataError` naming the file and the dataset (:func:`data_error`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpc_adept.errors import DataError

__all__ = [
    "check_shape",
    "data_error",
    "open_h5",
    "read_array",
    "read_attrs",
    "read_scalar",
    "read_scalar_attr",
    "require_dataset",
]

PathLike = str | os.PathLike


def data_error(path: PathLike, problem: str, key: str | None = None) -> DataError:
    """Build the one-line DataError ``"<file>: <key>: <problem>"``."""
    where = f"{os.fspath(path)}: {key}" if key else os.fspath(path)
    one_line = " ".join(str(problem).split())
    return DataError(f"{where}: {one_line}")


@contextmanager
def open_h5(path: PathLike) -> Iterator[h5py.File]:
    """Open an untrusted HDF5 file for reading.

    Raises
    ------
    DataError
        When the file is missing, is not HDF5, is truncated or corrupt, or when a read
        inside the ``with`` block fails at the HDF5 level (for example a damaged chunk).
    """
    p = Path(path)
    if not p.is_file():
        raise data_error(p, "file not found" if not p.exists() else "not a regular file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise data_error(p, f"not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    try:
        with f:
            yield f
    except (OSError, RuntimeError) as exc:
        # Why: damaged chunks or headers surface only when read, as h5py OSError/RuntimeError.
        raise data_error(p, f"HDF5 read failed (corrupt file?): {exc}") from None


def require_dataset(f: h5py.Group, key: str, path: PathLike) -> h5py.Dataset:
    """Return dataset ``key`` of ``f``; DataError when missing or not a dataset."""
    try:
        obj = f.get(key)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise data_error(path, f"cannot open: {exc}", key) from None
    if obj is None:
        raise data_error(path, "missing", key)
    if not isinstance(obj, h5py.Dataset):
        raise data_error(path, "is not a dataset", key)
    problem = _outside_reference(f, key, obj)
    if problem:
        raise data_error(path, problem, key)
    return obj


def _outside_reference(f: h5py.Group, key: str, ds: h5py.Dataset) -> str | None:
    """Why ``ds`` would read data from outside its file, or None. Files are untrusted: an
    external link, external raw storage or a virtual dataset can pull any local file into
    a volume (and from there into the report's figures)."""
    # Every group on the way counts: ``/a`` linked to another file makes ``/a/data`` a
    # hard link inside that file.
    parts = [p for p in key.split("/") if p]
    prefix = "/" if key.startswith("/") else ""
    try:
        for n in range(1, len(parts) + 1):
            if isinstance(f.get(prefix + "/".join(parts[:n]), getlink=True), h5py.ExternalLink):
                return "is or lies under an external link to another file (refused: read " \
                       "the file itself)"
        # a soft link elsewhere in the file may itself lead through an external link
        if ds.file.filename != f.file.filename:
            return "is reached through a link to another file (refused: read the file itself)"
    except (OSError, RuntimeError, KeyError, ValueError):
        return "has an unreadable link"
    if ds.external:
        return "stores its data in external files (refused)"
    if ds.is_virtual:
        return "is a virtual dataset mapping other files (refused)"
    return None


def _memory_problem(ds: h5py.Dataset, target: np.dtype) -> str | None:
    """Why reading ``ds`` whole as ``target`` cannot fit in this host's available memory
    (a small compressed file may declare a huge shape), or None."""
    from hpc_adept.backend import available_memory_bytes

    need = int(ds.size) * target.itemsize
    free, _ = available_memory_bytes(None, 1)
    if need > free:
        return (f"declares {need / 2**30:.3g} GiB ({ds.shape} {target}), more than the "
                f"{free / 2**30:.3g} GiB of memory available")
    return None


_KINDS = {"real": "biuf", "complex": "c", "integer": "biu", "numeric": "biufc"}


def _check_dtype(ds: h5py.Dataset, kind: str, path: PathLike, key: str) -> None:
    """DataError unless the dataset's dtype is of ``kind`` (see ``_KINDS``)."""
    if ds.dtype.kind not in _KINDS[kind]:
        raise data_error(path, f"dtype {ds.dtype} is not {kind}", key)


def check_shape(
    shape: tuple[int, ...],
    ndim: int,
    path: PathLike,
    key: str,
    expected: tuple[int | None, ...] | None = None,
) -> None:
    """DataError unless ``shape`` has ``ndim`` non-zero axes matching ``expected``.

    ``expected`` holds one entry per axis; ``None`` accepts any length.
    """
    if len(shape) != ndim:
        raise data_error(path, f"expected {ndim}-D, got shape {shape}", key)
    if any(n == 0 for n in shape):
        raise data_error(path, f"empty (shape {shape})", key)
    pairs = zip(expected or (), shape, strict=False)
    if expected is not None and any(e is not None and e != n for e, n in pairs):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise data_error(path, f"expected shape {want}, got {shape}", key)


def read_array(
    f: h5py.Group,
    key: str,
    path: PathLike,
    *,
    ndim: int,
    dtype: np.dtype | type,
    kind: str = "real",
    expected: tuple[int | None, ...] | None = None,
    finite: bool = True,
) -> np.ndarray:
    """Read and validate a dataset.

    Parameters
    ----------
    f : h5py.Group
        Group holding the dataset.
    key : str
        Dataset path inside ``f``.
    path : str or os.PathLike
        File name, for error messages.
    ndim : int
        Required number of dimensions.
    dtype : numpy dtype
        Returned dtype (the stored data is converted by HDF5 while reading).
    kind : {"real", "complex", "integer", "numeric"}
        Accepted stored dtype kinds.
    expected : tuple of int or None, optional
        Required length per axis (``None``: any).
    finite : bool
        Reject NaN and infinity (after conversion, so overflow to inf is caught too).

    Returns
    -------
    numpy.ndarray
        The data, ``dtype``, shape checked.
    """
    ds = require_dataset(f, key, path)
    _check_dtype(ds, kind, path, key)
    check_shape(ds.shape, ndim, path, key, expected)
    target = np.dtype(dtype)
    problem = _memory_problem(ds, target)
    if problem:
        raise data_error(path, problem, key)
    if target.kind == "b":
        data = np.asarray(ds[()]) != 0
    else:
        data = np.asarray(ds.astype(target)[()])
    if finite and data.dtype.kind in "fc" and not np.isfinite(data).all():
        raise data_error(path, "contains NaN or infinite values", key)
    return data


def _as_scalar(value: Any, path: PathLike, key: str) -> float:
    """Turn a stored value of shape () or (1,) into a finite float, else DataError."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf" or arr.size != 1 or arr.ndim > 1:
        raise data_error(path, f"expected a real scalar, got {arr.dtype} shape {arr.shape}", key)
    number = float(arr.reshape(()))
    if not np.isfinite(number):
        raise data_error(path, f"not finite ({number})", key)
    return number


def _check_positive(value: float, positive: bool, path: PathLike, key: str) -> float:
    """DataError when ``positive`` is asked for and ``value`` is not > 0."""
    if positive and not value > 0:
        raise data_error(path, f"must be positive, got {value:g}", key)
    return value


def read_scalar(f: h5py.Group, key: str, path: PathLike, *, positive: bool = False) -> float:
    """Read a real, finite scalar dataset (shape () or (1,)) as float."""
    ds = require_dataset(f, key, path)
    if ds.size != 1 or len(ds.shape) > 1:
        raise data_error(path, f"expected a scalar, got shape {ds.shape}", key)
    return _check_positive(_as_scalar(ds[()], path, key), positive, path, key)


def read_scalar_attr(
    obj: h5py.HLObject, name: str, path: PathLike, *, positive: bool = False
) -> float:
    """Read a real, finite scalar attribute ``name`` of ``obj`` as float."""
    key = f"{obj.name}@{name}" if obj.name != "/" else f"@{name}"
    if name not in obj.attrs:
        raise data_error(path, "missing attribute", key)
    try:
        raw = obj.attrs[name]
    except (OSError, TypeError, ValueError) as exc:
        raise data_error(path, f"unreadable attribute: {exc}", key) from None
    return _check_positive(_as_scalar(raw, path, key), positive, path, key)


def _plain(value: Any) -> Any:
    """Attribute value as a plain Python value: bytes decoded, NumPy scalars unwrapped."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(obj: h5py.HLObject, path: PathLike) -> dict[str, Any]:
    """All attributes of ``obj`` as plain Python values (arrays stay arrays)."""
    out: dict[str, Any] = {}
    for name in sorted(obj.attrs):
        try:
            out[name] = _plain(obj.attrs[name])
        except (OSError, TypeError, ValueError) as exc:
            raise data_error(path, f"unreadable attribute: {exc}", f"@{name}") from None
    return out
