"""DECTRIS Eiger files: frames cropped around the beam centre, and master files whose
frames sit in data files beside them.

A DECTRIS master file (the SIMPLON API's ``<name>_master.h5``, which the Velociprobe at APS
33-ID-C and newer cSAXS / LamNI Eiger set-ups write) holds the NeXus header and
``/entry/data/data_000001``, ``data_000002``, ...: external links, each to a frame array
``[n_k, rows, cols]`` in a ``<name>_data_%06d.h5`` file beside it (ptychodus 1.7.0
``plugins/aps33id_velociprobe/aps33id_velociprobe_diffraction_file.py``: ``DataGroup.read``
takes every ``h5py.ExternalLink`` of ``/entry/data`` in ``sorted(group.items())`` order,
``file_path = master.parent / link.filename``, ``data_path = link.path``; tike
``src/tike/ptycho/io.py`` ``read_aps_2idd``: "the number of data_000000 links may be more
than the actual number of files", the master being written first: the links are read in
name order up to the first whose file is absent). A master whose links were copied in
(``h5copy --expand-ext-links``, or a writer keeping everything in one file) holds the
``data_%06d`` arrays as datasets of its own: they are read in the same name order.
Header: ``/entry/instrument/detector/detector_distance`` (``units`` ``m``),
``x_pixel_size``, ``y_pixel_size`` (``m``), ``beam_center_x``, ``beam_center_y``
(``pixel``), ``detectorSpecific/photon_energy`` (``eV``), each checked against its
``units`` attribute where the file has one (``DetectorGroup.read`` asserts them);
``/entry/sample/goniometer/chi`` (``degree``), which the Eiger writes as one value per
image (``GoniometerGroup.read``: ``float(chi_item[0])`` of a 1-D
dataset; here the values must also agree).

Our HDF5 reading refuses external links (a link could pull any local file in); here each
link is resolved explicitly instead: its target must be a relative path inside the
master's folder (a file beside it, or in a folder below it as PSI's ``hdf5maker`` may
write them), opened and checked like any file; absolute paths and ``..`` are refused.
Frames are cropped to ``roi_px`` around the beam centre; pixels at the dtype's maximum
(gaps, dead pixels) are masked (and, in signed frames, negative ones: -1 gap, -2 bad), and
so are the pixels the master's ``detectorSpecific/pixel_mask`` flags (nonzero: gap, dead,
under- or over-responding, noisy; DECTRIS writes it with every master file, and converters
that fill the module gaps with 0, such as PSI's ``hdf5maker``, mark the gaps there only;
readers of Eiger masters, e.g. the XPCS and ptychography loaders found with
``pixel_mask``, take nonzero as bad).
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.formats._read import (
    check_filters,
    check_shape,
    data_error,
    open_h5,
    optional_number,
    read_array,
    require_dataset,
)

__all__ = ["DETECTOR", "FIRST_LINK", "available_bytes", "beam_centre", "crop_window",
           "cropped_frames", "is_master", "master_frames", "master_header", "read_master",
           "sum_bursts"]

FIRST_LINK = "/entry/data/data_000001"
DETECTOR = "/entry/instrument/detector"
PIXEL_MASK = f"{DETECTOR}/detectorSpecific/pixel_mask"
CHI = "/entry/sample/goniometer/chi"
FRAME_ARRAY_NAME = re.compile(r"data_\d{6}")


def crop_window(path: Path, key: str, shape: tuple[int, ...], centre: tuple[float, float],
                roi_px: int) -> tuple[slice, slice]:
    """Rows and columns of the ``roi_px`` square around ``centre`` (row, col) of frames
    ``shape`` ``[n, rows, cols]``; DataError when it leaves the frame."""
    r0 = int(round(centre[0])) - roi_px // 2
    c0 = int(round(centre[1])) - roi_px // 2
    if r0 < 0 or c0 < 0 or r0 + roi_px > shape[1] or c0 + roi_px > shape[2]:
        raise data_error(path, f"a {roi_px} px square around the beam centre "
                               f"({centre[0]:g}, {centre[1]:g}) leaves the {shape[1]} x "
                               f"{shape[2]} frame", key)
    return slice(r0, r0 + roi_px), slice(c0, c0 + roi_px)


def cropped_frames(f: h5py.File, path: Path, key: str, rows: slice, cols: slice,
                   load: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Cropped float32 frames and the mask of flagged pixels: the dtype's maximum (Eiger
    gaps, dead pixels) and, in signed frames, negative values (DECTRIS's PILATUS convention,
    kept by converters that write signed frames: -1 gap, -2 bad pixel)."""
    if not load:
        return None, None
    ds = require_dataset(f, key, path)
    if ds.dtype.kind not in "biuf":
        raise data_error(path, f"dtype {ds.dtype} is not numeric", key)
    n_bytes = ds.shape[0] * (rows.stop - rows.start) * (cols.stop - cols.start) * 4
    if n_bytes > available_bytes():
        raise data_error(path, f"declares {n_bytes / 2**30:.3g} GiB of cropped frames, more "
                               f"than the memory available", key)
    raw = np.asarray(ds[:, rows, cols])
    mask = None
    if raw.dtype.kind in "iu":
        flagged = raw == np.iinfo(raw.dtype).max
        if raw.dtype.kind == "i":
            flagged |= raw < 0
        mask = flagged.any(axis=0)
        raw = np.where(mask[None], 0, raw)
    frames = raw.astype(np.float32)
    if not np.isfinite(frames).all() or (frames < 0).any():
        raise data_error(path, "contains NaN, infinite or negative values", key)
    return frames, mask


