"""Which format a path holds, reading it as scans or projections, and ``inspect``.

:func:`detect_format` decides from file names and HDF5 keys only, and refuses to guess:
a path matching several formats (or none) is a DataError listing the candidates.
:func:`read_scans` returns :class:`~hpc_adept.io.cxi.Scan` objects ordered by rotation
angle; :func:`read_projection_set` a :class:`~hpc_adept.io.runfiles.ProjectionSet`;
:func:`inspect` summarises what either would read, without reconstructing anything.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.errors import DataError
from hpc_adept.io.cxi import Scan, list_dataset, read_cxi
from hpc_adept.io.formats import (
    cxi_foreign,
    foldslice_prepared,
    lamni,
    lamni_tomo,
    ptychodus,
    ptychoshelves_prepared,
    velociprobe,
)
from hpc_adept.io.formats._read import data_error, mat_v73_problem, open_h5
from hpc_adept.io.formats._values import Supplied, supplied_from
from hpc_adept.io.formats.geometry import centre_shifts
from hpc_adept.io.formats.projections import (
    read_angle_file,
    read_object_projections,
    read_tiff_stack,
)
from hpc_adept.io.formats.spec_positions import DEFAULT_MOTORS
from hpc_adept.io.runfiles import ProjectionSet

__all__ = ["FORMATS", "detect_format", "inspect", "read_projection_set", "read_scans"]

PathLike = str | os.PathLike
log = logging.getLogger(__name__)

SCAN_FORMATS = ("adept-cxi", "cxi", "foldslice-prepared", "ptychodus-diffraction",
                "lamni-eiger", "lamni-tomo", "ptychoshelves-prepared", "velociprobe")
PROJECTION_FORMATS = ("ptychoshelves-recons", "foldslice-niter", "ptychodus-product",
                      "tiff-stack")
FORMATS = SCAN_FORMATS + PROJECTION_FORMATS
_OUR_KEYS = ("/entry_1/sample_1/geometry_1/rotation_angle_deg",
             "/entry_1/sample_1/geometry_1/laminography_angle_deg")
_NITER = re.compile(r"^Niter(\d+)\.mat$")


# --------------------------------------------------------------------------- detection


def _h5_kind(f: h5py.File) -> str | None:
    """Format of an open HDF5 file from its keys, or None."""
    if f.get("/reconstruction/object") is not None:
        return "ptychoshelves-recons"
    if ptychodus.is_product(f):
        return "ptychodus-product"
    if f.get("/object") is not None and f.get("/p") is not None:
        return "foldslice-niter"
    if any(f.get(k) is not None for k in cxi_foreign.DATA):
        return "adept-cxi" if all(f.get(k) is not None for k in _OUR_KEYS) else "cxi"
    if velociprobe.is_master(f):
        return "velociprobe"
    if f.get("/measurement/n0/data") is not None:
        return "ptychoshelves-prepared"
    if any(f.get(k) is not None for k in lamni.EIGER_DATA):
        return "lamni-eiger"
    if f.get(ptychodus.DP_KEY) is not None or f.get(ptychodus.PATTERNS) is not None:
        return "ptychodus-diffraction"
    return None


def _file_kind(p: Path) -> str | None:
    """Format of one file, or None when it is none of ours."""
    name = p.name.lower()
    if name.endswith((".tif", ".tiff")):
        return "tiff-stack"
    if foldslice_prepared.DP_PATTERN.match(p.name):
        return "foldslice-prepared"
    if ptychoshelves_prepared.NAME_PATTERN.match(p.name):
        return "ptychoshelves-prepared"
    if name.endswith(".mat"):
        problem = mat_v73_problem(p)
        if problem:
            raise data_error(p, problem)
        return "foldslice-niter"
    if not h5py.is_hdf5(p):
        return None
    with open_h5(p) as f:
        return _h5_kind(f)


def _directory_files(d: Path) -> list[Path]:
    """Candidate files of a folder and of its direct sub-folders (one scan per folder)."""
    files = [c for c in sorted(d.iterdir()) if c.is_file()]
    files += [c for c in sorted(d.glob("*/*")) if c.is_file()]
    return files


def _deep_kinds(d: Path) -> set[str]:
    """Formats whose files a program leaves deeper than one folder below the data set's
    base, found by name: fold_slice's ``Niter<N>.mat`` (``ptycho/ptycho_recon.m`` lines
    575-580: ``<base>/<scan>/roi<label>/<prefix>/<engine folder>/``) and PtychoShelves'
    ``*_recons.h5`` (the readers of both search folders recursively)."""
    kinds = set()
    for f in d.rglob("*"):  # one walk of the tree
        if _NITER.match(f.name) and f.is_file():
            kinds.add("foldslice-niter")
        elif f.name.endswith("_recons.h5") and f.is_file():
            kinds.add("ptychoshelves-recons")
    return kinds


def _folder_kinds(d: Path) -> set[str]:
    """Formats of the files of folder ``d`` and of its direct sub-folders (else of the
    deeper result files :func:`_deep_kinds` finds), companion files left out."""
    kinds = set()
    for candidate in _directory_files(d):
        try:
            kind = _file_kind(candidate)
        except DataError:
            continue
        if kind is not None and not (kind == "ptychodus-diffraction"
                                     and candidate.name.endswith("_para.hdf5")):
            kinds.add(kind)
    if "foldslice-prepared" in kinds:
        kinds.discard("ptychodus-diffraction")  # the _para files' siblings
    if "ptychodus-diffraction" in kinds:
        kinds.discard("ptychodus-product")  # the diffraction files' positions
    return kinds or _deep_kinds(d)


def detect_format(path: PathLike, default: str | None = None) -> str:
    """The format of ``path`` (a file or a folder), one of :data:`FORMATS`.

    ``default`` is the answer for a folder holding no file of a known format (the reader
    of that format then names what is wrong there); None makes that an error.

    Raises
    ------
    DataError
        When ``path`` is missing, matches no known format, or matches several (the line
        lists them; choose one with ``data.format``).
    """
    p = Path(path)
    if not p.exists():
        raise data_error(p, "not found")
    if p.is_file():
        kind = _file_kind(p)
        if kind is None:
            raise data_error(p, f"unknown format; known: {', '.join(FORMATS)}")
        return kind
    if lamni_tomo.is_tomo_folder(p):  # the beamline's own layout: angle table in dat-files/
        return "lamni-tomo"
    kinds = _folder_kinds(p)
    if len(kinds) == 1:
        return kinds.pop()
    if not kinds and default is not None:
        return default
    if not kinds:
        raise data_error(p, f"no file of a known format; known: {', '.join(FORMATS)}")
    raise data_error(p, f"ambiguous: holds {', '.join(sorted(kinds))}; set data.format to "
                        f"one of them")


# --------------------------------------------------------------------------- scans


def _sorted(scans: list[Scan], where: Path) -> list[Scan]:
    scans.sort(key=lambda s: (s.rotation_angle_deg, s.path or ""))
    for a, b in zip(scans, scans[1:], strict=False):
        if b.rotation_angle_deg - a.rotation_angle_deg <= 1e-6:
            raise data_error(where, f"{Path(a.path).name} and {Path(b.path).name} have the "
                                    f"same rotation angle {a.rotation_angle_deg:g} deg")
    return scans


def _per_scan(supplied: Supplied, angles: Sequence[float] | None, index: int,
              count: int, where: Path) -> Supplied:
    """``supplied`` with the rotation angle of scan ``index`` of ``count``."""
    if angles is None:
        return supplied
    if len(angles) != count:
        raise data_error(where, f"{len(angles)} rotation angles supplied for {count} scans")
    values = dict(supplied.__dict__, rotation_angle_deg=float(angles[index]))
    return Supplied(**values)


def _product_for(diffraction: Path) -> Path:
    """The ptychodus product file beside a diffraction file: ``*diffraction*`` ->
    ``*product*``, or ptychodus's standard batch layout (``api/io.py``
    ``StandardFileLayout``: ``diffraction.h5`` with ``product-in.h5``, the positions the
    reconstruction started from, then ``product-out.h5``)."""
    found = (_companion(diffraction, ("product", "product-in", "product-out"))
             or _companion(diffraction, ("para",), token="dp"))  # pty-chi's test data
    if found is not None:
        return found
    products = sorted(c for c in diffraction.parent.iterdir()
                      if c.suffix in (".h5", ".hdf5") and _file_kind(c) == "ptychodus-product")
    others = [c for c in diffraction.parent.iterdir() if c != diffraction and c.suffix in
              (".h5", ".hdf5") and _file_kind(c) == "ptychodus-diffraction"]
    if len(products) == 1 and not others:  # one scan and one product beside each other
        return products[0]
    names = ", ".join(c.name for c in products[:4])
    raise data_error(diffraction, "no positions: set data.positions_path (the ptychodus "
                                  "product file)" + (f"; candidates: {names}" if names else
                                                     "; none named like *product* beside it"))


def _companion(diffraction: Path, names: Sequence[str], token: str = "diffraction"
               ) -> Path | None:
    """The first existing file beside ``diffraction`` named with ``token`` replaced by one
    of ``names``, or None."""
    for name in names:
        guess = diffraction.with_name(diffraction.name.replace(token, name))
        if guess != diffraction and guess.is_file():
            return guess
    return None


def _scan_files(p: Path, fmt: str, roi_label: str | None = None) -> list[Path]:
    """The frame files of a ``fmt`` data set (DataError when there is none)."""
    files = _candidate_files(p, fmt, roi_label)
    if not files:
        raise data_error(p, f"no {fmt} files found")
    return files


def _candidate_files(p: Path, fmt: str, roi_label: str | None) -> list[Path]:
    if fmt == "foldslice-prepared":
        return [dp for dp, _ in foldslice_prepared.find_pairs(p, roi_label)]
    if fmt == "ptychoshelves-prepared":
        return ptychoshelves_prepared.find_files(p)
    if p.is_file():
        return [p]
    if fmt == "cxi":
        # ptychodus writes split diffraction.cxi / product.cxi files (plugins/cxi_file.py
        # CXIDiffractionFileWriter, CXIProductFileIO): a product holds no frames
        files = [c for c in sorted(p.glob("*.cxi")) if _file_kind(c) == "cxi"]
        return files or [c for c in sorted(p.glob("*/*.cxi")) if _file_kind(c) == "cxi"]
    if fmt == "adept-cxi":
        return sorted(p.glob("*.cxi"))
    if fmt == "lamni-eiger":
        raise data_error(p, "give one raw Eiger file (with its positions_path) at a time, or "
                            "the experiment folder as data.format lamni-tomo")
    if fmt == "velociprobe":
        raise data_error(p, "give one Velociprobe master file (with its positions_path)")
    # ptychodus's batch layout: one folder per scan, each with its diffraction.h5; pty-chi's
    # test data: ptychodus_dp.hdf5 + ptychodus_para.hdf5
    for pattern in ("*", "*/*"):
        files = sorted(c for c in [*p.glob(f"{pattern}.h5"), *p.glob(f"{pattern}.hdf5")]
                       if _file_kind(c) == "ptychodus-diffraction")
        if files:
            return files
    return []


def _read_one(fmt: str, path: Path, positions_path: Path | None, s: Supplied,
              load: bool, convention: str | None, options: dict) -> Scan:
    kw = {"supplied": s, "load_counts": load}
    if convention is not None:
        kw["angle_convention"] = convention
    if fmt == "foldslice-prepared":
        return foldslice_prepared.read_foldslice_scan(
            path, orientation=options["foldslice_orientation"], **kw)
    if fmt == "lamni-eiger":
        if positions_path is None or options.get("roi_px") is None:
            raise data_error(path, "a raw Eiger scan needs data.positions_path (the "
                                   "Orchestra .dat or spec file) and data.roi_px (the square crop)")
        return lamni.read_eiger_scan(path, positions_path, roi_px=options["roi_px"],
                                     beam_center_rc=options.get("beam_center_rc"),
                                     angle_table_path=options.get("angle_table_path"),
                                     spec_motors=options["spec_motors"],
                                     burst_frames=options["burst_frames"], **kw)
    if fmt == "velociprobe":
        if positions_path is None or options.get("roi_px") is None:
            raise data_error(path, "a Velociprobe scan needs data.positions_path (the position "
                                   "CSV) and data.roi_px (the square crop)")
        return velociprobe.read_velociprobe_scan(
            path, positions_path, roi_px=options["roi_px"],
            beam_center_rc=options.get("beam_center_rc"),
            burst_frames=options["burst_frames"], **kw)
    if fmt == "ptychoshelves-prepared":
        return ptychoshelves_prepared.read_prepared_scan(
            path, angle_table_path=options.get("angle_table_path"), **kw)
    if fmt == "ptychodus-diffraction":
        return ptychodus.read_ptychodus_scan(path, positions_path or _product_for(path), **kw)
    return cxi_foreign.read_foreign_cxi(path, positions_path or _cxi_product_for(path),
                                        translation=options["cxi_translation"], **kw)


def _cxi_product_for(diffraction: Path) -> Path | None:
    """ptychodus's ``product.cxi`` beside its ``diffraction.cxi`` (``*diffraction*`` ->
    ``*product*``), or None: the positions are then the file's own."""
    return _companion(diffraction, ("product",))


