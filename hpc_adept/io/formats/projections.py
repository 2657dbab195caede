"""Projections reconstructed elsewhere -> :class:`~hpc_adept.io.runfiles.ProjectionSet`.

Sources: PtychoShelves ``*_recons.h5``, fold_slice ``Niter*.mat`` (-v7.3), ptychodus
product files (one file per rotation angle each), and a TIFF stack of phase projections
with a text angle file. Complex objects become phase projections
(:func:`hpc_adept.io.formats.phase.object_phase`: unwrap, offset and linear ramp removed),
cropped to the region the probe centres swept where the file says where that is, then
centre-cropped to the smallest common shape. Pixel sizes must agree between files (1e-3)
and be square; rotation angles come from the files or from the caller (``angles_deg``, in
the reader's convention: PtychoShelves for the PtychoShelves family and ptychodus, ours
for TIFF) and are converted to ours (:mod:`hpc_adept.io.formats.geometry`). A TIFF stack's
centres are moved onto ours where its convention centres them elsewhere (tike, tomocupy:
the stack is what their laminography codes take); per-angle ptychographic objects have no
such centre and are not moved.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hpc_adept.io.formats._read import data_error
from hpc_adept.io.formats._values import laminography_deg
from hpc_adept.io.formats.foldslice_niter import read_niter_object
from hpc_adept.io.formats.geometry import centre_shifts, to_adept_angles
from hpc_adept.io.formats.phase import object_phase
from hpc_adept.io.formats.ptychodus import read_product_object
from hpc_adept.io.formats.ptychoshelves_recons import read_recons_object
from hpc_adept.io.runfiles import ProjectionSet

__all__ = [
    "OBJECT_READERS",
    "read_angle_file",
    "read_object_projections",
    "read_tiff_stack",
]

PathLike = str | os.PathLike

# format name -> (object reader, default angle convention)
OBJECT_READERS: dict[str, tuple[Callable[[PathLike], dict], str]] = {
    "ptychoshelves-recons": (read_recons_object, "ptychoshelves"),
    "foldslice-niter": (read_niter_object, "ptychoshelves"),
    "ptychodus-product": (read_product_object, "ptychoshelves"),
}


def read_angle_file(path: PathLike, expected: int | None = None) -> np.ndarray:
    """Angles from a text file: one number per line (a trailing comma allowed), or all of
    them on one line (a MATLAB row vector written by ``writematrix``); blank lines and
    ``#`` comments skipped; a UTF-8 byte-order mark (Excel, Notepad) ignored.

    Returns
    -------
    numpy.ndarray, float64, [n]

    Raises
    ------
    DataError
        Missing file, a line that is no finite number or holds more than one column, or not
        ``expected`` angles.
    """
    p = Path(path)
    if not p.is_file():
        raise data_error(p, "angle file not found")
    rows = [(number, [f for f in re.split(r"[\s,;]+", text) if f])
            for number, line in enumerate(
                p.read_text(encoding="utf-8-sig", errors="replace").splitlines(), start=1)
            if (text := line.split("#", 1)[0].strip())]
    if len(rows) == 1 and len(rows[0][1]) > 1 and expected in (None, len(rows[0][1])):
        rows = [(rows[0][0], [field]) for field in rows[0][1]]  # one row of all the angles
    angles = []
    for number, fields in rows:
        if len(fields) != 1:
            # e.g. "index angle" tables: taking a column silently could pair the wrong one
            raise data_error(p, f"line {number}: {len(fields)} columns, expected one angle "
                                f"per line")
        try:
            value = float(fields[0])
        except ValueError:
            raise data_error(p, f"line {number}: {fields[0][:40]!r} is not a number (a "
                                f"header line must start with #)") from None
        if not math.isfinite(value):
            raise data_error(p, f"line {number}: angle is not finite")
        angles.append(value)
    if not angles:
        raise data_error(p, "no angles in the file")
    if expected is not None and len(angles) != expected:
        raise data_error(p, f"{len(angles)} angles for {expected} projections")
    return np.asarray(angles, dtype=np.float64)


def _center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    r0 = (image.shape[0] - shape[0]) // 2
    c0 = (image.shape[1] - shape[1]) // 2
    return image[r0:r0 + shape[0], c0:c0 + shape[1]]


def _common_pixel(records: list[dict], paths: list[Path]) -> float:
    """The one square pixel size of all records, metres."""
    first = records[0]["pixel_m"]
    for record, path in zip(records, paths, strict=True):
        dy, dx = record["pixel_m"]
        if not math.isclose(dy, dx, rel_tol=1e-3):
            raise data_error(path, f"non-square object pixels {dy:g} x {dx:g} m")
        if not math.isclose(dx, first[1], rel_tol=1e-3):
            raise data_error(path, f"pixel size {dx:g} m differs from {first[1]:g} m in "
                                   f"{paths[0].name}")
    return float(first[1])


def _angles(records: list[dict], paths: list[Path], angles_deg, convention: str) -> np.ndarray:
    """Rotation angles in our convention, from the caller or the files."""
    if angles_deg is not None:
        values = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
        if values.size != len(paths) or not np.isfinite(values).all():
            raise data_error(paths[0].parent, f"{values.size} supplied angles for "
                                              f"{len(paths)} files (or not finite)")
    else:
        missing = [p for r, p in zip(records, paths, strict=True) if r["angle_deg"] is None]
        if missing:
            raise data_error(missing[0], "no rotation angle in the file; supply "
                                         "data.rotation_angles_deg (one per file) or "
                                         "data.angles_path")
        values = np.array([r["angle_deg"] for r in records], dtype=np.float64)
    return to_adept_angles(values, convention)


def _phases(records: list[dict], phase_sign: float) -> list[np.ndarray]:
    out = []
    for record in records:
        obj = record["object"]
        roi = record.get("roi")
        if roi is not None:
            obj = obj[roi]
        out.append(object_phase(obj, phase_sign))
    return out


def _probes(records: list[dict]) -> np.ndarray | None:
    probes = [r.get("probe") for r in records]
    if any(p is None for p in probes) or len({p.shape for p in probes}) != 1:
        return None
    return np.stack(probes)


def _recentred(stack: np.ndarray, angles: np.ndarray, tilt: float, convention: str
               ) -> np.ndarray:
    """A projection stack moved from the convention's centres onto ours.

    Parameters
    ----------
    stack : numpy.ndarray, float32, [n, nv, nu]
        Projections in file order (radians).
    angles : numpy.ndarray, float64, [n]
        Our rotation angles (degrees), in the same order.
    tilt : float
        Our laminography angle L (degrees).
    convention : str
        The stack's convention (:func:`~hpc_adept.io.formats.geometry.centre_shifts`).

    Returns
    -------
    numpy.ndarray, float32, [n, nv, nu]
        Fourier-shifted (edges replicated); ``stack`` itself where the centres agree.
    """
    import torch

    from hpc_adept.align import shift_images

    shifts = centre_shifts(angles, tilt, stack.shape[1:], convention)
    if not shifts.any():
        return stack
    with torch.no_grad():
        moved = shift_images(torch.from_numpy(stack.astype(np.float64)),
                             torch.from_numpy(shifts), pad=2)
    return moved.numpy().astype(np.float32)


def _assemble(phases: list[np.ndarray], angles: np.ndarray, tilt: float, pixel: float,
              probes: np.ndarray | None, where: Path) -> ProjectionSet:
    """Crop to the common shape, sort by angle, check distinct angles."""
    shape = (min(p.shape[0] for p in phases), min(p.shape[1] for p in phases))
    stack = np.stack([_center_crop(p, shape) for p in phases])
    order = np.argsort(angles, kind="stable")
    sorted_angles = angles[order]
    if np.any(np.diff(sorted_angles) <= 1e-6):
        raise data_error(where, "two projections share a rotation angle")
    return ProjectionSet(stack[order], sorted_angles, tilt, pixel,
                         probes=None if probes is None else probes[order])


def read_object_projections(paths: Sequence[PathLike], fmt: str, *,
                            laminography_angle_deg: float,
                            angles_deg: Sequence[float] | None = None,
                            angle_convention: str | None = None,
                            phase_sign: float = 1.0) -> ProjectionSet:
    """Phase projections from per-angle reconstruction files of one format.

    Parameters
    ----------
    paths : sequence of path
        One file per rotation angle.
    fmt : {"ptychoshelves-recons", "foldslice-niter", "ptychodus-product"}
    laminography_angle_deg : float
        L in ``angle_convention`` (PtychoShelves' ``lamino_angle`` equals our L).
    angles_deg : sequence of float, optional
        One rotation angle per file (wins over angles in the files).
    angle_convention : str, optional
        Default: the format's (PtychoShelves for all three).
    phase_sign : float
        -1 flips PtychoShelves' negative phase of matter to our positive convention.
    """
    if fmt not in OBJECT_READERS:
        raise ValueError(f"unknown projection format {fmt!r}; known: {sorted(OBJECT_READERS)}")
    reader, default_convention = OBJECT_READERS[fmt]
    convention = angle_convention or default_convention
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("no files given")
    records = [reader(p) for p in files]
    pixel = _common_pixel(records, files)
    angles = _angles(records, files, angles_deg, convention)
    tilt = laminography_deg(files[0], laminography_angle_deg, convention)
    return _assemble(_phases(records, phase_sign), angles, tilt, pixel, _probes(records),
                     files[0].parent)


def _natural_key(path: Path) -> list:
    """Sort key of a file name with its digit runs compared as numbers: ``proj_2.tif``
    before ``proj_10.tif`` (names numbered without zero padding), as in page order."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", path.name) if part]