def available_bytes() -> int:
    """Host memory available to this process (bytes)."""
    from hpc_adept.backend import available_memory_bytes

    return int(available_memory_bytes(None, 1)[0])


def is_master(f: h5py.File) -> bool:
    """Whether ``f`` is a DECTRIS master file (an external link to its first frames, or
    those frames copied in as a dataset)."""
    try:
        link = f.get(FIRST_LINK, getlink=True)
        copied_in = isinstance(link, h5py.HardLink) and isinstance(f[FIRST_LINK], h5py.Dataset)
    except (OSError, KeyError, ValueError):
        return False
    return (isinstance(link, h5py.ExternalLink) or copied_in) \
        and f.get(f"{DETECTOR}/detectorSpecific") is not None


def _number(f: h5py.File, key: str, path: Path, unit: str, positive: bool = True
           ) -> float | None:
    """A scalar (or one-element) dataset, its ``units`` attribute checked when present."""
    value = optional_number(f, key, path, positive=positive)
    if value is None:
        return None
    _check_units(f[key], path, key, unit)
    return value


def _check_units(ds: h5py.Dataset, path: Path, key: str, unit: str) -> None:
    """DataError when ``ds`` has a ``units`` attribute other than ``unit``."""
    units = ds.attrs.get("units")
    if units is not None:
        text = units.decode("utf-8", "replace") if isinstance(units, bytes) else str(units)
        if text.strip() != unit:
            raise data_error(path, f"units {text!r}, expected {unit!r}", key)


def _chi(f: h5py.File, path: Path) -> float | None:
    """The goniometer's chi (degrees): a scalar, or the Eiger's one value per image (all
    equal: ptychodus ``GoniometerGroup.read`` takes ``chi[0]`` of a 1-D dataset)."""
    ds = f.get(CHI)
    if not isinstance(ds, h5py.Dataset) or len(ds.shape) != 1 or ds.shape[0] < 2:
        return _number(f, CHI, path, "degree", positive=False)
    if ds.dtype.kind not in "iuf":
        raise data_error(path, f"dtype {ds.dtype} is not real numeric", CHI)
    values = np.asarray(ds[()], dtype=np.float64)
    if not np.isfinite(values).all():
        raise data_error(path, "not finite", CHI)
    if np.ptp(values) > 1e-6:
        raise data_error(path, f"chi varies over the images ({values.min():g}.."
                               f"{values.max():g} deg): one chi per scan is read", CHI)
    _check_units(ds, path, CHI, "degree")
    return float(values[0])


def _links(f: h5py.File, path: Path) -> list[tuple[Path, str]]:
    """(file, dataset) of each frame array, in name order, up to the first absent file
    (arrays copied into the master: the master itself)."""
    group = f.get("/entry/data", getlink=False)
    if not isinstance(group, h5py.Group):
        raise data_error(path, "missing", "/entry/data")
    arrays = []
    for name in sorted(group):
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.HardLink) and FRAME_ARRAY_NAME.fullmatch(name) \
                and isinstance(group[name], h5py.Dataset):
            arrays.append((path, f"/entry/data/{name}"))
            continue
        if not isinstance(link, h5py.ExternalLink):
            continue
        target = _link_target(path, link, f"/entry/data/{name}")
        if target is None:
            break  # written before its file, as tike notes
        arrays.append((target, link.path))
    if not arrays:
        raise data_error(path, "no frame array: neither its own data_%06d datasets nor a "
                               "file its external links name", "/entry/data")
    return arrays


def _link_target(path: Path, link: h5py.ExternalLink, key: str) -> Path | None:
    """The file an external link of the master ``path`` names, inside the master's folder
    (DataError otherwise), or None when it does not exist (yet)."""
    target = Path(link.filename)
    if target.is_absolute() or ".." in target.parts or target.name in ("", "."):
        raise data_error(path, f"links to {link.filename!r}, not a file in the master's "
                               f"folder (refused)", key)
    try:
        inside = (path.parent / target).resolve().is_relative_to(path.parent.resolve())
        exists = (path.parent / target).is_file()
    except (RuntimeError, OSError) as exc:  # a symbolic-link loop, no permission
        raise data_error(path, f"link {link.filename!r} cannot be resolved "
                               f"({type(exc).__name__})", key) from None
    if not inside:
        raise data_error(path, f"{link.filename!r} resolves outside the master's folder "
                               f"(refused)", key)
    return path.parent / target if exists else None