def _read_own(p: Path, load_counts: bool) -> list[Scan]:
    """Our own CXI data set (a folder) or file."""
    if p.is_dir():
        scans = list_dataset(p)
        return scans if not load_counts else [read_cxi(sc.path) for sc in scans]
    return [read_cxi(p, load_counts=load_counts)]


#: The reader options a lamni-tomo folder takes.
_TOMO_OPTIONS = ("roi_px", "beam_center_rc", "angle_table_path", "burst_frames")


def read_scans(path: PathLike, fmt: str | None = None, *,
               positions_path: PathLike | None = None,
               rotation_angles_deg: Sequence[float] | None = None,
               load_counts: bool = True, angle_convention: str | None = None,
               foldslice_orientation: tuple[int, int, int] = (1, 0, 0),
               roi_label: str | None = None,
               cxi_translation: str = "auto", spec_motors: tuple[str, str] = DEFAULT_MOTORS,
               roi_px: int | None = None,
               beam_center_rc: tuple[float, float] | None = None,
               angle_table_path: PathLike | None = None,
               scan_range: tuple[int, int] | None = None, scan_step: int = 1,
               burst_frames: int = 1, member: PathLike | None = None,
               **supplied: float | None) -> list[Scan]:
    """Diffraction scans of ``path`` in any supported layout, ordered by rotation angle.

    Parameters
    ----------
    path : path
        A file or folder (see :func:`detect_format`).
    fmt : str, optional
        One of ``adept-cxi``, ``cxi``, ``foldslice-prepared``, ``ptychodus-diffraction``;
        detected when None.
    positions_path : path, optional
        The positions' file where the frames' file has none (single-file reads).
    rotation_angles_deg : sequence of float, optional
        One rotation angle per scan, in the files' order (name order).
    load_counts : bool
        False reads headers only (``Scan.counts`` is None).
    angle_convention : str, optional
        Convention of the files' and supplied angles; default per format.
    foldslice_orientation, roi_label : (int, int, int), str or None
        fold_slice's ``det.orientation`` (transpose, fliplr, flipud): ``(1, 0, 0)`` Eiger;
        the ``<label>`` of ``data_roi<label>_dp.hdf5`` where a folder holds several.
    cxi_translation : {'auto', 'probe', 'sample'}
        What a foreign CXI file's ``translation`` holds (``data.cxi_translation``).
    roi_px, beam_center_rc, angle_table_path, spec_motors, burst_frames : optional
        Raw Eiger (``lamni-eiger``, ``lamni-tomo``, ``velociprobe``): the square crop
        (pixels), the beam centre (row, col) when the file has none, LamNI's
        ``tomography_scannumbers.txt``, the x and y columns of a spec data file of
        positions (``lamni-eiger``) and the frames per scan point (summed into one).
    scan_range, scan_step : optional
        ``lamni-tomo``: first and last scan number (inclusive) and every k-th scan.
    member : path, optional
        Read only this file of the data set (the ``path`` of a scan read before), with the
        values supplied for it (its rotation angle); the list then holds one scan.
    **supplied
        ``energy_ev``, ``distance_m``, ``detector_pixel_m``, ``rotation_angle_deg``,
        ``laminography_angle_deg``: what the files lack.
    """
    p = Path(path)
    fmt = fmt or detect_format(p)
    s = supplied_from(supplied)
    if fmt == "adept-cxi":
        return _read_own(p, load_counts)
    if fmt not in SCAN_FORMATS:
        raise data_error(p, f"format {fmt} holds no diffraction data; known: "
                            f"{', '.join(SCAN_FORMATS)}")
    options = {"foldslice_orientation": foldslice_orientation, "roi_px": roi_px,
               "cxi_translation": cxi_translation, "spec_motors": tuple(spec_motors),
               "beam_center_rc": beam_center_rc, "angle_table_path": angle_table_path,
               "burst_frames": burst_frames}
    if fmt == "lamni-tomo":
        if rotation_angles_deg is not None or positions_path is not None:
            raise data_error(p, "a lamni-tomo folder's angle table and position files give the "
                                "angles and positions: remove data.rotation_angles_deg / "
                                "data.angles_path / data.positions_path")
        kw = {} if angle_convention is None else {"angle_convention": angle_convention}
        return _sorted(lamni_tomo.read_tomo_scans(
            p, scan_range=scan_range, scan_step=scan_step, supplied=s, load_counts=load_counts,
            member=member, **{k: options[k] for k in _TOMO_OPTIONS}, **kw), p)
    _check_selection(p, fmt, scan_range, scan_step, burst_frames)
    files = _scan_files(p, fmt, roi_label)
    pos = Path(positions_path) if positions_path is not None else None
    indexes = range(len(files)) if member is None else [_member_index(files, member, p)]
    scans = [_read_one(fmt, files[i], pos, _per_scan(s, rotation_angles_deg, i, len(files), p),
                       load_counts, angle_convention, options)
             for i in indexes]
    return _sorted(scans, p)