def _tiff_images(path: Path) -> np.ndarray:
    """The images of one TIFF file: its one series, or, when it holds several series of
    one image shape (pages appended one ``tifffile.imwrite(..., append=True)`` at a time,
    each its own series), all of them in file order; DataError when the series differ."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series
        if len(series) <= 1:
            return np.asarray(tif.asarray())
        shapes = {tuple(s.shape[-2:]) for s in series}
        if len(shapes) != 1 or any(len(s.shape) not in (2, 3) for s in series):
            raise data_error(path, f"holds {len(series)} image series of different shapes "
                                   f"({', '.join(str(tuple(s.shape)) for s in series[:4])})")
        arrays = [np.asarray(s.asarray()) for s in series]
        return np.concatenate([a[None] if a.ndim == 2 else a for a in arrays])


def read_tiff_stack(path: PathLike, angles_path: PathLike, *, laminography_angle_deg: float,
                    pixel_size_m: float, angle_convention: str = "adept") -> ProjectionSet:
    """A TIFF stack ``[n, nv, nu]`` of phase projections (radians) with a text angle file.

    Parameters
    ----------
    path : path
        A multi-page TIFF, or a folder of single-page ``*.tif``/``*.tiff`` (sorted by name,
        numbers in names by value: ``p2.tif`` before ``p10.tif``).
    angles_path : path
        One rotation angle per line, in ``angle_convention`` (default ours).
    laminography_angle_deg, pixel_size_m : float
        L and the projection pixel size (metres), supplied.
    angle_convention : str
        The code the stack was made for: its angles and, for tike and tomocupy, its
        centres (:func:`~hpc_adept.io.formats.geometry.centre_shifts`: the stack is moved
        onto ours; tike's sizes must be even).
    """
    import tifffile

    p = Path(path)
    files = (sorted([f for f in p.iterdir() if f.suffix.lower() in (".tif", ".tiff")],
                    key=_natural_key) if p.is_dir() else [p])
    if not files or not files[0].is_file():
        raise data_error(p, "no TIFF file found")
    pages = []
    for f in files:
        try:
            pages.append(_tiff_images(f))
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise data_error(f, f"not a readable TIFF: {exc}") from None
    if p.is_dir():  # one image a file, written as [1, nv, nu] (tifffile records that shape)
        pages = [page.reshape(page.shape[-2:]) if page.ndim > 2
                 and all(n == 1 for n in page.shape[:-2]) else page for page in pages]
    for f, page in zip(files, pages, strict=True):
        if page.shape != pages[0].shape:
            raise data_error(f, f"page shape {page.shape} differs from {files[0].name}'s "
                                f"{pages[0].shape}")
    stack = pages[0] if len(pages) == 1 else np.stack(pages)
    if stack.ndim != 3 or 0 in stack.shape or stack.dtype.kind not in "biuf":
        raise data_error(p, f"expected a real [n, nv, nu] stack, got {stack.dtype} "
                            f"{stack.shape}")
    stack = stack.astype(np.float32)
    if not np.isfinite(stack).all():
        raise data_error(p, "contains NaN or infinite values")
    if not (math.isfinite(pixel_size_m) and 1e-11 <= pixel_size_m <= 1e-5):
        raise data_error(p, f"pixel_size_m={pixel_size_m:g} is implausible (metres?)")
    angles = to_adept_angles(read_angle_file(angles_path, expected=stack.shape[0]),
                             angle_convention)
    tilt = laminography_deg(p, laminography_angle_deg, angle_convention)
    try:
        stack = _recentred(stack, angles, tilt, angle_convention)
    except ValueError as exc:
        raise data_error(p, str(exc)) from None
    return _assemble(list(stack), angles, tilt, float(pixel_size_m), None, p)
