"""Volumes where people look at them: OME-Zarr (napari) and ImageJ hyperstack TIFF (Fiji).

Both carry the voxel size in micrometres along z, y, x (a volume is ``[nz, ny, nx]``, z the
rotation axis, DESIGN section 3):

- OME-Zarr, NGFF 0.4 (zarr format 2, what napari-ome-zarr, Fiji's MoBIE and the ``ome-zarr``
  package read): a ``multiscales`` group with axes ``z, y, x`` of type space in
  ``micrometer``, level ``0`` the full volume and coarser levels averaged by 2 on each axis
  (while every side stays >= :data:`MIN_PYRAMID_SIDE`), each with its scale transformation
  and, for coarser levels, the translation of a block mean's centre;
- TIFF with ImageJ metadata: ``axes ZYX``, ``spacing`` (z) and ``unit`` ``um``, the
  in-plane resolution as pixels per micrometre (what tifffile and Fiji read).

Outputs are written next to their final name and renamed into place at the end, so a
failure never leaves a file or store that looks complete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpc_adept.io.atomic import atomic_output

FORMATS = ("ome-zarr", "tiff")
SUFFIXES = {"ome-zarr": ".ome.zarr", "tiff": ".tif"}
#: Coarser pyramid levels are made while every side stays at least this long (voxels).
MIN_PYRAMID_SIDE = 32
NGFF_VERSION = "0.4"


def _checked_volume(volume: np.ndarray, voxel_size_um: Sequence[float]) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"export: the volume must be [nz, ny, nx], got shape {volume.shape}")
    if len(voxel_size_um) != 3 or not all(np.isfinite(v) and v > 0 for v in voxel_size_um):
        raise ValueError(f"export: voxel sizes must be 3 finite positive values (um), got "
                         f"{list(voxel_size_um)}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("export: the volume has non-finite values")
    return np.ascontiguousarray(volume, dtype=np.float32)


def pyramid(volume: np.ndarray, min_side: int = MIN_PYRAMID_SIDE) -> list[np.ndarray]:
    """``volume`` and its 2x2x2 block means, coarser and coarser, while every side of the
    next level stays >= ``min_side`` (odd trailing slices are dropped for the mean)."""
    levels = [volume]
    while min(s // 2 for s in levels[-1].shape) >= min_side:
        last = levels[-1]
        nz, ny, nx = (s // 2 for s in last.shape)
        blocks = last[: 2 * nz, : 2 * ny, : 2 * nx].reshape(nz, 2, ny, 2, nx, 2)
        levels.append(blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32))
    return levels


def ngff_multiscales(voxel_size_um: Sequence[float], n_levels: int, name: str) -> list[dict]:
    """The NGFF 0.4 ``multiscales`` attribute for ``n_levels`` levels named ``0, 1, ...``.

    Level ``l`` holds means of ``2**l`` voxels per axis, so its voxel 0 is centred
    ``(2**l - 1) / 2`` voxels of level 0 from level 0's first voxel: the translation that
    lets a viewer overlay the levels exactly.
    """
    axes = [{"name": axis, "type": "space", "unit": "micrometer"} for axis in "zyx"]
    datasets = []
    for level in range(n_levels):
        transforms = [{"type": "scale", "scale": [float(v) * 2**level for v in voxel_size_um]}]
        if level:
            transforms.append({"type": "translation",
                               "translation": [float(v) * (2**level - 1) / 2
                                               for v in voxel_size_um]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets,
             "type": "mean"}]


def write_ome_zarr(path: str | Path, volume: np.ndarray, voxel_size_um: Sequence[float],
                   name: str = "volume") -> Path:
    """Write ``volume`` ``[nz, ny, nx]`` as an OME-Zarr (NGFF 0.4) store at ``path``.

    Parameters
    ----------
    path : path
        The store (a directory, conventionally ``*.ome.zarr``); replaced if it exists.
    volume : ndarray, [nz, ny, nx]
        Stored as float32.
    voxel_size_um : (dz, dy, dx), micrometres
    name : str
        The image's name in the metadata.
    """
    import zarr

    volume = _checked_volume(volume, voxel_size_um)
    path = Path(path)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        root = zarr.open_group(str(staging), mode="w", zarr_format=2)
        levels = pyramid(volume)
        for index, level in enumerate(levels):
            chunks = tuple(min(s, 64) for s in level.shape)
            array = root.create_array(str(index), shape=level.shape, dtype="float32",
                                      chunks=chunks,
                                      chunk_key_encoding={"name": "v2", "separator": "/"})
            array[...] = level
        root.attrs["multiscales"] = ngff_multiscales(voxel_size_um, len(levels), name)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def write_imagej_tiff(path: str | Path, volume: np.ndarray,
                      voxel_size_um: Sequence[float]) -> Path:
    """Write ``volume`` ``[nz, ny, nx]`` as a float32 ImageJ hyperstack TIFF (one page per z
    slice) with its voxel size in micrometres."""
    import tifffile

    volume = _checked_volume(volume, voxel_size_um)
    dz, dy, dx = (float(v) for v in voxel_size_um)
    path = Path(path)
    with atomic_output(path) as temporary:
        tifffile.imwrite(temporary, volume, imagej=True, resolution=(1.0 / dx, 1.0 / dy),
                         metadata={"spacing": dz, "unit": "um", "axes": "ZYX"})
    return path


def export_volume(volume: np.ndarray, voxel_size_m: float, path: str | Path, fmt: str,
                  name: str = "volume") -> Path:
    """Write ``volume`` (cubic voxels of ``voxel_size_m`` metres) in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    size_um = (float(voxel_size_m) * 1e6,) * 3
    if fmt == "ome-zarr":
        return write_ome_zarr(path, volume, size_um, name=name)
    return write_imagej_tiff(path, volume, size_um)


def run_volumes(run_dir: str | Path) -> dict[str, Path]:
    """The reconstructed volumes of a run directory: method -> ``volume_<method>.h5``."""
    run_dir = Path(run_dir)
    return {path.stem.removeprefix("volume_"): path
            for path in sorted(run_dir.glob("volume_*.h5"))}


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path | None = None) -> list[Path]:
    """Export every ``volume_<method>.h5`` of ``run_dir`` to ``out_dir`` (default
    ``run_dir/export``) as ``volume_<method>.ome.zarr`` or ``.tif``.

    Raises
    ------
    DataError
        No volume in ``run_dir``, or a volume file that is missing, corrupt or non-finite.
    """
    from hpc_adept.errors import DataError
    from hpc_adept.io.runfiles import read_volume

    if fmt not in FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    volumes = run_volumes(run_dir)
    if not volumes:
        raise DataError(f"{run_dir}: no volume_*.h5 to export (run adept recon first)")
    target = Path(out_dir) if out_dir is not None else Path(run_dir) / "export"
    written = []
    for method, path in volumes.items():
        volume, attrs = read_volume(path)
        out = target / f"volume_{method}{SUFFIXES[fmt]}"
        written.append(export_volume(volume, attrs["voxel_size_m"], out, fmt, name=method))
    return written