def _check_selection(p: Path, fmt: str, scan_range: tuple[int, int] | None, scan_step: int,
                     burst_frames: int) -> None:
    """DataError for a selection setting that ``fmt`` (not a lamni-tomo folder) ignores."""
    if scan_range is not None or scan_step != 1:
        raise data_error(p, f"data.scan_range and data.scan_step select scans of a "
                            f"lamni-tomo folder, not of {fmt}")
    if burst_frames != 1 and fmt not in ("lamni-eiger", "velociprobe"):
        raise data_error(p, f"data.burst_frames applies to raw Eiger frames, not to {fmt}")


def _member_index(files: list[Path], member: PathLike, where: Path) -> int:
    """Index of ``member`` among the data set's ``files``; DataError when it is none."""
    wanted = Path(member).resolve()
    for index, f in enumerate(files):
        if f.resolve() == wanted:
            return index
    raise data_error(where, f"{member} is no longer one of the data set's files")


# --------------------------------------------------------------------------- projections


def _latest_niter(files: list[Path]) -> list[Path]:
    """Per folder, the ``Niter<N>.mat`` with the largest N."""
    best: dict[Path, tuple[int, Path]] = {}
    for f in files:
        match = _NITER.match(f.name)
        if match and (f.parent not in best or int(match[1]) > best[f.parent][0]):
            best[f.parent] = (int(match[1]), f)
    return [best[k][1] for k in sorted(best)]