def master_header(path: Path) -> dict[str, float | None]:
    """Distance, pixel sizes (m), beam centre (pixels), energy (eV) and the goniometer's
    chi (degrees) of a master file; None for what it lacks."""
    with open_h5(path) as f:
        det = DETECTOR
        return {
            "distance_m": _number(f, f"{det}/detector_distance", path, "m"),
            "pixel_m": _number(f, f"{det}/x_pixel_size", path, "m"),
            "y_pixel_m": _number(f, f"{det}/y_pixel_size", path, "m"),
            "col": _number(f, f"{det}/beam_center_x", path, "pixel", positive=False),
            "row": _number(f, f"{det}/beam_center_y", path, "pixel", positive=False),
            "energy_ev": _number(f, f"{det}/detectorSpecific/photon_energy", path, "eV"),
            "chi_deg": _chi(f, path),
        }


def master_frames(path: Path, centre: tuple[float, float], roi_px: int, load: bool
                  ) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """The frames of every data file a master links (concatenated in link-name order),
    cropped to ``roi_px`` around ``centre`` (row, col): float32 ``[n, roi_px, roi_px]``
    (None unless ``load``), the mask of gap pixels and the frame count."""
    with open_h5(path) as f:
        arrays = _links(f, path)
    frames, masks, count, frame_shape = [], [], 0, None
    for file, key in arrays:
        with open_h5(file) as g:
            ds = require_dataset(g, key, file)
            check_shape(ds.shape, 3, file, key, (None, *(frame_shape or (None, None))))
            check_filters(ds, file, key)
            frame_shape = ds.shape[1:]
            rows, cols = crop_window(file, key, ds.shape, centre, roi_px)
            data, mask = cropped_frames(g, file, key, rows, cols, load)
            count += ds.shape[0]
        frames.append(data)
        masks.append(mask)
    if not load:
        return None, None, count
    masks.append(_flagged_pixels(path, frame_shape, rows, cols))
    present = [m for m in masks if m is not None]
    mask = np.any(present, axis=0) if present else None
    stacked = np.concatenate(frames)
    if mask is not None:
        stacked[:, mask] = 0.0
    return stacked, mask, count


def _flagged_pixels(path: Path, frame_shape: tuple[int, int], rows: slice, cols: slice
                    ) -> np.ndarray | None:
    """The master's ``pixel_mask`` (nonzero = not to be used) cropped like the frames, or
    None when it has none."""
    with open_h5(path) as f:
        if f.get(PIXEL_MASK) is None:
            return None
        flags = read_array(f, PIXEL_MASK, path, ndim=2, dtype=np.bool_, kind="integer",
                           expected=tuple(frame_shape))
    return flags[rows, cols]


def sum_bursts(path: Path, frames: np.ndarray | None, n_frames: int, burst: int,
               indexes: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Frames of ``burst`` exposures per scan point summed into one (fold_slice's
    ``p.detector.burst_frames``: consecutive frames of one point), and their count.

    DataError when the count is not a multiple of ``burst``, and when ``burst`` is 1 but
    the positions' frame ``indexes`` are ``0..n-1`` in a file of a whole multiple >= 2 of
    ``n`` frames (burst data read as one frame per point would pair frames with the wrong
    points).
    """
    n = len(indexes)
    if burst < 1:
        raise data_error(path, f"data.burst_frames must be >= 1, got {burst}")
    if burst == 1:
        if n and n_frames > n and n_frames % n == 0 \
                and np.array_equal(np.sort(indexes), np.arange(n)):
            raise data_error(path, f"{n_frames} frames for {n} positions: {n_frames // n} "
                                   f"frames per point? set data.burst_frames: {n_frames // n}")
        return frames, n_frames
    if n_frames % burst:
        raise data_error(path, f"{n_frames} frames are not a whole number of bursts of "
                               f"{burst} (data.burst_frames)")
    if frames is None:
        return None, n_frames // burst
    return frames.reshape(n_frames // burst, burst, *frames.shape[1:]).sum(axis=1), \
        n_frames // burst


def beam_centre(path: Path, head: dict, beam_center_rc: tuple[float, float] | None,
                key: str) -> tuple[float, float]:
    """The supplied beam centre (row, col), else the file's; DataError naming ``key``
    when neither gives one."""
    centre = beam_center_rc or (head["row"], head["col"])
    if centre[0] is None or centre[1] is None:
        raise data_error(path, "no beam centre in the file; supply beam_center_rc", key)
    return centre


def read_master(path: Path, beam_center_rc: tuple[float, float] | None, roi_px: int,
                load: bool) -> tuple[dict, np.ndarray | None, np.ndarray | None, int]:
    """Header (:func:`master_header`), frames cropped around the beam centre, gap mask and
    frame count of a master file and the data files it links."""
    head = master_header(path)
    centre = beam_centre(path, head, beam_center_rc, DETECTOR)
    frames, mask, count = master_frames(path, centre, roi_px, load)
    return head, frames, mask, count
