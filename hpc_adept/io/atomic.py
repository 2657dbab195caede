"""Atomic, reproducible file writes and defensive HDF5 reads.

Every file of a dataset or run directory is written through :func:`atomic_output`: the
content goes to a temporary file in the target's directory, is flushed to disk, and is
renamed onto the target only when the writer finished without an exception. A file that
exists is therefore complete (DESIGN section 4), and a failed write never clobbers an
older good file.

HDF5 files are written so that the same content gives byte-identical files: datasets and
groups are created without modification times, datasets and attributes are written in
sorted order, and chunking/compression are chosen by a fixed rule (see
:func:`storage_options`).

The read helpers (:func:`open_h5`, :func:`require_dataset`, :func:`read_array`, ...) are
shared by :mod:`hpc_adept.io.cxi` and :mod:`hpc_adept.io.runfiles`: they treat every file
as untrusted and turn every problem into a one-line :class:`~hpc_adept.errors.DataError`
naming the file and the dataset.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpc_adept.errors import DataError

__all__ = [
    "COMPRESSION_MIN_BYTES",
    "atomic_output",
    "check_shape",
    "data_error",
    "open_h5",
    "read_array",
    "read_attrs",
    "read_scalar",
    "read_scalar_attr",
    "require_dataset",
    "storage_options",
    "tilt_problem",
    "write_h5_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

PathLike = str | os.PathLike

# Arrays smaller than this are stored contiguous and uncompressed: for headers, angles,
# probes and shifts, compression saves nothing worth the chunk index and filter overhead.
COMPRESSION_MIN_BYTES = 1 << 20

# gzip level 1 (with the byte shuffle filter) is deterministic for a given zlib and
# nearly as small as level 9 on detector counts (mostly zeros away from the centre)
# at several times the speed; higher levels cost write time for a few percent.
GZIP_LEVEL = 1


# --------------------------------------------------------------------------- writing


def _temporary_path(path: Path) -> Path:
    """Temporary sibling of ``path``: hidden, per-process, in the same directory.

    The same directory matters: :func:`os.replace` is atomic only within one file system.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_file(path: Path) -> None:
    """Flush the file's data to disk so the rename never exposes an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; best effort because not every file system allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; move it onto ``path`` only on success.

    Parameters
    ----------
    path : str or os.PathLike
        The final file. Its parent directory is created when missing.

    Yields
    ------
    pathlib.Path
        ``<dir>/.<name>.<pid>.tmp``. The caller writes the complete file there and
        closes it before the ``with`` block ends.

    Notes
    -----
    On a normal exit the temporary is fsynced and renamed over ``path`` with
    :func:`os.replace`. On any exception (KeyboardInterrupt included) the temporary is
    removed, ``path`` is left as it was, and the exception propagates.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_path(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{target}: the writer did not create {tmp.name}")
        _fsync_file(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:  # name the file (disk full)
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    """Convert the NumPy and pathlib values that the stdlib encoder refuses."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys in insertion order) to ``path`` atomically.

    NumPy scalars and arrays and paths are converted to plain JSON values.
    """
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    write_text_atomic(path, text)


def storage_options(array: np.ndarray) -> dict[str, Any]:
    """HDF5 dataset creation options for ``array``: a fixed rule, so files are reproducible.

    Arrays of at least :data:`COMPRESSION_MIN_BYTES` with two or more dimensions are stored
    in chunks of one leading-axis slice (one diffraction frame, one projection, one
    volume slice: the unit that readers take) with shuffle + gzip level 1. Everything
    else is stored contiguous and uncompressed.

    Parameters
    ----------
    array : numpy.ndarray
        The data to store.

    Returns
    -------
    dict
        Keyword arguments for :meth:`h5py.Group.create_dataset`.
    """
    if array.ndim < 2 or array.nbytes < COMPRESSION_MIN_BYTES or array.size == 0:
        return {}
    return {
        "chunks": (1, *array.shape[1:]),
        "compression": "gzip",
        "compression_opts": GZIP_LEVEL,
        "shuffle": True,
    }


def _split_h5_path(name: str) -> tuple[list[str], str]:
    """Split "/a/b/c" into (["a", "b"], "c"); reject empty components."""
    parts = name.strip("/").split("/")
    if not name.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid HDF5 path {name!r}")
    return parts[:-1], parts[-1]


def _ensure_group(root: h5py.File, parents: list[str]) -> h5py.Group:
    """Create (without timestamps) or open the group chain ``parents`` under ``root``."""
    group: h5py.Group = root
    for part in parents:
        if part in group:
            group = group[part]
            continue
        gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
        # Why: a modification time in a group header would make every write unique.
        gcpl.set_obj_track_times(False)
        gid = h5py.h5g.create(group.id, part.encode(), gcpl=gcpl)
        group = h5py.Group(gid)
    return group


def _attr_value(key: str, value: Any) -> Any:
    """Check an attribute value is storable: a string, number, bool or numeric array."""
    if isinstance(value, str | bytes | bool | int | float | np.generic):
        return value
    if isinstance(value, list | tuple | np.ndarray):
        arr = np.asarray(value)
        if arr.dtype.kind in "biufcSU":
            return arr
    raise TypeError(f"attribute {key!r}: cannot store a value of type {type(value).__name__}")


def _write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Write ``attrs`` in sorted order (so the file layout does not depend on dict order)."""
    for key in sorted(attrs):
        obj.attrs[key] = _attr_value(key, attrs[key])