def _projection_files(p: Path, fmt: str) -> list[Path]:
    if p.is_file():
        return [p]
    if fmt == "foldslice-niter":
        return _latest_niter(sorted(p.rglob("Niter*.mat")))
    if fmt == "ptychoshelves-recons":
        return sorted(p.rglob("*_recons.h5"))
    return _ptychodus_outputs(p) or [f for d in sorted(x for x in p.iterdir() if x.is_dir())
                                     for f in _ptychodus_outputs(d)]


def _ptychodus_outputs(folder: Path) -> list[Path]:
    """The ptychodus product files of ``folder``; of its batch layout (``api/io.py``
    ``StandardFileLayout``: ``product-in.h5`` the start, ``product-out.h5`` the result)
    only the result: a start without a result (a reconstruction that did not finish) is
    skipped with a warning, never imported as a projection."""
    files = [f for f in sorted(folder.glob("*.h5")) if _file_kind(f) == "ptychodus-product"]
    names = {f.name for f in files}
    if "product-in.h5" in names and "product-out.h5" not in names:
        log.warning("%s: product-in.h5 without product-out.h5 (not reconstructed): skipped",
                    folder)
    return [f for f in files if f.name != "product-in.h5"]


def read_projection_set(path: PathLike | Sequence[PathLike], fmt: str | None = None, *,
                        laminography_angle_deg: float,
                        angles_deg: Sequence[float] | None = None,
                        angles_path: PathLike | None = None,
                        pixel_size_m: float | None = None,
                        angle_convention: str | None = None,
                        phase_sign: float = 1.0) -> ProjectionSet:
    """Projections made elsewhere as a :class:`ProjectionSet` (our angle convention).

    Parameters
    ----------
    path : path or sequence of paths
        A file, a folder (searched for the format's files; fold_slice: the latest
        ``Niter`` per folder), or an explicit list of files (one per angle).
    fmt : str, optional
        ``ptychoshelves-recons``, ``foldslice-niter``, ``ptychodus-product`` or
        ``tiff-stack``; detected when None.
    laminography_angle_deg : float
        L in the format's convention (PtychoShelves' ``lamino_angle`` = our L).
    angles_deg, angles_path : optional
        Rotation angles, one per file (or per TIFF page), or a text file of them.
    pixel_size_m : float, optional
        Required for a TIFF stack (other formats record it).
    angle_convention : str, optional
        Default per format (PtychoShelves; ours for TIFF).
    phase_sign : float
        -1 flips the stored phase (PtychoShelves' matter is negative).
    """
    paths = [Path(path)] if isinstance(path, str | os.PathLike) else [Path(x) for x in path]
    fmt = fmt or detect_format(paths[0])
    if fmt == "tiff-stack":
        if angles_path is None or pixel_size_m is None:
            raise data_error(paths[0], "a TIFF stack needs data.angles_path and "
                                       "data.pixel_size_m")
        return read_tiff_stack(paths[0], angles_path,
                               laminography_angle_deg=laminography_angle_deg,
                               pixel_size_m=pixel_size_m,
                               angle_convention=angle_convention or "adept")
    files = paths if len(paths) > 1 else _projection_files(paths[0], fmt)
    if not files:
        raise data_error(paths[0], f"no {fmt} files found")
    if angles_path is not None:
        angles_deg = read_angle_file(angles_path, expected=len(files))
    return read_object_projections(files, fmt, laminography_angle_deg=laminography_angle_deg,
                                   angles_deg=angles_deg, angle_convention=angle_convention,
                                   phase_sign=phase_sign)


