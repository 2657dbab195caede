"""Atomic, reproducible file writes.

Every file of a dataset or run directory is written through :func:`atomic_output`: the
content goes to a temporary file in the target's directory, is flushed to disk, and is
renamed onto the target only when the writer finished without an exception. A file that
exists is therefore complete (DESIGN section 4), and a failed write never clobbers an
older good file.

HDF5 files are written so that the same content gives byte-identical files: datasets and
groups are created without modification times, datasets and attributes are written in
sorted order, and chunking/compression are chosen by a fixed rule (see
:func:`storage_options`).

The matching readers are in :mod:`hpc_adept.io.h5read`.
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

__all__ = [
    "COMPRESSION_MIN_BYTES",
    "atomic_output",
    "storage_options",
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