def write_h5_atomic(
    path: PathLike,
    datasets: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    dataset_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    soft_links: Mapping[str, str] | None = None,
) -> None:
    """Write an HDF5 file atomically and reproducibly.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; replaced only when the whole file was written.
    datasets : mapping of str to numpy.ndarray
        HDF5 path (e.g. ``"/entry_1/data_1/data"``; intermediate groups are created) to
        array (any shape, scalars included). Stored with the array's dtype.
    attrs : mapping, optional
        Attributes of the root group: str, numbers, bools or numeric arrays.
    dataset_attrs : mapping of str to mapping, optional
        Attributes per dataset, keyed like ``datasets``.
    soft_links : mapping of str to str, optional
        Link path to target path (e.g. the CXI detector data pointing at the data group).

    Notes
    -----
    Datasets are written in sorted order without timestamps, so the same content gives a
    byte-identical file. Chunking and compression follow :func:`storage_options`.
    """
    dataset_attrs = dataset_attrs or {}
    unknown = set(dataset_attrs) - set(datasets)
    if unknown:
        raise ValueError(f"dataset_attrs for datasets not written: {sorted(unknown)}")
    # The file is built in memory and written with plain file I/O: HDF5's own writes that
    # fail (disk full, quota) leave a half-closed file in the library whose cleanup at exit
    # crashed the interpreter (segmentation fault); a failing os-level write is an OSError.
    # The image holds the compressed data, so it costs at most the input's size once more.
    image = io.BytesIO()
    with h5py.File(image, "w", libver="earliest") as f:
        for name in sorted(datasets):
            parents, leaf = _split_h5_path(name)
            group = _ensure_group(f, parents)
            data = np.asarray(datasets[name])
            ds = group.create_dataset(leaf, data=data, track_times=False, **storage_options(data))
            _write_attrs(ds, dataset_attrs.get(name, {}))
        for link in sorted(soft_links or {}):
            parents, leaf = _split_h5_path(link)
            _ensure_group(f, parents)[leaf] = h5py.SoftLink(soft_links[link])
        _write_attrs(f, attrs or {})
    with atomic_output(path) as tmp, open(tmp, "wb") as out:
        out.write(image.getbuffer())


# --------------------------------------------------------------------------- reading


# Laminography angles a reconstruction can use: 90 deg is tomography, 0 would put the
# rotation axis along the beam (no depth information at all).
TILT_RANGE_DEG = (0.0, 90.0)


def tilt_problem(tilt_deg: float) -> str | None:
    """Why ``tilt_deg`` is no usable laminography angle, or None."""
    low, high = TILT_RANGE_DEG
    if not low < tilt_deg <= high:
        return f"laminography angle must be in ({low:g}, {high:g}] deg, got {tilt_deg:g}"
    return None


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
    return obj


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