# --------------------------------------------------------------------------- inspect

# Values that let inspect read a file that lacks them; reported as missing, never used.
_PLACEHOLDERS = {"energy_ev": 10_000.0, "distance_m": 1.0, "detector_pixel_m": 75e-6,
                 "rotation_angle_deg": 0.0, "laminography_angle_deg": 90.0}
_SUPPLY = re.compile(r"supply (\w+)=")


def _scan_lines(scans: list[Scan], missing: list[str]) -> list[str]:
    first = scans[0]
    pos = np.concatenate([s.positions_m for s in scans]) * 1e6
    angles = [s.rotation_angle_deg for s in scans]
    lines = [
        f"scans: {len(scans)}",
        f"frames per scan: {min(s.n_positions for s in scans)}..."
        f"{max(s.n_positions for s in scans)}",
        f"frame shape: {first.frame_shape[0]} x {first.frame_shape[1]}",
        f"energy: {first.energy_ev:.6g} eV",
        f"distance: {first.distance_m:.6g} m",
        f"detector pixel: {first.x_pixel_size_m:.6g} x {first.y_pixel_size_m:.6g} m",
        f"object pixel: {first.object_pixel_size_m[1]:.6g} m",
        f"positions x: {pos[:, 0].min():.4g}..{pos[:, 0].max():.4g} um, "
        f"y: {pos[:, 1].min():.4g}..{pos[:, 1].max():.4g} um",
        f"rotation angles: {min(angles):.6g}..{max(angles):.6g} deg (ours)",
        f"laminography angle: {first.laminography_angle_deg:.6g} deg (ours, 90 = tomography)",
    ]
    if missing:
        lines.append("not in the files (supply them): " + ", ".join(missing))
    return lines


def _read_scans_leniently(p: Path, fmt: str, supplied: dict) -> tuple[list[Scan], list[str]]:
    """Headers of ``p``, with placeholders for values the files lack (named in the list)."""
    values, missing = dict(supplied), []
    for _ in range(len(_PLACEHOLDERS) + 1):
        try:
            return read_scans(p, fmt, load_counts=False, **values), missing
        except DataError as exc:
            match = _SUPPLY.search(str(exc))
            if match is None or match[1] not in _PLACEHOLDERS or match[1] in values:
                raise
            values[match[1]] = _PLACEHOLDERS[match[1]]
            missing.append(match[1])
    raise data_error(p, "could not read the headers")


def _cxi_translation_line(first: Path, supplied: dict) -> str:
    """How the first CXI scan's positions were read (the sign is a convention: say it)."""
    with open_h5(first) as f:
        own = cxi_foreign.has_translation(f)
    holder = first if own else (supplied.get("positions_path") or _cxi_product_for(first))
    setting = str(supplied.get("cxi_translation") or "auto")
    how = cxi_foreign.describe_translation(holder, setting) if holder else setting
    return f"CXI translation ({Path(holder).name if holder else 'none'}): {how} " \
           f"(data.cxi_translation: {setting})"


def inspect(path: PathLike, fmt: str | None = None, **supplied: object) -> str:
    """Plain-text summary of what ``path`` holds (format, frames, energy, ...).

    Reads headers only for diffraction data (not the frames) and runs nothing. Values the
    files lack are listed as "not in the files (supply them)". ``supplied`` takes the
    keywords of :func:`read_scans` (diffraction data) or, for projections,
    ``laminography_angle_deg``, ``angles_deg``, ``angles_path``, ``pixel_size_m`` and
    ``angle_convention``. ``fmt`` is detected when None.
    """
    p = Path(path)
    fmt = fmt or detect_format(p)
    head = [f"path: {p}", f"format: {fmt}"]
    if fmt in SCAN_FORMATS:
        scans, missing = _read_scans_leniently(p, fmt, supplied)
        if fmt == "lamni-tomo":
            head += lamni_tomo.describe(p, supplied.get("angle_table_path"),
                                        supplied.get("scan_range"), supplied.get("scan_step", 1))
        lines = head + _scan_lines(scans, missing)
        if fmt == "cxi" and scans:
            lines.append(_cxi_translation_line(Path(scans[0].path), supplied))
        return "\n".join(lines) + "\n"
    lam = supplied.get("laminography_angle_deg")
    ps = read_projection_set(p, fmt, laminography_angle_deg=90.0 if lam is None else lam,
                             pixel_size_m=supplied.get("pixel_size_m"),
                             angles_path=supplied.get("angles_path"),
                             angles_deg=supplied.get("angles_deg"),
                             angle_convention=supplied.get("angle_convention"))
    lines = head + [
        f"projections: {ps.n_angles}",
        f"projection shape: {ps.projections.shape[1]} x {ps.projections.shape[2]}",
        f"pixel: {ps.pixel_size_m:.6g} m",
        f"rotation angles: {ps.angles_deg.min():.6g}..{ps.angles_deg.max():.6g} deg (ours)",
        f"laminography angle: {ps.tilt_deg:.6g} deg"
        + (" (not in the files: supply it)" if lam is None else ""),
    ]
    if fmt == "tiff-stack":
        lines += _centre_lines(ps, supplied.get("angle_convention"))
    return "\n".join(lines) + "\n"


def _centre_lines(ps: ProjectionSet, convention: str | None) -> list[str]:
    """What the TIFF reader did to the stack's centres (``geometry.centre_shifts``)."""
    if convention is None:
        return []
    shifts = centre_shifts(ps.angles_deg, ps.tilt_deg, ps.projections.shape[1:], convention)
    if not shifts.any():
        return []
    return [f"centres: moved from {convention}'s onto ours, "
            f"{np.abs(shifts).max():.3g} px at most (docs/formats.md, Centres)"]
